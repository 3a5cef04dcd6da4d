"""Selecting problems (the one place of that SQL), and why a command selected none.

`select_problems` / `count_problems` read problems by a predicate over `p` (problems joined
with the q0 estimate of one model and sampler), `split_predicate` and `RELIABLE` build the
usual ones, `judge_issue_counts` / `left_out_line` say which problems the judge cannot handle
were left out, `check_where` checks a user's `--where` against a lake (`check_where_binds` without one).

Commands select problems by split (`--split`, `--eval-split`) or by an SQL predicate over `p`
(`--where`). A selection that matches nothing must never end as "0 problems" and exit 0, nor
as a traceback: `check_split` refuses a split the lake has no problem in (a mistyped
`--split tran` included) before any model is loaded, and `explain_empty` says why a `--where`
(or a split) selected nothing. Both name the splits present with their problem counts and how
to move problems between splits (`spo lake set-split`, or `--split` on a re-ingest).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote
from spo_store.q0_estimates import Q0_VIEW_COLUMNS, problems_with_q0_sql

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


def explain_empty(
    lake: Lake, where: str | None = None, split: str | None = None, flag: str = "--where"
) -> str:
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
        # a generated predicate can be thousands of ids long: the line stays readable
        shown = repr(where) if len(where) <= 300 else f"{where[:300]!r}... ({len(where)} chars)"
        return (
            f"no problem matches {flag} {shown} ({sum(counts.values())} problems in the "
            f"lake; splits present: {present})"
        )
    return f"no problem selected ({sum(counts.values())} in the lake; splits present: {present})"


# ----------------------------------------------------------------------------- selecting
def select_problems(
    lake: Lake,
    where: str,
    columns: Sequence[str],
    *,
    q0_of: tuple[str, str] | None = None,
    beta: float | None = None,
) -> list[dict[str, Any]]:
    """Problems matching a SQL predicate over `p`, ordered by id: `columns` of `problems`
    (`spo_train.rollouts.sampling.PROBLEM_COLUMNS`: what prompting and the judge read) plus the q0 ones.

    `p` is `problems` joined (LEFT) with the q0 estimate of `q0_of = (ref_model_id,
    sampler_key)`: rows gain `q0`, `q0_samples`, `q0_successes`, `q0_beta`, `q0_estimate_id`
    (NULL without an estimate), and `beta` recomputes `q0` at that beta from the counts. Without
    `q0_of` the q0 columns are NULL (a q0 always belongs to a model and sampler).
    """
    ref, key = q0_of if q0_of is not None else (None, None)
    cols = ", ".join(f"p.{c}" for c in dict.fromkeys([*columns, *Q0_VIEW_COLUMNS]))
    view = problems_with_q0_sql(ref, key, beta)
    return lake.sql_arrow(
        f"SELECT {cols} FROM ({view}) p WHERE {where} ORDER BY p.problem_id"
    ).to_pylist()


def count_problems(lake: Lake, where: str, *, q0_of: tuple[str, str] | None = None) -> int:
    """How many problems `select_problems(lake, where, ..., q0_of=q0_of)` would return."""
    ref, key = q0_of if q0_of is not None else (None, None)
    view = problems_with_q0_sql(ref, key)
    return int(
        lake.sql_arrow(f"SELECT count(*) FROM ({view}) p WHERE {where}").column(0)[0].as_py()
    )


def split_predicate(split: str) -> str:
    """The predicate over `p` of the problems in `split`."""
    return f"p.split = {sql_quote(split)}"


RELIABLE = "p.judge_issue IS NULL"
"""Problems the judge handles reliably (`problems.judge_issue` NULL)."""


def judge_issue_counts(
    lake: Lake, where: str, *, q0_of: tuple[str, str] | None = None
) -> dict[str, int]:
    """Problems matching `where` (over `p`, as in `select_problems`) that have a `judge_issue`,
    counted per reason (the text before ':'), most frequent first."""
    ref, key = q0_of if q0_of is not None else (None, None)
    rows = lake.sql_arrow(
        "SELECT trim(split_part(p.judge_issue, ':', 1)) AS reason, count(*) AS n "
        f"FROM ({problems_with_q0_sql(ref, key)}) p "
        f"WHERE ({where}) AND p.judge_issue IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1"
    ).to_pylist()
    return {r["reason"]: int(r["n"]) for r in rows}


def left_out_line(counts: dict[str, int], what: str, flag: str = "--include-unreliable") -> str:
    """One line naming how many problems were left out for a judge_issue and why (and the flag
    that keeps them, when `flag`), or '' when none were."""
    if not counts:
        return ""
    reasons = ", ".join(f"{n} {r}" for r, n in counts.items())
    total = sum(counts.values())
    line = (
        f"{what}: left out {total} problem{'s' if total != 1 else ''} the judge cannot handle "
        f"reliably ({reasons})"
    )
    return f"{line}; {flag} keeps them" if flag else line


def check_where_binds(where: str, what: str) -> None:
    """`where` (SQL over `p`: problems with the q0 columns, as `check_where` reads them) checked
    without a lake: one self-contained boolean expression (`check_predicate`), then bound against
    empty tables of the lake's current schema (`spo_schemas`) on a connection that reads no
    file. A column, table or function that does not exist, a comparison of mismatched types,
    or an expression that is not true/false (`p.difficulty`) is one SpoError line naming `what`
    (e.g. an experiment config's file, table and key, checked at load, before its lake exists)."""
    from spo_store.predicates import check_predicate

    check_predicate(where, what)
    view = problems_with_q0_sql(None, None, None)
    check_condition_binds(where, f"FROM ({view}) p", what, "problems (alias p)")


def check_condition_binds(pred: str, source: str, what: str, over: str) -> None:
    """Bind `pred` as the WHERE of `SELECT ... {source}` on empty tables of the lake's current
    schema (`spo_schemas`), on a connection that reads no file, and check it is a true/false
    condition. Raises SpoError: `{what}: not valid SQL over {over}: <DuckDB's first line>` or
    `{what}: not a true/false condition over {over} ...`."""
    import duckdb
    from spo_schemas import TABLES, table_schema

    from spo_store.lake import DUCKDB_CONFIG

    con = duckdb.connect(config={**DUCKDB_CONFIG, "enable_external_access": "false"})
    try:
        for name in TABLES:
            con.register(name, table_schema(name).empty_table())
        con.execute(f"SELECT count(*) {source} WHERE ({pred})").fetchall()
        kind = con.execute(f"DESCRIBE SELECT ({pred}) AS keep {source}").fetchall()[0][1]
    except duckdb.Error as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        hint = [line for line in lines[1:] if line.startswith("Candidate bindings")]
        # DuckDB calls a registered table a "Values list"
        detail = re.sub(r'Values list "(\w+)"', r"table \1", "; ".join(lines[:1] + hint[:1]))
        raise SpoError(f"{what}: not valid SQL over {over}: {detail}") from None
    finally:
        con.close()
    if kind != "BOOLEAN":
        raise SpoError(
            f"{what}: not a true/false condition over {over}: it gives {kind} values "
            "(compare it, e.g. `... > 0` or `... IS NOT NULL`)"
        )


def check_where(lake: Lake, where: str, flag: str = "--where") -> None:
    """The user's --where alone, before any query built around it: invalid SQL is one line
    naming the option (`flag`; not an internal query's "near GROUP"); a predicate that matches
    no problem is `explain_empty`'s line. Both before any run is recorded."""
    view = problems_with_q0_sql(None, None, None)
    try:
        n = lake.sql_arrow(f"SELECT count(*) FROM ({view}) p WHERE ({where})")[0][0].as_py()
    except SpoError as exc:
        if not str(exc).startswith("SQL error: "):  # e.g. damaged data files: not --where's
            raise
        detail = str(exc).removeprefix("SQL error: ")
        raise SpoError(f"{flag}: not valid SQL over problems (alias p): {detail}") from None
    if not n:
        raise SpoError(explain_empty(lake, where, flag=flag))
