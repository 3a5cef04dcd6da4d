"""A lake written by the schema-v1 release opens after `spo lake migrate` (v1 -> v2 -> v3).

The fixture `tests/fixtures/lake_v1` was written by the previous release's own code (see
tests/fixtures/README.md); every test works on a copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lance
import pytest
from spo_schemas import SCHEMA_VERSION

from spo_store import migrate as migrate_mod
from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.migrate import lake_schema_version, migrate_lake

FIXTURE = Path(__file__).parents[1] / "fixtures" / "lake_v1"


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def v1_lake(tmp_path: Path) -> Path:
    dst = tmp_path / "lake"
    shutil.copytree(FIXTURE, dst)
    return dst


def _v1_rows(lake: Path, table: str, columns: list[str]) -> list[dict]:
    ds = lance.dataset(str(lake / f"{table}.lance"))
    return sorted(
        ds.to_table(columns=columns).to_pylist(), key=lambda r: json.dumps(r, default=str)
    )


def test_v1_lake_is_refused_with_the_command_that_migrates_it(v1_lake: Path) -> None:
    with pytest.raises(SpoError, match="spo lake migrate"):
        Lake.open(v1_lake)
    out = spo("sql", "SELECT count(*) FROM problems", "--lake", str(v1_lake))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "spo lake migrate" in out.stderr
    # refusing touched nothing: no new table, still version 1
    assert not (v1_lake / "q0_estimates.lance").exists()
    assert lake_schema_version(v1_lake) == 1


def test_migrate_cli_keeps_every_row_and_moves_q0(v1_lake: Path) -> None:
    traj_cols = ["traj_id", "problem_id", "run_id", "source", "response", "reward", "content_hash"]
    before = {
        "trajectories": _v1_rows(v1_lake, "trajectories", traj_cols),
        "runs": _v1_rows(v1_lake, "runs", ["run_id", "kind", "status", "config"]),
        "batches": _v1_rows(v1_lake, "batches", ["run_id", "step", "traj_ids"]),
        "metrics": _v1_rows(v1_lake, "metrics", ["run_id", "step", "name", "value"]),
        "token_cache": _v1_rows(v1_lake, "token_cache", ["traj_id", "response_ids"]),
        "problems": _v1_rows(
            v1_lake, "problems", ["problem_id", "name", "split", "statement", "private_tests"]
        ),
    }
    old_q0 = {
        r["problem_id"]: r
        for r in _v1_rows(
            v1_lake, "problems", ["problem_id", "q0", "q0_samples", "q0_successes", "q0_run_id"]
        )
        if r["q0"] is not None
    }
    assert len(old_q0) == 4

    out = spo("lake", "migrate", "--lake", str(v1_lake), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["from_version"], summary["to_version"]) == (1, SCHEMA_VERSION)

    lake = Lake.open(v1_lake, create=False)
    for table, rows in before.items():
        cols = list(rows[0])
        after = sorted(
            lake.dataset(table).to_table(columns=cols).to_pylist(),
            key=lambda r: json.dumps(r, default=str),
        )
        assert after == rows, table

    est = lake.dataset("q0_estimates").to_table().to_pylist()
    assert len(est) == 4
    q0_runs = lake.sql("SELECT run_id, model_id FROM runs WHERE kind = 'estimate-q0'").to_dicts()
    for e in est:
        old = old_q0[e["problem_id"]]
        assert (e["q0"], e["samples"], e["successes"]) == (
            old["q0"],
            old["q0_samples"],
            old["q0_successes"],
        )
        assert e["ref_model_id"] == q0_runs[0]["model_id"]  # the model that estimated it
        assert e["sampler_key"] == "temperature=1,top_p=1,max_new_tokens=48"
    # the new problem columns are derived from each old row (statement, extra JSON, labels)
    probs = {r["name"]: r for r in lake.dataset("problems").to_table().to_pylist()}
    battle = probs["1045_D. Interstellar battle"]
    assert (battle["float_tolerance"], battle["float_tolerance_source"]) == (1e-4, "statement")
    assert battle["platform"] == "codeforces" and battle["judge_issue"] is None
    assert probs["1256_C. Platforms Jumping"]["judge_issue"].startswith("multiple_answers")
    assert probs["halve"]["float_tolerance_source"] == "dataset"  # given by the JSONL row
    # sampled rows learn their max_new_tokens from their run's config; human rows stay NULL
    mnt = lake.sql(
        "SELECT source, max_new_tokens AS m, count(*) AS n FROM trajectories GROUP BY ALL"
    ).to_dicts()
    by = {(r["source"], r["m"]) for r in mnt}
    assert ("pi0", 48) in by and ("online", 48) in by and ("human", None) in by

    # the old lake stays readable under the tag, and cleanup keeps it
    assert out.returncode == 0
    assert spo("lake", "cleanup", "--lake", str(v1_lake), "--older-than-hours", "0").returncode == 0
    old = lance.dataset(str(v1_lake / "problems.lance"), version="schema-v1")
    assert "q0" in old.schema.names and old.count_rows() == 5

    again = spo("lake", "migrate", "--lake", str(v1_lake), "--json")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert lake.dataset("q0_estimates").count_rows() == 4


def test_migration_killed_half_way_finishes_on_rerun(v1_lake: Path, monkeypatch) -> None:
    # A crash between steps (a fault real parts cannot be made to produce on cue).
    real = migrate_mod._set_version

    def crash_on_trajectories(ds, version):
        if ds.uri.rstrip("/").endswith("trajectories.lance"):
            raise KeyboardInterrupt
        real(ds, version)

    monkeypatch.setattr(migrate_mod, "_set_version", crash_on_trajectories)
    with pytest.raises(KeyboardInterrupt):
        migrate_lake(v1_lake)
    assert lake_schema_version(v1_lake) == 1
    monkeypatch.setattr(migrate_mod, "_set_version", real)
    report = migrate_lake(v1_lake)
    assert report.from_version == 1 and lake_schema_version(v1_lake) == SCHEMA_VERSION
    lake = Lake.open(v1_lake, create=False)
    assert lake.dataset("q0_estimates").count_rows() == 4  # no duplicate estimates
    assert lake.dataset("problems").count_rows() == 5
    assert lake.dataset("trajectories").count_rows() == 21


def test_reingest_after_migration_adds_nothing(v1_lake: Path) -> None:
    assert spo("lake", "migrate", "--lake", str(v1_lake)).returncode == 0
    before = (
        Lake.open(v1_lake)
        .sql("SELECT (SELECT count(*) FROM problems) p, (SELECT count(*) FROM trajectories) t")
        .to_dicts()[0]
    )
    small = Path(__file__).parents[1] / "fixtures" / "lake_v1_small.jsonl"
    out = spo("ingest", "human-solutions", str(small), "--lake", str(v1_lake))
    assert out.returncode == 0, out.stderr
    after = (
        Lake.open(v1_lake)
        .sql("SELECT (SELECT count(*) FROM problems) p, (SELECT count(*) FROM trajectories) t")
        .to_dicts()[0]
    )
    assert after == before


def test_newer_lake_is_refused(tmp_path: Path) -> None:
    lake = Lake.open(tmp_path / "lake")
    ds = lake.dataset("runs")
    ds.update_schema_metadata({"spo.schema_version": "99"}, replace=True)
    with pytest.raises(SpoError, match="newer"):
        migrate_lake(tmp_path / "lake")
    out = spo("lake", "migrate", "--lake", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "no lake" in out.stderr
