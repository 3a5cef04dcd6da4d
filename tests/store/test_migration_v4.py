"""Schema 3 -> 4: annotations gain their key and what their estimates are of.

The fixture `tests/fixtures/lake_v3` was written by the schema-v3 release's own code (see
tests/fixtures/README.md): problems, human solutions, pi0 samples, q0 estimates, runs, and two
annotations rows in the v3 columns. Every test works on a copy of it.
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
from spo_store.migrate import lake_schema_version, legacy_annotation_id, migrate_lake

FIXTURES = Path(__file__).parents[1] / "fixtures"
V3_COLUMNS = [
    "traj_id",
    "run_id",
    "tokenizer_id",
    "positions",
    "s_t",
    "samples",
    "method",
    "created_at",
]


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def v3_lake(tmp_path: Path) -> Path:
    dst = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v3", dst)
    return dst


def _rows(lake: Path, table: str, version: str | None = None) -> list[dict]:
    ds = lance.dataset(str(lake / f"{table}.lance"), version=version)
    return sorted(ds.to_table().to_pylist(), key=lambda r: json.dumps(r, default=str))


def test_v3_lake_is_refused_then_migrates_keeping_every_row(v3_lake: Path) -> None:
    with pytest.raises(SpoError, match="spo lake migrate"):
        Lake.open(v3_lake)
    old = {t: _rows(v3_lake, t) for t in TABLES}
    assert len(old["annotations"]) == 2 and old["trajectories"]

    out = spo("lake", "migrate", "--lake", str(v3_lake), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["from_version"], summary["to_version"]) == (3, SCHEMA_VERSION)
    assert lake_schema_version(v3_lake) == SCHEMA_VERSION
    assert any("annotations: 2 rows written before schema 4" in n for n in summary["notes"])

    for table in TABLES:  # every other table is the same, row for row
        if table != "annotations":
            # (columns later schemas add, such as trajectories.worker_id in 5, are NULL)
            got = [
                {k: r[k] for k in (old[table][0] if old[table] else r)}
                for r in _rows(v3_lake, table)
            ]
            assert got == old[table], table
    new = _rows(v3_lake, "annotations")
    assert [{k: r[k] for k in V3_COLUMNS} for r in new] == old["annotations"]
    for r in new:
        assert r["annotation_id"] == legacy_annotation_id(r)
        assert r["annotation_id"].startswith("legacy-")
        added = set(TABLES["annotations"].names) - set(V3_COLUMNS) - {"annotation_id"}
        assert all(r[c] is None for c in added)  # never recorded: not guessed
    assert len({r["annotation_id"] for r in new}) == 2

    # The new code opens it and keys annotations: re-inserting a legacy row adds nothing.
    lake = Lake.open(v3_lake, create=False)
    assert lake.insert_new("annotations", [dict(new[0])])[1] == 0
    # The v3 lake stays readable under its tag.
    assert _rows(v3_lake, "annotations", "schema-v3") == old["annotations"]


def test_migration_killed_after_adding_columns_finishes_on_rerun(
    v3_lake: Path, monkeypatch
) -> None:
    # A crash between the add-columns commit and the version bump (a fault real parts cannot
    # be made to produce on cue).
    real = migrate_mod._set_version

    def crash_on_annotations(ds, version):
        if ds.uri.rstrip("/").endswith("annotations.lance"):
            raise KeyboardInterrupt
        real(ds, version)

    monkeypatch.setattr(migrate_mod, "_set_version", crash_on_annotations)
    with pytest.raises(KeyboardInterrupt):
        migrate_lake(v3_lake)
    assert lake_schema_version(v3_lake) == 3
    monkeypatch.undo()
    report = migrate_lake(v3_lake)
    assert (report.from_version, report.to_version) == (3, SCHEMA_VERSION)
    rows = _rows(v3_lake, "annotations")
    assert len(rows) == 2 and all(r["annotation_id"].startswith("legacy-") for r in rows)
    # and once more: nothing to do, no new version of any table
    versions = {t: lance.dataset(str(v3_lake / f"{t}.lance")).version for t in TABLES}
    assert migrate_lake(v3_lake).from_version == SCHEMA_VERSION
    assert {t: lance.dataset(str(v3_lake / f"{t}.lance")).version for t in TABLES} == versions
