"""Cost of pivotal token search: the bisection (`spo pts`) against the naive "estimate S at
every prefix", on the same trajectories, in one run.

Setup: two fresh lakes under a temporary directory, each with the embedded problem set and its
human solutions (`ensure_problems`, as any command does on an empty lake); the embedded pi_0
and its tokenizer loaded once; the same sandbox judge (`--workers`), the same sampler
(temperature 1, top-p 1, `--max-new-tokens`) and the same K (`--samples`).

Trajectories: successful human solutions of train problems (of the `--pool` shortest by
characters), one per problem, of `--min-tokens`..`--max-tokens` response tokens (as the
trainer encodes them), `--trajectories` of them spread evenly over the lengths there.

Per trajectory, both methods, alternating which goes first (trajectory 0: bisection first,
trajectory 1: naive first, ...) so that background load falls on both alike:

- bisection: the shipped path, `annotate(lake_a, ..., where="t.traj_id = '<id>'")`
  (threshold `--threshold`), its own run, rollouts stored and the annotation written;
- naive: `RolloutEstimator` on lake B (the same class `annotate` uses: stored, judged,
  batched into one generate call per request list) over every prefix length 0..T-1 (S after
  the whole response is 1, as in the bisection), in requests of `--naive-batch` prefixes.

Each method has its own lake, so neither reuses the other's stored rollouts: every rollout
counted was sampled and judged in that method's timed call (the script checks that nothing was
reused). Wall seconds include sampling, judging and the lake inserts; not the model load or the
lake setup.

    python scripts/bench_pts.py                         # 6 trajectories, K=10, 96 new tokens
    python scripts/bench_pts.py --trajectories 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trajectories", type=int, default=6)
    ap.add_argument("--min-tokens", type=int, default=40, help="shortest response (tokens)")
    ap.add_argument("--max-tokens", type=int, default=120, help="longest response (tokens)")
    ap.add_argument("--pool", type=int, default=3000, help="candidates, shortest by chars")
    ap.add_argument("--samples", type=int, default=10, help="K, rollouts per prefix")
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2, help="judge processes")
    ap.add_argument("--naive-batch", type=int, default=16, help="prefixes per naive request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object last")
    args = ap.parse_args(argv)

    from spo_cli.train_cmds import load_generator

    from spo_store.lake import Lake, sql_quote
    from spo_train.embedded.defaults import ensure_problems
    from spo_train.pts import Sampler, annotate, sandbox_judge
    from spo_train.pts.annotate import load_targets
    from spo_train.pts.search import RolloutEstimator

    machine = _machine()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="bench-pts-"))
    lake_a, lake_b = Lake.open(str(tmp / "bisect")), Lake.open(str(tmp / "naive"))
    for lk in (lake_a, lake_b):
        ensure_problems(lk, say=lambda m: None)
    gen, tok, model_id, tok_id = load_generator(None, "transformers")
    sampler = Sampler(max_new_tokens=args.max_new_tokens)
    judge = sandbox_judge(workers=args.workers)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731

    ids = (
        lake_a.sql_arrow(
            "SELECT t.traj_id FROM trajectories t JOIN problems p USING (problem_id) "
            "WHERE p.split = 'train' AND t.source = 'human' AND t.reward = 0 "
            f"AND p.judge_issue IS NULL ORDER BY t.response_chars, t.traj_id LIMIT {int(args.pool)}"
        )
        .column(0)
        .to_pylist()
    )
    common = dict(
        tokenizer_id=tok_id,
        ref_model_id=model_id,
        sampler=sampler,
        k=args.samples,
        threshold=args.threshold,
    )
    targets = load_targets(lake_a, ids, tok, **common)
    # one per problem, within the length bounds, spread evenly over the lengths there
    by_problem: dict[str, Any] = {}
    for t in sorted(targets, key=lambda t: (t.length, t.traj_id)):
        if args.min_tokens <= t.length <= args.max_tokens:
            by_problem.setdefault(t.problem["problem_id"], t)
    pool = sorted(by_problem.values(), key=lambda t: (t.length, t.traj_id))
    step = max(len(pool) / max(args.trajectories, 1), 1.0)
    targets = [pool[int(i * step)] for i in range(min(args.trajectories, len(pool)))]
    say(f"trajectories: {[t.length for t in targets]} response tokens; lakes under {tmp}")

    rows: list[dict[str, Any]] = []
    for i, target in enumerate(targets):
        row: dict[str, Any] = {"traj_id": target.traj_id, "T": target.length}

        def bisection(target: Any = target, row: dict[str, Any] = row) -> None:
            t0 = time.perf_counter()
            rep = annotate(
                lake_a,
                gen,
                tok,
                where=f"t.traj_id = {sql_quote(target.traj_id)}",
                samples=args.samples,
                threshold=args.threshold,
                sampler=sampler,
                model_id=model_id,
                tokenizer_id=tok_id,
                seed=args.seed,
                judge=judge,
                decode=decode,
            )
            assert rep.trajectories == 1 and rep.reused == 0, rep.summary()
            row["bisection"] = {
                "prefixes": rep.prefixes,
                "rollouts": rep.rollouts,
                "pivots": rep.pivots,
                "seconds": round(time.perf_counter() - t0, 2),
            }

        def naive(target: Any = target, row: dict[str, Any] = row) -> None:
            (t,) = load_targets(lake_b, [target.traj_id], tok, **common)
            run_id = lake_b.start_run("pts-naive-bench", {"samples": args.samples})
            est = RolloutEstimator(
                lake_b,
                gen,
                decode,
                judge,
                sampler,
                args.samples,
                run_id=run_id,
                ref_model_id=model_id,
                tokenizer_id=tok_id,
                seed=args.seed,
            )
            t0 = time.perf_counter()
            prefixes = list(range(t.length))
            for s in range(0, len(prefixes), args.naive_batch):
                est([(t, p) for p in prefixes[s : s + args.naive_batch]])
            seconds = time.perf_counter() - t0
            lake_b.end_run(run_id, "completed")
            assert est.reused == 0
            row["naive"] = {
                "prefixes": len(prefixes),
                "rollouts": est.sampled,
                "seconds": round(seconds, 2),
            }

        order = (bisection, naive) if i % 2 == 0 else (naive, bisection)
        for f in order:
            f()
        row["first"] = order[0].__name__
        row["ratio_rollouts"] = round(row["naive"]["rollouts"] / row["bisection"]["rollouts"], 2)
        row["ratio_seconds"] = round(row["naive"]["seconds"] / row["bisection"]["seconds"], 2)
        rows.append(row)
        say(
            f"{i + 1}/{len(targets)} T={row['T']}: bisection {row['bisection']} | "
            f"naive {row['naive']} | x{row['ratio_rollouts']} rollouts, "
            f"x{row['ratio_seconds']} s"
        )

    def total(method: str, key: str) -> float:
        return sum(r[method][key] for r in rows)

    totals = {
        m: {k: round(total(m, k), 2) for k in ("prefixes", "rollouts", "seconds")}
        for m in ("bisection", "naive")
    }
    n = max(len(rows), 1)
    for m in totals:
        totals[m]["rollouts_per_trajectory"] = round(totals[m]["rollouts"] / n, 1)
        totals[m]["seconds_per_trajectory"] = round(totals[m]["seconds"] / n, 2)
    result = {
        "machine": {**machine, "load_at_end": os.getloadavg()},
        "settings": vars(args),
        "model_id": model_id,
        "per_trajectory": rows,
        "totals": totals,
        "ratio_rollouts": round(totals["naive"]["rollouts"] / totals["bisection"]["rollouts"], 2),
        "ratio_seconds": round(totals["naive"]["seconds"] / totals["bisection"]["seconds"], 2),
    }
    header = f"{'T':>4} {'first':>9} | {'bis pref':>8} {'roll':>5} {'s':>7} | "
    say(header + f"{'naive pref':>10} {'roll':>5} {'s':>7} | x roll  x s")
    for r in rows:
        b, v = r["bisection"], r["naive"]
        say(
            f"{r['T']:>4} {r['first']:>9} | {b['prefixes']:>8} {b['rollouts']:>5} "
            f"{b['seconds']:>7.1f} | {v['prefixes']:>10} {v['rollouts']:>5} {v['seconds']:>7.1f}"
            f" | {r['ratio_rollouts']:>6} {r['ratio_seconds']:>4}"
        )
    say(
        f"totals: {totals}; naive/bisection rollouts x{result['ratio_rollouts']}, "
        f"seconds x{result['ratio_seconds']}"
    )
    if args.json:
        print(json.dumps(result))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
