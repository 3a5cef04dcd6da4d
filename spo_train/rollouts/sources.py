"""Rollout sources: what samples a training run's online rollouts, judges them and commits them to
the lake. Nothing else passes from a rollout source to the learner: the step's batch source
(`spo_train.train.batch_sources`) reads the rows back from the lake.

Three implementations, one contract (`RolloutSource`):
- `spo_train.rollouts.local.RolloutProducer`, local: samples the step's rollouts in this process
  when the step asks for them;
- `spo_train.rollouts.ray_rollouts.RayRolloutProducer` (`--rollout-workers N`): Ray actors sample all
  the time; a step waits until the lake holds its data (docs/rollouts.md);
- `NoRollouts`: a run whose batches draw no online rows (say `--mix offline:1`, SFT's default)
  and that asks for no workers samples nothing and holds no second copy of the policy.
The two that sample write one row format (`spo_train.rollouts.sampling.trajectory_row`) with keyed writes
(`Lake.insert_new`), in groups (`spo_train.rollouts.sampling.grouped_traj_ids`: one group identity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from spo_store.lake import Lake
from spo_train.config import TrainConfig

Ready = Callable[[int], tuple[bool, str]]
"""A batch source's `ready(policy_version)`: whether the lake holds a step's data, and what is
missing."""


class RolloutSource(Protocol):
    version: int
    """The trainer step whose weights the rollout policy holds (the rows' `policy_version`)."""

    def sync(self, policy: torch.nn.Module, version: int) -> None:
        """The rollout policy takes the trainer's weights as policy `version`."""
        ...

    def wait_for(self, step: int, ready: Ready) -> None:
        """Return once the lake holds what `step` draws (sampling it first, or waiting for
        workers); SpoError when that cannot happen."""
        ...

    def metrics(self) -> dict[str, float]:
        """The rollout metrics of the step (`rollout/...`) since the last call."""
        ...

    def close(self) -> None:
        """Release what it started (workers, Ray); idempotent, on every exit."""
        ...


def open_rollouts(
    lake: Lake,
    policy: torch.nn.Module,
    tokenizer: Any,
    *,
    config: TrainConfig,
    pi0_path: Path,
    problems: Sequence[Mapping[str, Any]],
    run_id: str,
    tokenizer_id: str,
    ref_model_id: str,
    rows_per_step: int,
    version: int,
    say: Callable[[str], None] = lambda _m: None,
) -> RolloutSource:
    """The run's rollout source: Ray workers with `config.rollout_workers`, else local; its
    rollout policy starts with `policy`'s weights as `version`; each step draws
    `rows_per_step` rows (whole groups of `rollout_n`) from `problems`; `NoRollouts` when that
    is none and no workers are asked for."""
    if rows_per_step <= 0 and not config.rollout_workers:
        return NoRollouts(version)
    if config.rollout_workers:
        from spo_train.rollouts.ray_rollouts import RayRolloutProducer

        return RayRolloutProducer(
            lake,
            policy,
            config=config,
            model_path=pi0_path,
            problems=problems,
            run_id=run_id,
            tokenizer_id=tokenizer_id,
            ref_model_id=ref_model_id,
            online_per_step=rows_per_step,
            version=version,
            say=say,
        )
    from spo_train.rollouts.local import RolloutProducer

    return RolloutProducer(
        lake,
        policy,
        tokenizer,
        config=config,
        problems=problems,
        run_id=run_id,
        tokenizer_id=tokenizer_id,
        ref_model_id=ref_model_id,
        online_per_step=rows_per_step,
        version=version,
    )


class NoRollouts:
    """The rollout source of a run that samples nothing (no online part in its batches): no
    rollout policy, no sampling, no rollout metrics; `version` follows the trainer's syncs."""

    def __init__(self, version: int) -> None:
        self.version = version

    def sync(self, policy: torch.nn.Module, version: int) -> None:
        self.version = version

    def wait_for(self, step: int, ready: Ready) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        return None
