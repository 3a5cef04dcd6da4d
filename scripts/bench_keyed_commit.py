#!/usr/bin/env python
"""A rollout worker's keyed commit at N rows: the scan of every key (before the key index)
against the BTREE key index, in one process on one lake.

Appends `ROWS` light trajectories (`scripts/bench_lake.py --light` rows: ~16 tokens, ~100
characters; the light columns, `traj_id` among them, as full rows) in 100,000-row appends, then
times `--rounds` keyed commits (`Lake.insert_new` of 64 new online rows) and their key check
alone (`Lake._existing_keys`) three ways, in this order on the same lake:

1. without the index (`KEY_INDEX_MIN_ROWS` out of reach: every key is scanned, as before);
2. with it: `Lake.ensure_key_index` builds it once (timed apart), then the same rounds;
3. with it again, `ensure_key_index` no longer asked to create anything (the index stays).

Prints one JSON object of p50 milliseconds. The lake is deleted at the end.

Usage: python scripts/bench_keyed_commit.py ROWS ROOT [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lake as b  # noqa: E402  (the same synthetic rows)

import spo_store.lake as lake_mod  # noqa: E402
from spo_store.lake import Lake  # noqa: E402

NEVER = 1 << 62


def rounds(lake: Lake, rng: np.random.Generator, pids: np.ndarray, start: int, k: int):
    """p50 ms of the key check and of the whole keyed commit over `k` commits of 64 rows."""
    check, commit = [], []
    for i in range(k):
        table = b.make_batch(rng, start + 64 * i, 64, pids, "online", b.POLICY_VERSION)
        keys = table.column("traj_id").to_pylist()
        t0 = time.perf_counter()
        assert not lake._existing_keys("trajectories", "traj_id", keys)
        check.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert lake.insert_new("trajectories", table)[1] == 64
        commit.append(time.perf_counter() - t0)
    return b.ms(float(np.median(check))), b.ms(float(np.median(commit))), start + 64 * k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=int)
    ap.add_argument("root", type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if args.root.exists():
        sys.exit(f"{args.root} exists; remove it or pass another root")
    b.LIGHT = True
    rng = np.random.default_rng(0)
    pids = np.array([f"bench-{i:05d}" for i in range(b.N_PROBLEMS)])
    out: dict[str, object] = {"rows": args.rows, "insert_rows": 64, "rounds": args.rounds}
    try:
        lake = Lake.open(args.root)
        done = 0
        while done < args.rows:
            n = min(100_000, args.rows - done)
            lake.append("trajectories", b.make_batch(rng, done, n, pids))
            done += n
        default = lake_mod.KEY_INDEX_MIN_ROWS
        lake_mod.KEY_INDEX_MIN_ROWS = NEVER
        out["scan_key_check_p50_ms"], out["scan_insert_new_p50_ms"], done = rounds(
            lake, rng, pids, done, args.rounds
        )
        lake_mod.KEY_INDEX_MIN_ROWS = default
        t0 = time.perf_counter()
        out["index_created"] = lake.ensure_key_index("trajectories")
        out["index_build_s"] = round(time.perf_counter() - t0, 2)
        out["index_key_check_p50_ms"], out["index_insert_new_p50_ms"], done = rounds(
            lake, rng, pids, done, args.rounds
        )
        lake_mod.KEY_INDEX_MIN_ROWS = NEVER
        out["index_kept_key_check_p50_ms"], out["index_kept_insert_new_p50_ms"], done = rounds(
            lake, rng, pids, done, args.rounds
        )
        print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
