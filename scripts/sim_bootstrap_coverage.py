#!/usr/bin/env python
"""Coverage of `spo report`'s intervals, simulated: two-level (seeds x problems) against the
problem bootstrap of seed-averaged values (the interval before issue 22).

Each synthetic experiment has two groups of `--seeds` seeds on the same `--problems` problems
and a known true difference `--delta`: value[seed, problem] = problem difficulty (shared by
both groups, sd 0.3) + the group's shift + an arm-by-problem effect (first group only,
`--problem-sd`) + the seed's offset (`--seed-sd`, training noise) + per-seed per-problem
sampling noise (`--noise-sd`). Prints, per seed count, the fraction of `--experiments`
experiments whose 95% interval holds the true difference. docs/experiments.md ("Reading the
intervals") quotes its output.

Usage: python scripts/sim_bootstrap_coverage.py [--seeds 3,5,10] [--problems 100]
       [--seed-sd 0.03] [--problem-sd 0.02] [--noise-sd 0.05] [--experiments 200]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from spo_train.metrics import bootstrap_mean, bootstrap_seeds_problems


def _arm(values: np.ndarray, prefix: str) -> dict[str, dict[str, float]]:
    return {
        f"{prefix}{i}": {f"p{j:04d}": float(v) for j, v in enumerate(row)}
        for i, row in enumerate(values)
    }


def coverage(args: argparse.Namespace, seeds: int) -> dict[str, float]:
    rng = np.random.default_rng(args.rng_seed)
    two_level = averaged = 0
    for _ in range(args.experiments):
        difficulty = rng.normal(0.0, 0.3, args.problems)
        interaction = rng.normal(0.0, args.problem_sd, args.problems)
        arms = []
        for shift, extra in ((args.delta, interaction), (0.0, 0.0)):
            offsets = rng.normal(0.0, args.seed_sd, (seeds, 1))
            noise = rng.normal(0.0, args.noise_sd, (seeds, args.problems))
            arms.append(difficulty + extra + shift + offsets + noise)
        got = bootstrap_seeds_problems(
            _arm(arms[0], "a"), _arm(arms[1], "b"), resamples=args.resamples
        )
        two_level += got.low <= args.delta <= got.high
        _, low, high = bootstrap_mean(
            arms[0].mean(axis=0) - arms[1].mean(axis=0), resamples=args.resamples
        )
        averaged += low <= args.delta <= high
    return {
        "seeds": seeds,
        "two_level": two_level / args.experiments,
        "problems_only": averaged / args.experiments,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3,5,10")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--seed-sd", type=float, default=0.03)
    parser.add_argument("--problem-sd", type=float, default=0.02)
    parser.add_argument("--noise-sd", type=float, default=0.05)
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--rng-seed", type=int, default=2)
    args = parser.parse_args()
    for seeds in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(coverage(args, seeds)))


if __name__ == "__main__":
    main()
