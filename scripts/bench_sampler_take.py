#!/usr/bin/env python
"""A steady-state mixture batch on a kept benchmark lake, and the light-column take of a batch:
`MetadataIndex.take` (chunk by chunk) against pyarrow's `Table.take`, same process, same index,
same positions (checked equal).

Run on a lake kept by `scripts/bench_lake.py --keep` (its problems, q0 estimates and run):
index cold start, first batch, 40 steady-state `sample(128)` calls with token columns; a
steady batch's parts (version check, each source's candidates, Lance's take of the heavy
columns) 10 times; the online staleness window from the kept set's per-version buckets against
the mask over every kept row it replaced (checked equal); then 10 takes of 128 random positions
of the light columns both ways (the index keeps Lance's scan chunks); the time to combine the
index into one chunk (what a full load and every 64th append did before) and a `Table.take`
on that one chunk; then 70 appends of 16 online rows, each followed by an index refresh (a
trainer step's). Appends to the lake. Prints one JSON object.

Usage: python scripts/bench_sampler_take.py LAKE
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lake as b  # noqa: E402  (the same sampler and columns)

from spo_store.lake import Lake  # noqa: E402

APPENDS = 70  # more than MAX_INDEX_CHUNKS


def p(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 1)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    lake = Lake.open(sys.argv[1], create=False)
    t0 = time.perf_counter()
    s = b.new_sampler(lake)
    s.index.refresh()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    s.sample(128, step=0, policy_version=b.POLICY_VERSION, columns=b.SAMPLE_COLUMNS)
    first = time.perf_counter() - t0
    steady = []
    for i in range(1, 41):
        t0 = time.perf_counter()
        s.sample(128, step=i, policy_version=b.POLICY_VERSION, columns=b.SAMPLE_COLUMNS)
        steady.append(time.perf_counter() - t0)
    # one steady batch's parts, 10 times: version check, candidates of each source (the
    # online window applied to its kept set), the light take, Lance's take of the heavy columns
    parts: dict[str, list[float]] = {k: [] for k in ("refresh", "online", "offline", "heavy")}
    heavy = [c for c in b.SAMPLE_COLUMNS if c not in s.index.trajectories.column_names]
    for _ in range(10):
        for name, fn in (
            ("refresh", s.index.refresh),
            ("online", lambda: s.candidates("online", b.POLICY_VERSION)),
            ("offline", lambda: s.candidates("offline", b.POLICY_VERSION)),
        ):
            t0 = time.perf_counter()
            fn()
            parts[name].append(time.perf_counter() - t0)
        pos = np.random.default_rng(len(parts["heavy"])).integers(
            0, s.index.trajectories.num_rows, 128
        )
        t0 = time.perf_counter()
        s.index.dataset.take(pa.array(pos), columns=heavy)
        parts["heavy"].append(time.perf_counter() - t0)
    # the window as it was before the per-version buckets: a mask over every kept online row
    kept = s._candidates[("online", None)]
    have = s.index.take(kept.positions, ["policy_version"]).column(0).cast(pa.float64())
    have = pc.fill_null(have, float("nan")).to_numpy()
    lo, hi = b.POLICY_VERSION - b.STALENESS, b.POLICY_VERSION
    mask = []
    for _ in range(10):
        t0 = time.perf_counter()
        old_window = kept.positions[(have >= lo) & (have <= hi)]
        mask.append(time.perf_counter() - t0)
    assert np.array_equal(old_window, s.candidates("online", b.POLICY_VERSION))
    index = s.index.trajectories
    light = [c for c in b.SAMPLE_COLUMNS if c in index.column_names]
    rng = np.random.default_rng(0)
    new, old = [], []
    for _ in range(10):
        pos = rng.integers(0, index.num_rows, 128)
        t0 = time.perf_counter()
        a = s.index.take(pos, light)
        new.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c = index.select(light).take(pa.array(pos))
        old.append(time.perf_counter() - t0)
        assert a.equals(c)
    # what the index did before it kept the scan's chunks: combine every row, at each full
    # load and every MAX_INDEX_CHUNKS appends (timed once; the copy is then dropped)
    t0 = time.perf_counter()
    combined = index.combine_chunks()
    combine = time.perf_counter() - t0
    one_chunk = []
    for _ in range(5):
        pos = rng.integers(0, index.num_rows, 128)
        t0 = time.perf_counter()
        combined.select(light).take(pa.array(pos))
        one_chunk.append(time.perf_counter() - t0)
    del combined
    # a trainer step's append: refresh after each of `APPENDS` appends of 16 online rows
    # (crosses MAX_INDEX_CHUNKS: the appended chunks are combined once)
    pids = np.array([f"bench-{i:05d}" for i in range(b.N_PROBLEMS)])
    next_id, refresh = 900_000_000, []
    for _ in range(APPENDS):
        lake.append("trajectories", b.make_batch(rng, next_id, 16, pids, "online", 99))
        next_id += 16
        t0 = time.perf_counter()
        s.index.refresh()
        refresh.append(time.perf_counter() - t0)
    out = {
        "rows": index.num_rows,
        "index_chunks": index.column(0).num_chunks,
        "index_cold_s": round(cold, 1),
        "first_batch_s": round(first, 2),
        "sample_p50_ms": p(steady, 50),
        "sample_p95_ms": p(steady, 95),
        "steady_parts_p50_ms": {k: p(v, 50) for k, v in parts.items()},
        "online_kept_rows": len(kept.positions),
        "online_window_rows": len(old_window),
        "online_window_mask_over_kept_p50_ms": p(mask, 50),
        "light_take_index_p50_ms": p(new, 50),
        "light_take_table_take_p50_ms": p(old, 50),
        "light_take_one_chunk_table_take_p50_ms": p(one_chunk, 50),
        "combine_index_s": round(combine, 1),
        "appends": APPENDS,
        "refresh_after_append_p50_ms": p(refresh, 50),
        "refresh_after_append_p95_ms": p(refresh, 95),
        "refresh_after_append_max_ms": p(refresh, 100),
        "index_chunks_at_end": s.index.trajectories.column(0).num_chunks,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
