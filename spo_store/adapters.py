"""Dataset readers for ingest: DeepMind CodeContests Parquet, TACO (Parquet or JSONL), JSONL.

Every reader yields `ParsedProblem`s in one normal form (see docs/ingest.md for the fields each
format maps from). Readers raise SpoError with file and row for input that is structurally
broken (bad JSON, wrong field types); a row that is readable but cannot be judged as given
(an unreadable limit, a call-based test that is not a list of arguments) is kept, with a
`judge_issue`, so the audit can count it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spo_store import jsontext
from spo_store.errors import SpoError
from spo_store.problem_rules import (
    limit_range_error,
    parse_memory_limit_mb,
    parse_time_limit_s,
    platform_from_code_contests,
    platform_from_site,
)

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_MEMORY_LIMIT_MB = 256
# CodeContests' language codes.
CC_LANGUAGES = {0: "unknown", 1: "python2", 2: "cpp", 3: "python3", 4: "java"}
FORMATS = ("code_contests", "taco", "jsonl")
CC_REQUIRED = {"name", "description", "public_tests", "private_tests", "solutions"}
TACO_REQUIRED = {"question", "solutions", "input_output"}
# TACO fields kept in `extra` (the limit strings too: `annotate_problem` re-reads them).
TACO_EXTRA = (
    "source",
    "url",
    "tags",
    "raw_tags",
    "skill_types",
    "starter_code",
    "time_limit",
    "memory_limit",
    "date",
    "picture_num",
    "Expected Time Complexity",
    "Expected Auxiliary Space",
)
JSONL_STRING_FIELDS = ("checker", "fn_name", "input_file", "output_file", "platform", "language")


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
    platform: str | None = None
    checker: str | None = None
    fn_name: str | None = None
    input_file: str | None = None
    output_file: str | None = None
    judge_issue: str | None = None  # set by the reader when the row cannot be judged as given
    where: str = ""  # file and row, for messages
    extra: dict[str, Any] = field(default_factory=dict)
    solutions: list[Solution] = field(default_factory=list)
    # Set by ingest when another problem of the dataset has this name but another statement
    # or tests: the start of this one's `problem_digest`, which then goes into its id.
    variant: str | None = None

    @property
    def problem_id(self) -> str:
        name = self.name if self.variant is None else f"{self.name}\0{self.variant}"
        return problem_id(self.source_dataset, name)

    @property
    def digest(self) -> str:
        return problem_digest(self.__dict__)


def problem_id(source_dataset: str, name: str) -> str:
    """Stable problem id: the same dataset and name give the same id on every ingest."""
    digest = hashlib.sha256(f"{source_dataset}\0{name}".encode()).hexdigest()[:16]
    return f"{source_dataset[:2]}-{digest}"


def normalise_response(text: str) -> str:
    """The text every copy of one attempt shares: a leading byte-order mark dropped, CRLF and
    CR line ends as LF, spaces and tabs at the end of each line dropped, and blank lines at the
    end dropped. Indentation and everything inside a line are kept (tabs and spaces indent
    differently in Python). Used for the dedup key only: the stored text is the copy given."""
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip(" \t") for line in text.split("\n")).rstrip("\n")


def problem_digest(row: Any) -> str:
    """sha256 of what makes a problem the same problem: its statement and its tests (a
    ParsedProblem's fields or a problems row). Ingest keeps it in `extra.content_sha256`."""
    what = [row.get("statement") or ""]
    for key in ("public_tests", "private_tests", "generated_tests"):
        block = row.get(key) or {}
        what.append([list(block.get("input") or []), list(block.get("output") or [])])
    return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()


def content_hash(problem_id_: str, response: str) -> str:
    """sha256 of problem id and the normalised response (`normalise_response`): the dedup key
    of human solutions, so copies differing only in line ends or trailing whitespace are one
    solution. For a response already in normal form it equals `raw_content_hash`, the key
    releases before this one stored for every response."""
    return raw_content_hash(problem_id_, normalise_response(response))


def raw_content_hash(problem_id_: str, response: str) -> str:
    """sha256 of problem id and response as given: the key of human solutions stored by older
    releases (a re-ingest matches both) and of model samples (`spo_train.rollouts.sampling`)."""
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


def _file_or_none(value: Any) -> str | None:
    # CodeContests writes "" for stdin/stdout.
    return value.strip() if isinstance(value, str) and value.strip() else None


def _io_issue(input_file: str | None, output_file: str | None) -> str | None:
    for what, name in (("input_file", input_file), ("output_file", output_file)):
        if name is not None and ("/" in name or "\0" in name or name in (".", "..")):
            return f"unsupported_io: {what} {name[:60]!r} is not a plain file name"
    return None


# ---------------------------------------------------------------------------- CodeContests
def _cc_memory_mb(n_bytes: int) -> int:
    # CodeContests stores Codeforces' "256 megabytes" as 256_000_000 bytes: a whole number of
    # 10^6 is the platform's megabytes (which judges mean as MiB); anything else is bytes.
    if n_bytes % 1_000_000 == 0:
        return n_bytes // 1_000_000
    return max(1, n_bytes // (1024 * 1024))


def read_code_contests(
    path: Path, *, split: str | None, source_dataset: str = "code_contests"
) -> Iterator[ParsedProblem]:
    """DeepMind CodeContests rows as published in Parquet (one problem per row).

    `source` (proto enum) gives the platform, `input_file`/`output_file` ("" = stdin/stdout)
    their columns, `time_limit` {seconds, nanos} and `memory_limit_bytes` the limits (missing or
    0: 2 s / 256 MiB, as CodeContests' CodeChef rows carry none).
    """
    table = _read_parquet_checked(path, CC_REQUIRED)
    split = split or _split_from_path(path) or "unspecified"
    extra_cols = [
        c
        for c in table.column_names
        if c.startswith("cf_") or c in ("source", "input_file", "output_file")
    ]
    for i, row in enumerate(table.to_pylist()):
        where = f"{path} row {i}"
        limit = row.get("time_limit") or {}
        seconds = (limit.get("seconds") or 0) + (limit.get("nanos") or 0) / 1e9
        mem = row.get("memory_limit_bytes") or 0
        # 0 or missing means "not given" (CodeChef rows); a negative limit is a broken file.
        for key, value, unit in (("time_limit", seconds, "s"), ("memory_limit_bytes", mem, "B")):
            if value < 0:
                raise SpoError(f"{where}: {key}: {value:g} {unit} is negative")
        solutions = []
        for key, reward in (("solutions", 0.0), ("incorrect_solutions", -1.0)):
            block = row.get(key) or {}
            for lang, text in zip(
                block.get("language") or [], block.get("solution") or [], strict=False
            ):
                solutions.append(Solution(CC_LANGUAGES.get(lang, str(lang)), text or "", reward))
        input_file = _file_or_none(row.get("input_file"))
        output_file = _file_or_none(row.get("output_file"))
        time_limit_s = seconds if seconds > 0 else DEFAULT_TIME_LIMIT_S
        memory_limit_mb = _cc_memory_mb(int(mem)) if mem > 0 else DEFAULT_MEMORY_LIMIT_MB
        for what, key, value in (
            ("time", "time_limit", time_limit_s),
            ("memory", "memory_limit_bytes", memory_limit_mb),
        ):
            bad = limit_range_error(what, value)
            if bad:
                raise SpoError(f"{where}: {key}: {bad}")
        if not isinstance(row.get("name"), str) or not row["name"].strip():
            raise SpoError(f"{where}: 'name' must be a non-empty string, got {row.get('name')!r}")
        if not isinstance(row.get("description"), str):
            raise SpoError(f"{where}: 'description' must be a string, got None")
        yield ParsedProblem(
            name=row["name"],
            statement=row["description"],
            source_dataset=source_dataset,
            split=split,
            public_tests=_cc_tests(row, "public_tests", where),
            private_tests=_cc_tests(row, "private_tests", where),
            generated_tests=_cc_tests(row, "generated_tests", where),
            time_limit_s=time_limit_s,
            memory_limit_mb=memory_limit_mb,
            difficulty=None if row.get("difficulty") is None else str(row["difficulty"]),
            platform=platform_from_code_contests(row.get("source")),
            input_file=input_file,
            output_file=output_file,
            judge_issue=_io_issue(input_file, output_file),
            where=where,
            extra={c: row.get(c) for c in extra_cols},
            solutions=solutions,
        )


def _cc_tests(row: dict[str, Any], key: str, where: str) -> dict[str, list[str]]:
    """A CodeContests test block: as many inputs as outputs, every one a string (a null or a
    missing output would be judged as something the dataset never said); SpoError else."""
    block = row.get(key) or {}
    inputs, outputs = block.get("input") or [], block.get("output") or []
    if len(inputs) != len(outputs):
        raise SpoError(f"{where}: {key}: {len(inputs)} inputs but {len(outputs)} outputs")
    for part, values in (("input", inputs), ("output", outputs)):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise SpoError(f"{where}: {key}: test {bad} {part} is null, not a string")
    return _tests(inputs, outputs)


# ---------------------------------------------------------------------------- TACO
def _taco_row(row: dict[str, Any], where: str, split: str) -> ParsedProblem:
    try:
        io = jsontext.loads(row["input_output"]) if row.get("input_output") else {}
        sols = jsontext.loads(row["solutions"]) if row.get("solutions") else []
    except (ValueError, TypeError) as exc:
        raise SpoError(f"{where}: TACO field is not valid JSON ({exc})") from None
    if not isinstance(io, dict):
        raise SpoError(f"{where}: TACO input_output must be a JSON object, got {type(io).__name__}")
    if not isinstance(sols, list):
        raise SpoError(f"{where}: TACO solutions must be a JSON list, got {type(sols).__name__}")
    raw_in, raw_out = io.get("inputs") or [], io.get("outputs") or []
    if not isinstance(raw_in, list) or not isinstance(raw_out, list):
        raise SpoError(f"{where}: TACO input_output 'inputs' and 'outputs' must be lists")
    fn_name = io.get("fn_name")
    if fn_name is not None and not isinstance(fn_name, str):
        raise SpoError(
            f"{where}: TACO fn_name must be a string, got {type(fn_name).__name__} {fn_name!r}"
        )
    issue = None
    if len(raw_in) != len(raw_out):
        issue = f"unsupported_io: {len(raw_in)} test inputs but {len(raw_out)} outputs"
    if fn_name:
        # TACO's call-based evaluator calls `fn(*inputs[i])` and compares with outputs[i]
        # (or outputs[i][0]): keep both as JSON text, the judge's call-based test format.
        bad = next((i for i, x in enumerate(raw_in) if not isinstance(x, list)), None)
        if bad is not None and issue is None:
            issue = f"unsupported_io: call-based test {bad} input is not a list of arguments"
        inputs = [jsontext.dumps(x) for x in raw_in]
        outputs = [jsontext.dumps(x) for x in raw_out]
    else:
        inputs = [_taco_text(x, where, "input", i) for i, x in enumerate(raw_in)]
        outputs = [_taco_text(x, where, "output", i) for i, x in enumerate(raw_out)]
    for key in ("question", "name"):
        if row.get(key) is not None and not isinstance(row[key], str | int):
            raise SpoError(f"{where}: TACO '{key}' must be a string, got {type(row[key]).__name__}")
    if isinstance(row.get("question"), int):
        raise SpoError(f"{where}: TACO 'question' must be a string, got int")
    name = row.get("name") or hashlib.sha256((row.get("question") or "").encode()).hexdigest()[:16]
    for key in ("time_limit", "memory_limit"):
        # A number is checked like JSONL's (outside the judge's range: an error naming the
        # line); an unreadable string stays in `extra` and flags the problem; anything else
        # is the wrong type.
        _jsonl_limit(row, (key, key), where)
    if not all(isinstance(s, str) for s in sols):
        bad = next(s for s in sols if not isinstance(s, str))
        raise SpoError(f"{where}: TACO solutions must be strings, got {type(bad).__name__}")
    time_limit = parse_time_limit_s(row.get("time_limit"))
    memory_limit = parse_memory_limit_mb(row.get("memory_limit"))
    extra = {k: row.get(k) for k in TACO_EXTRA if k in row}
    return ParsedProblem(
        name=str(name),
        statement=row.get("question") or "",
        source_dataset="taco",
        split=split,
        public_tests=_tests([], []),
        private_tests=_tests(inputs, outputs),
        generated_tests=_tests([], []),
        # Unreadable limit strings stay in `extra`: annotate_problem flags them.
        time_limit_s=time_limit or DEFAULT_TIME_LIMIT_S,
        memory_limit_mb=memory_limit or DEFAULT_MEMORY_LIMIT_MB,
        difficulty=None if row.get("difficulty") is None else str(row["difficulty"]),
        platform=platform_from_site(row.get("source"), row.get("url")),
        fn_name=fn_name or None,
        judge_issue=issue,
        where=where,
        extra=extra,
        solutions=[Solution("python3", s, 0.0) for s in sols if isinstance(s, str)],
    )


def _taco_text(value: Any, where: str, what: str, i: int) -> str:
    """A stdin/stdout test as text: a string as is, a list as its lines, a number as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return "\n".join(map(str, value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise SpoError(
        f"{where}: TACO test {i} {what} must be a string or a list of lines, got "
        f"{type(value).__name__}"
    )


def read_taco(path: Path, *, split: str | None) -> Iterator[ParsedProblem]:
    """TACO rows (Parquet or JSONL): `solutions` and `input_output` are string-encoded JSON.

    Follows the BAAI/TACO dataset card: `input_output` = {"inputs", "outputs", "fn_name"?};
    call-based rows (`fn_name`) keep each test as JSON text (the argument list, the expected
    value); `time_limit` ("2 seconds", "1000 ms") and `memory_limit` ("256 megabytes") strings
    give the limits; `source`/`url` the platform. All solutions are labelled correct.
    """
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


# ---------------------------------------------------------------------------- generic JSONL
def _jsonl_tests(
    row: dict[str, Any], key: str, where: str, call_based: bool
) -> dict[str, list[str]]:
    tests = row.get(key) or []
    if not isinstance(tests, list):
        raise SpoError(f"{where}: '{key}' must be a list of {{input, output}} objects")
    ins, outs = [], []
    for i, t in enumerate(tests):
        if not isinstance(t, dict) or "input" not in t or "output" not in t:
            raise SpoError(f"{where}: each test needs 'input' and 'output'")
        for part in ("input", "output"):
            if not call_based and not isinstance(t[part], str):
                # stdin/stdout tests are text; only fn_name tests may be JSON values.
                raise SpoError(
                    f"{where}: '{key}' test {i} '{part}' must be a string (stdin/stdout "
                    f"problem, no fn_name), got {type(t[part]).__name__}"
                )
        # Call-based tests may give the argument list / value itself: stored as JSON text.
        ins.append(t["input"] if isinstance(t["input"], str) else jsontext.dumps(t["input"]))
        outs.append(t["output"] if isinstance(t["output"], str) else jsontext.dumps(t["output"]))
    return _tests(ins, outs)


def _jsonl_number(row: dict[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpoError(f"{where}: '{key}' must be a number, got {value!r}")
    if not 0 <= value <= 1:
        # |actual - expected| <= tol * max(1, |expected|): a tolerance of 1 already accepts
        # any answer within 100% of the expected one.
        raise SpoError(f"{where}: '{key}' must be between 0 and 1, got {value!r}")
    return float(value)


def _jsonl_limit(row: dict[str, Any], keys: tuple[str, str], where: str) -> tuple[Any, Any]:
    """(raw value, parsed value) of a JSONL limit; a number outside the judge's range is an
    error naming the line (a string spo cannot read stays in `extra`: the row is flagged)."""
    key = next((k for k in keys if row.get(k) is not None), keys[0])
    raw = row.get(key)
    if raw is None:
        return None, None
    if isinstance(raw, jsontext.BigInt):  # thousands of digits: outside every range
        raw = float("-inf" if raw.text.startswith("-") else "inf")
    what = "time" if key.startswith("time") else "memory"
    parsed = (parse_time_limit_s if what == "time" else parse_memory_limit_mb)(raw)
    if isinstance(raw, bool) or (not isinstance(raw, int | float | str)):
        like = "2 seconds" if what == "time" else "256 MB"
        raise SpoError(f"{where}: '{key}' must be a number or a string like '{like}'")
    if isinstance(raw, int | float) and parsed is None:
        raise SpoError(f"{where}: '{key}': {limit_range_error(what, float(raw))}")
    return raw, parsed


_ROW_SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "dev": "valid"}
_ROW_SPLITS |= {"test": "test", "unspecified": "unspecified"}


def _jsonl_split(row: dict[str, Any], where: str) -> str | None:
    """The row's `split`, normalised like a file-name split (validation/dev -> valid)."""
    value = row.get("split")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.strip().lower() not in _ROW_SPLITS:
        raise SpoError(f"{where}: 'split' {value!r} is not one of train, valid, test, unspecified")
    return _ROW_SPLITS[value.strip().lower()]


def _call_based_issue(tests: Iterable[dict[str, list[str]]]) -> str | None:
    """unsupported_io when a call-based test input is not a JSON argument list (as TACO's)."""
    n = 0
    for block in tests:
        for text in block["input"]:
            try:
                args = jsontext.loads(text)
            except ValueError:
                args = None
            if not isinstance(args, list):
                return f"unsupported_io: call-based test {n} input is not a list of arguments"
            n += 1
    return None


def read_jsonl(path: Path, *, split: str | None) -> Iterator[ParsedProblem]:
    """Generic JSONL, one problem per line (docs/ingest.md lists the fields).

    Raises SpoError naming `file:line` and the field for a missing or wrongly typed field.
    """
    for where, row in _jsonl_rows(path):
        if "name" not in row or not ("statement" in row or "description" in row):
            raise SpoError(f"{where}: a problem needs 'name' and 'statement'")
        if not isinstance(row["name"], str) or not row["name"].strip():
            raise SpoError(f"{where}: 'name' must be a non-empty string, got {row['name']!r}")
        for key in ("statement", "description", "source_dataset"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise SpoError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
        for key in JSONL_STRING_FIELDS:
            if row.get(key) is not None and not isinstance(row[key], str):
                raise SpoError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
        for key in ("solutions", "incorrect_solutions"):
            value = row.get(key, [])
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise SpoError(f"{where}: '{key}' must be a list of strings")
        language = row.get("language") or "python3"
        sols = [Solution(language, s, 0.0) for s in row.get("solutions", [])]
        sols += [Solution(language, s, -1.0) for s in row.get("incorrect_solutions", [])]
        time_limit, seconds = _jsonl_limit(row, ("time_limit_s", "time_limit"), where)
        memory_limit, mb = _jsonl_limit(row, ("memory_limit_mb", "memory_limit"), where)
        extra: dict[str, Any] = {}
        if time_limit is not None and seconds is None:
            extra["time_limit"] = str(time_limit)  # annotate_problem flags it
        if memory_limit is not None and mb is None:
            extra["memory_limit"] = str(memory_limit)
        input_file = _file_or_none(row.get("input_file"))
        output_file = _file_or_none(row.get("output_file"))
        call_based = bool(row.get("fn_name"))
        public = _jsonl_tests(row, "public_tests", where, call_based)
        private = _jsonl_tests(row, "tests", where, call_based)
        issue = _io_issue(input_file, output_file)
        if call_based and issue is None:
            issue = _call_based_issue([public, private])  # the TACO adapter's rule
        yield ParsedProblem(
            name=row["name"],
            statement=row.get("statement") or row.get("description") or "",
            source_dataset=row.get("source_dataset") or "jsonl",
            # an explicit --split wins (it is how a user moves problems); the row's own split
            # is still checked, so a typo in the file is an error either way
            split=next(
                s
                for s in (split, _jsonl_split(row, where), _split_from_path(path), "unspecified")
                if s
            ),
            public_tests=public,
            private_tests=private,
            generated_tests=_tests([], []),
            time_limit_s=seconds or DEFAULT_TIME_LIMIT_S,
            memory_limit_mb=mb or DEFAULT_MEMORY_LIMIT_MB,
            difficulty=None if row.get("difficulty") is None else str(row["difficulty"]),
            float_tolerance=_jsonl_number(row, "float_tolerance", where),
            platform=(row.get("platform") or "").strip().lower() or None,
            checker=row.get("checker") or None,
            fn_name=row.get("fn_name") or None,
            input_file=input_file,
            output_file=output_file,
            judge_issue=issue,
            where=where,
            extra=extra,
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
            row = jsontext.loads(line)
        except ValueError as exc:
            raise SpoError(f"{path}:{i}: broken JSON line ({jsontext.error_text(exc)})") from None
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
    """Files, directories (searched recursively) and glob patterns, each checked to exist.

    Returns each file once, in the order first named. Raises SpoError for a missing path, an
    empty file, or a pattern or folder that matches no input file.
    """
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
    # The same file named twice (or by a folder and a pattern) is read once: counts stay true.
    seen: set[Path] = set()
    unique = []
    for path in out:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    for path in unique:
        if path.stat().st_size == 0:
            raise SpoError(f"{path}: empty file")
    return unique


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
        row = jsontext.loads(first.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpoError(f"{path}:1: invalid UTF-8 ({exc.reason})") from None
    except ValueError as exc:
        raise SpoError(f"{path}:1: broken JSON line ({jsontext.error_text(exc)})") from None
    return "taco" if isinstance(row, dict) and TACO_REQUIRED <= set(row) else "jsonl"


def parse_file(
    path: Path, fmt: str, *, split: str | None, source_dataset: str | None = None
) -> list[ParsedProblem]:
    """Parse a whole file (raising SpoError on any bad row) before anything is written."""
    if fmt == "code_contests":
        rows = read_code_contests(
            path, split=split, source_dataset=source_dataset or "code_contests"
        )
    elif fmt == "taco":
        rows = read_taco(path, split=split)
    elif fmt == "jsonl":
        rows = read_jsonl(path, split=split)
    else:
        raise SpoError(f"unknown format {fmt!r}; formats: auto, {', '.join(FORMATS)}")
    problems = []
    for prob in rows:
        _check_text(prob)
        problems.append(prob)
    return problems


def _check_text(prob: ParsedProblem) -> None:
    """Every string of a parsed problem is storable text: JSON's `\\ud800` escapes decode to
    lone surrogates, which no UTF-8 column can hold (the write would fail after other files'
    rows were committed); a name or dataset holds no NUL (problem ids hash them joined by one,
    so a name ending in NUL and a digest could take a namesake's variant id). Raises SpoError
    naming the file and line (or row) and the field."""
    for key, value in (("name", prob.name), ("source_dataset", prob.source_dataset)):
        if isinstance(value, str) and "\0" in value:
            raise SpoError(
                f"{prob.where}: {key}: a NUL character (\\u0000) at position "
                f"{value.index(chr(0))}: not allowed in a problem's {key}"
            )
    fields: dict[str, Any] = {
        "name": prob.name,
        "statement": prob.statement,
        "tests": [prob.public_tests, prob.private_tests, prob.generated_tests],
        "solutions": [s.text for s in prob.solutions],
        "language": [s.language for s in prob.solutions],
        "extra": prob.extra,
        "other fields": [
            prob.difficulty,
            prob.platform,
            prob.checker,
            prob.fn_name,
            prob.input_file,
            prob.output_file,
            prob.source_dataset,
        ],
    }
    for key, value in fields.items():
        try:
            jsontext.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("utf-16", "surrogatepass")[2:]
            code = "\\u" + bad[::-1].hex() if len(bad) == 2 else repr(exc.object[exc.start])
            raise SpoError(
                f"{prob.where}: {key}: a lone surrogate {code} (a JSON \\u escape that is "
                "no Unicode character) cannot be stored as text"
            ) from None
