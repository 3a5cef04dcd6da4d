"""The guard that leaves no Ray process behind a command, even after `kill -9` of it.

A local Ray started by `ray.init` survives its driver's SIGKILL in part (the dashboard and
runtime-env agents were still running 30 s after the driver died, measured with Ray 2.60).
`spo_train.rollout_workers.ray_session` therefore marks every process of its Ray with an
environment variable (`SPO_RAY_SESSION=<token>`, inherited by the raylet, the workers and
their sandboxes) and starts this guard in its own session, holding the read end of a pipe
whose write end only the command holds. When the command ends, however it ends, the pipe
reaches EOF and the guard kills every process carrying the token and every descendant of
one (Ray's agents get an environment of their own, without the token), SIGTERM, then SIGKILL.
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


def _children() -> dict[int, list[int]]:
    """ppid -> child pids, from /proc/<pid>/stat (the command name may hold spaces and
    parentheses: the fields after the last ')' are read)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def session_pids(token: str, known: set[int] | None = None) -> list[int]:
    """The marked processes, those of `known` still alive, and every descendant of them: Ray
    starts its dashboard and runtime-env agents with an environment of their own (no mark),
    as children of the raylet."""
    found = set(marked_pids(token)) | {p for p in (known or set()) if _alive(p)}
    kids, stack = _children(), list(found)
    while stack:
        for child in kids.get(stack.pop(), []):
            if child not in found and child != os.getpid():
                found.add(child)
                stack.append(child)
    return sorted(found)


def sweep(token: str, grace_s: float = 2.0) -> int:
    """SIGTERM every process of the session (marked, and their descendants), SIGKILL what is
    left after `grace_s`; returns how many were found."""
    pids = session_pids(token)
    known = set(pids)  # kept: a child whose parent died is re-parented and loses the link
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_pids(token, known):
        time.sleep(0.1)
    for _ in range(3):  # a process may have been spawning a child meanwhile
        left = session_pids(token, known)
        if not left:
            break
        known.update(left)
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
