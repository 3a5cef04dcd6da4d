"""Concurrent estimate-q0 writers keep one q0_estimates row per key (issue 9, items 8 and 12):
new keys go through Lake.insert_new, more samples through a locked update."""

from __future__ import annotations

import multiprocessing as mp

from spo_store.lake import Lake
from spo_store.q0_estimates import q0_at_beta
from tests import helpers_lake as h


def test_racing_writers_store_one_consistent_row_per_key(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    ctx = mp.get_context("spawn")  # Lance is not fork-safe
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=h.q0_writer, args=(lake.uri, w, 40, 6, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    rows = lake.sql("SELECT * FROM q0_estimates").to_dicts()
    assert len(rows) == 40 and len({r["estimate_id"] for r in rows}) == 40
    for r in rows:
        # each row is one writer's whole row: counts, q0 and run agree
        worker, rnd = int(r["run_id"][1]), int(r["run_id"].split("-r")[1])
        assert r["samples"] == 4 * (rnd + 1) + worker
        assert r["q0"] == q0_at_beta(r["successes"], r["samples"], 0.1)
        # ... and so are the S0 estimate and its interval (schema 6)
        assert r["s0"] == r["successes"] / r["samples"] and r["stopping"] == "fixed"
        assert r["q0_low"] <= r["q0"] <= r["q0_high"]
