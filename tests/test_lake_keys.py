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
