"""The guard that leaves no Ray process behind a command, even after `kill -9` of it.

A local Ray started by `ray.init` survives its driver's SIGKILL in part (the dashboard and
runtime-env agents were still running 30 s after the driver died, measured with Ray 2.60).
`spo_train.rollouts.workers.ray_session` therefore marks every process of its Ray with an
environment variable (`SPO_RAY_SESSION=<token>`, inherited by the raylet, the workers and
their sandboxes) and starts this guard in its own session, holding the read end of a pipe
whose write end only the command holds.

While the command runs, the guard looks every `POLL_S` for the marked processes and every
descendant of one, and remembers each by (pid, start time): Ray's agents rewrite the memory
that /proc/PID/environ reads when they set their process title, so 1 run in 4 they showed
no mark, and once the raylet has died they are no longer its descendants either (both
seen with Ray 2.60). When the command ends, however it ends, the pipe reaches EOF and the
guard kills what it remembers (same pid *and* start time: a reused pid is left alone), what
is marked now, and their descendants: SIGTERM, then SIGKILL. Linux only (/proc).

Run as `python -m spo_train.rollouts.ray_reaper TOKEN FD`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

VAR = "SPO_RAY_SESSION"
POLL_S = 0.5  # how often the running session is looked over (a /proc scan: a few ms)


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


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks since boot) of every process but zombies
    (dead already: nothing to kill), from /proc/<pid>/stat (the command name may hold spaces
    and parentheses: the fields after the last ')' are read)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 19 and fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def session_pids(token: str, known: dict[int, int] | None = None) -> dict[int, int]:
    """pid -> start time of the session's live processes: the marked ones, those of `known`
    (pid -> start time) still running with the same start time, and every descendant of
    either (Ray's agents may show no mark: see the module's docstring)."""
    table = _proc_table()
    me = os.getpid()
    found = {p: table[p][1] for p in marked_pids(token) if p in table}
    found.update({p: t for p, t in (known or {}).items() if p in table and table[p][1] == t})
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _start) in table.items():
        kids.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in kids.get(stack.pop(), []):
            if child not in found and child != me:
                found[child] = table[child][1]
                stack.append(child)
    return found


def _signal_all(pids: dict[int, int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def sweep(token: str, known: dict[int, int] | None = None, grace_s: float = 2.0) -> int:
    """SIGTERM every process of the session (`session_pids`), SIGKILL what is left after
    `grace_s`; returns how many were found."""
    known = session_pids(token, known)  # kept: a child whose parent died loses the link
    found = len(known)
    _signal_all(known, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_pids(token, known):
        time.sleep(0.1)
    for _ in range(3):  # a process may have been spawning a child meanwhile
        left = session_pids(token, known)
        if not left:
            break
        known.update(left)
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.2)
    return found


def watch(token: str, fd: int, poll_s: float = POLL_S) -> dict[int, int]:
    """Wait for EOF on `fd`, remembering the session's processes every `poll_s`; returns
    them (pid -> start time), those gone meanwhile dropped."""
    import select

    known: dict[int, int] = {}
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], poll_s)
            if ready and not os.read(fd, 1024):
                return known
        except InterruptedError:
            continue
        except OSError:
            return known
        known = session_pids(token, known)


def main() -> None:
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        # started only by rollouts.workers; a person running it by hand gets the usage line
        print(
            "usage: python -m spo_train.rollouts.ray_reaper TOKEN FD (started by spo's Ray "
            "rollout workers, not by hand)",
            file=sys.stderr,
        )
        sys.exit(2)
    token, fd = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the command's
    sweep(token, watch(token, fd))


if __name__ == "__main__":
    main()
