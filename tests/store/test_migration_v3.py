"""Schema 2 -> 3: `behaviour_logprobs` become the sampling distribution's, `model_logprobs` new.

The fixture `tests/fixtures/lake_v2` was written by the schema-v2 release's own code (see
tests/fixtures/README.md): human solutions, pi0 samples at temperature 1 / top-p 1 and at
0.5 / 0.95, online rollouts at temperatures drawn from U(0.1, 0.8), eval samples, q0
estimates, runs and metrics. Every test works on a copy of it.
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

FIXTURES = Path(__file__).parents[1] / "fixtures"
TABLES_WITH_ROWS = ["problems", "q0_estimates", "trajectories", "runs", "metrics", "batches"]


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def v2_lake(tmp_path: Path) -> Path:
    dst = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v2", dst)
    return dst


def _rows(lake: Path, table: str, version: str | None = None) -> list[dict]:
    ds = lance.dataset(str(lake / f"{table}.lance"), version=version)
    return sorted(ds.to_table().to_pylist(), key=lambda r: json.dumps(r, default=str))


def _by_id(lake: Path, version: str | None = None) -> dict[str, dict]:
    return {r["traj_id"]: r for r in _rows(lake, "trajectories", version)}


def _sampled_at_one(r: dict) -> bool:
    return r["temperature"] == 1.0 and r["top_p"] == 1.0


def test_v2_lake_is_refused_with_the_command_that_migrates_it(v2_lake: Path) -> None:
    with pytest.raises(SpoError, match="spo lake migrate"):
        Lake.open(v2_lake)
    out = spo("sql", "SELECT count(*) FROM trajectories", "--lake", str(v2_lake))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "spo lake migrate" in out.stderr
    assert lake_schema_version(v2_lake) == 2
    ds = lance.dataset(str(v2_lake / "trajectories.lance"))
    assert "model_logprobs" not in ds.schema.names  # refusing touched nothing


def test_migrate_keeps_every_row_and_splits_the_logprobs(v2_lake: Path) -> None:
    before = {t: _rows(v2_lake, t) for t in TABLES_WITH_ROWS}
    old = _by_id(v2_lake)
    sampled = [r for r in old.values() if r["behaviour_logprobs"] is not None]
    # The fixture holds what the migration must tell apart.
    assert any(_sampled_at_one(r) for r in sampled)
    assert any(not _sampled_at_one(r) for r in sampled)
    assert {r["source"] for r in old.values()} >= {"human", "pi0", "online", "eval"}

    out = spo("lake", "migrate", "--lake", str(v2_lake), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["from_version"], summary["to_version"]) == (2, SCHEMA_VERSION)
    assert lake_schema_version(v2_lake) == SCHEMA_VERSION

    # Every table keeps every row; trajectories differ only in the two log-prob columns.
    for table in TABLES_WITH_ROWS:
        if table == "trajectories":
            continue
        # (columns later schemas add, such as q0_estimates.s0 in 6, are left out)
        got = [
            {k: r[k] for k in (before[table][0] if before[table] else r)}
            for r in _rows(v2_lake, table)
        ]
        assert got == before[table], table
    new = _by_id(v2_lake)
    assert new.keys() == old.keys()
    kept = nulled = 0
    for traj_id, r in new.items():
        was = old[traj_id]
        # (worker_id: added NULL by the later 4 -> 5 step)
        later = ("behaviour_logprobs", "model_logprobs", "worker_id")
        same = {k: v for k, v in r.items() if k not in later}
        assert same == {k: v for k, v in was.items() if k != "behaviour_logprobs"}
        assert r["model_logprobs"] == was["behaviour_logprobs"]  # the raw T=1 log-probs
        if was["behaviour_logprobs"] is None:  # human rows: neither
            assert r["behaviour_logprobs"] is None and r["source"] == "human"
        elif _sampled_at_one(r):  # mu == pi exactly
            assert r["behaviour_logprobs"] == was["behaviour_logprobs"]
            kept += 1
        else:  # mu is unknown without the model
            assert r["behaviour_logprobs"] is None
            nulled += 1
    assert kept and nulled and kept + nulled == len(sampled)
    note = next(n for n in summary["notes"] if "behaviour_logprobs kept" in n)
    assert f"kept on {kept} rows" in note
    assert f"NULL on {nulled} rows" in note

    # The new code opens and queries it; the v2 lake stays readable under its tag.
    lake = Lake.open(v2_lake, create=False)
    n = lake.sql(
        "SELECT count(*) AS n FROM trajectories WHERE "
        "exp(list_sum(model_logprobs) - list_sum(behaviour_logprobs)) BETWEEN 0.999 AND 1.001"
    )["n"][0]
    assert n == kept  # sequence pi_old / mu == 1 where the sampler was the model itself
    assert _by_id(v2_lake, "schema-v2") == old

    # Migrating again changes nothing: no table gets a new version.
    versions = {t: lance.dataset(str(v2_lake / f"{t}.lance")).version for t in TABLES_WITH_ROWS}
    again = spo("lake", "migrate", "--lake", str(v2_lake), "--json")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert {
        t: lance.dataset(str(v2_lake / f"{t}.lance")).version for t in TABLES_WITH_ROWS
    } == versions
    assert _by_id(v2_lake) == new


def test_greedy_rows_get_zero_behaviour_logprobs(v2_lake: Path) -> None:
    # The v2 CLI refuses temperature 0 but its Python API samples greedily at T=0: make one
    # pi0 row such a row (on the copy) before migrating.
    ds = lance.dataset(str(v2_lake / "trajectories.lance"))
    row = ds.to_table(filter="source = 'pi0' AND temperature = 0.5", limit=1).to_pylist()[0]
    ds.update({"temperature": "CAST(0.0 AS FLOAT)"}, where=f"traj_id = '{row['traj_id']}'")
    migrate_lake(v2_lake)
    got = _by_id(v2_lake)[row["traj_id"]]
    assert got["behaviour_logprobs"] == [0.0] * len(row["response_ids"])
    assert got["model_logprobs"] == row["behaviour_logprobs"]


@pytest.mark.parametrize("crash_at", ["null_update", "set_version"])
def test_migration_killed_half_way_finishes_on_rerun(
    v2_lake: Path, monkeypatch, crash_at: str
) -> None:
    # A crash inside the step (a fault real parts cannot be made to produce on cue): after
    # model_logprobs was added and before behaviour_logprobs were NULLed, or after both.
    old = _by_id(v2_lake)
    real_set_version = migrate_mod._set_version
    real_update = lance.LanceDataset.update

    def crash_on_trajectories(ds, version):
        if ds.uri.rstrip("/").endswith("trajectories.lance"):
            raise KeyboardInterrupt
        real_set_version(ds, version)

    def crash_on_null(self, updates, where=None, **kw):
        if updates.get("behaviour_logprobs") == "NULL":
            raise KeyboardInterrupt
        return real_update(self, updates, where=where, **kw)

    if crash_at == "set_version":
        monkeypatch.setattr(migrate_mod, "_set_version", crash_on_trajectories)
    else:
        monkeypatch.setattr(lance.LanceDataset, "update", crash_on_null)
    with pytest.raises(KeyboardInterrupt):
        migrate_lake(v2_lake)
    assert lake_schema_version(v2_lake) == 2
    monkeypatch.undo()

    report = migrate_lake(v2_lake)
    assert (report.from_version, report.to_version) == (2, SCHEMA_VERSION)
    new = _by_id(v2_lake)
    assert new.keys() == old.keys()
    for traj_id, r in new.items():
        assert r["model_logprobs"] == old[traj_id]["behaviour_logprobs"]
        if r["model_logprobs"] is not None and not _sampled_at_one(r):
            assert r["behaviour_logprobs"] is None


def test_v1_lake_migrates_all_the_way_to_v3(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v1", lake)
    old = _by_id(lake)
    report = migrate_lake(lake)
    assert (report.from_version, report.to_version) == (1, SCHEMA_VERSION)
    assert lake_schema_version(lake) == SCHEMA_VERSION
    new = _by_id(lake)
    assert new.keys() == old.keys()
    assert any(r["model_logprobs"] is not None for r in new.values())
    for traj_id, r in new.items():
        assert r["model_logprobs"] == old[traj_id]["behaviour_logprobs"]
        keep = r["model_logprobs"] is not None and _sampled_at_one(r)
        assert r["behaviour_logprobs"] == (r["model_logprobs"] if keep else None)
    Lake.open(lake, create=False)  # the new code reads it
