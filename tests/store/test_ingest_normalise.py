"""Issue 19 item 6: copies of one solution differing only in line ends, trailing whitespace,
trailing blank lines or a byte-order mark are one human solution; a lake whose hashes were
computed from the text as given (before this release) is matched on those too."""

from __future__ import annotations

import json
import subprocess

from spo_store.adapters import content_hash, normalise_response, problem_id, raw_content_hash
from spo_store.lake import Lake
from tests.conftest import write_jsonl

COPIES = [
    "a = input()\nprint(a)\n",
    "a = input()\r\nprint(a)\r\n",
    "a = input()   \nprint(a)\t\n\n\n",
    "\ufeffa = input()\nprint(a)",
    "a = input()\rprint(a)\r",
]


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)


def row(solutions: list[str], wrong: list[str] = ()) -> dict:
    return {
        "name": "echo",
        "statement": "print the input",
        "tests": [{"input": "1\n", "output": "1\n"}],
        "solutions": solutions,
        "incorrect_solutions": list(wrong),
    }


def test_normal_form():
    assert {normalise_response(c) for c in COPIES} == {"a = input()\nprint(a)"}
    # indentation and the inside of a line are kept: tabs and spaces indent differently
    assert normalise_response("if 1:\n\tx = 1 \n") != normalise_response("if 1:\n    x = 1\n")
    assert normalise_response("print('a  b')") == "print('a  b')"


def test_copies_are_one_solution(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(COPIES, wrong=["a = input()\r\nprint(a)"])])
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake))
    assert r.returncode == 0, r.stderr
    assert "1 new solutions (6 seen)" in r.stdout and "5 duplicate solution" in r.stdout
    got = json.loads(
        spo(
            "sql",
            "SELECT response, reward FROM trajectories",
            "--format",
            "json",
            "--lake",
            str(lake),
        ).stdout
    )
    assert got == [{"response": COPIES[0], "reward": 0.0}]  # stored as given, first copy


def test_a_lake_hashed_the_old_way_is_matched(tmp_path):
    """A lake written before normalisation holds the CRLF copy under the hash of its raw
    text: re-ingesting the copies adds nothing (no schema change: both hashes are compared)."""
    lake_dir = tmp_path / "lake"
    path = write_jsonl(tmp_path / "a.jsonl", [row([COPIES[1]])])
    assert spo("ingest", "human-solutions", str(path), "--lake", str(lake_dir)).returncode == 0
    lake = Lake.open(lake_dir)
    pid = problem_id("jsonl", "echo")
    old = raw_content_hash(pid, COPIES[1])
    assert old != content_hash(pid, COPIES[1])
    # rewrite the stored row as the previous release keyed it (traj_id and content_hash raw)
    stored = lake.sql_arrow("SELECT * FROM trajectories").to_pylist()[0]
    lake.delete_rows("trajectories", "TRUE")
    lake.append("trajectories", [{**stored, "traj_id": f"h-{old[:24]}", "content_hash": old}])
    path2 = write_jsonl(tmp_path / "b.jsonl", [row(COPIES)])
    r = spo("ingest", "human-solutions", str(path2), "--lake", str(lake_dir))
    assert r.returncode == 0, r.stderr
    assert "0 new solutions" in r.stdout, r.stdout
    n = spo(
        "sql", "SELECT count(*) AS n FROM trajectories", "--format", "csv", "--lake", str(lake_dir)
    )
    assert n.stdout.split() == ["n", "1"]
