"""`spo experiment CONFIG.toml`: running a named set of `spo train` runs at one budget, resumable.

The config format is `spo_train.experiment.config` (`load_experiment` validates the whole file
first), the planning `spo_train.experiment.plan` (`plan_runs`: one `RunPlan` per (arm, seed) and
what an earlier invocation left; `q0_needs`); their public names are re-exported here.
`run_experiment` writes the runs' files, prepares the lake and runs every run as a child process
`spo --threads 1 train --config OUTPUT/<arm>/seed-<s>.toml`, at most `jobs` at once.

Resumable: a run whose lake run is `completed` at the configured `steps` is skipped; one with a
checkpoint is continued with `--resume` (also a completed run whose `steps` were raised in the
config); one without a checkpoint starts (again). A run directory holding a run with other
settings is refused before anything runs. A failed run is reported and the others continue.
Ctrl-C / SIGTERM stops the children with one SIGTERM each (they checkpoint and end their lake
runs `interrupted`) and raises `ExperimentStopped`.

No torch here: the parent only reads the lake, loads the embedded problems into an empty one
(`spo_train.embedded.defaults.ensure_problems`) and starts children; `spo estimate-q0` and `spo train`
run as child processes (their own logs, their own memory, one SIGTERM each to stop).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.experiment.config import (
    EXPERIMENT_KEYS,
    FORBIDDEN,
    NAME_RE,
    PREPARE_KEYS,
    RESERVED_ARMS,
    TABLES,
    Experiment,
    default_output,
    load_experiment,
    resolved,
    run_config,
)
from spo_train.experiment.plan import (
    Q0Need,
    RunPlan,
    experiment_record,
    lake_statuses,
    lake_uri_of,
    needs_q0,
    open_existing_lake,
    plan_runs,
    q0_missing,
    q0_needs,
    q0_pool_size,
    read_eval,
    run_id_in,
    select,
    train_command,
    write_atomic,
    write_run_files,
)

__all__ = [  # this module's names and those of the config and planning modules
    "EXPERIMENT_KEYS",
    "FORBIDDEN",
    "NAME_RE",
    "PREPARE_KEYS",
    "RESERVED_ARMS",
    "STOP_GRACE_S",
    "TABLES",
    "Experiment",
    "ExperimentStopped",
    "Q0Need",
    "RunPlan",
    "default_output",
    "experiment_record",
    "lake_statuses",
    "lake_uri_of",
    "last_error_line",
    "last_json_line",
    "load_experiment",
    "needs_q0",
    "open_existing_lake",
    "plan_runs",
    "q0_missing",
    "q0_pool_size",
    "q0_needs",
    "read_eval",
    "resolved",
    "run_config",
    "run_experiment",
    "run_id_in",
    "select",
    "shown_command",
    "stop_children",
    "train_command",
    "write_atomic",
    "write_run_files",
]

STOP_GRACE_S = 300.0
"""How long a stopped child may take to write its checkpoint before it is killed."""


class ExperimentStopped(Exception):
    """Ctrl-C or SIGTERM stopped the experiment; `signum` is the signal (SIGINT or SIGTERM)
    and `message` the one line to print (what stopped, how to resume)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message


def last_json_line(log: Path) -> dict[str, Any] | None:
    """The last line of `log` that is a JSON object with a run_id (`spo train --json`)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "run_id" in obj:
                return obj
    return None


def last_error_line(log: Path, since: int) -> str:
    """The last non-empty line the child wrote to `log` after byte `since` (its error line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- running
@dataclass
class _Child:
    plan: RunPlan
    proc: subprocess.Popen
    log_start: int
    started: float


def _spo_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "spo_cli.main", *args]


def shown_command(args: list[str]) -> str:
    return "spo " + shlex.join(args)


def _start(args: list[str], log: Path, header: str) -> tuple[subprocess.Popen, int]:
    """Start `spo <args>` with stdout and stderr appended to `log`, in its own session (a
    Ctrl-C at the terminal reaches only the runner, which stops each child with one SIGTERM)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        fh.write(f"=== {stamp} {header}: {shown_command(args)}\n".encode())
        start = fh.tell()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "160")}
        proc = subprocess.Popen(
            _spo_argv(args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return proc, start


class _StopGuard:
    """While stopping: further Ctrl-C / SIGTERM only count (the second kills the children
    instead of waiting for their checkpoints). A no-op off the main thread."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _StopGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._on)
        return self

    def _on(self, signum: int, _frame: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def stop_children(
    procs: list[subprocess.Popen],
    say: Callable[[str], None],
    what: str = "run(s): each saves a checkpoint",
) -> None:
    """SIGTERM each live child once (it checkpoints and ends its lake run `interrupted`),
    wait for them (a second Ctrl-C, or `STOP_GRACE_S`, kills them)."""
    with _StopGuard() as guard:
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if live:
            say(f"stopping {len(live)} {what} (Ctrl-C again to kill)")
        deadline = time.monotonic() + STOP_GRACE_S
        while any(p.poll() is None for p in live):
            if guard.count or time.monotonic() > deadline:
                for p in live:
                    if p.poll() is None:
                        p.kill()
                for p in live:
                    p.wait()
                break
            time.sleep(0.1)


def run_experiment(
    exp: Experiment,
    *,
    output: Path,
    lake: str | None = None,
    jobs: int = 1,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    dry_run: bool = False,
    train_json: bool = True,
    say: Callable[[str], None] = print,
    progress: Any = None,
    command_line: str = "",
) -> dict[str, Any]:
    """Run the experiment (or, with `dry_run`, only plan it); returns the summary: name,
    output, lake, dry_run, prepare (the estimate-q0 commands this invocation runs), runs (arm,
    seed, action, status, run_id, output, command, eval, and error for a failed one: the runs
    `only` and `seeds` select), failed (how many of them failed).

    `eval` is the run's last evaluation from the lake's metrics (`eval/<set>/pass@k`).
    `progress`: a rich Progress advanced over the selected runs (its task has a `current`
    field: the runs in flight). `train_json`: pass `--json` to `spo train` (its last line's
    `metrics` are kept). `command_line`: how this experiment was started (the resume hint).

    Raises SpoError before anything is written (bad --jobs/--only/--seeds, an --output of
    another experiment, a run directory holding other settings, another `spo experiment`
    holding OUTPUT/.lock) or when the q0 step fails; ExperimentStopped on Ctrl-C / SIGTERM after
    the children stopped and experiment.json was written.
    """
    if jobs < 1:
        raise SpoError(f"--jobs {jobs}: must be at least 1")
    out = output.resolve()
    if out.exists() and not out.is_dir():
        raise SpoError(f"--output {output} is a file; give a directory")
    record_path = out / "experiment.json"
    if record_path.is_file():
        try:
            other = json.loads(record_path.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            other = None
        if other is not None and other != exp.name:
            raise SpoError(
                f"--output {output} holds experiment {other!r}, not {exp.name!r}: give another "
                "--output"
            )
    lake_uri = lake_uri_of(exp, out, lake)
    pairs = set(select(exp, only, seeds))
    plans = plan_runs(exp, out, lake_uri, sorted(pairs))
    chosen = [pl for pl in plans if (pl.arm, pl.seed) in pairs]
    needs = q0_needs(exp, plans)
    prepare = [
        shown_command(["--threads", "1", "estimate-q0", *need.args(lake_uri)]) for need in needs
    ]

    def summary(failed: int) -> dict[str, Any]:
        reader = open_existing_lake(lake_uri)
        runs = []
        for pl in chosen:
            if reader is not None and pl.run_id and pl.status == "completed":
                pl.eval = read_eval(reader, pl.run_id)
            runs.append(
                {
                    "arm": pl.arm,
                    "seed": pl.seed,
                    "action": pl.action,
                    "status": pl.status,
                    "run_id": pl.run_id,
                    "output": pl.rel_output,
                    "command": shown_command(train_command(pl, json_flag=train_json)),
                    "eval": pl.eval,
                    **({"error": pl.error} if pl.error else {}),
                }
            )
        return {
            "name": exp.name,
            "output": str(out),
            "lake": lake_uri,
            "dry_run": dry_run,
            "prepare": prepare,
            "runs": runs,
            "failed": failed,
        }

    if dry_run:
        return summary(0)

    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "a+")  # noqa: SIM115 - held for the whole experiment
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SpoError(
            f"--output {output} is in use by another spo experiment (it holds {out / '.lock'})"
        ) from None
    try:
        runner = _Runner(exp, out, lake_uri, plans, jobs, train_json, say, progress)
        runner.resume_hint = command_line or f"spo experiment {exp.config_file} --output {out}"
        failed = runner.run(chosen, needs)
    finally:
        lock.close()
    return summary(failed)


class _Runner:
    """The part of `run_experiment` that writes: files, the prepare step, the children."""

    def __init__(
        self,
        exp: Experiment,
        out: Path,
        lake_uri: str,
        plans: list[RunPlan],
        jobs: int,
        train_json: bool,
        say: Callable[[str], None],
        progress: Any,
    ) -> None:
        self.exp, self.out, self.lake_uri, self.plans = exp, out, lake_uri, plans
        self.jobs, self.train_json, self.say, self.progress = jobs, train_json, say, progress
        self.resume_hint = ""
        self.task: Any = None
        self.running: list[_Child] = []

    def write_record(self) -> None:
        record = experiment_record(self.exp, self.plans, self.lake_uri)
        write_atomic(self.out / "experiment.json", json.dumps(record, indent=2) + "\n")

    def stopped(
        self, procs: list[subprocess.Popen], stopped_plans: list[RunPlan], what: str
    ) -> ExperimentStopped:
        """Stop the children, record their (interrupted) statuses; the exception to raise."""
        from spo_store.stopping import STOP_SIGNALS

        runs = what == "the runs"
        kept = (
            "stopped runs keep their checkpoints, none was marked completed"
            if runs
            else "estimates committed so far are kept, no run was started"
        )
        stop_children(procs, self.say, "run(s): each saves a checkpoint" if runs else "q0 estimate")
        reader = open_existing_lake(self.lake_uri)
        for pl in stopped_plans:
            pl.run_id = run_id_in(pl.output) or pl.run_id
        statuses = lake_statuses(reader, [pl.run_id for pl in stopped_plans if pl.run_id])
        for pl in stopped_plans:
            pl.status = statuses.get(pl.run_id or "", pl.status)
        self.write_record()
        signum = signal.SIGTERM if signal.SIGTERM in STOP_SIGNALS else signal.SIGINT
        how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        return ExperimentStopped(
            signum,
            f"{how} during {what}; {kept}: rerun the same command to resume: {self.resume_hint}",
        )

    def empty_pool_line(self, lk: Lake, need: Q0Need) -> str:
        """One line: `[prepare]` selects no problem of this lake (before any q0 sample or run:
        the q0 step would add nothing and every run would train on nothing)."""
        from spo_store.selection import describe_splits, splits_present

        where = self.exp.q0_where
        shown = (
            ""
            if where is None
            else repr(where)
            if len(where) <= 300
            else (f"{where[:300]!r}... ({len(where)} chars)")
        )
        what = f"q0_where {shown} matches no" if where is not None else "there is no"
        kind = "" if need.include_unreliable else "reliably judged "
        return (
            f"{self.exp.config_file} [prepare]: {what} {kind}{need.split!r} problem of lake "
            f"{self.lake_uri} (splits present: {describe_splits(splits_present(lk))}): the q0 "
            "pool is empty, so no run was started; change q0_where or --lake"
        )

    def prepare(self, needs: list[Q0Need]) -> None:
        """Problems into an empty lake, then each missing q0 estimate (a child process)."""
        from spo_train.embedded.defaults import ensure_problems

        try:
            lk = Lake.open(self.lake_uri)
            ensure_problems(lk, say=self.say)
            for i, need in enumerate(needs):
                if not q0_pool_size(lk, need):
                    raise SpoError(self.empty_pool_line(lk, need))
                missing = q0_missing(lk, need)
                args = ["--threads", "1", "estimate-q0", *need.args(self.lake_uri)]
                rule = f">= {need.samples} samples" + (
                    f" or >= {need.stop_successes} successes"
                    if need.stopping == "sequential"
                    else ""
                )
                if not missing:
                    self.say(
                        f"q0: the first {need.problems} {need.split} problems of the q0 pool have "
                        f"estimates with {rule} (max_new_tokens {need.max_new_tokens})"
                    )
                    continue
                log = self.out / "prepare" / f"q0-{i}.log"
                self.say(
                    f"q0: estimating {missing} {need.split} problems until {rule} "
                    f"(max_new_tokens {need.max_new_tokens}); log {log}"
                )
                proc, start = _start(args, log, "prepare")
                try:
                    while proc.poll() is None:
                        time.sleep(0.2)
                except KeyboardInterrupt:
                    raise self.stopped([proc], [], "the q0 estimates") from None
                if proc.returncode != 0:
                    raise SpoError(
                        f"q0 estimate failed (exit {proc.returncode}): "
                        f"{last_error_line(log, start)} (log {log}; by hand: {shown_command(args)})"
                    )
        except KeyboardInterrupt:
            raise self.stopped([], [], "the lake's preparation") from None

    def run(self, chosen: list[RunPlan], needs: list[Q0Need]) -> int:
        """Prepare, run every chosen run not done; the number that failed."""
        write_run_files(self.exp, self.plans, self.out)
        (self.out / "experiment.toml").write_bytes(self.exp.config_file.read_bytes())
        self.write_record()
        todo = [pl for pl in chosen if pl.action != "skip"]
        done = [pl for pl in chosen if pl.action == "skip"]
        if done:
            self.say(f"{len(done)} run(s) already completed at their steps: skipped")
        if not todo:
            return 0
        self.prepare(needs)
        if self.progress is not None:
            self.task = self.progress.add_task(
                "runs", total=len(chosen), completed=len(done), current=""
            )
        queue = list(todo)
        failed: list[RunPlan] = []
        try:
            while queue or self.running:
                while queue and len(self.running) < self.jobs:
                    pl = queue.pop(0)
                    args = train_command(pl, json_flag=self.train_json)
                    proc, start = _start(args, pl.log_path, f"{pl.action} {pl.rel_output}")
                    self.running.append(_Child(pl, proc, start, time.monotonic()))
                    self.show_current()
                time.sleep(0.2)
                for child in [c for c in self.running if c.proc.poll() is not None]:
                    self.running.remove(child)
                    if not self.finish(child):
                        failed.append(child.plan)
                    self.show_current()
        except KeyboardInterrupt:
            raise self.stopped(
                [c.proc for c in self.running], [c.plan for c in self.running], "the runs"
            ) from None
        return len(failed)

    def show_current(self) -> None:
        if self.progress is not None and self.task is not None:
            now = ", ".join(f"{c.plan.arm} seed {c.plan.seed}" for c in self.running)
            self.progress.update(self.task, current=now)

    def finish(self, child: _Child) -> bool:
        """Record a child that ended (status, eval, error); whether it completed."""
        pl, rc = child.plan, child.proc.returncode
        pl.run_id = run_id_in(pl.output) or pl.run_id
        result = last_json_line(pl.log_path)
        if result is not None and result.get("run_id"):
            pl.run_id = result["run_id"]
            pl.metrics = result.get("metrics") or {}
        reader = open_existing_lake(self.lake_uri)
        status = lake_statuses(reader, [pl.run_id] if pl.run_id else []).get(pl.run_id or "")
        ok = rc == 0 and status == "completed"
        if ok:
            pl.status, pl.error = "completed", None
            pl.eval = read_eval(reader, pl.run_id) if reader is not None and pl.run_id else {}
        else:
            # a refusal before the run was recorded leaves the lake status of an earlier run
            pl.status = status if status in ("failed", "interrupted") else "failed"
            pl.error = last_error_line(pl.log_path, child.log_start) or f"exit {rc}"
        minutes, seconds = divmod(int(time.monotonic() - child.started), 60)
        shown = " ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in sorted(pl.eval.items()))
        self.say(
            f"{pl.arm} seed {pl.seed}: {pl.status} in {minutes}m{seconds:02d}s"
            + (f" ({shown})" if ok and shown else "")
            + (f": {pl.error}" if not ok else "")
            + f"; log {pl.log_path}"
        )
        self.write_record()
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
        return ok
