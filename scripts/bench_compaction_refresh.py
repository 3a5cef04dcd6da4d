#!/usr/bin/env python
"""The trainer's first batch after a compaction: index kept vs reloaded whole, in one run.

Builds a synthetic lake of `--rows` light trajectories (scripts/bench_lake.py's rows, `--light`
sizes) in `--fragments` appends, warms two `MixtureSampler("online:0.5,offline:0.5")`s on it,
then `--rounds` times: appends a step's rollouts, compacts (`spo_store.maintenance.compact`,
what the trainer's checkpoint runs) and times each sampler's first `sample(128)` after it.
"kept" is today's index (`MetadataIndex._rows_kept_since`: the compaction kept the rows and
their order, so the index and the candidate sets are extended); "reload" has that check off
(what every compaction cost before: a cold start plus every candidate set recomputed). The
two batches must be equal each round.

Usage: python scripts/bench_compaction_refresh.py [--rows 1000000] [--fragments 40]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lake as bl  # noqa: E402

from spo_store.lake import Lake  # noqa: E402
from spo_store.maintenance import compact  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--fragments", type=int, default=40, help="appends that build the lake")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", type=Path, default=Path("/tmp/spo-bench-compaction"))
    args = ap.parse_args()
    bl.LIGHT = True
    shutil.rmtree(args.root, ignore_errors=True)
    rng = np.random.default_rng(0)
    try:
        lake = Lake.open(args.root)
        lake.append("problems", bl.make_problems(rng))
        lake.insert_new("q0_estimates", bl.make_q0_estimates(rng))
        pids = np.array([f"bench-{i:05d}" for i in range(bl.N_PROBLEMS)])
        per = -(-args.rows // args.fragments)
        done = 0
        while done < args.rows:
            n = min(per, args.rows - done)
            lake.append("trajectories", bl.make_batch(rng, done, n, pids))
            done += n
        compact(lake, ["trajectories"])
        print(f"lake: {done:,} light rows, compacted", flush=True)
        kept, reload = bl.new_sampler(lake), bl.new_sampler(lake)
        reload.index._rows_kept_since = lambda ds: False  # the old rule: reload whole
        for s in (kept, reload):
            s.sample(128, policy_version=bl.POLICY_VERSION, columns=bl.SAMPLE_COLUMNS)
        times: dict[str, list[float]] = {"kept": [], "reload": []}
        for r in range(args.rounds):
            for _ in range(4):  # a few steps of rollouts: fragments for compaction to merge
                lake.append(
                    "trajectories",
                    bl.make_batch(rng, done, 64, pids, "online", bl.POLICY_VERSION),
                )
                done += 64
            t0 = time.perf_counter()
            frags = compact(lake, ["trajectories"])["trajectories"]
            t_compact = time.perf_counter() - t0
            got = {}
            for name, s in (("kept", kept), ("reload", reload)):
                t0 = time.perf_counter()
                got[name] = s.sample(
                    128, step=r + 1, policy_version=bl.POLICY_VERSION, columns=bl.SAMPLE_COLUMNS
                ).traj_ids
                times[name].append(time.perf_counter() - t0)
            assert got["kept"] == got["reload"], "kept and reloaded index drew different batches"
            print(
                f"round {r}: compaction {t_compact:.1f} s ({frags[0]} -> {frags[1]} fragments); "
                f"first batch after it: kept {times['kept'][-1] * 1e3:.0f} ms (index epoch "
                f"{kept.index.epoch}), reload {times['reload'][-1] * 1e3:.0f} ms (epoch "
                f"{reload.index.epoch})",
                flush=True,
            )
        for name, t in times.items():
            print(f"{name}: median {statistics.median(t) * 1e3:.0f} ms over {len(t)} rounds")
    finally:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
