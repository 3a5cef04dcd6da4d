"""Why a command selected no problems, in one line naming what the lake holds.

Commands select problems by split (`--split`, `--eval-split`) or by an SQL predicate over `p`
(`--where`). A selection that matches nothing must never end as "0 problems" and exit 0, nor
as a traceback: `check_split` refuses a split the lake has no problem in (a mistyped
`--split tran` included) before any model is loaded, and `explain_empty` says why a `--where`
(or a split) selected nothing. Both name the splits present with their problem counts and how
to move problems between splits (`spo lake set-split`, or `--split` on a re-ingest).
"""

from __future__ import annotations

import re

from spo_store.errors import SpoError
from spo_store.lake import Lake

SPLITS = ("train", "valid", "test", "unspecified")
"""The splits `problems.split` may hold (CodeContests' train/valid/test, else unspecified)."""

_SPLIT_PREDICATE = re.compile(r"\(?p\.split = '((?:[^']|'')*)'\)?")


def splits_present(lake: Lake) -> dict[str, int]:
    """Problems per split in the lake, e.g. {'train': 12, 'unspecified': 20}, ordered by name."""
    rows = lake.sql_arrow(
        "SELECT coalesce(split, 'NULL') AS split, count(*) AS n FROM problems GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    return {r["split"]: int(r["n"]) for r in rows}


def describe_splits(counts: dict[str, int]) -> str:
    """`'test (5), train (12)'`, or a hint to ingest when the lake has no problem."""
    if not counts:
        return "none (the lake has no problems: spo ingest human-solutions FILE)"
    return ", ".join(f"{s} ({n})" for s, n in counts.items())


def _move_hint(split: str, counts: dict[str, int]) -> str:
    if split not in SPLITS or not counts:
        return ""
    src = next(iter(counts)) if len(counts) == 1 else "SPLIT"
    return (
        f"; move problems with `spo lake set-split {split} --from-split {src}` or re-ingest "
        f"with --split {split}"
    )


def check_split(lake: Lake, split: str, option: str = "--split") -> None:
    """Raise SpoError unless the lake has at least one problem in `split`.

    The message names the option, says whether `split` is not a split at all (a typo such as
    'tran') or simply holds no problem, and lists the splits present with their counts.
    """
    counts = splits_present(lake)
    if counts.get(split):
        return
    present = describe_splits(counts)
    if split not in SPLITS:
        raise SpoError(
            f"{option} {split!r} is not a split (one of {', '.join(SPLITS)}); "
            f"splits present: {present}"
        )
    raise SpoError(
        f"{option} {split}: no problem in split {split!r}; splits present: {present}"
        + _move_hint(split, counts)
    )


def split_of_predicate(where: str) -> str | None:
    """The split of a predicate `p.split = '<split>'` as the commands build it, else None."""
    m = _SPLIT_PREDICATE.fullmatch(where.strip())
    return m.group(1).replace("''", "'") if m else None


def explain_empty(lake: Lake, where: str | None = None, split: str | None = None) -> str:
    """One line saying why a selection matched no problem, naming what exists.

    `split`: the split selected (or recovered from a `p.split = '...'` predicate); `where`: the
    user's SQL predicate over `p`. Lists the splits present with their counts.
    """
    counts = splits_present(lake)
    present = describe_splits(counts)
    split = split or (split_of_predicate(where) if where else None)
    if split is not None and not counts.get(split):
        if split not in SPLITS:
            return (
                f"{split!r} is not a split (one of {', '.join(SPLITS)}); splits present: {present}"
            )
        return f"no problem in split {split!r}; splits present: {present}" + _move_hint(
            split, counts
        )
    if where:
        return (
            f"no problem matches --where {where!r} ({sum(counts.values())} problems in the "
            f"lake; splits present: {present})"
        )
    return f"no problem selected ({sum(counts.values())} in the lake; splits present: {present})"
