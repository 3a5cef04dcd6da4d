"""Ingest of human solutions: DeepMind CodeContests Parquet, TACO (Parquet or JSONL), generic JSONL.

Every adapter yields `ParsedProblem`s in one normal form; `ingest_human_solutions` writes them:
problems are keyed by a stable id (hash of dataset and name) and skipped when present,
solutions become `trajectories` rows with `source='human'`, deduplicated by content hash, so
re-ingesting the same data adds nothing. All inputs are checked before anything is written,
and each file lands as one commit per table, so bad input leaves the lake unchanged.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spo_store.errors import SpoError
from spo_store.lake import Lake, utc_now

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_MEMORY_LIMIT_MB = 256
# CodeContests' language codes.
CC_LANGUAGES = {0: "unknown", 1: "python2", 2: "cpp", 3: "python3", 4: "java"}
FORMATS = ("code_contests", "taco", "jsonl")
CC_REQUIRED = {"name", "description", "public_tests", "private_tests", "solutions"}
TACO_REQUIRED = {"question", "solutions", "input_output"}


@dataclass
class Solution:
    language: str
    text: str
    reward: float  # the dataset's label: 0 correct, -1 incorrect


@dataclass
class ParsedProblem:
    name: str
    statement: str
    source_dataset: str
    split: str
    public_tests: dict[str, list[str]]
    private_tests: dict[str, list[str]]
    generated_tests: dict[str, list[str]]
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    difficulty: str | None = None
    float_tolerance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    solutions: list[Solution] = field(default_factory=list)

    @property
    def problem_id(self) -> str:
        return problem_id(self.source_dataset, self.name)


@dataclass
class IngestReport:
    run_id: str = ""
    files: int = 0
    problems_seen: int = 0
    problems_added: int = 0
    solutions_seen: int = 0
    solutions_added: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def problem_id(source_dataset: str, name: str) -> str:
    """Stable problem id: the same dataset and name give the same id on every ingest."""
    digest = hashlib.sha256(f"{source_dataset}\0{name}".encode()).hexdigest()[:16]
    return f"{source_dataset[:2]}-{digest}"


def content_hash(problem_id_: str, response: str) -> str:
    return hashlib.sha256(f"{problem_id_}\0{response}".encode()).hexdigest()


def _tests(inputs: Sequence[str] | None, outputs: Sequence[str] | None) -> dict[str, list[str]]:
    return {"input": list(inputs or []), "output": list(outputs or [])}


def _split_from_path(path: Path) -> str | None:
    for part in [path.stem.lower(), path.parent.name.lower()]:
        for token in part.replace("-", "_").split("_"):
            if token in ("train", "test"):
                return token
            if token in ("valid", "validation", "dev"):
                return "valid"
    return None


# ---------------------------------------------------------------------------- adapters
def read_code_contests(
    path: Path, *, split: str | None, source_dataset: str = "code_contests"
) -> Iterator[ParsedProblem]:
    """DeepMind CodeContests rows as published in Parquet (one problem per row)."""
    table = _read_parquet_checked(path, CC_REQUIRED)
    split = split or _split_from_path(path) or "unspecified"
    extra_cols = [
        c
        for c in table.column_names
        if c.startswith("cf_") or c in ("source", "input_file", "output_file")
    ]
    for row in table.to_pylist():
        limit = row.get("time_limit") or {}
        seconds = (limit.get("seconds") or 0) + (limit.get("nanos") or 0) / 1e9
        mem = row.get("memory_limit_bytes") or 0
        solutions = []
        for key, reward in (("solutions", 0.0), ("incorrect_solutions", -1.0)):
            block = row.get(key) or {}
            for lang, text in zip(
                block.get("language") or [], block.get("solution") or [], strict=False
            ):
                solutions.append(Solution(CC_LANGUAGES.get(lang, str(lang)), text, reward))
        yield ParsedProblem(
            name=row["name"],
            statement=row.get("description") or "",
            source_dataset=source_dataset,
            split=split,
            public_tests=_tests(**_io(row.get("public_tests"))),
            private_tests=_tests(**_io(row.get("private_tests"))),
            generated_tests=_tests(**_io(row.get("generated_tests"))),
            time_limit_s=seconds if seconds > 0 else DEFAULT_TIME_LIMIT_S,
            memory_limit_mb=int(mem // (1024 * 1024)) if mem > 0 else DEFAULT_MEMORY_LIMIT_MB,
            difficulty=None if row.get("difficulty") is None else str(row["difficulty"]),
            extra={c: row.get(c) for c in extra_cols},
            solutions=solutions,
        )


def _io(block: dict[str, Any] | None) -> dict[str, Any]:
    block = block or {}
    return {"inputs": block.get("input"), "outputs": block.get("output")}


def _taco_row(row: dict[str, Any], where: str, split: str) -> ParsedProblem | None:
    try:
        io = json.loads(row["input_output"]) if row.get("input_output") else {}
        sols = json.loads(row["solutions"]) if row.get("solutions") else []
    except (json.JSONDecodeError, TypeError) as exc:
        raise SpoError(f"{where}: TACO field is not valid JSON ({exc})") from exc
    if io.get("fn_name"):
        return None  # call-based problem: our judge runs stdin/stdout programs only
    inputs = [x if isinstance(x, str) else "\n".join(map(str, x)) for x in io.get("inputs", [])]
    outputs = [x if isinstance(x, str) else "\n".join(map(str, x)) for x in io.get("outputs", [])]
    name = row.get("name") or hashlib.sha256((row.get("question") or "").encode()).hexdigest()[:16]
    time_limit = _parse_seconds(row.get("time_limit"))
    return ParsedProblem(
        name=str(name),
        statement=row.get("question") or "",
        source_dataset="taco",
        split=split,
        public_tests=_tests([], []),
        private_tests=_tests(inputs, outputs),
        generated_tests=_tests([], []),
        time_limit_s=time_limit or DEFAULT_TIME_LIMIT_S,
        difficulty=row.get("difficulty"),
        extra={k: row.get(k) for k in ("source", "url", "tags", "skill_types") if k in row},
        solutions=[Solution("python3", s, 0.0) for s in sols if isinstance(s, str)],
    )


def _parse_seconds(text: Any) -> float | None:
    if isinstance(text, int | float):
        return float(text)
    if not isinstance(text, str):
        return None
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


def read_taco(path: Path, *, split: str | None) -> Iterator[ParsedProblem | None]:
    """TACO rows (Parquet or JSONL): `solutions` and `input_output` are string-encoded JSON."""
    split = split or _split_from_path(path) or "unspecified"
    if path.suffix == ".parquet":
        rows: Iterable[tuple[str, dict[str, Any]]] = (
            (f"{path} row {i}", r)
            for i, r in enumerate(_read_parquet_checked(path, TACO_REQUIRED).to_pylist())
        )
    else:
        rows = _jsonl_rows(path)
    for where, row in rows:
        missing = TACO_REQUIRED - set(row)
        if missing:
            raise SpoError(f"{where}: not a TACO row, missing {sorted(missing)}")
        yield _taco_row(row, where, split)


def read_jsonl(path: Path, *, split: str | None) -> Iterator[ParsedProblem]:
    """Generic JSONL, one problem per line (see docs/ingest.md for the fields)."""
    for where, row in _jsonl_rows(path):
        if "name" not in row or not ("statement" in row or "description" in row):
            raise SpoError(f"{where}: a problem needs 'name' and 'statement'")
        tests = row.get("tests") or []
        try:
            private = _tests([t["input"] for t in tests], [t["output"] for t in tests])
        except (KeyError, TypeError) as exc:
            raise SpoError(f"{where}: each test needs 'input' and 'output'") from exc
        sols = [Solution(row.get("language", "python3"), s, 0.0) for s in row.get("solutions", [])]
        sols += [
            Solution(row.get("language", "python3"), s, -1.0)
            for s in row.get("incorrect_solutions", [])
        ]
        yield ParsedProblem(
            name=str(row["name"]),
            statement=row.get("statement") or row.get("description") or "",
            source_dataset=row.get("source_dataset", "jsonl"),
            split=row.get("split") or split or _split_from_path(path) or "unspecified",
            public_tests=_tests(
                [t["input"] for t in row.get("public_tests", [])],
                [t["output"] for t in row.get("public_tests", [])],
            ),
            private_tests=private,
            generated_tests=_tests([], []),
            time_limit_s=float(row.get("time_limit_s", DEFAULT_TIME_LIMIT_S)),
            memory_limit_mb=int(row.get("memory_limit_mb", DEFAULT_MEMORY_LIMIT_MB)),
            difficulty=None if row.get("difficulty") is None else str(row["difficulty"]),
            float_tolerance=row.get("float_tolerance"),
            solutions=sols,
        )


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpoError(f"{path}:{line}: invalid UTF-8 ({exc.reason})") from None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpoError(f"{path}:{i}: broken JSON line ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SpoError(f"{path}:{i}: expected a JSON object per line")
        yield f"{path}:{i}", row


def _read_parquet_checked(path: Path, required: set[str]) -> pa.Table:
    try:
        table = pq.read_table(path)
        table.validate(full=True)  # catches invalid UTF-8 in string columns
    except (pa.ArrowException, OSError) as exc:
        raise SpoError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    missing = required - set(table.column_names)
    if missing:
        raise SpoError(f"{path}: wrong schema, missing column(s) {sorted(missing)}")
    return table


# ---------------------------------------------------------------------------- input discovery
def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files, directories (searched recursively) and glob patterns, each checked to exist."""
    out: list[Path] = []
    for raw in paths:
        text = str(raw)
        if any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                raise SpoError(f"{text}: no file matches this pattern")
            out.extend(m for m in matches if m.is_file())
            continue
        path = Path(text)
        if not path.exists():
            raise SpoError(f"{text}: no such file or directory")
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in (".parquet", ".jsonl", ".json") and p.is_file()
            )
            if not found:
                raise SpoError(f"{text}: directory holds no .parquet or .jsonl file")
            out.extend(found)
        else:
            out.append(path)
    for path in out:
        if path.stat().st_size == 0:
            raise SpoError(f"{path}: empty file")
    return out


def detect_format(path: Path) -> str:
    """code_contests or taco for Parquet (by columns), taco or jsonl for JSON lines."""
    if path.suffix == ".parquet":
        try:
            names = set(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise SpoError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
        if CC_REQUIRED <= names:
            return "code_contests"
        if TACO_REQUIRED <= names:
            return "taco"
        raise SpoError(f"{path}: wrong schema: neither CodeContests nor TACO columns")
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        row = json.loads(first.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpoError(f"{path}:1: invalid UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SpoError(f"{path}:1: broken JSON line ({exc.msg})") from None
    return "taco" if isinstance(row, dict) and TACO_REQUIRED <= set(row) else "jsonl"


def parse_file(
    path: Path, fmt: str, *, split: str | None, source_dataset: str | None = None
) -> list[ParsedProblem | None]:
    """Parse a whole file (raising SpoError on any bad row) before anything is written."""
    if fmt == "code_contests":
        return list(
            read_code_contests(path, split=split, source_dataset=source_dataset or "code_contests")
        )
    if fmt == "taco":
        return list(read_taco(path, split=split))
    if fmt == "jsonl":
        return list(read_jsonl(path, split=split))
    raise SpoError(f"unknown format {fmt!r}; formats: auto, {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------- writing
Verifier = Callable[
    [list[tuple[ParsedProblem, Solution]]], list[tuple[float | None, str, int, int]]
]


def ingest_human_solutions(
    lake: Lake,
    paths: Sequence[str | os.PathLike[str]],
    *,
    fmt: str = "auto",
    split: str | None = None,
    languages: Sequence[str] | None = ("python3",),
    source_dataset: str | None = None,
    verify: Verifier | None = None,
    progress: Callable[[int, int], None] | None = None,
    run_kind: str = "ingest",
) -> IngestReport:
    """Ingest problems and their human solutions from `paths` into `lake`.

    `languages=None` keeps every language. `verify`, when given, judges each solution and its
    verdict replaces the dataset's label as the reward. `progress(done, total)` is called per file.
    """
    files = expand_paths(paths)
    plan = [(p, detect_format(p) if fmt == "auto" else fmt) for p in files]
    # Parse everything first: any bad file fails the ingest before a single row is written.
    parsed = [(p, parse_file(p, f, split=split, source_dataset=source_dataset)) for p, f in plan]

    report = IngestReport(files=len(files))
    report.run_id = lake.start_run(
        run_kind,
        {
            "format": fmt,
            "split": split,
            "languages": list(languages) if languages else None,
            "verify": verify is not None,
        },
        inputs=files,
    )
    try:
        known_problems = set(
            lake.sql_arrow("SELECT problem_id FROM problems").column(0).to_pylist()
        )
        known_hashes = set(
            lake.sql_arrow("SELECT content_hash FROM trajectories WHERE source = 'human'")
            .column(0)
            .to_pylist()
        )
        for done, (path, problems) in enumerate(parsed, start=1):
            _write_file(
                lake, path, problems, languages, verify, known_problems, known_hashes, report
            )
            if progress:
                progress(done, len(parsed))
    except BaseException:
        lake.end_run(report.run_id, "failed")
        raise
    lake.end_run(report.run_id, "completed")
    return report


def _write_file(
    lake: Lake,
    path: Path,
    problems: list[ParsedProblem | None],
    languages: Sequence[str] | None,
    verify: Verifier | None,
    known_problems: set[str],
    known_hashes: set[str],
    report: IngestReport,
) -> None:
    now = utc_now()
    problem_rows: list[dict[str, Any]] = []
    pending: list[tuple[ParsedProblem, Solution, str]] = []
    for prob in problems:
        if prob is None:
            report.skip("call-based TACO problem")
            continue
        report.problems_seen += 1
        pid = prob.problem_id
        if pid not in known_problems:
            known_problems.add(pid)
            problem_rows.append(_problem_row(prob, report.run_id, now))
        for sol in prob.solutions:
            report.solutions_seen += 1
            if languages is not None and sol.language not in languages:
                report.skip(f"language {sol.language}")
                continue
            digest = content_hash(pid, sol.text)
            if digest in known_hashes:
                report.skip("already in the lake")
                continue
            known_hashes.add(digest)
            pending.append((prob, sol, digest))

    verdicts = verify([(p, s) for p, s, _ in pending]) if verify and pending else None
    traj_rows = []
    for i, (prob, sol, digest) in enumerate(pending):
        row = {
            "traj_id": f"h-{digest[:24]}",
            "problem_id": prob.problem_id,
            "run_id": report.run_id,
            "source": "human",
            "language": sol.language,
            "response": sol.text,
            "response_chars": len(sol.text),
            "reward": sol.reward,
            "reward_source": "label",
            "content_hash": digest,
            "created_at": now,
        }
        if verdicts is not None:
            reward, status, passed, total = verdicts[i]
            row.update(
                reward=reward,
                reward_source="judge",
                judge_status=status,
                passed_tests=passed,
                total_tests=total,
            )
        traj_rows.append(row)
    # Problems before their trajectories: a kill in between leaves problems a rerun completes.
    lake.append("problems", problem_rows)
    lake.append("trajectories", traj_rows)
    report.problems_added += len(problem_rows)
    report.solutions_added += len(traj_rows)


def _problem_row(prob: ParsedProblem, run_id: str, now: Any) -> dict[str, Any]:
    n_tests = sum(
        len(t["input"]) for t in (prob.public_tests, prob.private_tests, prob.generated_tests)
    )
    return {
        "problem_id": prob.problem_id,
        "name": prob.name,
        "source_dataset": prob.source_dataset,
        "split": prob.split,
        "statement": prob.statement,
        "public_tests": prob.public_tests,
        "private_tests": prob.private_tests,
        "generated_tests": prob.generated_tests,
        "num_tests": n_tests,
        "time_limit_s": prob.time_limit_s,
        "memory_limit_mb": prob.memory_limit_mb,
        "float_tolerance": prob.float_tolerance,
        "difficulty": prob.difficulty,
        "extra": json.dumps(prob.extra, default=str),
        "ingest_run_id": run_id,
        "created_at": now,
    }
