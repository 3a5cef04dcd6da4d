"""`spo experiment CONFIG.toml`: a named set of train runs at one budget (spo_train.experiment)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spo_store.errors import SpoError

console = Console(stderr=True)


def _csv(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise SpoError(f"{option} {text!r}: expected a comma-separated list")
    return items


def _seeds(text: str | None) -> list[int] | None:
    items = _csv(text, "--seeds")
    if items is None:
        return None
    try:
        return [int(x) for x in items]
    except ValueError:
        raise SpoError(f"--seeds {text!r}: expected comma-separated integers such as 0,1") from None


def experiment_cmd(
    config: Annotated[
        Path,
        typer.Argument(help="Experiment config (TOML; docs/experiments.md)", show_default=False),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            metavar="DIR",
            help="Experiment directory (default: runs/experiments/<name>)",
            show_default=False,
        ),
    ] = None,
    lake: Annotated[
        str | None,
        typer.Option(
            "--lake",
            metavar="URI",
            help="Lake of every run (default: the config's experiment.lake, else DIR/lake)",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="Runs at once")] = 1,
    only: Annotated[
        str | None,
        typer.Option("--only", metavar="ARM,...", help="Run only these arms", show_default=False),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            metavar="S,...",
            help="Run only these seeds of the config",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs and what would be done; run nothing")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """Run a named set of `spo train` runs (arms x seeds) at one budget; resumable.

    Validates the whole config first, loads the embedded problems into an empty lake, estimates
    the q0 the SPO arms need (its prepare table), then runs each (arm, seed) as `spo --threads 1 train
    --config DIR/<arm>/seed-<s>.toml` (log DIR/<arm>/seed-<s>.log). A rerun skips completed
    runs and resumes stopped ones. `spo report DIR` draws the results.
    """
    from spo_train.experiment import ExperimentStopped, run_experiment
    from spo_train.experiment.config import default_output, load_experiment

    exp = load_experiment(config)
    out = Path(output) if output is not None else default_output(exp)
    if output is not None and not output.strip():
        raise SpoError("--output is empty: give a directory for the experiment")
    command_line = "spo " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    from spo_train.progress import progress_display

    bar = progress_display(console, field="current")

    def say(msg: str) -> None:
        bar.console.print(msg, highlight=False, soft_wrap=True)

    try:
        with bar:
            summary = run_experiment(
                exp,
                output=out,
                lake=lake,
                jobs=jobs,
                only=_csv(only, "--only"),
                seeds=_seeds(seeds),
                dry_run=dry_run,
                train_json=True,  # this spo's `train` takes --json (its result line is read)
                say=say,
                progress=None if dry_run else bar,
                command_line=command_line,
            )
    except ExperimentStopped as stop:
        console.print(
            Text.assemble(("stopped: ", "yellow"), stop.message), highlight=False, soft_wrap=True
        )
        sys.exit(143 if stop.signum == signal.SIGTERM else 130)

    if dry_run:
        _print_plan(summary)
    else:
        _print_results(summary)
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
    if summary["failed"]:
        raise typer.Exit(1)


def _print_plan(summary: dict) -> None:
    out = Console()
    for line in summary["prepare"]:
        out.print(f"prepare: {line}", highlight=False, soft_wrap=True)
    table = Table(title=f"experiment {summary['name']} in {summary['output']} (dry run)")
    for col in ("arm", "seed", "status", "action", "spo --threads 1 ..."):
        table.add_column(col, overflow="fold")
    for r in summary["runs"]:
        # the command with the experiment directory left out (--json has it in full)
        short = r["command"].removeprefix("spo --threads 1 ").replace(summary["output"] + "/", "")
        table.add_row(r["arm"], str(r["seed"]), r["status"], r["action"], short)
    out.print(table)
    out.print(f"settings files and logs under {summary['output']}", highlight=False)


def _print_results(summary: dict) -> None:
    ks = sorted({k for r in summary["runs"] for k in r["eval"]})
    table = Table(title=f"experiment {summary['name']}: last evaluation per run")
    table.add_column("arm")
    table.add_column("seed")
    table.add_column("status")
    for k in ks:  # eval/<set>/pass@k: the set above the k, so narrow terminals keep both
        table.add_column(k.removeprefix("eval/").replace("/", "\n"), justify="right")
    for r in summary["runs"]:
        values = [f"{r['eval'][k]:.3f}" if k in r["eval"] else "" for k in ks]
        table.add_row(r["arm"], str(r["seed"]), r["status"], *values)
    console.print(table)
    failed = [r for r in summary["runs"] if r["status"] != "completed" and r["action"] != "skip"]
    for r in failed:
        console.print(
            f"failed: {r['arm']} seed {r['seed']}: {r.get('error', r['status'])} (log "
            f"{summary['output']}/{r['output']}.log)",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"report: spo report {shlex.quote(summary['output'])}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `spo experiment` to the `spo` app."""
    from spo_cli.options import SpoCommand

    app.command("experiment", cls=SpoCommand)(experiment_cmd)
