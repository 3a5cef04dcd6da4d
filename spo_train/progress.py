"""Progress of long commands: a rich bar on a terminal, plain periodic lines elsewhere.

Every long command (estimate-q0, eval, train, rollout, pts, demo, experiment, ingest --verify)
takes its progress display from `progress_display`, the one place that decides how progress is
shown. On a terminal it is rich's live bar. When stderr is not a terminal (CI, Slurm, a log
file) a live bar prints nothing until the end, so `PlainProgress` prints one line per task every
`SPO_PROGRESS_INTERVAL` seconds (default 30) while the task moves (when no task moved in an
interval, a line for each unfinished one, so a log never falls silent while work goes on), and
a last line when the display stops (for tasks that printed one before: a short command prints
none):

    samples: 120/400 (30%), 4.1/s, elapsed 0:00:29, ETA 0:01:08

No torch here; rich only.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

DEFAULT_INTERVAL_S = 30.0
"""Seconds between two plain progress lines of a task (`$SPO_PROGRESS_INTERVAL` overrides)."""


def interval_s() -> float:
    """The plain-line interval: `$SPO_PROGRESS_INTERVAL` seconds if a positive number, else 30."""
    try:
        value = float(os.environ.get("SPO_PROGRESS_INTERVAL", ""))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _number(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:.1f}"


def plain_line(task: Any) -> str:
    """`description: done/total (pct), rate/s, elapsed H:MM:SS, ETA H:MM:SS` of a rich task,
    plus its `rate` field (a command's own text such as the loss) when it has one."""
    parts = [f"{task.description}: {_number(task.completed)}"]
    if task.total is not None:
        parts[0] += f"/{_number(task.total)}"
        if task.total:
            parts[0] += f" ({100 * task.completed / task.total:.0f}%)"
    elapsed = task.elapsed or 0.0
    if elapsed > 0 and task.completed:
        rate = task.completed / elapsed
        parts.append(f"{rate:.2f}/s" if rate >= 0.1 else f"{elapsed / task.completed:.0f} s each")
    parts.append(f"elapsed {_clock(elapsed)}")
    if task.total is not None and not task.finished and task.completed and elapsed > 0:
        parts.append(f"ETA {_clock((task.total - task.completed) * elapsed / task.completed)}")
    shown = str(task.fields.get("rate") or task.fields.get("current") or "").strip()
    if shown and not shown.endswith("/s"):  # a rate is already there
        parts.append(shown)
    return ", ".join(parts)


class PlainProgress(Progress):
    """A rich `Progress` (same API: add_task, advance, update, tasks, start/stop, `with`) that
    draws no live bar and prints `plain_line` of each task that moved every `interval`
    seconds, and once more when it stops for each task that printed a line before."""

    def __init__(self, *columns: str | ProgressColumn, interval: float | None = None, **kw: Any):
        kw["disable"] = True  # no live display: lines are printed by the thread below
        super().__init__(*columns, **kw)
        self.interval = interval if interval is not None else interval_s()
        self._printed: dict[TaskID, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="spo-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self._report(final=True)
        super().stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._report(final=False)

    def _report(self, *, final: bool) -> None:
        with self._lock:
            tasks = [t for t in self._tasks.values() if t.visible]
        moved = [t for t in tasks if t.completed and self._printed.get(t.id) != t.completed]
        if not moved and not final:
            # Nothing moved for a whole interval (an experiment's run takes minutes, its first
            # one completes nothing for a while): a line per unfinished task says it is still
            # at work, as a terminal's bar shows its elapsed time
            for task in tasks:
                if not task.finished and task.started:
                    self.console.print(
                        plain_line(task), highlight=False, soft_wrap=True, markup=False
                    )
            return
        for task in moved:
            if final and task.id not in self._printed:
                continue  # done within one interval: the command's own result line says it
            self._printed[task.id] = task.completed
            self.console.print(plain_line(task), highlight=False, soft_wrap=True, markup=False)


def progress_display(
    console: Console | None = None,
    *,
    rate: bool = True,
    field: str = "rate",
) -> Progress:
    """The progress display of a long command, writing to `console` (default: stderr): a live
    bar (description, bar, done/total, percent, the task's `field` text, elapsed, remaining)
    on a terminal, a `PlainProgress` otherwise. Tasks take `field` (default `rate`) as a field:
    `add_task("samples", total=n, rate="")`."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        return PlainProgress(console=console)
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
    ]
    if rate:
        columns.append(TextColumn(f"{{task.fields[{field}]}}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console)


def advance_with_rate(bar: Progress, task: TaskID, unit: str, digits: int = 1):
    """A callback that advances `task` by n and shows the rate in `unit`/s (the `rate` field)
    with `digits` decimals."""

    def advance(n: int) -> None:
        bar.advance(task, n)
        t = bar.tasks[task]  # task ids are list positions (rich numbers them from 0)
        if t.elapsed:
            bar.update(task, rate=f"{t.completed / t.elapsed:.{digits}f} {unit}/s")

    return advance
