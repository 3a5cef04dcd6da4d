"""Errors every layer raises for bad input; the CLI prints them as one line and exits non-zero."""

import errno
import re


class SpoError(Exception):
    """A user-facing error: the message names what is wrong and where, in one line.

    `exit_code`: the CLI's exit status for it (2, a usage error, unless a command documents
    another, e.g. 1 for `spo train --algo ppo` asked for offline data)."""

    def __init__(self, message: str = "", *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_OS_ERRORS = {
    errno.EROFS: ("read-only file system", "this command writes there"),
    errno.EACCES: ("permission denied", "check the permissions of that path"),
    errno.EPERM: ("operation not permitted", "check the permissions of that path"),
    errno.ENOSPC: ("no space left on device", "free some space and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and rerun"),
    errno.EIO: ("input/output error", "the disk failed a read or write"),
    errno.EMFILE: ("too many open files", "raise `ulimit -n` and rerun"),
}
_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")
_PATH = re.compile(r"(?:at path|dir|file|path)\s+\"?(/[^\"\s,]+)")


def environment_error(exc: BaseException) -> str | None:
    """One line for a failure the user's environment caused, else None (a bug).

    Covers OSError (and Lance's errors, which carry `(os error N)`) for a read-only or full
    disk, missing permissions, an I/O error; and Lance/Arrow read errors of damaged data
    files (truncated, corrupt), which point to `spo lake verify`. Used by the CLI's last
    handler (`spo_cli.main`), so every command maps them the same way."""
    text = " ".join(str(exc).split())
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        m = re.search(r"\(os error (\d+)\)|\[errno (\d+)\]", text, re.I)
        code = int(m.group(1) or m.group(2)) if m else None
    if code is None:  # DuckDB and Arrow name the error only in words
        low = text.lower()
        code = next((c for c, (r, _) in _OS_ERRORS.items() if r in low), None)
    if code in _OS_ERRORS:
        reason, hint = _OS_ERRORS[code]
        path = getattr(exc, "filename", None)
        if path is None:
            m = _PATH.search(text)
            path = m.group(1).rstrip(":.") if m else None
        at = f" at {path}" if path else ""
        if hint == "this command writes there":
            hint = (
                "this command writes there: give a writable --lake or output folder (a "
                "read-only lake can still be read: spo sql, spo lake versions, spo lake verify)"
            )
        elif hint == "free some space and rerun":
            hint += " (what was committed is kept; an unfinished commit is invisible)"
        return f"{reason}{at}: {hint}"
    if re.search(r"LanceError\((IO|Corrupt\w*)\)", text):
        detail = _RUST_LOCATION.sub("", text)
        detail = detail.replace("External error: ", "").replace(
            "Generic LocalFileSystem error: ", ""
        )
        return (
            f"the lake's data files cannot be read ({detail[:200]}): the lake may be damaged; "
            "run `spo lake verify` and see docs/lake.md, 'When the lake is damaged'"
        )
    return None
