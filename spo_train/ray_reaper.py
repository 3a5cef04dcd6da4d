"""The guard that leaves no Ray process behind a command, even after `kill -9` of it.

A local Ray started by `ray.init` survives its driver's SIGKILL in part (the dashboard and
runtime-env agents were still running 30 s after the driver died, measured with Ray 2.60).
`spo_train.rollout_workers.ray_session` therefore marks every process of its Ray with an
environment variable (`SPO_RAY_SESSION=<token>`, inherited by the raylet, the workers and
their sandboxes) and starts this guard in its own session, holding the read end of a pipe
whose write end only the command holds. When the command ends, however it ends, the pipe
reaches EOF and the guard kills every process carrying the token (SIGTERM, then SIGKILL).
Linux only (/proc).

Run as `python -m spo_train.ray_reaper TOKEN FD`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

VAR = "SPO_RAY_SESSION"


def marked_pids(token: str) -> list[int]:
    """Processes of this user whose environment holds `SPO_RAY_SESSION=<token>` (not this one)."""
    needle = f"{VAR}={token}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(int(entry.name))
    return out


def sweep(token: str, grace_s: float = 2.0) -> int:
    """SIGTERM every marked process, SIGKILL what is left after `grace_s`; returns how many
    were found."""
    pids = marked_pids(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and marked_pids(token):
        time.sleep(0.1)
    for _ in range(3):  # a process may have been spawning a child meanwhile
        left = marked_pids(token)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
    return len(pids)


def main() -> None:
    token, fd = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the command's
    try:
        while os.read(fd, 1024):
            pass
    except OSError:
        pass
    sweep(token)


if __name__ == "__main__":
    main()
