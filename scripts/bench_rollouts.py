"""Rollout workers on the embedded default: what asynchronous sampling buys (docs/rollouts.md).

Every measurement runs the real commands (`spo estimate-q0`, `spo train`, `spo rollout`) as
subprocesses on one temporary lake with the embedded problem set, each with its own local Ray:
1. setup: q0 of pi_0 on the first `--problems` train problems (`--q0-samples` each), which
   SPO trains against (`--train-problems` keeps every run on those problems);
2. wall-clock of `--steps` training steps with `--rollout-workers W`: SPO with new weights every
   10 steps (the paper's) against PPO with new weights every step, same batch size; from the
   lake's metrics: the trainer's idle fraction (sum of `rollout/idle_s` over sum of
   `train/step_s`), mean commit latency (`rollout/commit_s`) and mean staleness
   (`rollout/staleness`, trainer versions) of what the workers committed;
3. rollouts per second of `spo rollout` with 1 and with 2 workers (same problems and n; the
   second run uses another seed so it samples anew instead of resuming the first).
Times include each command's start (Ray, loading the model in every worker): the JSON keeps
both the command's wall-clock and the rates the commands report.

    python scripts/bench_rollouts.py                       # 20 steps, 2 workers, 16 problems
    python scripts/bench_rollouts.py --steps 50 --workers 2 --json

Say how loaded the machine was (`uptime`) when quoting a number: 2 shared cores make every
figure here depend on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def spo(*args: str, env: dict[str, str]) -> tuple[dict[str, Any] | None, float]:
    """Run `spo ARGS --json`; (its JSON summary or None, seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, env=env
    )
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"spo {' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    lines = r.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None), dt


def run_metrics(lake: str, run_id: str) -> dict[str, float]:
    from spo_store.lake import Lake

    rows = (
        Lake.open(lake, create=False)
        .sql(
            "SELECT name, sum(value) AS total, avg(value) AS mean FROM metrics "
            f"WHERE run_id = '{run_id}' GROUP BY 1"
        )
        .to_dicts()
    )
    got = {r["name"]: r for r in rows}

    def total(name: str) -> float:
        return float(got[name]["total"]) if name in got else float("nan")

    def mean(name: str) -> float:
        return float(got[name]["mean"]) if name in got else float("nan")

    return {
        "idle_fraction": total("rollout/idle_s") / total("train/step_s"),
        "commit_s_mean": mean("rollout/commit_s"),
        "staleness_mean": mean("rollout/staleness"),
        "worker_rows_per_s_mean": mean("rollout/samples_per_s"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--q0-samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rollout-n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rollout-samples", type=int, default=4, help="n per problem, spo rollout")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also SPO with new weights every step and --staleness 0 (on-policy like PPO)",
    )
    ap.add_argument("--skip-rollout", action="store_true", help="skip the spo rollout runs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as tmp:
        lake = str(Path(tmp) / "lake")
        env = {**os.environ, "SPO_LAKE": lake}
        mnt = str(args.max_new_tokens)
        common = ["--lake", lake, "--judge-workers", "1"]
        spo("estimate-q0", *common, "--samples", str(args.q0_samples), "--limit",
            str(args.problems), "--max-new-tokens", mnt, env=env)  # fmt: skip
        out: dict[str, Any] = {
            "steps": args.steps,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "load": os.getloadavg(),
        }
        # PPO is on-policy: new weights every step and only rows of the current version
        # (--staleness 0), as the paper's baseline; SPO takes weights every 10 steps and rows up
        # to 10 versions old.
        runs = [("spo_interval10", "spo", 10, 10), ("ppo_interval1", "ppo", 1, 0)]
        if args.ablation:  # SPO held on-policy like PPO: what the interval alone buys
            runs.append(("spo_interval1", "spo", 1, 0))
        for name, algo, interval, staleness in runs:
            summary, seconds = spo(
                "train", *common, "--algo", algo, "--steps", str(args.steps), "--batch-size",
                str(args.batch_size), "--rollout-n", str(args.rollout_n), "--max-new-tokens",
                mnt, "--train-problems", str(args.problems), "--model-update-interval",
                str(interval), "--staleness", str(staleness), "--rollout-workers",
                str(args.workers), "--eval-problems", "0",
                "--wandb", "off", "--no-tensorboard", "--checkpoint-every", str(args.steps),
                "--output", str(Path(tmp) / name), "--json", env=env,
            )  # fmt: skip
            assert summary is not None
            out[name] = {"seconds": round(seconds, 1), **run_metrics(lake, summary["run_id"])}
        for w in () if args.skip_rollout else (1, 2):
            summary, seconds = spo(
                "rollout", *common, "--split", "train", "--limit", str(args.problems), "--n",
                str(args.rollout_samples), "--max-new-tokens", mnt, "--rollout-workers", str(w),
                "--seed", str(w), "--json", env=env,
            )  # fmt: skip
            assert summary is not None
            out[f"rollout_{w}_workers"] = {
                "seconds": round(seconds, 1),
                "rows": summary["rows"],
                "rollouts_per_s": summary["rollouts_per_s"],
                "commit_s_mean": summary["commit_s_mean"],
            }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
