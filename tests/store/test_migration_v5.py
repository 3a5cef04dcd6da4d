"""Schema 4 -> 5: trajectories gain `worker_id` (the rollout worker that sampled a row).

The fixture `tests/fixtures/lake_v4` was written by the schema-v4 code itself (see
tests/fixtures/README.md): human solutions, pi0 samples, online rollouts of a 2-step train run,
q0 estimates, runs, metrics and batches. Every test works on a copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lance
import pytest
from spo_schemas import SCHEMA_VERSION, TABLES

from spo_store import migrate as migrate_mod
from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.migrate import lake_schema_version, migrate_lake

FIXTURES = Path(__file__).parents[1] / "fixtures"


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def v4_lake(tmp_path: Path) -> Path:
    dst = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v4", dst)
    return dst


def _rows(lake: Path, table: str, version: str | None = None) -> list[dict]:
    ds = lance.dataset(str(lake / f"{table}.lance"), version=version)
    return sorted(ds.to_table().to_pylist(), key=lambda r: json.dumps(r, default=str))


def test_v4_lake_is_refused_then_migrates_keeping_every_row(v4_lake: Path) -> None:
    with pytest.raises(SpoError, match="spo lake migrate"):
        Lake.open(v4_lake)
    old = {t: _rows(v4_lake, t) for t in TABLES}
    sources = {r["source"] for r in old["trajectories"]}
    assert sources == {"human", "pi0", "online"}

    out = spo("lake", "migrate", "--lake", str(v4_lake), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["from_version"], summary["to_version"]) == (4, SCHEMA_VERSION)
    assert lake_schema_version(v4_lake) == SCHEMA_VERSION
    n = len(old["trajectories"])
    assert any(f"worker_id added, NULL on all {n} existing rows" in m for m in summary["notes"])

    for table in TABLES:
        if table != "trajectories":
            # (columns later schemas add, such as q0_estimates.s0 in 6, are left out)
            got = [
                {k: r[k] for k in (old[table][0] if old[table] else r)}
                for r in _rows(v4_lake, table)
            ]
            assert got == old[table], table
    new = _rows(v4_lake, "trajectories")
    assert [{k: v for k, v in r.items() if k != "worker_id"} for r in new] == old["trajectories"]
    assert all(r["worker_id"] is None for r in new)
    # The v4 lake stays readable under its tag; the new code opens the migrated one.
    assert _rows(v4_lake, "trajectories", "schema-v4") == old["trajectories"]
    lake = Lake.open(v4_lake, create=False)
    assert lake.sql("SELECT count(*) AS n FROM trajectories WHERE worker_id IS NULL")["n"][0] == n


def test_migration_killed_after_adding_the_column_finishes_on_rerun(
    v4_lake: Path, monkeypatch
) -> None:
    # A crash between the add-columns commit and the version bump (a fault real parts cannot
    # be made to produce on cue).
    real = migrate_mod._set_version

    def crash_on_trajectories(ds, version):
        if version == 5 and ds.uri.rstrip("/").endswith("trajectories.lance"):
            raise KeyboardInterrupt
        real(ds, version)

    monkeypatch.setattr(migrate_mod, "_set_version", crash_on_trajectories)
    with pytest.raises(KeyboardInterrupt):
        migrate_lake(v4_lake)
    assert lake_schema_version(v4_lake) == 4
    monkeypatch.undo()
    report = migrate_lake(v4_lake)
    assert (report.from_version, report.to_version) == (4, SCHEMA_VERSION)
    names = lance.dataset(str(v4_lake / "trajectories.lance")).schema.names
    assert names.count("worker_id") == 1
    versions = {t: lance.dataset(str(v4_lake / f"{t}.lance")).version for t in TABLES}
    assert migrate_lake(v4_lake).from_version == SCHEMA_VERSION
    assert {t: lance.dataset(str(v4_lake / f"{t}.lance")).version for t in TABLES} == versions
