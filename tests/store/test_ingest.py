"""Ingest of human solutions: real CodeContests rows, TACO, JSONL, dedup, stable ids."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spo_store.adapters import problem_id
from spo_store.errors import SpoError
from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from tests.conftest import write_cc_parquet, write_jsonl


def test_real_code_contests_rows(lake, cc_sample):
    report = ingest_human_solutions(lake, [cc_sample])
    assert report.problems_added == 20
    src = pq.read_table(cc_sample).to_pylist()
    df = lake.sql("SELECT name, num_tests, time_limit_s, memory_limit_mb FROM problems").to_dicts()
    by_name = {r["name"]: r for r in df}
    for row in src:
        n = sum(
            len((row[k] or {}).get("input") or [])
            for k in ("public_tests", "private_tests", "generated_tests")
        )
        assert by_name[row["name"]]["num_tests"] == n
        limit = row["time_limit"]
        if limit:
            assert by_name[row["name"]]["time_limit_s"] == pytest.approx(
                limit["seconds"] + limit["nanos"] / 1e9
            )
    # The first test of a real problem survives byte for byte.
    first = src[0]
    got = lake.get_problem(first["name"])
    assert got["private_tests"]["input"][0] == first["private_tests"]["input"][0]
    assert got["private_tests"]["output"][0] == first["private_tests"]["output"][0]


def test_solutions_become_human_trajectories_with_labels(lake, tmp_path):
    path = write_cc_parquet(
        tmp_path / "train-00000-of-00001.parquet",
        [
            {
                "name": "A",
                "solutions": [(3, "print(1)"), (2, "int main(){}"), (3, "print( 1 )")],
                "incorrect": [(3, "print(0)")],
            },
            {"name": "B", "solutions": [(3, "print(2)")], "incorrect": []},
        ],
    )
    report = ingest_human_solutions(lake, [path])
    assert report.problems_added == 2 and report.solutions_added == 4
    assert report.skipped == {"language cpp": 1}
    rows = lake.sql(
        "SELECT p.name, p.split, t.response, t.reward, t.source, t.language FROM trajectories t JOIN problems p USING (problem_id) ORDER BY 1, 3"
    ).to_dicts()
    assert [(r["name"], r["response"], r["reward"]) for r in rows] == [
        ("A", "print( 1 )", 0.0),
        ("A", "print(0)", -1.0),
        ("A", "print(1)", 0.0),
        ("B", "print(2)", 0.0),
    ]
    assert {r["source"] for r in rows} == {"human"} and {r["language"] for r in rows} == {"python3"}
    assert {r["split"] for r in rows} == {"train"}  # from the file name
    limits = lake.sql("SELECT time_limit_s, memory_limit_mb FROM problems").to_dicts()[0]
    assert limits == {"time_limit_s": 1.5, "memory_limit_mb": 64}
    # All languages when asked.
    report = ingest_human_solutions(lake, [path], languages=None)
    assert report.solutions_added == 1  # only the C++ one is new


def test_reingest_adds_nothing_and_ids_are_stable(tmp_path, cc_sample):
    path = write_cc_parquet(tmp_path / "x.parquet", [{"name": "A", "solutions": [(3, "print(1)")]}])
    lake1 = Lake.open(tmp_path / "l1")
    ingest_human_solutions(lake1, [path, cc_sample])
    counts = lake1.sql(
        "SELECT (SELECT count(*) FROM problems) AS p, (SELECT count(*) FROM trajectories) AS t"
    ).to_dicts()[0]
    again = ingest_human_solutions(lake1, [path, cc_sample])
    assert again.problems_added == 0 and again.solutions_added == 0
    assert (
        lake1.sql(
            "SELECT (SELECT count(*) FROM problems) AS p, (SELECT count(*) FROM trajectories) AS t"
        ).to_dicts()[0]
        == counts
    )
    lake2 = Lake.open(tmp_path / "l2")
    ingest_human_solutions(lake2, [cc_sample, path])
    ids1 = set(lake1.sql("SELECT problem_id FROM problems")["problem_id"])
    ids2 = set(lake2.sql("SELECT problem_id FROM problems")["problem_id"])
    assert ids1 == ids2
    assert problem_id("code_contests", "A") in ids1


def taco_row(name: str, fn_name: str | None = None) -> dict:
    io = {"inputs": ["1 2\n", [3, 4]], "outputs": ["3\n", "7\n"]}
    if fn_name:
        io["fn_name"] = fn_name
    return {
        "name": name,
        "question": f"Add two numbers ({name})",
        "solutions": json.dumps(["a,b=map(int,input().split());print(a+b)"]),
        "input_output": json.dumps(io),
        "difficulty": "EASY",
        "time_limit": "1 second",
    }


def test_taco_jsonl_and_parquet(lake, tmp_path):
    jsonl = write_jsonl(
        tmp_path / "taco_train.jsonl", [taco_row("t1"), taco_row("t2", fn_name="solve")]
    )
    parquet = tmp_path / "taco_test.parquet"
    pq.write_table(pa.Table.from_pylist([taco_row("t3")]), parquet)
    report = ingest_human_solutions(lake, [jsonl, parquet])
    # The call-based row is ingested too (tests as JSON text: see test_ingest_taco.py).
    assert report.problems_added == 3 and report.skipped == {}
    assert lake.get_problem("t2")["fn_name"] == "solve"
    got = lake.get_problem("t1")
    assert got["source_dataset"] == "taco" and got["split"] == "train"
    assert got["tests"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "3\n4", "output": "7\n"}]
    assert lake.get_problem("t3")["split"] == "test"
    assert lake.sql("SELECT count(*) AS n FROM trajectories WHERE reward = 0")["n"][0] == 3


def test_generic_jsonl_directory_and_glob(lake, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(
        d / "a.jsonl",
        [
            {
                "name": "j1",
                "statement": "s",
                "tests": [{"input": "1", "output": "1"}],
                "solutions": ["print(1)"],
                "incorrect_solutions": ["print(2)"],
                "split": "valid",
                "float_tolerance": 1e-6,
            }
        ],
    )
    write_jsonl(d / "b.jsonl", [{"name": "j2", "statement": "s", "tests": [], "solutions": []}])
    report = ingest_human_solutions(lake, [str(d / "*.jsonl")])
    assert report.files == 2 and report.problems_added == 2
    assert lake.get_problem("j1")["float_tolerance"] == 1e-6
    assert lake.get_problem("j1")["split"] == "valid"
    report = ingest_human_solutions(lake, [d])
    assert report.files == 2 and report.problems_added == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"name": "a", "statement": "s"}\n{"name": broken\n', r"bad\.jsonl:2: broken JSON line"),
        (b'{"name": "a", "statement": "s\xff"}\n', r"bad\.jsonl:1: invalid UTF-8"),
        (b"[1, 2]\n", r"bad\.jsonl:1: expected a JSON object"),
        (b'{"statement": "s"}\n', r"bad\.jsonl:1: a problem needs 'name'"),
    ],
)
def test_bad_jsonl_is_refused_and_writes_nothing(lake, tmp_path, content, message):
    good = write_jsonl(tmp_path / "good.jsonl", [{"name": "g", "statement": "s"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    before = lake.versions()
    with pytest.raises(SpoError, match=message):
        ingest_human_solutions(lake, [good, bad])
    assert lake.versions() == before


def test_missing_inputs_are_named(lake, tmp_path):
    with pytest.raises(SpoError, match="no such file"):
        ingest_human_solutions(lake, [tmp_path / "nope.parquet"])
    with pytest.raises(SpoError, match="no file matches"):
        ingest_human_solutions(lake, [str(tmp_path / "*.parquet")])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(SpoError, match="empty file"):
        ingest_human_solutions(lake, [tmp_path / "empty.jsonl"])


def test_mistyped_language_is_refused(lake, tmp_path):
    path = write_cc_parquet(tmp_path / "x.parquet", [{"name": "A", "solutions": [(3, "print(1)")]}])
    before = lake.versions()
    with pytest.raises(SpoError, match=r"--languages 'pyhton3' is no language of these inputs"):
        ingest_human_solutions(lake, [path], languages=["pyhton3"])
    assert lake.versions() == before
    assert ingest_human_solutions(lake, [path], languages=["java"]).problems_added == 1


def test_empty_and_repeated_solutions_are_skipped(lake, tmp_path):
    path = write_cc_parquet(
        tmp_path / "x.parquet",
        [
            {
                "name": "A",
                "solutions": [(3, "print(1)"), (3, ""), (3, " \n\t"), (3, "print(1)")],
                "incorrect": [(3, "print(1)"), (3, "print(2)")],
            }
        ],
    )
    report = ingest_human_solutions(lake, [path])
    assert report.solutions_added == 2
    assert report.skipped == {"empty solution": 2, "duplicate solution": 2}
    rows = lake.sql("SELECT response, reward FROM trajectories ORDER BY 1").to_dicts()
    assert rows == [
        {"response": "print(1)", "reward": 0.0},
        {"response": "print(2)", "reward": -1.0},
    ]
