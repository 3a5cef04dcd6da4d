#!/usr/bin/env python
"""Explorer page times on the benchmark lake (BENCHMARKS.md, "Explorer").

Builds the synthetic lake of scripts/bench_lake.py (`--rows` trajectories over 5,000 problems,
~512 tokens each; appended in batches of `--batch` rows, uncompacted) unless `--root` already
holds one, adds what a training run leaves (a `train` run with 100 steps of metrics and batches
of 128 trajectory ids, and `spo pts` annotations of 50 trajectories), then serves it with the
real `spo lake serve` and times each page over HTTP (server side + transfer, one client):
the first request (index cold start) and the p50/p95 over `--requests` requests with varying
ids. Usage:
  python scripts/bench_explorer.py --rows 1000000 --root /tmp/spo-explorer-bench [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lake  # noqa: E402  (scripts/ is not a package)

from spo_store.annotations import annotation_row, rollout_key  # noqa: E402
from spo_store.lake import Lake  # noqa: E402

RUN = "train-bench"


def build(root: Path, rows: int, batch: int) -> None:
    rng = np.random.default_rng(0)
    lake = Lake.open(root)
    lake.append("problems", bench_lake.make_problems(rng))
    lake.insert_new("q0_estimates", bench_lake.make_q0_estimates(rng))
    problem_ids = np.array([f"bench-{i:05d}" for i in range(bench_lake.N_PROBLEMS)])
    done, t0 = 0, time.perf_counter()
    while done < rows:
        n = min(batch, rows - done)
        lake.append("trajectories", bench_lake.make_batch(rng, done, n, problem_ids))
        done += n
        if (done // n) % 20 == 0:
            print(f"  {done:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    now = dt.datetime.now(dt.UTC)
    lake.append(
        "runs",
        [
            {
                "run_id": r,
                "kind": k,
                "status": "completed",
                "config": json.dumps({"bench": True}),
                "started_at": now,
                "ended_at": now,
            }
            for r, k in (
                (RUN, "train"),
                (bench_lake.RUN_ID, "rollout"),
                ("ingest-bench", "ingest"),
                ("pi0-bench", "estimate-q0"),
            )
        ],
    )
    steps = 100
    lake.append(
        "metrics",
        [
            {
                "run_id": RUN,
                "step": s,
                "name": name,
                "value": float(rng.random()),
                "created_at": now,
            }
            for s in range(steps)
            for name in ("train/loss", "train/reward", "train/kl", "train/entropy", "lr")
        ],
    )
    version = lake.dataset("trajectories").version
    lake.append(
        "batches",
        [
            {
                "run_id": RUN,
                "step": s,
                "trajectories_version": version,
                "traj_ids": [f"t-{int(i):09d}" for i in rng.integers(0, rows, 128)],
                "sources": ["online"] * 128,
                "seed": s,
            }
            for s in range(steps)
        ],
    )
    annotated = [f"t-{int(i):09d}" for i in rng.integers(0, rows, 50)]
    lens = {
        r["traj_id"]: r["num_response_tokens"]
        for r in lake.sql_arrow(
            "SELECT traj_id, num_response_tokens FROM trajectories WHERE traj_id IN ("
            + ", ".join(f"'{t}'" for t in annotated)
            + ")"
        ).to_pylist()
    }
    skey = "temperature=1,top_p=1,max_new_tokens=256"
    lake.insert_new(
        "annotations",
        [
            annotation_row(
                traj_id=t,
                run_id="pts-bench",
                ref_model_id="pi0-bench",
                tokenizer_id="bench-tok",
                sampler_key=skey,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=256,
                rollouts_per_estimate=10,
                threshold=0.2,
                response_tokens=n,
                estimates={p: (10, int(rng.integers(0, 11))) for p in range(-1, n - 1, 16)},
                rollout_key_=rollout_key(t, "pi0-bench", "bench-tok", skey),
                tokens=[f"w{i} " for i in range(n)],
            )
            for t, n in lens.items()
        ],
    )
    print(f"built {rows:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)


def timed_get(url: str) -> float:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        resp.read()
        assert resp.status == 200, url
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--root", type=Path, default=Path("/tmp/spo-explorer-bench"))
    ap.add_argument("--requests", type=int, default=30, help="requests per page")
    ap.add_argument("--keep", action="store_true", help="keep the lake")
    args = ap.parse_args()
    if not (args.root / "trajectories.lance").exists():
        build(args.root, args.rows, args.batch)
    rng = np.random.default_rng(1)
    rows = Lake.open(args.root, create=False).dataset("trajectories").count_rows()
    annotated = [
        r["traj_id"]
        for r in Lake.open(args.root, create=False)
        .sql_arrow("SELECT traj_id FROM annotations")
        .to_pylist()
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", "lake", "serve", "--lake", str(args.root)]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    t_start = time.perf_counter()
    try:
        base = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline()).group(0)
        startup = time.perf_counter() - t_start
        n = args.requests

        def problem() -> str:
            return f"/problems/bench-{int(rng.integers(0, bench_lake.N_PROBLEMS)):05d}"

        def traj() -> str:
            return f"/trajectories/t-{int(rng.integers(0, rows)):09d}"

        pages = {
            "problem page /problems/{id}": problem,
            "trajectory page /trajectories/{id}": traj,
            "trajectory with S_t heat strip": lambda: (
                "/trajectories/" + annotated[int(rng.integers(0, len(annotated)))]
            ),
            "problem list /problems (page k)": lambda: (
                f"/problems?page={int(rng.integers(1, 100))}"
            ),
            "problem list, filtered": lambda: (
                "/problems?" + urlencode({"human": "yes", "model": "no", "min_pass": "0.1"})
            ),
            "overview /": lambda: "/",
            "run page /runs/{id}": lambda: f"/runs/{quote(RUN)}",
            "batch rows /runs/{id}/steps/{k}": lambda: (
                f"/runs/{RUN}/steps/{int(rng.integers(0, 100))}"
            ),
            "compare /compare?problem_id=": lambda: (
                "/compare?problem_id=" + problem().rsplit("/", 1)[1]
            ),
            "trajectories of a run at a policy version": lambda: (
                "/trajectories?"
                + urlencode(
                    {"run_id": bench_lake.RUN_ID, "policy_version": int(rng.integers(0, 100))}
                )
            ),
            "SQL page, aggregate over trajectories": lambda: (
                "/sql?"
                + urlencode(
                    {"q": "SELECT source, count(*), avg(reward) FROM trajectories GROUP BY 1"}
                )
            ),
        }
        first = {name: timed_get(base + make()) for name, make in pages.items()}
        results = {}
        for name, make in pages.items():
            times = sorted(timed_get(base + make()) for _ in range(n))
            results[name] = {
                "first_ms": round(first[name] * 1000, 1),
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "p95_ms": round(times[int(0.95 * (n - 1))] * 1000, 1),
            }
            print(f"{name}: {results[name]}", flush=True)
        rss = None
        status = Path(f"/proc/{proc.pid}/status")
        if status.exists():
            m = re.search(r"VmRSS:\s+(\d+) kB", status.read_text())
            rss = int(m.group(1)) // 1024 if m else None
        print(
            json.dumps(
                {
                    "rows": rows,
                    "startup_s": round(startup, 2),
                    "server_rss_mb": rss,
                    "pages": results,
                },
                indent=2,
            )
        )
    finally:
        proc.terminate()
        proc.wait(30)
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
