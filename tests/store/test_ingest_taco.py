"""TACO-shaped rows (Parquet and JSONL, stdin and call-based), JSONL fields, bad rows, --verify.

The fixture follows the BAAI/TACO dataset card: `solutions` and `input_output` are JSON text,
call-based rows carry `fn_name` with argument lists as inputs and (often list-wrapped)
expected values as outputs; `time_limit`/`memory_limit` are strings with units.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spo_store.errors import SpoError
from spo_store.ingest import ingest_human_solutions
from tests.conftest import needs_sandbox, write_jsonl


def taco(name: str, solutions: list[str], io: dict, **fields) -> dict:
    row = {
        "question": f"Statement of {name}.",
        "solutions": json.dumps(solutions),
        "starter_code": "",
        "input_output": json.dumps(io),
        "difficulty": "EASY",
        "raw_tags": "[]",
        "name": name,
        "source": "codeforces",
        "tags": "[]",
        "skill_types": "[]",
        "url": "https://codeforces.com/problemset/problem/1/A",
        "Expected Auxiliary Space": None,
        "time_limit": "2 seconds",
        "date": None,
        "picture_num": None,
        "memory_limit": "256 megabytes",
        "Expected Time Complexity": None,
    }
    row.update(fields)
    return row


ADD = "a,b=map(int,input().split());print(a+b)"
ROWS = [
    taco(
        "sum",
        [ADD, ADD, "  \n", ADD + "\n"],
        {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]},
        time_limit="1000 ms",
        memory_limit="64 MiB",
    ),
    taco(
        "add_fn",
        [
            "def add(a, b):\n    return a + b\n",
            "def add(a, b):\n    return a - b\n",
            "def add(a, b):\n    return b - a\n",
        ],
        {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]},
        source="codewars",
        url="https://www.codewars.com/kata/1",
        time_limit=None,
        memory_limit=None,
    ),
    taco(
        "pair",
        ["def pair(n):\n    return [n, n + 1]\n"],
        {"fn_name": "pair", "inputs": [[1]], "outputs": [[[1, 2]]]},
        source="leetcode",
        url="",
    ),
    taco(
        "limits",
        [ADD],
        {"inputs": ["1 2\n"], "outputs": ["3\n"]},
        memory_limit="plenty",
        source="codechef",
        url="https://www.codechef.com/problems/X",
    ),
    taco("empty", ["print(1)"], {"inputs": [], "outputs": []}, source="atcoder", url=""),
    # LeetCode shape: a Solution class, unwrapped expected values
    taco(
        "lc_add",
        ["class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        return a + b\n"],
        {"fn_name": "addTwo", "inputs": [[1, 2], [5, 6]], "outputs": [3, 11]},
        starter_code="class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        ",
        source="leetcode",
        url="https://leetcode.com/problems/add-two",
        time_limit=None,
        memory_limit=None,
    ),
]


def test_taco_fields_parquet_and_jsonl(lake, tmp_path):
    parquet = tmp_path / "taco_train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), parquet)
    jsonl = write_jsonl(tmp_path / "taco_test.jsonl", ROWS[3:])
    report = ingest_human_solutions(lake, [parquet, jsonl])
    assert report.problems_added == 6
    # ADD + "\n" is a copy of ADD (trailing newline: issue 19 item 6)
    assert report.skipped == {"empty solution": 1, "duplicate solution": 2}
    got = {
        r["name"]: r
        for r in lake.sql(
            "SELECT name, split, platform, time_limit_s, memory_limit_mb, fn_name, judge_issue "
            "FROM problems"
        ).to_dicts()
    }
    assert got["sum"] | {} == {
        "name": "sum",
        "split": "train",
        "platform": "codeforces",
        "time_limit_s": 1.0,
        "memory_limit_mb": 64,
        "fn_name": None,
        "judge_issue": None,
    }
    assert (got["add_fn"]["fn_name"], got["add_fn"]["platform"]) == ("add", "codewars")
    assert got["pair"]["platform"] == "leetcode"
    assert got["limits"]["judge_issue"].startswith("unsupported_limits: memory_limit 'plenty'")
    assert got["empty"]["judge_issue"].startswith("no_tests: ")
    # Call-based tests as JSON text: the argument list and TACO's expected value.
    tests = lake.get_problem("add_fn")["tests"]
    assert [json.loads(t["input"]) for t in tests] == [[1, 2], [3, 4]]
    assert [json.loads(t["output"]) for t in tests] == [[3], [7]]
    # A label on a problem without tests is not a reward.
    r = lake.sql(
        "SELECT reward, judge_status FROM trajectories JOIN problems USING (problem_id) "
        "WHERE name = 'empty'"
    ).to_dicts()
    assert r == [{"reward": None, "judge_status": "no_tests"}]
    # Re-ingest adds nothing.
    again = ingest_human_solutions(lake, [parquet, jsonl])
    assert again.problems_added == 0 and again.solutions_added == 0


@pytest.mark.parametrize(
    ("io", "message"),
    [
        (
            '{"fn_name": 3, "inputs": [[1]], "outputs": [1]}',
            r"row 0: TACO fn_name must be a string",
        ),
        ('{"fn_name": "f", "inputs": [[1]', r"row 0: TACO field is not valid JSON"),
        ('{"inputs": 5, "outputs": []}', r"row 0: TACO input_output 'inputs' and 'outputs'"),
    ],
)
def test_bad_taco_rows_are_one_line_errors(lake, tmp_path, io, message):
    row = taco("bad", [ADD], {})
    row["input_output"] = io
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    before = lake.versions()
    with pytest.raises(SpoError, match=message):
        ingest_human_solutions(lake, [path])
    assert lake.versions() == before


def test_call_based_input_not_a_list_is_a_judge_issue(lake, tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [taco("odd", ["def f(x): return x"], {"fn_name": "f", "inputs": ["abc"], "outputs": [1]})],
    )
    ingest_human_solutions(lake, [path])
    assert lake.get_problem("odd")["judge_issue"].startswith("unsupported_io: call-based test 0")


def test_generic_jsonl_fields(lake, tmp_path):
    checker = "import sys\nsys.exit(0)\n"
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "name": "c",
                "statement": "Print any of them.",
                "tests": [{"input": "1", "output": "1"}],
                "checker": checker,
                "input_file": "in.txt",
                "output_file": "out.txt",
                "platform": "Codeforces",
                "float_tolerance": 0.01,
                "time_limit": "500 ms",
                "memory_limit": "128 MB",
            },
            {
                "name": "f",
                "statement": "s",
                "fn_name": "g",
                "tests": [{"input": [1, 2], "output": 3}],
            },
        ],
    )
    ingest_human_solutions(lake, [path])
    c = lake.get_problem("c")
    assert (c["checker"], c["input_file"], c["output_file"], c["platform"]) == (
        checker,
        "in.txt",
        "out.txt",
        "codeforces",
    )
    assert (c["float_tolerance"], c["float_tolerance_source"]) == (0.01, "dataset")
    assert (c["time_limit_s"], c["memory_limit_mb"]) == (0.5, 128)
    assert c["judge_issue"] is None  # the checker accepts any valid answer
    f = lake.get_problem("f")
    assert f["fn_name"] == "g" and f["tests"] == [{"input": "[1, 2]", "output": "3"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"name": "x", "statement": "s", "fn_name": 7}])
    with pytest.raises(SpoError, match=r"bad\.jsonl:1: 'fn_name' must be a string"):
        ingest_human_solutions(lake, [bad])


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)


@needs_sandbox
def test_verify_judges_taco_rows_and_reports_flags(tmp_path):
    path = write_jsonl(tmp_path / "taco_train.jsonl", ROWS)
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--verify")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert (
        "flagged 3 problem(s) with a judge_issue: 1 labels_disagree, 1 no_tests, "
        "1 unsupported_limits" in out
    )
    assert (
        "add_fn: labels_disagree: 2 of 3 labelled-correct solutions fail (wrong_answer), "
        "1 pass" in out
    )
    from spo_store.lake import Lake

    rows = (
        Lake.open(lake)
        .sql(
            "SELECT name, reward, judge_status FROM trajectories JOIN problems USING (problem_id) "
            "ORDER BY name, reward"
        )
        .to_dicts()
    )
    by = {}
    for row in rows:
        by.setdefault(row["name"], []).append((row["reward"], row["judge_status"]))
    assert by["add_fn"] == [(-1.0, "wrong_answer"), (-1.0, "wrong_answer"), (0.0, "ok")]
    assert by["pair"] == [(0.0, "ok")]  # TACO's list-wrapped expected value
    assert by["sum"] == [(0.0, "ok")]  # ADD + "\n" is a copy of ADD
    assert by["empty"] == [(None, "no_tests")]  # not judged: reward NULL
    assert by["lc_add"] == [(0.0, "ok")]


@needs_sandbox
def test_verify_rejudge_updates_stored_labels(tmp_path):
    """Issue 10 item 6: a wrong solution stored earlier with its 'correct' label is re-judged."""
    wrong = "print(0)"
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "name": "p",
                "statement": "s",
                "tests": [{"input": "", "output": "1"}],
                "solutions": ["print(1)", wrong],
            }
        ],
    )
    lake = tmp_path / "lake"
    assert spo("ingest", "human-solutions", str(path), "--lake", str(lake)).returncode == 0
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--verify")
    assert r.returncode == 0 and "2 already in the lake" in r.stdout
    assert "2 solution(s) already in the lake kept their rewards (add --rejudge" in r.stdout
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--verify", "--rejudge")
    assert r.returncode == 0, r.stderr
    assert "re-judged 2 stored solutions, 1 rewards changed" in r.stdout
    from spo_store.lake import Lake

    lk = Lake.open(lake)
    rows = lk.sql("SELECT response, reward, reward_source FROM trajectories ORDER BY 1").to_dicts()
    assert rows == [
        {"response": wrong, "reward": -1.0, "reward_source": "judge"},
        {"response": "print(1)", "reward": 0.0, "reward_source": "judge"},
    ]
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--rejudge")
    assert r.returncode == 2 and "use it with --verify" in r.stderr


def test_cli_bad_input_is_one_line(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"name": "x", "statement": "s", "checker": 1}])
    r = spo("ingest", "human-solutions", str(bad), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {bad}:1: 'checker' must be a string, got int"]
    assert not Path(tmp_path / "lake").exists()  # nothing created before parsing succeeds


@needs_sandbox
def test_rejudge_judges_the_problem_as_stored(tmp_path):
    """A tolerance set in the lake since the first ingest is what --rejudge judges with."""
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "name": "third",
                "statement": "Print 1/3.",
                "tests": [{"input": "", "output": "0.333333"}],
                "solutions": ["print(0.3333)"],
            }
        ],
    )
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--verify")
    assert r.returncode == 0 and "judged: 1 wrong_answer" in r.stdout  # default 1e-5: too far
    from spo_store.lake import Lake

    lk = Lake.open(lake)
    pid = lk.get_problem("third")["problem_id"]
    lk.update_rows(
        "problems",
        "problem_id",
        [{"problem_id": pid, "float_tolerance": 1e-3, "float_tolerance_source": "dataset"}],
    )
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--verify", "--rejudge")
    assert r.returncode == 0, r.stderr
    assert "judged: 1 ok" in r.stdout and "1 rewards changed" in r.stdout
    assert lk.sql("SELECT reward FROM trajectories")["reward"].to_list() == [0.0]


@needs_sandbox
def test_jsonl_checker_judges_any_valid_answer_under_verify(tmp_path):
    """A stored checker (testlib order: input, output, answer) accepts every valid answer."""
    checker = (
        "import sys\n"
        "n = int(open(sys.argv[1]).read())\n"
        "got = open(sys.argv[2]).read().split()\n"
        "sys.exit(0 if len(got) == 1 and got[0].isdigit() and int(got[0]) % n == 0 else 1)\n"
    )
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "name": "multiple_of",
                "statement": "Print any positive multiple of n. If there are several, print any.",
                "tests": [{"input": "3\n", "output": "3\n"}, {"input": "5\n", "output": "5\n"}],
                "checker": checker,
                "solutions": ["print(int(input()))", "print(2 * int(input()))"],
                "incorrect_solutions": ["print(int(input()) + 1)"],
            }
        ],
    )
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(path), "--lake", str(lake), "--verify")
    assert r.returncode == 0, r.stderr
    assert "judged: 2 ok, 1 wrong_answer" in r.stdout and "flagged: none" in r.stdout
    from spo_store.lake import Lake

    lk = Lake.open(lake)
    assert lk.get_problem("multiple_of")["judge_issue"] is None
    rewards = sorted(lk.sql("SELECT reward FROM trajectories")["reward"].to_list())
    assert rewards == [-1.0, 0.0, 0.0]
