"""Issue 19 item 7: bad input fails whole. Every value is checked where it is parsed, the error
names the file and line (or row), and nothing is written: not the rows of the good files
before the bad one, not an empty lake."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_jsonl


def good(name: str = "a1") -> dict:
    return {
        "name": name,
        "statement": "echo",
        "tests": [{"input": "1\n", "output": "1\n"}],
        "solutions": ["print(input())"],
    }


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)


BAD_LINES = [
    # a lone surrogate: valid JSON, valid UTF-8 on disk, no Unicode text
    (
        '{"name": "b1", "statement": "x\\ud800y", "tests": []}',
        "statement: a lone surrogate \\ud800",
    ),
    ('{"name": "b1", "statement": "x", "solutions": ["print(\\udfff)"]}', "solutions: a lone"),
    # a NUL in a name: problem ids hash `name NUL variant`, so "b1\0<digest>" could take the
    # id a namesake of "b1" gets
    ('{"name": "b1\\u00000123456789abcdef", "statement": "x"}', "name: a NUL character"),
    ('{"name": "b1", "statement": "x", "memory_limit_mb": 1e12}', "'memory_limit_mb': 1e+12 MiB"),
    ('{"name": "b1", "statement": "x", "time_limit_s": 1e300}', "'time_limit_s': 1e+300 s is"),
    ('{"name": "b1", "statement": "x", "time_limit": 0.0001}', "'time_limit': 0.0001 s is"),
    ('{"name": "b1", "statement": "x", "memory_limit": 0}', "'memory_limit': 0 MiB is"),
    ('{"name": "b1", "statement": "x", "time_limit_s": true}', "'time_limit_s' must be"),
    ('{"name": "b1", "statement": "x", "float_tolerance": 1e300}', "between 0 and 1"),
    # JSON that Python's json module fails on without a JSONDecodeError (issue 19 trial):
    # nesting deeper than the recursion limit, an integer beyond the int/str digit limit
    (
        '{"name": "b1", "statement": "x", "difficulty": ' + "[" * 50000 + "]" * 50000 + "}",
        "broken JSON line (nested too deeply)",
    ),
    (
        '{"name": "b1", "statement": "x", "memory_limit_mb": ' + "9" * 5000 + "}",
        "'memory_limit_mb': inf MiB is outside",
    ),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_a_bad_second_file_writes_nothing(tmp_path, line, message):
    a = write_jsonl(tmp_path / "a.jsonl", [good()])
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(good("b0")) + "\n" + line + "\n")
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(a), str(b), "--lake", str(lake))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in r.stderr, r.stderr
    assert f"{b}:2" in lines[0] and message in lines[0], lines[0]
    assert not lake.exists()  # not a's rows, not an empty lake
    if "surrogate" not in message:
        return
    # ... and into an existing lake: nothing of a is added either
    assert (
        spo("ingest", "human-solutions", str(tmp_path / "a.jsonl"), "--lake", str(lake)).returncode
        == 0
    )
    a2 = write_jsonl(tmp_path / "a2.jsonl", [good("a2")])
    r = spo("ingest", "human-solutions", str(a2), str(b), "--lake", str(lake))
    assert r.returncode == 2
    names = spo("sql", "SELECT name FROM problems", "--format", "csv", "--lake", str(lake))
    assert names.stdout.split() == ["name", "a1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time_limit": {"seconds": -5, "nanos": 0}}, "time_limit: -5 s is negative"),
        ({"memory_limit_bytes": -1}, "memory_limit_bytes: -1 B is negative"),
        ({"private_tests": {"input": ["1", "2"], "output": ["1"]}}, "2 inputs but 1 outputs"),
        ({"private_tests": {"input": [None], "output": ["1"]}}, "test 0 input is null"),
        ({"public_tests": {"input": ["1"], "output": [None]}}, "test 0 output is null"),
        ({"description": None}, "'description' must be a string"),
    ],
    ids=[
        "negative time",
        "negative memory",
        "counts differ",
        "null input",
        "null output",
        "null description",
    ],
)
def test_code_contests_broken_values_name_the_row(tmp_path, cc_sample, change, message):
    # Before: a negative limit became the default, a null test input was stored and judged
    # (every solution failed it), a test without an output was judged on its input alone.
    rows = pq.read_table(cc_sample).to_pylist()[:3]
    rows[2].update(change)
    bad = tmp_path / "cc_train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(cc_sample)), bad)
    r = spo("ingest", "human-solutions", str(bad), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2 and f"{bad} row 2: " in r.stderr and message in r.stderr, r.stderr
    assert "internal error" not in r.stderr and not (tmp_path / "lake").exists()


def test_code_contests_limits_out_of_range_name_the_row(tmp_path, cc_sample):
    rows = pq.read_table(cc_sample).to_pylist()[:3]
    rows[2]["time_limit"] = {"seconds": 10**12, "nanos": 0}
    bad = tmp_path / "cc_train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(cc_sample)), bad)
    r = spo("ingest", "human-solutions", str(bad), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2 and f"{bad} row 2: time_limit:" in r.stderr, r.stderr
    rows[2]["time_limit"] = {"seconds": 2, "nanos": 0}
    rows[1]["memory_limit_bytes"] = 10**15
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(cc_sample)), bad)
    r = spo("ingest", "human-solutions", str(bad), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2 and f"{bad} row 1: memory_limit_bytes:" in r.stderr, r.stderr
    assert not (tmp_path / "lake").exists()


def test_taco_limit_strings_out_of_range_are_flagged(tmp_path):
    """TACO's limits are strings of a published dataset: one spo cannot judge with keeps its
    row, flagged `unsupported_limits` (never stored as a limit that gives reward NULL)."""
    row = {
        "name": "t1",
        "question": "echo",
        "solutions": json.dumps(["print(input())"]),
        "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}),
        "time_limit": "99999 seconds",
    }
    path = write_jsonl(tmp_path / "taco.jsonl", [row])
    lake = tmp_path / "lake"
    assert spo("ingest", "human-solutions", str(path), "--lake", str(lake)).returncode == 0
    r = spo(
        "sql",
        "SELECT time_limit_s, judge_issue FROM problems",
        "--format",
        "json",
        "--lake",
        str(lake),
    )
    got = json.loads(r.stdout)[0]
    assert got["time_limit_s"] == 2.0
    assert got["judge_issue"].startswith("unsupported_limits: time_limit '99999 seconds'")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": 5}, "TACO 'question' must be a string"),
        ({"name": ["x"]}, "TACO 'name' must be a string"),
        ({"input_output": json.dumps({"inputs": [None], "outputs": ["1"]})}, "test 0 input"),
        # issue 19 trial: a number out of range was stored as the default limit, unflagged;
        # a limit of the wrong type or a solution that is no string was silently dropped
        ({"time_limit": 1e300}, "'time_limit': 1e+300 s is outside 0.01..60 s"),
        ({"memory_limit": 10**7}, "'memory_limit': 1e+07 MiB is outside"),
        ({"time_limit": [1]}, "'time_limit' must be a number or a string like '2 seconds'"),
        ({"memory_limit": True}, "'memory_limit' must be a number or a string like '256 MB'"),
        ({"solutions": json.dumps(["print(1)", 1])}, "TACO solutions must be strings, got int"),
    ],
)
def test_taco_values_of_the_wrong_type_name_the_line(tmp_path, change, message):
    row = {
        "name": "t",
        "question": "echo",
        "solutions": json.dumps(["print(input())"]),
        "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}),
    }
    path = write_jsonl(tmp_path / "taco.jsonl", [row, {**row, "name": "u", **change}])
    r = spo("ingest", "human-solutions", str(path), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2 and f"{path}:2: " in r.stderr and message in r.stderr, r.stderr
    assert "internal error" not in r.stderr and not (tmp_path / "lake").exists()
