"""Issue 19 item 12: two problems of one dataset with one name but different statements or
tests are kept apart (the second under an id of its own), never merged silently."""

from __future__ import annotations

import json
import subprocess

from spo_store.lake import Lake
from tests.conftest import write_jsonl


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)


def prob(statement: str, out: str, sol: str) -> dict:
    return {
        "name": "same",
        "statement": statement,
        "tests": [{"input": "", "output": out}],
        "solutions": [sol],
    }


FIRST = prob("print one", "1\n", "print(1)")
SECOND = prob("print two", "2\n", "print(2)")
SECOND_TESTS = prob("print one", "3\n", "print(3)")  # same statement, other tests


def rows(lake_dir):
    q = (
        "SELECT p.problem_id, p.statement, p.private_tests.output[1] AS out, t.response "
        "FROM problems p JOIN trajectories t USING (problem_id) ORDER BY t.response"
    )
    r = spo("sql", q, "--format", "json", "--lake", str(lake_dir))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_namesakes_are_kept_apart_and_stable(tmp_path):
    lake = tmp_path / "lake"
    a = write_jsonl(tmp_path / "a.jsonl", [FIRST, SECOND, dict(FIRST), SECOND_TESTS])
    r = spo("ingest", "human-solutions", str(a), "--lake", str(lake))
    assert r.returncode == 0, r.stderr
    assert "ingested 3 new problems (4 seen" in r.stdout, r.stdout
    assert "kept 2 problem(s) under an id of their own" in r.stdout
    assert f"{a}:2" in r.stdout and f"{a}:4" in r.stdout
    got = rows(lake)
    # each solution stays with its own statement and tests
    assert [(g["response"], g["out"]) for g in got] == [
        ("print(1)", "1\n"),
        ("print(2)", "2\n"),
        ("print(3)", "3\n"),
    ]
    assert len({g["problem_id"] for g in got}) == 3
    # a re-ingest, and an ingest of the second alone, land on the same ids: nothing new
    b = write_jsonl(tmp_path / "b.jsonl", [SECOND])
    for path in (a, b):
        r = spo("ingest", "human-solutions", str(path), "--lake", str(lake))
        assert r.returncode == 0 and "0 new problems" in r.stdout and "0 new solutions" in r.stdout
    # spo judge by the shared name refuses to guess
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    r = spo("judge", str(prog), "--problem", "same", "--lake", str(lake))
    assert r.returncode == 2 and "matches several problems" in r.stderr, r.stderr


def test_a_lake_without_content_digests_is_compared_on_its_rows(tmp_path):
    """Problems stored by a release before this one have no `extra.content_sha256`: they are
    compared on statement and test count."""
    lake_dir = tmp_path / "lake"
    a = write_jsonl(tmp_path / "a.jsonl", [FIRST])
    assert spo("ingest", "human-solutions", str(a), "--lake", str(lake_dir)).returncode == 0
    lake = Lake.open(lake_dir)
    (pid,) = lake.sql_arrow("SELECT problem_id FROM problems").column(0).to_pylist()
    lake.update_rows("problems", "problem_id", [{"problem_id": pid, "extra": "{}"}])
    b = write_jsonl(tmp_path / "b.jsonl", [FIRST, SECOND])
    r = spo("ingest", "human-solutions", str(b), "--lake", str(lake_dir))
    assert r.returncode == 0 and "1 new problems" in r.stdout, r.stdout
    assert [(g["response"], g["out"]) for g in rows(lake_dir)] == [
        ("print(1)", "1\n"),
        ("print(2)", "2\n"),
    ]
