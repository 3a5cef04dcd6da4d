"""What limits transfer on the embedded default: analyse one `spo demo` output (no training).

    python scripts/demo_transfer.py runs/demo [--explain 400] [--json out.json]

Reads `runs/demo/summary.json` and the evaluation rows of that demo in its lake (pi_0 and the
trained policy on the `trained` and `heldout` sets, same problems and seed) and prints:

1. how the held-out compositions differ from the train ones (depth; adjacent operation pairs
   never seen in train; the same operations in another order);
2. pass rate (mean of c/n per problem) by depth, per set and policy, and what failures are
   (judge_status: wrong_answer / runtime_error / compile_error / ..., responses cut at
   max_new_tokens);
3. per-problem changes of the pass rate from pi_0 to the trained policy, per set, by depth and
   by pi_0's pass rate, and how many problems moved by more than sampling noise;
4. with `--explain N` (sandbox): runs up to N wrong-answer programs per set and policy on all
   their tests and names the first program it behaves like on every test: the reference with
   one step dropped, two adjacent steps swapped, one constant changed, one step replaced by
   another operation, another final step, one of the generator's other modelled bugs
   (off-by-one read or comparison, flipped comparison, ...), or none of these.

Only the judge runs programs (bubblewrap sandbox); everything else is SQL over the lake and the
problem generator's reference interpreter (`spo_train.embedded.generator.evaluate`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

from spo_store.lake import Lake, sql_quote
from spo_train.embedded.generator import (
    CONSTANTS,
    FINALS,
    TRANSFORMS,
    Op,
    Problem,
    applicable_bugs,
    composition_pools,
    evaluate,
    generate_split,
    outputs_equal,
    parse_input,
)
from spo_train.judge import JudgeJob, judge_batch
from spo_train.lm.prompting import extract_code


def rate(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f}" if values else "n/a"


def load(demo_dir: Path) -> dict[str, Any]:
    summary = json.loads((demo_dir / "summary.json").read_text())
    lake = Lake.open(summary["lake"], create=False)
    rows = lake.sql(
        "SELECT t.problem_id, p.name, p.split, t.model_id, t.reward, t.judge_status, "
        "t.passed_tests, t.total_tests, t.finish_reason, t.response FROM trajectories t "
        "JOIN problems p USING (problem_id) WHERE t.source = 'eval' AND t.run_id = "
        + sql_quote(summary["demo_run_id"])
    ).to_dicts()
    after_id = f"{summary['train_run_id']}@{summary['steps']}"
    # since 2026-12-07 the demo also evaluates its GRPO arm (hard set only): not pi_0 or SPO
    grpo_id = f"{summary.get('grpo_run_id')}@{summary['steps']}"
    rows = [r for r in rows if r["model_id"] != grpo_id]
    for r in rows:
        r["policy"] = "after" if r["model_id"] == after_id else "before"
    return {"summary": summary, "lake": lake, "rows": rows}


def problems_by_name() -> dict[str, Problem]:
    """The embedded problems regenerated from the seed (Ops with their constants)."""
    out = {}
    for split, size in (("train", 2000), ("test", 200)):
        out.update({p.name: p for p in generate_split(split, size, 0)})
    return out


def unseen_pairs(kinds: tuple[str, ...], train_pairs: set[tuple[str, str]]) -> int:
    return sum(pair not in train_pairs for pair in pairwise(kinds))


def structure(sets: dict[str, list[str]], probs: dict[str, Problem]) -> dict[str, Any]:
    train_problems = [p for p in probs.values() if p.split == "train"]
    train_comps = Counter(p.composition for p in train_problems)
    train_pairs = {pair for c in train_comps for pair in pairwise(c)}
    train_bags = {tuple(sorted(c[:-1])) + (c[-1],) for c in train_comps}
    pools = composition_pools(0)
    out: dict[str, Any] = {
        "train_problems": len(train_problems),
        "train_compositions": len(train_comps),
        "pool_sizes": {k: len(v) for k, v in pools.items()},
    }
    for name, names in sets.items():
        comps = [probs[n].composition for n in names]
        out[name] = {
            "problems": len(names),
            "depth": dict(sorted(Counter(len(c) - 1 for c in comps).items())),
            "composition_in_train": sum(c in train_comps for c in comps),
            "with_unseen_adjacent_pair": sum(unseen_pairs(c, train_pairs) > 0 for c in comps),
            "same_ops_other_order_in_train": sum(
                c not in train_comps and tuple(sorted(c[:-1])) + (c[-1],) in train_bags
                for c in comps
            ),
            "train_problems_per_composition": statistics.fmean(
                [train_comps.get(c, 0) for c in comps]
            ),
        }
    out["_train_pairs"] = train_pairs
    return out


def per_problem(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(policy, name) -> (judged, correct)."""
    acc: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["reward"] is None:
            continue
        a = acc[(r["policy"], r["name"])]
        a[0] += 1
        a[1] += r["reward"] == 0
    return {k: (n, c) for k, (n, c) in acc.items()}


def pass_rates(
    sets: dict[str, list[str]], counts: dict, probs: dict[str, Problem], train_pairs: set
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, names in sets.items():
        by: dict[str, Any] = {}
        for policy in ("before", "after"):
            per_depth: dict[int, list[float]] = defaultdict(list)
            for n in names:
                j, c = counts.get((policy, n), (0, 0))
                if j:
                    per_depth[len(probs[n].composition) - 1].append(c / j)
            by[policy] = {
                "all": rate([v for vs in per_depth.values() for v in vs]),
                **{f"depth {d}": rate(v) for d, v in sorted(per_depth.items())},
                "solved_by_no_sample": sum(counts.get((policy, n), (0, 0))[1] == 0 for n in names),
            }
        if name == "heldout":
            for seen in (True, False):
                vals = [
                    counts[("before", n)][1] / counts[("before", n)][0]
                    for n in names
                    if (unseen_pairs(probs[n].composition, train_pairs) == 0) == seen
                    and counts.get(("before", n), (0, 0))[0]
                ]
                key = "all pairs seen in train" if seen else "an unseen adjacent pair"
                by["before"][f"{key} ({len(vals)})"] = rate(vals)
        out[name] = by
    return out


def failures(rows: list[dict[str, Any]], sets: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, names in sets.items():
        wanted = set(names)
        for policy in ("before", "after"):
            sel = [r for r in rows if r["name"] in wanted and r["policy"] == policy]
            failed = [r for r in sel if r["reward"] == -1]
            status = Counter(r["judge_status"] for r in failed)
            wrong = [r for r in failed if r["judge_status"] == "wrong_answer"]
            out[f"{name}/{policy}"] = {
                "samples": len(sel),
                "failed": len(failed),
                "status_share": {
                    k: round(v / max(1, len(failed)), 3) for k, v in status.most_common()
                },
                "cut_at_max_new_tokens": sum(r["finish_reason"] == "length" for r in failed),
                "wrong_answers": len(wrong),
            }
    return out


def changes(sets: dict[str, list[str]], counts: dict, probs: dict[str, Problem]) -> dict:
    out: dict[str, Any] = {}
    for name, names in sets.items():
        diffs, by_depth, by_start = [], defaultdict(list), defaultdict(list)
        up = down = 0
        for n in names:
            (jb, cb), (ja, ca) = counts.get(("before", n), (0, 0)), counts.get(("after", n), (0, 0))
            if not (jb and ja):
                continue
            b, a = cb / jb, ca / ja
            d = a - b
            diffs.append(d)
            by_depth[len(probs[n].composition) - 1].append(d)
            bucket = (
                "0" if b == 0 else "(0, 0.2]" if b <= 0.2 else "(0.2, 0.5]" if b <= 0.5 else "> 0.5"
            )
            by_start[bucket].append(d)
            # beyond binomial noise: |d| > 2 standard errors of a difference of two rates
            p = (cb + ca) / (jb + ja)
            se = math.sqrt(max(p * (1 - p), 1e-9) * (1 / jb + 1 / ja))
            up += d > 2 * se
            down += d < -2 * se
        out[name] = {
            "mean_change": rate(diffs),
            "problems_up_beyond_noise": up,
            "problems_down_beyond_noise": down,
            "by_depth": {
                f"depth {d}": f"{rate(v)} ({len(v)})" for d, v in sorted(by_depth.items())
            },
            "by_pi0_rate": {k: f"{rate(v)} ({len(v)})" for k, v in sorted(by_start.items())},
        }
    return out


STRUCTURAL = (
    "one step dropped",
    "adjacent steps swapped",
    "one step replaced",
    "another final step",
)
"""Variants with another composition (the others keep the problem's own)."""


def variants(p: Problem) -> list[tuple[str, tuple[Op, ...], Op, Any]]:
    """(label, transforms, final, bug) of programs a wrong answer may behave like, tried in
    this order (the first that matches every test names the answer)."""
    t, f = list(p.transforms), p.final
    out: list[tuple[str, tuple[Op, ...], Op, Any]] = []
    for i in range(len(t)):
        out.append(("one step dropped", tuple(t[:i] + t[i + 1 :]), f, None))
    for i in range(len(t) - 1):
        s = t[:]
        s[i], s[i + 1] = s[i + 1], s[i]
        out.append(("adjacent steps swapped", tuple(s), f, None))
    for i, op in enumerate(t):
        for c in CONSTANTS.get(op.kind, ()):
            if c != op.arg:
                out.append(
                    (
                        f"one constant changed ({op.kind})",
                        tuple(t[:i] + [Op(op.kind, c)] + t[i + 1 :]),
                        f,
                        None,
                    )
                )
    for c in CONSTANTS.get(f.kind, ()):
        if c != f.arg:
            out.append((f"one constant changed ({f.kind})", tuple(t), Op(f.kind, c), None))
    for i, op in enumerate(t):
        for kind in TRANSFORMS:
            if kind != op.kind:
                for c in CONSTANTS.get(kind, (None,)):
                    out.append(
                        ("one step replaced", tuple(t[:i] + [Op(kind, c)] + t[i + 1 :]), f, None)
                    )
    for kind in FINALS:
        if kind != f.kind:
            for c in CONSTANTS.get(kind, (None,)):
                out.append(("another final step", tuple(t), Op(kind, c), None))
    # the generator's modelled bugs that are none of the above (off-by-one reads, flipped or
    # off-by-one comparisons, a missing guard, ...)
    out += [
        (f"modelled bug {b.kind}", tuple(t), f, b)
        for b in applicable_bugs(t, f)
        if b.kind != "drop_step"
    ]
    return out


def explain(
    rows: list[dict[str, Any]],
    sets: dict[str, list[str]],
    probs: dict[str, Problem],
    train_comps: set[tuple[str, ...]],
    limit: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, names in sets.items():
        for policy in ("before", "after"):
            wanted = set(names)
            wrong = [
                r
                for r in rows
                if r["name"] in wanted
                and r["policy"] == policy
                and r["judge_status"] == "wrong_answer"
            ]
            random.Random(0).shuffle(wrong)
            wrong = wrong[:limit]
            jobs = []
            for r in wrong:
                p = probs[r["name"]]
                tests = p.public_tests + p.private_tests
                jobs.append(JudgeJob(source=extract_code(r["response"]), tests=tests))
            verdicts = judge_batch(jobs, stop_on_first_failure=False)
            labels: Counter[str] = Counter()
            constants: Counter[str] = Counter()
            structural_in_train = 0
            for r, v in zip(wrong, verdicts, strict=True):
                p = probs[r["name"]]
                inputs = [parse_input(i) for i, _ in p.public_tests + p.private_tests]
                # a test that ran to its end (passed or not) has its output; a crash has none
                got = [t.stdout if t.status in ("ok", "wrong_answer") else None for t in v.tests]
                if len(got) != len(inputs):
                    labels["not all tests ran"] += 1
                    continue
                label = "none of these"
                for lab, t, f, bug in variants(p):
                    try:
                        want = [evaluate(t, f, xs, bug) for xs in inputs]
                    except Exception:  # a variant the interpreter cannot run
                        continue
                    if all(
                        w is not None and g is not None and outputs_equal(g, w)
                        for g, w in zip(got, want, strict=True)
                    ):
                        label = lab
                        comp = tuple(op.kind for op in t) + (f.kind,)
                        structural_in_train += lab in STRUCTURAL and comp in train_comps
                        break
                if label.startswith("one constant changed"):
                    constants[label.split("(")[1].rstrip(")")] += 1
                    label = "one constant changed"
                labels[label] += 1
            # base rate: the share of train compositions among every structural one-edit
            # variant of the set's problems (what a random structural mistake would give)
            comps = [
                tuple(op.kind for op in t) + (f.kind,)
                for n in names
                for lab, t, f, _ in variants(probs[n])
                if lab in STRUCTURAL
            ]
            out[f"{name}/{policy}"] = {
                "wrong_answers_run": len(wrong),
                "behaves_like": dict(labels.most_common()),
                "structural_variant_is_a_train_composition": structural_in_train,
                "base_rate_of_train_compositions": round(
                    sum(c in train_comps for c in comps) / max(1, len(comps)), 3
                ),
                "constant_changed_in": dict(constants.most_common()),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo_dir", type=Path)
    ap.add_argument("--explain", type=int, default=0, help="wrong answers of pi_0 to run per set")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    data = load(args.demo_dir)
    summary, rows = data["summary"], data["rows"]
    probs = problems_by_name()
    names_of = {r["problem_id"]: r["name"] for r in rows}
    sets = {k: [names_of[i] for i in summary[k]["problem_ids"]] for k in ("trained", "heldout")}
    st = structure(sets, probs)
    train_pairs = st.pop("_train_pairs")
    counts = per_problem(rows)
    result = {
        "structure": st,
        "pass_rates": pass_rates(sets, counts, probs, train_pairs),
        "failures": failures(rows, sets),
        "changes": changes(sets, counts, probs),
    }
    if args.explain:
        train_comps = {p.composition for p in probs.values() if p.split == "train"}
        result["explain"] = explain(rows, sets, probs, train_comps, args.explain)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
