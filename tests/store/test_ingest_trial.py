"""New-user trial findings on `spo ingest human-solutions` (generic JSONL), via the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spo_store.lake import Lake


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"name": "a", "statement": "s", "tests": [{"input": "1\n", "output": "1\n"}]}


def test_call_based_non_list_input_is_flagged_unsupported_io(tmp_path):
    # TACO flags it; generic JSONL must follow the same rule (docs/ingest.md).
    row = {"name": "x", "statement": "s", "fn_name": "f", "tests": [{"input": 5, "output": 5}]}
    ok = {"name": "y", "statement": "s", "fn_name": "f", "tests": [{"input": [5], "output": 5}]}
    f = write(tmp_path / "p.jsonl", [row, ok])
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(f), "--lake", str(lake))
    assert r.returncode == 0, r.stdout + r.stderr
    issues = {
        x["name"]: x["judge_issue"]
        for x in Lake.open(lake).sql_arrow("SELECT name, judge_issue FROM problems").to_pylist()
    }
    assert issues["x"].startswith("unsupported_io: call-based test 0 input is not a list")
    assert issues["y"] is None


def test_row_split_typo_refused_with_file_line(tmp_path):
    f = write(tmp_path / "p.jsonl", [GOOD, {**GOOD, "name": "b", "split": "tarin"}])
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(f), "--lake", str(lake))
    assert r.returncode == 2
    assert (
        f"{f}:2: 'split' 'tarin' is not one of train, valid, test, unspecified"
        in r.stdout + r.stderr
    )
    assert "Traceback" not in r.stderr
    assert not lake.exists()


def test_row_split_validation_normalised_to_valid(tmp_path):
    f = write(
        tmp_path / "p.jsonl",
        [{**GOOD, "split": "validation"}, {**GOOD, "name": "b", "split": "dev"}],
    )
    lake = tmp_path / "lake"
    assert spo("ingest", "human-solutions", str(f), "--lake", str(lake)).returncode == 0
    splits = Lake.open(lake).sql_arrow("SELECT split FROM problems").column("split").to_pylist()
    assert splits == ["valid", "valid"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**GOOD, "name": 5}, "'name' must be a non-empty string, got 5"),
        ({**GOOD, "name": ""}, "'name' must be a non-empty string, got ''"),
        ({**GOOD, "statement": 3}, "'statement' must be a string, got int"),
        (
            {**GOOD, "tests": [{"input": 1, "output": "1"}]},
            "'tests' test 0 'input' must be a string (stdin/stdout problem, no fn_name), got int",
        ),
    ],
)
def test_wrong_field_types_are_one_line_errors(tmp_path, row, message):
    f = write(tmp_path / "p.jsonl", [GOOD, row])
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(f), "--lake", str(lake))
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"{f}:2: {message}" in out
    assert "Traceback" not in out
    assert not lake.exists()  # nothing written


def test_failed_ingest_does_not_create_the_lake(tmp_path):
    good = write(tmp_path / "good.jsonl", [GOOD])
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    lake = tmp_path / "newdir"
    r = spo("ingest", "human-solutions", str(good), str(broken), "--lake", str(lake))
    assert r.returncode == 2
    assert f"{broken}:1: broken JSON line" in r.stdout + r.stderr
    assert not lake.exists()


def test_same_file_twice_counts_each_problem_once(tmp_path):
    rows = [{**GOOD, "name": f"p{i}"} for i in range(5)]
    f = write(tmp_path / "gen.jsonl", rows)
    r = spo("ingest", "human-solutions", str(f), str(f), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ingested 5 new problems (5 seen;" in r.stdout


def test_explicit_split_wins_over_the_row_and_a_row_typo_is_still_refused(tmp_path):
    from spo_store.ingest import ingest_human_solutions
    from spo_store.lake import Lake

    good = tmp_path / "rows.jsonl"
    good.write_text('{"name": "a", "statement": "s", "split": "test", "tests": []}\n')
    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [good], split="train")
    assert lake.sql("SELECT split FROM problems")["split"].to_list() == ["train"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "b", "statement": "s", "split": "tarin", "tests": []}\n')
    import pytest

    from spo_store.errors import SpoError

    with pytest.raises(SpoError, match="tarin"):
        ingest_human_solutions(lake, [bad], split="train")
