"""The lake: tables, schema versions, appends, runs and provenance, SQL, maintenance."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pyarrow.parquet as pq
import pytest
from spo_schemas import SCHEMA_VERSION, TABLES, heavy_columns, light_columns

from spo_store.errors import SpoError
from spo_store.lake import Lake, resolve_lake_uri
from spo_store.maintenance import cleanup, compact, export_parquet, list_versions, tag_lake


def traj(i: int, **kw) -> dict:
    row = {
        "traj_id": f"t{i}",
        "problem_id": "p1",
        "run_id": "r1",
        "source": "pi0",
        "reward": 0.0,
        "content_hash": f"h{i}",
    }
    row.update(kw)
    return row


def test_open_creates_every_table_with_schema_version(tmp_path):
    lake = Lake.open(tmp_path / "lk")
    for name in TABLES:
        ds = lake.dataset(name)
        assert ds.count_rows() == 0
        assert ds.schema.metadata[b"spo.schema_version"] == str(SCHEMA_VERSION).encode()
    assert (tmp_path / "lk" / "trajectories.lance").is_dir()


def test_lake_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPO_LAKE", raising=False)
    assert resolve_lake_uri(None) == str(tmp_path / "spo-lake")
    monkeypatch.setenv("SPO_LAKE", str(tmp_path / "env-lake"))
    assert resolve_lake_uri(None) == str(tmp_path / "env-lake")
    assert resolve_lake_uri(tmp_path / "arg") == str(tmp_path / "arg")
    # Object-store URIs go to Lance untouched.
    assert resolve_lake_uri("s3://bucket/lake/") == "s3://bucket/lake"


def test_open_without_create_refuses_missing_lake(tmp_path):
    with pytest.raises(SpoError, match="no lake"):
        Lake.open(tmp_path / "missing", create=False)


def test_append_casts_fills_nulls_and_rejects_bad_columns(lake):
    v0 = lake.dataset("trajectories").version
    v1 = lake.append("trajectories", [traj(1), traj(2, reward=-1)])
    assert v1 == v0 + 1
    got = lake.sql("SELECT traj_id, reward, policy_version FROM trajectories ORDER BY traj_id")
    assert got["traj_id"].to_list() == ["t1", "t2"]
    assert got["reward"].to_list() == [0.0, -1.0]
    assert got["policy_version"].to_list() == [None, None]
    with pytest.raises(SpoError, match="no column"):
        lake.append("trajectories", [traj(3, rewrd=0)])
    with pytest.raises(SpoError, match="must not be NULL"):
        lake.append("trajectories", [traj(4, problem_id=None)])
    with pytest.raises(SpoError, match="cannot store"):
        lake.append("trajectories", [traj(5, policy_version="not a number")])
    assert lake.dataset("trajectories").count_rows() == 2


def test_runs_record_provenance(lake, tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("hello")
    lake.append("trajectories", [traj(1)])
    run_id = lake.start_run("ingest", {"alpha": 1}, inputs=[src])
    row = lake.sql(f"SELECT * FROM runs WHERE run_id = '{run_id}'").to_dicts()[0]
    assert row["status"] == "running" and row["ended_at"] is None
    assert json.loads(row["config"]) == {"alpha": 1}
    inputs = json.loads(row["inputs"])
    assert inputs[0]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert (
        json.loads(row["lake_version_at_start"])["trajectories"]
        == lake.dataset("trajectories").version
    )
    assert row["code_version"].startswith("spo ")
    lake.end_run(run_id, "completed")
    row = lake.sql(f"SELECT status, ended_at FROM runs WHERE run_id = '{run_id}'").to_dicts()[0]
    assert row["status"] == "completed" and row["ended_at"] is not None


def test_sql_returns_polars_and_reports_errors(lake):
    lake.append("trajectories", [traj(i) for i in range(5)])
    df = lake.sql("SELECT count(*) AS n FROM trajectories")
    assert isinstance(df, pl.DataFrame) and df["n"][0] == 5
    with pytest.raises(SpoError, match="SQL error"):
        lake.sql("SELECT nope FROM trajectories")


def test_heavy_columns_are_marked():
    assert {"response", "response_ids", "ref_logprobs", "prompt_ids"} <= set(
        heavy_columns("trajectories")
    )
    assert {"traj_id", "reward", "source", "policy_version"} <= set(light_columns("trajectories"))


def test_metrics_and_problem_lookup(lake):
    lake.log_metrics("r1", 3, {"train/loss": 0.5, "eval/pass@1": 0.25}, split="valid")
    df = lake.sql("SELECT name, value, step FROM metrics ORDER BY name")
    assert df.to_dicts() == [
        {"name": "eval/pass@1", "value": 0.25, "step": 3},
        {"name": "train/loss", "value": 0.5, "step": 3},
    ]
    lake.append(
        "problems",
        [
            {
                "problem_id": "p1",
                "name": "alpha",
                "public_tests": {"input": ["1"], "output": ["2"]},
                "private_tests": {"input": ["3"], "output": ["4"]},
            }
        ],
    )
    by_name = lake.get_problem("alpha")
    assert by_name["problem_id"] == "p1"
    assert by_name["tests"] == [{"input": "1", "output": "2"}, {"input": "3", "output": "4"}]
    with pytest.raises(SpoError, match="no problem"):
        lake.get_problem("beta")


def test_tag_compact_cleanup_export(lake, tmp_path):
    for i in range(5):
        lake.append("trajectories", [traj(i)])
    tagged = tag_lake(lake, "snap1")
    tagged_version = tagged["trajectories"]
    with pytest.raises(SpoError, match="already exists"):
        tag_lake(lake, "snap1")
    with pytest.raises(SpoError, match="tag"):
        tag_lake(lake, "bad tag!")
    before, after = compact(lake, ["trajectories"])["trajectories"]
    assert before == 5 and after == 1
    assert lake.dataset("trajectories").count_rows() == 5
    # Everything is inside the safety window: nothing may go.
    cleanup(lake, ["trajectories"])
    versions = [r["version"] for r in list_versions(lake, ["trajectories"])]
    assert len(versions) >= 7
    # With a zero window, untagged old versions go but the tagged one and the latest stay.
    cleanup(lake, ["trajectories"], older_than=dt.timedelta(0))
    rows = list_versions(lake, ["trajectories"])
    kept = {r["version"] for r in rows}
    assert tagged_version in kept and lake.dataset("trajectories").version in kept
    assert len(kept) < len(versions)
    assert [r["tags"] for r in rows if r["version"] == tagged_version] == ["snap1"]
    assert lake.dataset("trajectories", version="snap1").count_rows() == 5
    counts = export_parquet(lake, tmp_path / "out", ["trajectories", "runs"])
    assert counts["trajectories"] == 5
    assert pq.read_table(tmp_path / "out" / "trajectories.parquet").num_rows == 5
    assert not list((tmp_path / "out").glob("*.tmp"))
