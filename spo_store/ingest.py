"""Ingest of human solutions: DeepMind CodeContests Parquet, TACO (Parquet or JSONL), JSONL.

The readers (`spo_store.adapters`) yield `ParsedProblem`s in one normal form;
`ingest_human_solutions` writes them (docs/ingest.md):
- problems are keyed by a stable id (hash of dataset and name) and annotated by
  `spo_store.problem_rules.annotate_problem` (platform, float tolerance and its origin,
  `judge_issue`);
- solutions become `trajectories` rows with `source='human'`, keyed by
  traj_id = 'h-' + content_hash[:24], the sha256 of problem_id \\0 the response normalised
  (`adapters.normalise_response`: line ends, trailing whitespace, BOM), so copies of one
  attempt are one solution and re-ingesting the same data adds nothing; a lake written before
  normalisation (keys of the text as given) is matched on its rows' normalised text too;
  empty and whitespace-only solutions and repeats are skipped;
- every keyed write goes through `Lake.insert_new`, so concurrent ingests of the same data
  store each problem and each distinct solution once;
- a solution's reward is its dataset label (0 correct, -1 incorrect), except on a problem with
  no tests, where nothing can be judged: reward NULL (judge_status 'no_tests'). With a
  verifier, the judge's verdict replaces the label: 0 passed, -1 failed, NULL not judged.
All inputs are parsed before anything is written, so bad input leaves the lake unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store import jsontext
from spo_store.adapters import (
    CC_LANGUAGES,
    ParsedProblem,
    Solution,
    content_hash,
    detect_format,
    expand_paths,
    parse_file,
)
from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote, utc_now
from spo_store.problem_rules import annotate_problem, reason_of, reason_severity


@dataclass(frozen=True)
class Judged:
    """A verifier's answer for one solution: the reward (None = not judged) and the verdict."""

    reward: float | None
    status: str
    passed_tests: int = 0
    total_tests: int = 0


# Judges (problem row, solution) pairs; the row has the problems columns of schema v2.
Verifier = Callable[[list[tuple[dict[str, Any], Solution]]], list[Judged]]


@dataclass
class IngestReport:
    run_id: str = ""
    files: int = 0
    problems_seen: int = 0
    problems_added: int = 0
    solutions_seen: int = 0
    solutions_added: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)  # problems seen per split
    flagged: dict[str, int] = field(default_factory=dict)  # problems flagged, per reason
    flags: list[tuple[str, str]] = field(default_factory=list)  # (problem name, judge_issue)
    # Problems of these inputs already in the lake with a judge_issue (a re-ingest): id ->
    # (name, judge_issue); reported with the new flags so a re-ingest does not say "none".
    stored_flags: dict[str, tuple[str, str]] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)  # judge statuses under verify
    verified: bool = False  # a verifier judged this ingest
    split_changed: int = 0  # stored problems moved to the explicit --split
    split_option: str | None = None  # the --split given, None: from the rows and file names
    rejudged: int = 0
    rewards_changed: int = 0
    not_judged: int = 0
    # Problems kept under an id of their own: their name is another problem's of the same
    # dataset, their statement or tests are not: (name, problem_id, file:line).
    namesakes: list[tuple[str, str, str]] = field(default_factory=list)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def flag(self, name: str, issue: str) -> None:
        reason = reason_of(issue) or issue
        self.flagged[reason] = self.flagged.get(reason, 0) + 1
        self.flags.append((name, issue))


def ingest_human_solutions(
    lake: Lake | Callable[[], Lake],
    paths: Sequence[str | os.PathLike[str]],
    *,
    fmt: str = "auto",
    split: str | None = None,
    languages: Sequence[str] | None = ("python3",),
    source_dataset: str | None = None,
    verify: Verifier | None = None,
    rejudge: bool = False,
    progress: Callable[[int, int], None] | None = None,
    run_kind: str = "ingest",
) -> IngestReport:
    """Ingest problems and their human solutions from `paths` into `lake`.

    `languages=None` keeps every language. `verify`, when given, judges each new solution and
    its verdict replaces the dataset's label as the reward; `rejudge=True` (with `verify`) also
    judges the solutions of these files already in the lake and updates their rewards. Under
    `verify`, labelled-correct solutions failing with wrong_answer flag their problem
    'labels_disagree: ...' when other labelled-correct ones pass, when two or more fail, or when
    the statement suggests several answers. `progress(done, total)` is called per file.
    Raises SpoError (nothing written) for missing or malformed inputs. `lake` may be a
    function opening the lake: it is called only once every input parsed, so a failed ingest
    into a new path leaves no empty lake behind.
    """
    files = expand_paths(paths)
    plan = [(p, detect_format(p) if fmt == "auto" else fmt) for p in files]
    # Parse everything first: any bad file fails the ingest before a single row is written.
    parsed = [(p, parse_file(p, f, split=split, source_dataset=source_dataset)) for p, f in plan]

    if languages is not None:
        _check_languages(languages, parsed)
    if callable(lake):
        lake = lake()

    report = IngestReport(files=len(files), verified=verify is not None, split_option=split)
    _separate_namesakes(lake, [p for _, probs in parsed for p in probs], report)
    report.run_id = lake.start_run(
        run_kind,
        {
            "format": fmt,
            "split": split,
            "languages": list(languages) if languages else None,
            "verify": verify is not None,
            "rejudge": rejudge,
        },
        inputs=files,
    )
    try:
        stored = lake.sql_arrow("SELECT problem_id, judge_issue, split FROM problems").to_pylist()
        known_problems = {r["problem_id"]: r["judge_issue"] for r in stored}
        # An explicit --split also moves problems already in the lake (re-ingest to fix it).
        stored_splits = {r["problem_id"]: r["split"] for r in stored} if split else {}
        known_hashes = _known_hashes(lake, {p.problem_id for _, probs in parsed for p in probs})
        seen: set[str] = set()
        for done, (_path, problems) in enumerate(parsed, start=1):
            _write_file(
                lake,
                problems,
                languages,
                verify,
                rejudge and verify is not None,
                known_problems,
                known_hashes,
                seen,
                report,
                stored_splits,
            )
            if progress:
                progress(done, len(parsed))
    except BaseException as exc:
        lake.end_run(report.run_id, run_status(exc))  # Ctrl-C / SIGTERM: interrupted
        raise
    lake.end_run(report.run_id, "completed")
    return report


def _separate_namesakes(lake: Lake, problems: list[ParsedProblem], report: IngestReport) -> None:
    """Keep apart problems that share dataset and name but not statement and tests.

    The problem id hashes dataset and name, so two such problems would be one row: the
    second's tests dropped and its solutions judged against the first's. The problem that
    owns the plain id is the one stored in the lake under it (else the first of the inputs);
    every other gets `variant` (its digest's start) and so an id of its own, the same on every
    re-ingest into this lake. Identical copies (same statement and tests) stay one problem."""
    owner: dict[str, str] = {}
    plain = {p.problem_id for p in problems}
    owner.update(_stored_digests(lake, plain))
    for prob in problems:
        digest = prob.digest
        pid = prob.problem_id
        stored = owner.setdefault(pid, digest)
        if stored.startswith("weak:"):  # stored by an older release: see _stored_digests
            n = sum(
                len(t["input"])
                for t in (prob.public_tests, prob.private_tests, prob.generated_tests)
            )
            digest = _weak_digest(prob.statement, n)
        if stored != digest:
            prob.variant = digest[:16]
            report.namesakes.append((prob.name, prob.problem_id, prob.where))


def _stored_digests(lake: Lake, pids: set[str]) -> dict[str, str]:
    """problem_id -> `problem_digest` of the stored problems among `pids`, from
    `extra.content_sha256` (written since this release); a problem stored by an older release
    has none and gets `_weak_digest` of its statement and test count instead (reading every
    stored test of a large dataset on each re-ingest would cost more than it finds)."""
    out: dict[str, str] = {}
    old: list[str] = []
    ids = sorted(pids)
    ds = lake.dataset("problems")
    for start in range(0, len(ids), 5000):
        chunk = ", ".join(sql_quote(i) for i in ids[start : start + 5000])
        for r in ds.to_table(
            columns=["problem_id", "extra"], filter=f"problem_id IN ({chunk})"
        ).to_pylist():
            try:
                digest = json.loads(r["extra"] or "{}").get("content_sha256")
            except (ValueError, AttributeError):
                digest = None
            if isinstance(digest, str):
                out[r["problem_id"]] = digest
            else:
                old.append(r["problem_id"])
    for start in range(0, len(old), 5000):
        chunk = ", ".join(sql_quote(i) for i in old[start : start + 5000])
        for r in ds.to_table(
            columns=["problem_id", "statement", "num_tests"], filter=f"problem_id IN ({chunk})"
        ).to_pylist():
            out[r["problem_id"]] = _weak_digest(r["statement"] or "", r["num_tests"] or 0)
    return out


def _weak_digest(statement: str, num_tests: int) -> str:
    return f"weak:{hashlib.sha256(statement.encode()).hexdigest()[:32]}:{num_tests}"


def _known_hashes(lake: Lake, pids: set[str]) -> dict[str, str]:
    """The human solutions in the lake: dedup key (`content_hash`) -> the content_hash stored.

    A lake written before responses were normalised stored the hash of the text as given; the
    rows whose text is not in normal form (a CR, a BOM, trailing whitespace: found by DuckDB,
    so only those are read) are also entered under their normalised hash, so a re-ingest
    matches them whatever copy it brings (no schema change, no rewrite of stored rows)."""
    known = {
        h: h
        for h in lake.sql_arrow("SELECT content_hash FROM trajectories WHERE source = 'human'")
        .column(0)
        .to_pylist()
    }
    ids = sorted(pids)
    for start in range(0, len(ids), 5000):  # the input's problems only: their text is read
        chunk = ", ".join(sql_quote(i) for i in ids[start : start + 5000])
        old = lake.sql_arrow(
            "SELECT problem_id, response, content_hash FROM trajectories WHERE source = 'human' "
            f"AND problem_id IN ({chunk}) AND content_hash IS NOT NULL "
            "AND regexp_matches(response, '[\\r\ufeff]|[ \\t]\\n|\\s$')"
        ).to_pylist()
        for r in old:
            known.setdefault(content_hash(r["problem_id"], r["response"]), r["content_hash"])
    return known


def _check_languages(
    languages: Sequence[str], parsed: list[tuple[Path, list[ParsedProblem]]]
) -> None:
    """A requested language no solution has and no dataset knows is a typo: say so."""
    present = {s.language for _, probs in parsed for p in probs for s in p.solutions}
    known = set(CC_LANGUAGES.values()) | present
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise SpoError(
            f"--languages {unknown[0]!r} is no language of these inputs; languages present: "
            f"{', '.join(sorted(present)) or 'none (no solutions)'} (or 'all')"
        )


def _write_file(
    lake: Lake,
    problems: list[ParsedProblem],
    languages: Sequence[str] | None,
    verify: Verifier | None,
    rejudge: bool,
    known_problems: dict[str, str | None],
    known_hashes: dict[str, str],
    seen: set[str],
    report: IngestReport,
    stored_splits: dict[str, str | None],
) -> None:
    now = utc_now()
    rows: dict[str, dict[str, Any]] = {}  # this file's problems, annotated
    new_rows: dict[str, dict[str, Any]] = {}
    pending: list[tuple[str, Solution, str]] = []  # new solutions
    again: list[tuple[str, Solution, str]] = []  # solutions in the lake, to re-judge
    kept: list[tuple[str, Solution, str]] = []  # solutions in the lake, keeping their verdict
    for prob in problems:
        report.problems_seen += 1
        report.splits[prob.split] = report.splits.get(prob.split, 0) + 1
        pid = prob.problem_id
        row = rows.get(pid) or _problem_row(prob, report.run_id, now)
        rows[pid] = row
        if pid not in known_problems:
            known_problems[pid] = row["judge_issue"]
            new_rows[pid] = row
        for sol in prob.solutions:
            report.solutions_seen += 1
            if languages is not None and sol.language not in languages:
                report.skip(f"language {sol.language}")
                continue
            if not sol.text.strip():
                report.skip("empty solution")
                continue
            digest = content_hash(pid, sol.text)
            if digest in seen:
                report.skip("duplicate solution")
                continue
            seen.add(digest)
            stored = known_hashes.get(digest)
            if stored is not None:
                if rejudge:
                    again.append((pid, sol, stored))
                else:
                    report.skip("already in the lake")
                    kept.append((pid, sol, stored))
                continue
            known_hashes[digest] = digest
            pending.append((pid, sol, digest))

    judged: list[Judged] | None = None
    if verify is not None and (pending or again):
        # Problems already in the lake are judged as stored (a checker or tolerance set since).
        judge_rows = {
            **rows,
            **_stored_rows(lake, {p for p, _, _ in pending + again} - set(new_rows)),
        }
        judged = verify([(judge_rows[pid], sol) for pid, sol, _ in pending + again])
        for j in judged:
            report.verdicts[j.status] = report.verdicts.get(j.status, 0) + 1
            report.not_judged += j.reward is None
    # labels_disagree is derived from every judged labelled-correct solution of the problem,
    # those judged before included: a run killed between storing solutions and flagging their
    # problem leaves the flag to the rerun, which finds the solutions already stored.
    stored_verdicts = _stored_verdicts(lake, kept) if verify is not None else {}
    known = [s for s in kept if s[2] in stored_verdicts]
    problem_updates = _labels_disagree(
        rows,
        pending + again + known,
        None
        if judged is None and not known
        else [*(judged or []), *(stored_verdicts[s[2]] for s in known)],
        known_problems,
        new_rows,
    )
    moved = {
        pid: row["split"]
        for pid, row in rows.items()
        if pid in stored_splits and pid not in new_rows and stored_splits[pid] != row["split"]
    }

    traj_rows = []
    for i, (pid, sol, digest) in enumerate(pending):
        traj_rows.append(_traj_row(pid, sol, digest, rows[pid], report.run_id, now))
        if judged is not None:
            _apply(traj_rows[-1], judged[i])
    # Problems before their trajectories: a kill in between leaves problems a rerun completes.
    _, added = lake.insert_new("problems", list(new_rows.values()))
    report.problems_added += added
    for pid, row in new_rows.items():
        if row["judge_issue"] and pid not in problem_updates:
            report.flag(row["name"], row["judge_issue"])
    _, added = lake.insert_new("trajectories", traj_rows)
    report.solutions_added += added
    if len(traj_rows) > added:  # a concurrent ingest stored them first
        report.skip("already in the lake", len(traj_rows) - added)

    for pid, row in rows.items():
        if pid not in new_rows and pid not in problem_updates and known_problems.get(pid):
            report.stored_flags.setdefault(pid, (row["name"], known_problems[pid]))

    if problem_updates or moved:
        updates: dict[str, dict[str, Any]] = {}
        for pid, issue in problem_updates.items():
            updates.setdefault(pid, {"problem_id": pid})["judge_issue"] = issue
        for pid, new_split in moved.items():
            updates.setdefault(pid, {"problem_id": pid})["split"] = new_split
            stored_splits[pid] = new_split
        lake.update_rows("problems", "problem_id", list(updates.values()))
        for pid, issue in problem_updates.items():
            report.flag(rows[pid]["name"], issue)
        report.split_changed += len(moved)
    if again and judged is not None:
        _rejudge_rows(lake, again, judged[len(pending) :], report)


def _labels_disagree(
    rows: dict[str, dict[str, Any]],
    solutions: list[tuple[str, Solution, str]],
    judged: list[Judged] | None,
    known_problems: dict[str, str | None],
    new_rows: dict[str, dict[str, Any]],
) -> dict[str, str]:
    """judge_issue updates of problems already in the lake (new rows are patched in place)."""
    if judged is None:
        return {}
    by_pid: dict[str, list[Judged]] = {}
    for (pid, sol, _), j in zip(solutions, judged, strict=True):
        if sol.reward == 0.0 and j.reward is not None:  # labelled correct, and judged
            by_pid.setdefault(pid, []).append(j)
    updates: dict[str, str] = {}
    for pid, verdicts in by_pid.items():
        n = len(verdicts)
        wrong = sum(j.status == "wrong_answer" for j in verdicts)
        passed = sum(j.reward == 0.0 for j in verdicts)
        current = known_problems.get(pid)
        multiple = reason_of(current) == "multiple_answers"
        if wrong == 0 or not (passed or multiple or wrong >= 2):
            continue  # one failing label alone may just be a wrong label
        issue = f"labels_disagree: {wrong} of {n} labelled-correct solutions fail (wrong_answer)"
        if passed:
            issue += f", {passed} pass"
        if multiple:
            issue += "; statement suggests several answers"
        if current is not None and reason_severity(reason_of(current)) < reason_severity(
            "labels_disagree"
        ):
            continue  # a more basic issue (no tests, interactive, ...) already explains it
        if current == issue:
            continue
        known_problems[pid] = issue
        if pid in new_rows:
            new_rows[pid]["judge_issue"] = issue
        else:
            updates[pid] = issue
    return updates


def _stored_verdicts(lake: Lake, solutions: list[tuple[str, Solution, str]]) -> dict[str, Judged]:
    """content_hash -> the stored judge verdict of these stored human solutions (rows whose
    reward is a label, not a verdict, are left out)."""
    ids = [f"h-{digest[:24]}" for _, sol, digest in solutions if sol.reward == 0.0]
    out: dict[str, Judged] = {}
    for start in range(0, len(ids), 5000):
        chunk = ", ".join(sql_quote(t) for t in ids[start : start + 5000])
        for r in lake.sql_arrow(
            "SELECT content_hash, reward, judge_status, passed_tests, total_tests FROM "
            f"trajectories WHERE traj_id IN ({chunk}) AND reward_source = 'judge'"
        ).to_pylist():
            out[r["content_hash"]] = Judged(
                r["reward"], r["judge_status"] or "", r["passed_tests"] or 0, r["total_tests"] or 0
            )
    return out


def _stored_rows(lake: Lake, pids: set[str]) -> dict[str, dict[str, Any]]:
    if not pids:
        return {}
    ids = ", ".join(sql_quote(p) for p in sorted(pids))
    return {
        r["problem_id"]: r
        for r in lake.dataset("problems").to_table(filter=f"problem_id IN ({ids})").to_pylist()
    }


def _rejudge_rows(
    lake: Lake,
    again: list[tuple[str, Solution, str]],
    judged: list[Judged],
    report: IngestReport,
) -> None:
    ids = [f"h-{digest[:24]}" for _, _, digest in again]
    old: dict[str, Any] = {}
    for start in range(0, len(ids), 5000):
        chunk = ", ".join(sql_quote(t) for t in ids[start : start + 5000])
        for r in lake.sql_arrow(
            f"SELECT traj_id, reward FROM trajectories WHERE traj_id IN ({chunk})"
        ).to_pylist():
            old[r["traj_id"]] = r["reward"]
    updates = []
    for traj_id, j in zip(ids, judged, strict=True):
        if traj_id not in old:
            continue  # stored under another key by an older release: nothing to update
        update = {"traj_id": traj_id}
        _apply(update, j)
        updates.append(update)
        report.rewards_changed += old[traj_id] != j.reward
    lake.update_rows("trajectories", "traj_id", updates)
    report.rejudged += len(updates)


def _apply(row: dict[str, Any], j: Judged) -> None:
    row.update(
        reward=j.reward,
        reward_source="judge",
        judge_status=j.status,
        passed_tests=j.passed_tests,
        total_tests=j.total_tests,
    )


def _traj_row(
    pid: str, sol: Solution, digest: str, problem: dict[str, Any], run_id: str, now: Any
) -> dict[str, Any]:
    # A label on a problem without tests claims what nothing here can check: not a reward.
    untestable = reason_of(problem.get("judge_issue")) == "no_tests"
    return {
        "traj_id": f"h-{digest[:24]}",
        "problem_id": pid,
        "run_id": run_id,
        "source": "human",
        "language": sol.language,
        "response": sol.text,
        "response_chars": len(sol.text),
        "reward": None if untestable else sol.reward,
        "reward_source": "label",
        "judge_status": "no_tests" if untestable else None,
        "content_hash": digest,
        "created_at": now,
    }


def _problem_row(prob: ParsedProblem, run_id: str, now: Any) -> dict[str, Any]:
    n_tests = sum(
        len(t["input"]) for t in (prob.public_tests, prob.private_tests, prob.generated_tests)
    )
    row = {
        "problem_id": prob.problem_id,
        "name": prob.name,
        "source_dataset": prob.source_dataset,
        "platform": prob.platform,
        "split": prob.split,
        "statement": prob.statement,
        "public_tests": prob.public_tests,
        "private_tests": prob.private_tests,
        "generated_tests": prob.generated_tests,
        "num_tests": n_tests,
        "time_limit_s": prob.time_limit_s,
        "memory_limit_mb": prob.memory_limit_mb,
        "float_tolerance": prob.float_tolerance,
        "float_tolerance_source": "dataset" if prob.float_tolerance is not None else None,
        "checker": prob.checker,
        "fn_name": prob.fn_name,
        "input_file": prob.input_file,
        "output_file": prob.output_file,
        "judge_issue": prob.judge_issue,
        "difficulty": prob.difficulty,
        "extra": jsontext.dumps({**prob.extra, "content_sha256": prob.digest}, default=str),
        "ingest_run_id": run_id,
        "created_at": now,
    }
    return annotate_problem(row)


def ingest_files_report(report: IngestReport) -> str:
    """The one-paragraph summary the CLI prints (counts, skips, flags with reasons)."""
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    splits = ", ".join(f"{n} {s}" for s, n in sorted(report.splits.items())) or "none"
    splits += " from --split" if report.split_option else " from the rows and file names"
    lines = [
        f"ingested {report.problems_added} new problems ({report.problems_seen} seen; splits: "
        f"{splits}) and {report.solutions_added} new solutions ({report.solutions_seen} seen) "
        f"from {report.files} file(s); skipped: {skipped}; run {report.run_id}"
    ]
    if report.splits.get("unspecified"):
        lines.append(
            f"{report.splits['unspecified']} problem(s) have split 'unspecified' (no --split, "
            "nothing in the file names): commands that select a split skip them; set one with "
            "--split on a re-ingest or `spo lake set-split`"
        )
    if report.namesakes:
        shown = "; ".join(f"{n} ({pid}, {where})" for n, pid, where in report.namesakes[:5])
        more = f"; and {len(report.namesakes) - 5} more" if len(report.namesakes) > 5 else ""
        lines.append(
            f"kept {len(report.namesakes)} problem(s) under an id of their own: another "
            f"problem of their dataset has their name but another statement or tests: "
            f"{shown}{more}"
        )
    if report.split_changed:
        lines.append(
            f"moved {report.split_changed} problem(s) already in the lake to the split given"
        )
    stored = report.skipped.get("already in the lake", 0)
    if report.verified and stored and not report.rejudged:
        lines.append(
            f"{stored} solution(s) already in the lake kept their rewards (add --rejudge to "
            "judge them again)"
        )
    if report.verdicts:
        verdicts = ", ".join(f"{n} {s}" for s, n in sorted(report.verdicts.items()))
        lines.append(
            f"judged: {verdicts} ({report.not_judged} not judged: reward NULL); "
            f"re-judged {report.rejudged} stored solutions, {report.rewards_changed} rewards "
            "changed"
        )
    new_names = {name for name, _ in report.flags}
    stored = [f for f in report.stored_flags.values() if f[0] not in new_names]
    flags = report.flags + stored
    if stored:
        by_reason: dict[str, int] = {}
        for _, issue in flags:
            reason = reason_of(issue) or issue
            by_reason[reason] = by_reason.get(reason, 0) + 1
        counts = ", ".join(f"{n} {r}" for r, n in sorted(by_reason.items()))
        lines.append(
            f"{len(flags)} problem(s) have a judge_issue ({len(report.flags)} new): {counts}"
        )
    elif report.flagged:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(report.flagged.items()))
        lines.append(f"flagged {len(report.flags)} problem(s) with a judge_issue: {counts}")
    if flags:
        for name, issue in flags[:30]:
            lines.append(f"  {name}: {issue}")
        if len(flags) > 30:
            lines.append(f"  ... and {len(flags) - 30} more (spo lake audit lists all)")
    else:
        lines.append("flagged: none")
    return "\n".join(lines)
