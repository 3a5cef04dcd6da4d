"""Errors every layer raises for bad input; the CLI prints them as one line and exits non-zero."""


class SpoError(Exception):
    """A user-facing error: the message names what is wrong and where, in one line.

    `exit_code`: the CLI's exit status for it (2, a usage error, unless a command documents
    another, e.g. 1 for `spo train --algo ppo` asked for offline data)."""

    def __init__(self, message: str = "", *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
