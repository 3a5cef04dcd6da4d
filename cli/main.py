"""Entry point of the `spo` command. Each area registers its commands from its own module."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from typer._click import exceptions as click_exceptions  # typer vendors its own click

from spo_store.errors import SpoError

app = typer.Typer(
    name="spo",
    help="Soft Policy Optimization around a versioned trajectory lake.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="Torch threads of generating commands (default: $OMP_NUM_THREADS, else 1 "
            "for models under 100M parameters, else all cores)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """spo: Soft Policy Optimization around a versioned trajectory lake."""
    if threads is not None:
        if threads < 1:
            raise SpoError(f"--threads {threads}: must be at least 1")
        # Read where models load (spo_train.lm.models.choose_threads), in this process only.
        os.environ["SPO_THREADS"] = str(threads)


err_console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the installed spo version."""
    from importlib.metadata import version as pkg_version

    typer.echo(pkg_version("spo"))


_registered = False


def _register_all() -> None:
    """Add every area's commands to `app`, once per process (typer appends: a second call
    would list every command twice)."""
    global _registered
    if _registered:
        return
    # Imported here so `spo --help` stays fast and each area owns its own module.
    from spo_cli import (
        bench_cmds,
        experiment_cmds,
        judge_cmds,
        lake_admin_cmds,
        lake_cmds,
        pts_cmds,
        report_cmds,
        rollout_cmds,
        train_cmds,
    )

    areas = (
        lake_cmds,
        lake_admin_cmds,
        judge_cmds,
        train_cmds,
        rollout_cmds,
        report_cmds,
        experiment_cmds,
        pts_cmds,
        bench_cmds,
    )
    for module in areas:
        module.register(app)
    _registered = True


RERUN_NOTES = {
    "spo demo": "committed work is kept: rerun the same command (it reuses the Q0 estimates "
    "and pi_0's evaluation, and trains again from step 0)",
    # ingest parses and judges everything first and writes at the end (spo_store.ingest): a
    # stop while judging leaves only the run's record
    "spo ingest human-solutions": "ingest writes once, at its end, so nothing of this run was "
    "stored: run the same command again",
    # an evaluation is one run over all its problems: a rerun is a new run that samples every
    # problem again (spo_train.evaluate), so it continues nothing
    "spo eval": "eval does not resume (the samples it stored stay in the lake under that run): "
    "run the same command again to evaluate from the start",
}
"""What a stop kept and what a rerun does, for commands where it is not "committed work is
kept: rerun the same command to resume"."""


def _stop_detail(argv: list[str] | None) -> str:
    """What a stop left behind: the run ids this process started and marked interrupted
    (`spo_store.lake.PROCESS_RUNS`), and a command that continues (tests/cli/test_second_hour.py
    checks each hint)."""
    import shlex

    lake_mod = sys.modules.get("spo_store.lake")
    runs: dict[str, str] = getattr(lake_mod, "PROCESS_RUNS", {}) if lake_mod else {}
    args = list(sys.argv[1:] if argv is None else argv)
    command = _command_path(args)
    again = "spo " + shlex.join(args)
    # Only `spo train` has --resume, and it continues a run that started (with none, the same
    # command starts afresh).
    if (
        command == "spo train"
        and "--resume" not in args
        and any(r.startswith("train-") for r in runs)
    ):
        again += " --resume"
    stopped_runs = [r for r, st in runs.items() if st == "interrupted"]
    open_runs = [r for r, st in runs.items() if st == "running"]
    if stopped_runs:
        what = f"run {', '.join(stopped_runs)} marked interrupted"
    elif open_runs:
        what = f"run {', '.join(open_runs)} not ended (`spo lake runs` marks it interrupted)"
    elif runs:
        what = f"run {', '.join(runs)} completed before the stop"
    else:
        # No run recorded: nothing of a run was committed, so nothing is claimed kept.
        return f"no run was started; run the same command again: {again}"
    note = RERUN_NOTES.get(command, "committed work is kept: rerun the same command to resume")
    return f"{what}; {note}: {again}"


ROOT_OPTIONS = ("--threads",)
"""Options of `spo` itself (before the command): `spo --threads 2 eval`."""


def _command_path(args: list[str]) -> str:
    """`spo lake runs` for `lake runs --limit`: the command words of `args`."""
    cmd: object = typer.main.get_command(app)
    path = ["spo"]
    for arg in args:
        sub = getattr(cmd, "commands", {}).get(arg)
        if sub is not None:
            cmd = sub
            path.append(arg)
        elif not arg.startswith("-") and len(path) > 1:
            break
    return " ".join(path)


def _usage_message(exc: click_exceptions.UsageError, argv: list[str] | None) -> str:
    """`<message> (see spo <command> --help)`; an unknown option that is a root option says
    where it goes."""
    msg = " ".join(exc.format_message().split())
    msg = (msg[:1].lower() + msg[1:]).rstrip(".")
    path = exc.ctx.command_path if exc.ctx is not None else "spo"
    # click reports some errors (an option missing its value) from the root context: the
    # command named on the line is what its --help should be looked up for.
    walked = _command_path(sys.argv[1:] if argv is None else argv)
    if len(walked) > len(path):
        path = walked
    if isinstance(exc, click_exceptions.NoSuchOption) and exc.option_name in ROOT_OPTIONS:
        sub = path.removeprefix("spo").strip() or "COMMAND"
        msg += f" ({exc.option_name} is an option of spo itself: spo {exc.option_name} N {sub})"
    return f"{msg} (see {path} --help)"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input becomes one line on stderr and a non-zero exit, never a traceback."""
    # transformers' own bars (weights loading, shard writing) would interleave with ours.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _register_all()
    # SIGTERM (timeout, Slurm, Docker, systemd) ends a command like Ctrl-C: the command's
    # `except` paths mark its run `interrupted` (spo_store.lake.run_status), committed work is
    # kept, and the command says how to resume. Both signals are recorded here because typer
    # turns a KeyboardInterrupt into a silent `Exit(130)` before it reaches this function.
    from spo_store.stopping import STOP_SIGNALS as stopped
    from spo_store.stopping import deferring

    def _on_signal(signum: int, _frame: object) -> None:
        first = not stopped
        stopped.append(signum)
        if first and deferring():  # inside a training step: finish it, save, then stop
            os.write(2, b"stopping after this step (again to stop now)\n")
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def _stopped() -> None:
        term = signal.SIGTERM in stopped
        how = "terminated (SIGTERM)" if term else "interrupted"
        err_console.print(
            Text.assemble((how, "yellow"), f"; {_stop_detail(argv)}"),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(143 if term else 130)

    command = typer.main.get_command(app)
    try:
        # standalone_mode=False returns (not raises) the code of typer.Exit: pass it on.
        rc = command.main(args=argv, prog_name="spo", standalone_mode=False)
        if stopped:
            _stopped()
        sys.exit(rc or 0)
    except typer.Exit as exc:
        if stopped:
            _stopped()
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _stopped()
    except click_exceptions.UsageError as exc:
        # click's 4-line "Usage: ... Try ... Error: ..." block becomes one line.
        err_console.print(
            Text.assemble(("error: ", "red"), _usage_message(exc, argv)),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        err_console.print(
            Text.assemble(("error: ", "red"), exc.format_message()),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(exc.exit_code)
    except SpoError as exc:
        if stopped:  # a stop signal inside native code surfaced as an error: still a stop
            _stopped()
        # The message is plain text: brackets in it (`[train]`) must not be read as rich markup.
        err_console.print(
            Text.assemble(("error: ", "red"), str(exc)), highlight=False, soft_wrap=True
        )
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - a bug must still end in one line, not a traceback
        if stopped:  # e.g. DuckDB turns the interrupt into "RuntimeError: Query interrupted"
            _stopped()
        if os.environ.get("SPO_DEBUG"):
            raise
        from spo_store.errors import environment_error

        known = environment_error(exc)  # a read-only or full disk, a damaged data file, ...
        if known is not None:
            err_console.print(
                Text.assemble(("error: ", "red"), known), highlight=False, soft_wrap=True
            )
            sys.exit(1)
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        loc = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        err_console.print(
            Text.assemble(
                ("internal error: ", "red"),
                f"{type(exc).__name__}: {exc}{loc} (a bug in spo: rerun with SPO_DEBUG=1 for "
                "the traceback and report it)",
            ),
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
