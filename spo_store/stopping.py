"""Whether this process was asked to stop (SIGTERM, Ctrl-C): the one record every layer reads.

The CLI's signal handler appends the signal here and raises KeyboardInterrupt. Native code
running at that moment may turn the interrupt into an exception of its own (DuckDB raises
`RuntimeError: Query interrupted`), so "was this run stopped from outside?" is answered by this
record, not by the exception's type.
"""

from __future__ import annotations

STOP_SIGNALS: list[int] = []


def stop_requested() -> bool:
    """True once a stop signal has been received by this process."""
    return bool(STOP_SIGNALS)
