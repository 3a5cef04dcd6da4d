"""Whether this process was asked to stop (SIGTERM, Ctrl-C): the one record every layer reads.

The CLI's signal handler appends the signal here and raises KeyboardInterrupt. Native code
running at that moment may turn the interrupt into an exception of its own (DuckDB raises
`RuntimeError: Query interrupted`), so "was this run stopped from outside?" is answered by this
record, not by the exception's type.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

STOP_SIGNALS: list[int] = []
_DEFERRING: list[bool] = []


def stop_requested() -> bool:
    """True once a stop signal has been received by this process."""
    return bool(STOP_SIGNALS)


def deferring() -> bool:
    """True inside `deferred_stop()`: the CLI's handler records a first signal without raising."""
    return bool(_DEFERRING)


@contextlib.contextmanager
def deferred_stop(enabled: bool = True) -> Iterator[None]:
    """Finish the block before stopping: a stop signal that arrives inside it is recorded (the
    CLI's handler does not raise while `deferring()`), and KeyboardInterrupt is raised when the
    block ends. A second signal stops at once (the handler raises). Used around a training
    step's update, logging and checkpoint, so Ctrl-C stops at a step boundary with the step
    saved instead of losing the step in flight."""
    if not enabled:
        yield
        return
    before = len(STOP_SIGNALS)
    _DEFERRING.append(True)
    try:
        yield
    finally:
        _DEFERRING.pop()
    if len(STOP_SIGNALS) > before:
        raise KeyboardInterrupt
