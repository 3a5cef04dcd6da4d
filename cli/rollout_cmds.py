"""`spo rollout`: rollout workers (Ray actors) without a trainer; thin over spo_train.rollouts.job."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from spo_cli.train_cmds import (
    ConfigOpt,
    JsonOpt,
    _check_model,
    _open_lake_with_problems,
    _sampling_config,
    _selection,
    console,
)

from spo_train.progress import advance_with_rate, progress_display


def _rollout(
    explicit: dict[str, Any],
    *,
    json_out: bool = False,
    config_file: str | None = None,
    **kwargs: Any,
) -> None:
    """Grow the lake from any model: --n responses per problem of --where/--split, sampled by
    rollout workers (Ray actors; a local Ray unless --ray-address), judged and committed in
    chunks. Resumable: the same command again continues the same run."""
    from spo_train.rollouts.job import RolloutConfig, run_rollout

    cfg: RolloutConfig = _sampling_config(RolloutConfig, explicit, kwargs, config_file)
    cfg.model = _check_model(cfg.model)
    lk = _open_lake_with_problems(cfg.lake)
    if cfg.where is None and cfg.split is None:
        cfg.split = "train"
    predicate = _selection(lk, cfg)
    say = lambda m: console.print(m, highlight=False)  # noqa: E731
    with progress_display(console) as bar:
        task = bar.add_task("rollouts", total=None, rate="")

        def on_start(problems: int, rows: int) -> None:
            bar.update(task, total=rows)

        report = run_rollout(
            cfg,
            lk,
            predicate,
            on_start=on_start,
            on_rows=advance_with_rate(bar, task, "rollouts"),
            say=say,
        )
    s = report.summary()
    rate = f"{s['pass_rate']:.3f}" if s["pass_rate"] is not None else "n/a"
    say(
        f"{s['rows']} rollouts of {s['problems'] - s['already_done']} problems committed "
        f"({s['inserted']} new rows, pass rate {rate}, {s['unjudged']} unjudged; "
        f"{s['already_done']} problems done before); run {s['run_id']}"
        + (" (resumed)" if s["resumed"] else "")
    )
    if json_out:
        sys.stdout.write(json.dumps(s) + "\n")


def register(app: typer.Typer) -> None:
    from spo_cli.options import SpoCommand, command_from

    from spo_train.rollouts.job import RolloutConfig

    app.command("rollout", cls=SpoCommand)(
        command_from(RolloutConfig, _rollout, extra=[JsonOpt, ConfigOpt])
    )
