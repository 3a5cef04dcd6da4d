"""Held-out evaluation of an experiment's final checkpoints (issue 22: "what is learned may be
the solutions themselves").

    python scripts/heldout_eval.py runs/experiments/offpolicy_unseen \
        --arms zero.spo-half,zero.sft,zero.grpo,low.spo-half,low.sft,low.grpo \
        --pool "p.name >= 'spo_embedded_train_01500' AND json_array_length(json_extract(p.extra, '$.cf_tags')) = 4" \
        --problems 32 --out runs/heldout_unseen [--step 20] [--n 10] [--jobs 2]

The held-out problems are the first `--problems` (by problem_id) of the `--pool` predicate that
no run of the experiment trained on (each arm's `train_where` and `train_problems`, as the runs
selected them). Each arm's checkpoint at `--step` and pi_0 (the arms' `model`) are evaluated
there with `spo eval` (the runs' evaluation sampler: `eval_n`, T = 0.4, top-p 0.95, their
`max_new_tokens`; `--n` samples, default `eval_n`; one sampling seed per evaluation, the
run's; pi_0 once per seed). Results per checkpoint are kept in
`OUT/<arm>/seed-<s>.json` (a rerun skips those done). It prints, per arm, pass@k on the
held-out problems, its change from pi_0 and each arm minus `--reference`, with the two-level
(seeds x problems) bootstrap interval of `spo report` (`spo_train.metrics.
bootstrap_seeds_problems`; pi_0 is one "seed"), and writes `OUT/summary.json` and
`OUT/results.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spo_store.lake import Lake, sql_quote
from spo_store.selection import select_problems
from spo_train.metrics import bootstrap_seeds_problems, pass_at_k


def _settings(exp: Path, arm: str, seed: int) -> dict:
    return tomllib.loads((exp / arm / f"seed-{seed}.toml").read_text())


def _trained(lake: Lake, cfg: dict) -> set[str]:
    rows = select_problems(lake, cfg["train_where"], ["problem_id"])
    return {r["problem_id"] for r in rows[: cfg["train_problems"]]}


def _eval(cmd: list[str], out: Path) -> dict:
    """One `spo eval --json` (its last line), kept in `out`."""
    if out.exists():
        return json.loads(out.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    with log.open("w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return result


def _per_problem(result: dict, k: int) -> dict[str, float]:
    n_of, c_of = result["judged_by_problem"], result["correct_by_problem"]
    return {p: pass_at_k(n, c_of.get(p, 0), k) for p, n in n_of.items() if n >= k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--arms", required=True)
    ap.add_argument("--pool", required=True, help="SQL predicate over problems (alias p)")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument(
        "--reference",
        default=None,
        help="arm the others are compared with; for strata ('zero.sft'), the same stratum's arm "
        "of this name ('spo-half' compares zero.* with zero.spo-half)",
    )
    ap.add_argument("--n", type=int, default=None, help="samples per problem (default: eval_n)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    exp = a.experiment
    meta = json.loads((exp / "experiment.json").read_text())
    seeds = sorted({r["seed"] for arm in meta["arms"].values() for r in arm["runs"]})
    arms = a.arms.split(",")
    lake_uri = _settings(exp, arms[0], seeds[0])["lake"]
    lake = Lake(lake_uri)
    trained: set[str] = set()
    for arm in meta["arms"]:
        for s in seeds:
            if (exp / arm / f"seed-{s}.toml").exists():
                trained |= _trained(lake, _settings(exp, arm, s))
    pool = [r["problem_id"] for r in select_problems(lake, a.pool, ["problem_id"])]
    held = [p for p in pool if p not in trained][: a.problems]
    if len(held) < a.problems:
        sys.exit(f"error: --pool has only {len(held)} problems no run trained on")
    where = "p.problem_id IN (" + ", ".join(map(sql_quote, held)) + ")"
    first = _settings(exp, arms[0], seeds[0])
    ks = list(first.get("eval_k", [1, 10]))
    n = a.n or first["eval_n"]

    def cmd(model: str, seed: int) -> list[str]:
        c = first
        return [
            *("spo", "--threads", "1", "eval", "--lake", lake_uri, "--model", model),
            *("--where", where, "--n", str(n), "--seed", str(seed)),
            *("--temperature", str(c.get("eval_temperature", 0.4))),
            *("--top-p", str(c.get("eval_top_p", 0.95))),
            *("--max-new-tokens", str(c["max_new_tokens"]), "--judge-workers", "1"),
            *("--k", ",".join(map(str, ks)), "--json"),
        ]

    # pi_0 once per seed (each its own samples), like each arm's step-0 evaluations
    jobs = {("pi0", s): (cmd(first["model"], s), a.out / "pi0" / f"seed-{s}.json") for s in seeds}
    for arm in arms:
        for s in seeds:
            ckpt = exp / arm / f"seed-{s}" / f"checkpoint-{a.step:06d}"
            if ckpt.exists():
                jobs[(arm, s)] = (cmd(str(ckpt), s), a.out / arm / f"seed-{s}.json")
    done = 0
    results: dict[tuple[str, int], dict] = {}
    with ThreadPoolExecutor(a.jobs) as pool_ex:
        futures = {key: pool_ex.submit(_eval, c, o) for key, (c, o) in jobs.items()}
        for key, fut in futures.items():
            results[key] = fut.result()
            done += 1
            print(f"heldout: {done}/{len(jobs)} {key[0]} seed {key[1]}", flush=True)
    reference = a.reference or arms[0]

    def reference_of(arm: str) -> str:
        stratum = arm.rpartition(".")[0]
        return f"{stratum}.{reference}" if stratum and "." not in reference else reference

    summary: dict = {"problems": held, "ks": ks, "step": a.step, "arms": {}}
    lines = [
        f"Held-out: {len(held)} problems of `{a.pool}` no run trained on; checkpoints at step "
        f"{a.step}; n = {n}; two-level bootstrap 95% intervals.",
        "",
        "| arm | seeds | "
        + " | ".join(f"pass@{k} | - pi_0 [95% CI] | - {reference} [95% CI]" for k in ks)
        + " |",
        "| --- | --- | " + " | ".join("--- | --- | ---" for _ in ks) + " |",
    ]
    per = {
        (arm, k): {s: _per_problem(r, k) for (a_, s), r in results.items() if a_ == arm}
        for arm in ["pi0", *arms]
        for k in ks
    }
    for arm in ["pi0", *arms]:
        row, entry = [arm, str(len(per[(arm, ks[0])]))], {}
        for k in ks:
            mean = bootstrap_seeds_problems(per[(arm, k)])
            cells = [f"{mean.diff:.3f}"]
            entry[f"pass@{k}"] = mean.diff
            for name, other in (("pi0", "pi0"), ("reference", reference_of(arm))):
                if arm == other or (name == "reference" and arm == "pi0"):
                    cells.append("")
                    continue
                d = bootstrap_seeds_problems(per[(arm, k)], per[(other, k)])
                out = d.low > 0 or d.high < 0
                text = f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                cells.append(f"**{text}**" if out else text)
                entry[f"pass@{k} - {other}"] = [d.diff, d.low, d.high]
            row += cells
        summary["arms"][arm] = entry
        lines.append("| " + " | ".join(row) + " |")
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
