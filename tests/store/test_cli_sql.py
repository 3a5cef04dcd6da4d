"""`spo sql` output formats and one-line errors, through the real console script."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import pyarrow.parquet as pq

from spo_store.lake import Lake


def spo(*args: str, lake) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["spo", *args, "--lake", str(lake)], capture_output=True, text=True, timeout=120
    )


def test_sql_formats(tmp_path, cc_sample):
    lake_dir = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(cc_sample), lake=lake_dir)
    assert r.returncode == 0, r.stderr
    q = "SELECT name, num_tests FROM problems ORDER BY name LIMIT 3"
    rows = json.loads(spo("sql", q, "--format", "json", lake=lake_dir).stdout)
    expected = Lake.open(lake_dir).sql(q).to_dicts()
    assert rows == expected and len(rows) == 3
    got = list(csv.DictReader(io.StringIO(spo("sql", q, "--format", "csv", lake=lake_dir).stdout)))
    assert [r["name"] for r in got] == [r["name"] for r in expected]
    out = tmp_path / "x.parquet"
    assert spo("sql", q, "--format", "parquet", "--output", str(out), lake=lake_dir).returncode == 0
    assert pq.read_table(out).to_pylist() == expected
    table = spo("sql", q, lake=lake_dir)
    assert table.returncode == 0 and "3 row(s)" in table.stdout


def test_sql_errors_are_one_line(tmp_path):
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    for args in (["sql", "SELECT nope FROM problems"], ["sql", "SELECT 1", "--format", "parquet"]):
        r = spo(*args, lake=lake_dir)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = spo("sql", "SELECT 1", lake=tmp_path / "missing")
    assert r.returncode == 2 and "no lake" in r.stderr
    # a result Parquet cannot hold (an INTERVAL): one line naming the column, no file left
    out = tmp_path / "i.parquet"
    q = "SELECT 1 AS a, INTERVAL 1 DAY AS i"
    r = spo("sql", q, "--format", "parquet", "--output", str(out), lake=lake_dir)
    assert r.returncode == 2 and "column i has a type Parquet lacks" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.glob("i.parquet*")) == []


def test_bad_options_are_one_line_before_any_work(tmp_path):
    """Issue 10 item 8: `sql -o` into a missing folder, an empty query, export onto a file."""
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    (tmp_path / "afile").write_text("x")
    cases = [
        (
            ["sql", "SELECT 1", "-o", str(tmp_path / "missing" / "x.json"), "--format", "json"],
            "folder",
        ),
        (
            ["sql", "SELECT 1", "--format", "parquet", "-o", str(tmp_path / "missing" / "x.pq")],
            "does not exist",
        ),
        (["sql", "SELECT 1", "-o", str(tmp_path), "--format", "csv"], "is a directory"),
        (["sql", "   "], "the SQL query is empty"),
        (["lake", "export", str(tmp_path / "afile")], "is a file"),
    ]
    for args, message in cases:
        r = spo(*args, lake=lake_dir)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "missing").exists()
    assert (tmp_path / "afile").read_text() == "x"


def test_sql_csv_ends_lines_with_lf(tmp_path):
    """Issue 20 item 10: `R=$(spo sql ... --format csv | tail -1)` carries no `\\r`."""
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    r = subprocess.run(
        ["spo", "sql", "SELECT 1 AS a, 'x' AS b", "--format", "csv", "--lake", str(lake_dir)],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"a,b\n1,x\n"


def test_sql_stays_local_and_explain_json_works(tmp_path):
    """Issue 19 item 10: a remote path is one line (no extension download is tried);
    `EXPLAIN (FORMAT JSON)` answers; extension and setting statements stay refused."""
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    for path in ("http://127.0.0.1:9/x.csv", "s3://bucket/x.parquet", "https://h/x.json"):
        r = spo("sql", f"SELECT * FROM '{path}'", lake=lake_dir)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "internal error" not in r.stderr
        assert "httpfs" in r.stderr and "download" not in r.stderr.lower()
    for q in ("INSTALL httpfs", "LOAD httpfs", "SET autoload_known_extensions = true"):
        r = spo("sql", q, lake=lake_dir)
        assert r.returncode == 2 and "read-only" in r.stderr, r.stderr
    r = spo("sql", "EXPLAIN (FORMAT JSON) SELECT 1", "--format", "json", lake=lake_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["explain_key"] == "physical_plan"
    r = spo("sql", "EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM runs", lake=lake_dir)
    assert r.returncode == 2 and "read-only" in r.stderr
    local = tmp_path / "mine.csv"
    local.write_text("a\n7\n")
    r = spo("sql", f"SELECT a FROM '{local}'", "--format", "csv", lake=lake_dir)
    assert r.returncode == 0 and r.stdout == "a\n7\n"


def test_sql_for_analysts_passed_views_and_comments(tmp_path):
    """Issue 20 item 10: `attempts.passed` says what reward = 0 means, `pass_rates` counts it,
    every column's meaning is visible from SQL (`--schema`, duckdb_columns()), and the comment
    of trajectories.source lists every source the code writes."""
    from spo_store.analyst import TRAJECTORY_SOURCES

    rows = [
        {
            "name": "echo",
            "statement": "echo",
            "tests": [{"input": "1\n", "output": "1\n"}],
            "solutions": ["print(input())", "print(input()) # b"],
            "incorrect_solutions": ["print(2)"],
        }
    ]
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lake_dir = tmp_path / "lake"
    assert spo("ingest", "human-solutions", str(src), lake=lake_dir).returncode == 0
    got = json.loads(
        spo(
            "sql",
            "SELECT passed, count(*) AS n FROM attempts GROUP BY 1 ORDER BY 1",
            "--format",
            "json",
            lake=lake_dir,
        ).stdout
    )
    assert got == [{"passed": False, "n": 1}, {"passed": True, "n": 2}]
    rate = json.loads(
        spo(
            "sql",
            "SELECT attempts, judged, passed, pass_rate FROM pass_rates",
            "--format",
            "json",
            lake=lake_dir,
        ).stdout
    )
    assert rate == [{"attempts": 3, "judged": 3, "passed": 2, "pass_rate": 2 / 3}]
    schema = spo("sql", "--schema", "--format", "json", lake=lake_dir)
    assert schema.returncode == 0, schema.stderr
    cols = {(r["table"], r["column"]): r["comment"] for r in json.loads(schema.stdout)}
    assert "reward = 0" in cols[("attempts", "passed")]
    assert all(cols[(t, c)] for t, c in cols if t in ("attempts", "trajectories", "problems"))
    for source in ("human", "pi0", "eval", "online", "rollout", "pts"):
        assert f"{source}: " in cols[("trajectories", "source")]
    assert set(TRAJECTORY_SOURCES) == {"human", "pi0", "eval", "online", "rollout", "pts"}
    r = spo(
        "sql",
        "SELECT comment FROM duckdb_columns() WHERE column_name = 'passed'",
        "--format",
        "csv",
        lake=lake_dir,
    )
    assert "reward = 0" in r.stdout


def test_pivot_reads_and_a_pivot_that_creates_a_type_is_named(tmp_path):
    # PIVOT with an IN list is one SELECT; without one DuckDB runs CREATE TYPE first (several
    # statements), which was refused as "MULTI is refused".
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    r = spo("sql", "PIVOT runs ON status IN ('done') USING count(*)", lake=lake_dir)
    assert r.returncode == 0, r.stderr
    r = spo("sql", "PIVOT runs ON status USING count(*)", lake=lake_dir)
    assert r.returncode == 2 and "this PIVOT runs a CREATE TYPE first" in r.stderr, r.stderr
    assert "MULTI" not in r.stderr
