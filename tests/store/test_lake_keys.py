"""Keyed tables stay deduplicated under concurrent writers (`Lake.insert_new`)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake

SPAWN = mp.get_context("spawn")


def _insert_problems(uri: str, worker: int, barrier) -> None:
    lake = Lake.open(uri)
    for rnd in range(ROUNDS):
        rows = [
            {"problem_id": f"p-{rnd:02d}-{j:02d}", "name": f"n{j}", "statement": f"from {worker}"}
            for j in range(20)
        ]
        barrier.wait(60)  # every writer inserts the same new keys at the same moment
        lake.insert_new("problems", rows)


ROUNDS = 15
WRITERS = 4


def test_racing_writers_store_each_key_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    Lake.open(uri)
    barrier = SPAWN.Barrier(WRITERS)
    procs = [SPAWN.Process(target=_insert_problems, args=(uri, i, barrier)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    lake = Lake.open(uri)
    counts = lake.sql("SELECT count(*) AS n, count(DISTINCT problem_id) AS k FROM problems")
    assert counts.to_dicts() == [{"n": 20 * ROUNDS, "k": 20 * ROUNDS}]


def test_insert_new_keeps_first_of_duplicates_and_reports_count(tmp_path: Path) -> None:
    lake = Lake.open(tmp_path / "lake")
    rows = [
        {"problem_id": "a", "name": "first"},
        {"problem_id": "a", "name": "second"},
        {"problem_id": "b", "name": "b"},
    ]
    _, added = lake.insert_new("problems", rows)
    assert added == 2
    _, added = lake.insert_new("problems", rows)
    assert added == 0
    names = lake.sql("SELECT name FROM problems ORDER BY problem_id")["name"].to_list()
    assert names == ["first", "b"]
    with pytest.raises(SpoError, match="no key"):
        lake.insert_new("metrics", [{"run_id": "r", "name": "x"}])


def _insert_with_small_index(uri: str, worker: int, barrier) -> None:
    import spo_store.lake as lake_mod

    # Thresholds low enough that the racing writers create the key index and fold appended
    # rows into it while they insert (the defaults are 50k rows and 100k unindexed rows).
    lake_mod.KEY_INDEX_MIN_ROWS, lake_mod.KEY_INDEX_MAX_UNINDEXED = 40, 30
    lake = Lake.open(uri)
    for rnd in range(ROUNDS):
        rows = [{"problem_id": f"p-{rnd:02d}-{j:02d}", "name": f"n{j}"} for j in range(20)]
        barrier.wait(60)
        lake.insert_new("problems", rows)


def test_racing_writers_with_the_key_index_store_each_key_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    Lake.open(uri)
    barrier = SPAWN.Barrier(WRITERS)
    procs = [
        SPAWN.Process(target=_insert_with_small_index, args=(uri, i, barrier))
        for i in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    lake = Lake.open(uri)
    counts = lake.sql("SELECT count(*) AS n, count(DISTINCT problem_id) AS k FROM problems")
    assert counts.to_dicts() == [{"n": 20 * ROUNDS, "k": 20 * ROUNDS}]
    (index,) = lake.dataset("problems").describe_indices()
    assert index.name == "problem_id_idx" and index.index_type == "BTree"


def test_key_check_is_exact_across_indexed_appended_and_compacted_rows(
    tmp_path: Path, monkeypatch
) -> None:
    import spo_store.lake as lake_mod
    from spo_store.maintenance import compact

    monkeypatch.setattr(lake_mod, "KEY_INDEX_MIN_ROWS", 50)
    monkeypatch.setattr(lake_mod, "KEY_INDEX_MAX_UNINDEXED", 25)
    lake = Lake.open(tmp_path / "lake")

    def batch(lo: int, hi: int) -> list[dict]:
        return [{"problem_id": f"p{i:04d}", "name": f"n{i}"} for i in range(lo, hi)]

    assert lake.insert_new("problems", batch(0, 40))[1] == 40  # below the threshold: no index
    assert lake.insert_new("problems", batch(30, 60))[1] == 20  # checked at 40 rows: still none
    assert lake.dataset("problems").describe_indices() == []
    assert lake.insert_new("problems", batch(55, 70))[1] == 10  # index created at 60, then checked
    ds = lake.dataset("problems")
    (index,) = ds.describe_indices()
    plan = ds.scanner(columns=["problem_id"], filter="problem_id IN ('p0001')").explain_plan()
    assert "ScalarIndexQuery" in plan  # the check reads the index, not every key
    # rows appended after the index (some keys old, some new) are checked too
    assert lake.insert_new("problems", batch(0, 70))[1] == 0
    assert lake.insert_new("problems", batch(65, 75))[1] == 5
    # past 25 unindexed rows the next keyed write folds them into the index
    assert lake.insert_new("problems", batch(70, 100))[1] == 25
    assert lake.insert_new("problems", batch(99, 101))[1] == 1

    def indexed(ds) -> set[int]:
        return {f for seg in ds.describe_indices()[0].segments for f in seg.fragment_ids}

    assert len(indexed(lake.dataset("problems"))) >= 4
    # plain appends (not keyed) bypass the check; compaction folds everything into the index
    compact(lake, ["problems"])
    ds = lake.dataset("problems")
    assert {f.fragment_id for f in ds.get_fragments()} <= indexed(ds)
    assert lake.insert_new("problems", batch(0, 101))[1] == 0
    assert lake.insert_new("problems", batch(100, 105))[1] == 4
    counts = lake.sql("SELECT count(*) AS n, count(DISTINCT problem_id) AS k FROM problems")
    assert counts.to_dicts() == [{"n": 105, "k": 105}]
