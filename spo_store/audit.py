"""`spo lake audit`: which problems the judge can be trusted on, and why not for the others.

Every problem either has `judge_issue` NULL (judged reliably) or '<reason>: <detail>'
(reasons in `spo_store.problem_rules.REASON_ORDER`). `audit` counts them by reason, per
source dataset and split; `update_problems` re-derives platform, float tolerance and the
derivable judge issues of stored rows with `annotate_problem` (after a rule change or the
v1 -> v2 migration), keeping evidence the rows cannot recreate (labels_disagree from
`--verify`, unsupported_io from ingest).
"""

from __future__ import annotations

from typing import Any

from spo_store.lake import Lake, match_problems
from spo_store.problem_rules import annotate_problem, reason_of, reason_severity

# The problems columns annotate_problem reads or writes (tests are counted from num_tests).
ANNOTATE_COLUMNS = (
    "problem_id",
    "name",
    "source_dataset",
    "platform",
    "statement",
    "num_tests",
    "float_tolerance",
    "float_tolerance_source",
    "checker",
    "fn_name",
    "input_file",
    "output_file",
    "judge_issue",
    "extra",
)
ANNOTATED_FIELDS = (
    "platform",
    "float_tolerance",
    "float_tolerance_source",
    "input_file",
    "output_file",
    "judge_issue",
)


def audit(lake: Lake) -> dict[str, Any]:
    """Problems by reliability: totals, counts per reason, per (source_dataset, split).

    Returns a JSON-ready dict: `problems`, `reliable`, `flagged`, `by_reason` {reason: n},
    `float_tolerance_sources` {source: n}, `groups` [{source_dataset, split, problems,
    reliable, by_reason}], `flagged_problems` [{problem_id, name, source_dataset, split,
    platform, reason, judge_issue}] most severe reason first.
    """
    rows = lake.sql_arrow(
        "SELECT problem_id, name, source_dataset, split, platform, judge_issue, "
        "float_tolerance_source FROM problems"
    ).to_pylist()
    by_reason: dict[str, int] = {}
    tol_sources: dict[str, int] = {}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    flagged = []
    for r in rows:
        key = (r["source_dataset"] or "", r["split"] or "")
        g = groups.setdefault(
            key,
            {
                "source_dataset": key[0],
                "split": key[1],
                "problems": 0,
                "reliable": 0,
                "by_reason": {},
            },
        )
        g["problems"] += 1
        src = r["float_tolerance_source"] or "none"
        tol_sources[src] = tol_sources.get(src, 0) + 1
        reason = reason_of(r["judge_issue"])
        if reason is None:
            g["reliable"] += 1
            continue
        by_reason[reason] = by_reason.get(reason, 0) + 1
        g["by_reason"][reason] = g["by_reason"].get(reason, 0) + 1
        flagged.append(
            {
                **{
                    k: r[k]
                    for k in (
                        "problem_id",
                        "name",
                        "source_dataset",
                        "split",
                        "platform",
                        "judge_issue",
                    )
                },
                "reason": reason,
            }
        )
    flagged.sort(key=lambda f: (reason_severity(f["reason"]), f["source_dataset"] or "", f["name"]))
    return {
        "problems": len(rows),
        "reliable": len(rows) - len(flagged),
        "flagged": len(flagged),
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: reason_severity(kv[0]))),
        "float_tolerance_sources": dict(sorted(tol_sources.items())),
        "groups": [groups[k] for k in sorted(groups)],
        "flagged_problems": flagged,
    }


def update_problems(lake: Lake) -> dict[str, Any]:
    """Re-annotate every stored problem (`annotate_problem`); rows that change are updated.

    Returns {"checked": n, "updated": m, "changes": {field: count}}. One commit.
    """
    ds = lake.dataset("problems")
    rows = ds.to_table(columns=list(ANNOTATE_COLUMNS)).to_pylist()
    updates = []
    changes: dict[str, int] = {}
    for row in rows:
        new = annotate_problem(row)
        diff = {k: new.get(k) for k in ANNOTATED_FIELDS if new.get(k) != row.get(k)}
        if diff:
            for k in diff:
                changes[k] = changes.get(k, 0) + 1
            updates.append({"problem_id": row["problem_id"], **diff})
    if updates:
        lake.update_rows("problems", "problem_id", updates)
    return {"checked": len(rows), "updated": len(updates), "changes": changes}


SPLITS = ("train", "valid", "test", "unspecified")


def set_split(
    lake: Lake,
    split: str,
    *,
    problems: list[str] | None = None,
    from_split: str | None = None,
    source_dataset: str | None = None,
) -> int:
    """Move the selected problems to `split`; returns how many changed (one commit).

    Selectors combine (AND): `problems` (ids or names), `from_split`, `source_dataset`; at least
    one is required (pass `from_split` of every split to move all). Raises SpoError for a split
    not in SPLITS, a problem name or id not in the lake, or a selector that matches nothing
    (naming what exists).
    """
    from spo_store.errors import SpoError

    if split not in SPLITS:
        raise SpoError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if not problems and from_split is None and source_dataset is None:
        raise SpoError("name the problems to move: --problem, --from-split or --source-dataset")
    rows = lake.sql_arrow(
        "SELECT problem_id, name, split, source_dataset FROM problems"
    ).to_pylist()
    chosen = rows
    if problems:
        ids: set[str] = set()
        for want in problems:
            found = match_problems(rows, want)
            if not found:
                raise SpoError(f"no problem with id or name {want!r} in lake {lake.uri}")
            exact = found[0]["problem_id"] == want or found[0]["name"] == want
            if len({r["problem_id"] for r in found}) > 1 and not exact:
                names = "; ".join(sorted(f"{r['problem_id']} ({r['name']})" for r in found))
                raise SpoError(f"{want!r} matches several problems: {names}; use an id")
            ids |= {r["problem_id"] for r in found}
        chosen = [r for r in chosen if r["problem_id"] in ids]
    for col, value in (("split", from_split), ("source_dataset", source_dataset)):
        if value is None:
            continue
        present = sorted({r[col] or "" for r in rows})
        if value not in present:
            raise SpoError(f"no problem has {col} {value!r}; present: {', '.join(present)}")
        chosen = [r for r in chosen if r[col] == value]
    updates = [
        {"problem_id": r["problem_id"], "split": split} for r in chosen if r["split"] != split
    ]
    if updates:
        lake.update_rows("problems", "problem_id", updates)
    return len(updates)
