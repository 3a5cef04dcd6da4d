"""The metric sink of a training run: every number a step or an evaluation reports goes to the
lake's `metrics` table, TensorBoard (output/tb) and W&B through here, once.

On `--resume` it first makes each (run, step, name) hold one value again: the metrics and
batches the killed process logged for steps the resume runs again are deleted
(`spo_train.train.setup.drop_after`), TensorBoard hides their events (`purge_step`) and the
evaluation kept at the resume step is written to TensorBoard again (`relog_evals`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spo_store.lake import Lake
from spo_train.config import TrainConfig
from spo_train.train.setup import drop_after, relog_evals, start_wandb


class MetricSink:
    """Lake + TensorBoard + W&B for run `run_id` (see the module docstring); `close()` on every
    exit."""

    def __init__(
        self,
        lake: Lake,
        config: TrainConfig,
        run_id: str,
        output: Path,
        *,
        start_step: int,
        resumed: bool,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.lake, self.run_id = lake, run_id
        self.writer: Any = None
        self.wandb: Any = None
        if resumed:
            # Steps after the checkpoint ran before the crash and run again now: drop what
            # they logged, so each (run, step, name) holds one value.
            dropped = drop_after(lake, run_id, start_step)
            if dropped:
                say(
                    f"dropped {dropped} metric and batch rows of steps >= {start_step} logged before"
                )
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides events of steps >= the resume step from earlier
            # files (the killed run's steps after its checkpoint), as the lake rows are dropped.
            tb_dir = output / "tb"
            purge = start_step if (resumed or tb_dir.exists()) else None
            self.writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
            if resumed:
                relog_evals(lake, self.writer, run_id, start_step)
        try:
            self.wandb = start_wandb(config, run_id, output)
        except BaseException:
            self.close()
            raise

    def log(
        self, step: int, metrics: Mapping[str, float], *, in_lake: bool = True
    ) -> dict[str, float]:
        """Log `metrics` of `step` (non-finite values are left out: NaN is no measurement);
        `in_lake` False for numbers the lake holds already (an evaluation's, written by
        `spo_train.evaluate`). Returns what was logged."""
        kept = {k: v for k, v in metrics.items() if math.isfinite(v)} if in_lake else dict(metrics)
        if in_lake:
            self.lake.log_metrics(self.run_id, step, kept)
        if self.writer:
            for k, v in kept.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(kept, step=step)
        return kept

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.wandb:
            self.wandb.finish()
