"""Errors every layer raises for bad input; the CLI prints them as one line and exits non-zero."""


class SpoError(Exception):
    """A user-facing error: the message names what is wrong and where, in one line."""
