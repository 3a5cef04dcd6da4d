#!/usr/bin/env python
"""Q0 error and samples of fixed-n against sequential sampling, simulated from real S0 values.

Fixed 800 samples on the embedded train split is about a day on 2 cores, so the comparison is
simulated with Binomial draws around real per-problem success rates: `--lake` holds fixed-n
estimates of the shipped pi_0 (`spo estimate-q0 --stopping fixed --samples N`), one per problem.
Each problem's true S0 is drawn from the Jeffreys posterior Beta(c + 1/2, n - c + 1/2) of its
(n, c) (`--truth posterior`, so a problem with no success in n gets a small positive S0, as the
hard ones really have) or taken as c/n (`--truth plugin`). Every rule is then run `--reps` times
per problem exactly as `spo estimate-q0` runs it (the same checks, stop at r successes or the
cap, the same unbiased estimator: `spo_store.q0_sequential`), and the error of Q0 =
beta log(S0 + (1 - S0) e^{-1/beta}) at the default beta is measured against the truth.

Per problem: the 95th percentile and the median of |Q0 error| over the reps, and the mean
samples. Over problems: the worst case (max) and the median of those. Also checks, per rule,
that the S0 estimate is unbiased (mean over reps against the truth, pooled) and how often the
95% interval covers the truth.

Usage: python scripts/sim_q0_stopping.py --lake LAKE [--cap 800] [--r 8,16,32] [--reps 2000]
"""

from __future__ import annotations

import argparse
import json
import math

import lance
import numpy as np

from spo_store.q0_sequential import StoppingRule, _terminal_states, s0_interval

BETA = 1.0 / math.log(100000.0)


def q0_np(s: np.ndarray, beta: float = BETA) -> np.ndarray:
    """beta log(S + (1 - S) e^{-1/beta}), vectorised (exact -1 at 0, 0 at 1)."""
    s = np.asarray(s, dtype=float)
    with np.errstate(divide="ignore"):
        return beta * np.logaddexp(np.log(s), np.log1p(-s) - 1.0 / beta)


def design_tables(rule: StoppingRule) -> tuple[dict[tuple[int, int], float], list[int]]:
    """(n, c) -> unbiased estimate, for every terminal state of the rule from zero samples."""
    r = rule.successes if rule.kind == "sequential" else None
    table = {}
    for n, cs, lw, lw1 in _terminal_states(rule.schedule(), r):
        for c, a, b in zip(cs.tolist(), lw.tolist(), lw1.tolist(), strict=True):
            table[(n, c)] = math.exp(b - a)
    return table, rule.schedule()


def simulate(
    rule: StoppingRule, p: float, reps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`reps` runs of `rule` on a problem of success rate p: (estimates, samples, successes)."""
    table, checks = design_tables(rule)
    n = np.zeros(reps, dtype=np.int64)
    c = np.zeros(reps, dtype=np.int64)
    active = np.ones(reps, dtype=bool)
    prev = 0
    for b in checks:
        idx = np.flatnonzero(active)
        c[idx] += rng.binomial(b - prev, p, idx.size)
        n[idx] = b
        if rule.kind == "sequential":
            active[idx[c[idx] >= rule.successes]] = False
        prev = b
        if not active.any():
            break
    est = np.array([table[(int(a), int(b))] for a, b in zip(n, c, strict=True)])
    return est, n, c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", required=True, help="lake with fixed-n pi_0 estimates")
    ap.add_argument("--cap", type=int, default=800)
    ap.add_argument("--r", default="8,12,16,24,32", help="stop-successes values to compare")
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--first", type=int, default=32, help="first check of the sequential rule")
    ap.add_argument("--growth", type=float, default=1.5, help="growth of the checks")
    ap.add_argument("--truth", choices=["posterior", "plugin"], default="posterior")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--coverage-reps",
        type=int,
        default=0,
        help="reps per problem whose interval is checked (slow; exact coverage is tested)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    # Read with Lance itself: the source lake may be of an older schema (counts only are used).
    est_rows = (
        lance.dataset(f"{args.lake.rstrip('/')}/q0_estimates.lance")
        .to_table(columns=["problem_id", "samples", "successes"])
        .to_pylist()
    )
    rows = sorted((r["problem_id"], r["samples"], r["successes"]) for r in est_rows)
    rng = np.random.default_rng(args.seed)
    if args.truth == "posterior":
        truths = [float(rng.beta(c + 0.5, n - c + 0.5)) for _, n, c in rows]
    else:
        truths = [c / n for _, n, c in rows]
    rules = {"fixed": StoppingRule("fixed", cap=args.cap)}
    for r in (int(x) for x in args.r.split(",")):
        rules[f"sequential r={r}"] = StoppingRule(
            "sequential", cap=args.cap, successes=r, first=args.first, growth=args.growth
        )
    out: dict[str, object] = {
        "problems": len(rows),
        "source_samples_per_problem": sorted({n for _, n, _ in rows}),
        "mean_source_s0": float(np.mean([c / n for _, n, c in rows])),
        "zero_success_problems": sum(c == 0 for _, _, c in rows),
        "truth": args.truth,
        "reps": args.reps,
        "cap": args.cap,
        "first": args.first,
        "growth": args.growth,
        "rules": {},
    }
    for name, rule in rules.items():
        p95, med, samples, bias_num, cover, covered = [], [], [], [], 0, 0
        for p in truths:
            est, n, c = simulate(rule, p, args.reps, rng)
            err = np.abs(q0_np(est) - q0_np(np.array([p]))[0])
            p95.append(float(np.quantile(err, 0.95)))
            med.append(float(np.median(err)))
            samples.append(float(n.mean()))
            bias_num.append(float(est.mean() - p))
            r_ = rule.successes if rule.kind == "sequential" else None
            for i in range(min(args.coverage_reps, args.reps)):
                checks = [b for b in rule.schedule() if b <= n[i]]
                lo, hi = s0_interval(
                    int(n[i]), int(c[i]), checks if r_ else [int(n[i])], r_, rule.schedule()
                )
                cover += 1
                covered += lo <= p <= hi
        out["rules"][name] = {  # type: ignore[index]
            "mean_samples_per_problem": round(float(np.mean(samples)), 1),
            "samples_vs_fixed": None,
            "q0_err_p95_worst": round(max(p95), 4),
            "q0_err_p95_median": round(float(np.median(p95)), 4),
            "q0_err_median_median": round(float(np.median(med)), 4),
            "q0_err_median_worst": round(max(med), 4),
            "s0_bias_mean": float(np.mean(bias_num)),
            "s0_bias_max_abs": float(np.max(np.abs(bias_num))),
            "interval_coverage": round(covered / cover, 4) if cover else None,
        }
        print(name, json.dumps(out["rules"][name]), flush=True)  # type: ignore[index]
    fixed = out["rules"]["fixed"]["mean_samples_per_problem"]  # type: ignore[index]
    for v in out["rules"].values():  # type: ignore[union-attr]
        v["samples_vs_fixed"] = round(v["mean_samples_per_problem"] / fixed, 3)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
