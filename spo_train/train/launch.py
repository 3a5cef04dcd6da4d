"""`spo train --nproc N`: run the same command as N processes on this machine, with the
variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and end them
all when one fails (`spo_train.train.distributed` is what each process does; docs/distributed.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from spo_store.errors import SpoError

# Seconds the other ranks get to end cleanly after one failed, before SIGKILL.
GRACE_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_stale_run(output: Path, lake_uri: str | None) -> None:
    """After the group ended badly: a run record rank 0 could not end (SIGKILL) is ended
    `failed`, so no run stays `running` with no process behind it."""
    from spo_store.lake import Lake, sql_quote

    try:
        run_id = json.loads((output / "run.json").read_text())["run_id"]
        lake = Lake.open(lake_uri, create=False)
        rows = lake.sql_arrow(
            f"SELECT status FROM runs WHERE run_id = {sql_quote(run_id)}"
        ).to_pylist()
        if rows and rows[0]["status"] == "running":
            lake.end_run(run_id, "failed")
    except (OSError, KeyError, ValueError, SpoError):
        return  # no run recorded yet, or nothing readable: nothing to end


def launch(nproc: int, argv: list[str], *, output: Path, lake_uri: str | None) -> int:
    """Run `spo <argv>` as `nproc` processes on this machine (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT set as torchrun sets them) and wait for all of them.

    One exiting non-zero ends the others (SIGTERM, SIGKILL after `GRACE_S`); Ctrl-C / SIGTERM
    to this process is passed on the same way. Returns rank 0's exit code, or the first failed
    rank's when rank 0 succeeded (never 0 when any rank failed)."""
    port = _free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "spo_cli.main", *argv], env=env))
    interrupted: int | None = None
    first_bad: tuple[int, int] | None = None  # (rank, exit code) of the first to fail
    try:
        while first_bad is None and any(p.poll() is None for p in procs):
            for rank, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    first_bad = (rank, p.returncode)
                    break
            time.sleep(0.2)
    except KeyboardInterrupt:
        from spo_store.stopping import STOP_SIGNALS

        interrupted = signal.SIGTERM if signal.SIGTERM in STOP_SIGNALS else signal.SIGINT
    # Ctrl-C reaches the whole foreground process group: the ranks stop on their own (rank 0
    # checkpoints) and a second signal would cut that short, so they get the grace first.
    _stop_all(procs, interrupted or signal.SIGTERM, wait_first=interrupted == signal.SIGINT)
    codes = [p.returncode for p in procs]
    if first_bad is None:
        first_bad = next(((r, c) for r, c in enumerate(codes) if c != 0), None)
    if first_bad is not None:
        _end_stale_run(output, lake_uri)
    if interrupted is not None:
        return quiet_stop(codes[0] if codes[0] else 128 + interrupted)
    if first_bad is None:
        return 0
    rank, code = first_bad
    if code < 0 or rank != 0:  # rank 0 says its own error; a signal or another rank does not
        what = f"signal {-code}" if code < 0 else f"exit code {code}"
        print(
            f"error: training process rank {rank} ended with {what}; the other ranks were stopped",
            file=sys.stderr,
        )
    return 128 - code if code < 0 else code


def quiet_stop(code: int) -> int:
    """After a stop signal that rank 0 has already reported (how to resume): forget the signal,
    so this process (the launcher, a follower) exits with `code` without a second report."""
    from spo_store.stopping import STOP_SIGNALS

    STOP_SIGNALS.clear()
    return code


def _stop_all(procs: list[subprocess.Popen], sig: int, *, wait_first: bool = False) -> None:
    """Signal every child still running (after `GRACE_S` when `wait_first`), wait up to
    `GRACE_S`, then SIGKILL what is left."""
    if wait_first:
        _wait_all(procs, GRACE_S)
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    _wait_all(procs, GRACE_S)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _wait_all(procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return
