"""Select the hard problems `spo demo` trains on: train problems the shipped pi_0 never solved.

Run once, offline; its output ships as package data (spo_train/embedded/assets/
hard_problems.json) and `spo demo` reads it. The file was written by:

    python scripts/select_hard_problems.py --lake /tmp/hard-select/lake \
        --problems 192 --samples 16 --seed 1000 --unsafe-no-sandbox

It loads the embedded problems into a scratch lake, draws `--samples` pi_0 samples at T = 1,
top-p 1 (pi_0's own distribution, 192 new tokens as the demo) on each of the first
`--problems` train problems (by id, judged reliably), judges them, and keeps the problems with
no success. `--unsafe-no-sandbox` judges in-process, as the science review's pilot did: only
acceptable because the programs are pi_0's own samples on the shipped problems (never run it on
programs from elsewhere). The demo evaluates on fresh samples (its evaluation seed differs from
`--seed`): problems selected for having 0 successes in these samples would otherwise look
harder than they are (regression to the mean).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spo_store.lake import Lake, sql_quote
from spo_store.selection import RELIABLE
from spo_train.embedded.defaults import ensure_problems
from spo_train.lm.generation import TransformersGenerator
from spo_train.lm.models import (
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)
from spo_train.q0 import estimate_q0, q0_sampler_key
from spo_train.rollouts.sampling import SamplerSettings, load_problems

OUT = Path(__file__).resolve().parents[1] / "spo_train/embedded/assets/hard_problems.json"
MAX_NEW_TOKENS = 192  # as `spo demo`


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lake", required=True, help="scratch lake (created; pi_0 samples go here)")
    ap.add_argument("--problems", type=int, default=192, help="first N reliable train problems")
    ap.add_argument("--samples", type=int, default=16, help="pi_0 samples per problem (T = 1)")
    ap.add_argument("--seed", type=int, default=1000, help="selection sampling seed")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--unsafe-no-sandbox", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    lake = Lake.open(args.lake)
    ensure_problems(lake, say=print)
    pi0 = resolve_model_path(None)
    model, tok = load_model_and_tokenizer(pi0)
    model_id = model_identity(pi0)
    candidates = load_problems(lake, f"p.split = 'train' AND {RELIABLE}")[: args.problems]
    ids = ", ".join(sql_quote(p["problem_id"]) for p in candidates)
    settings = SamplerSettings(args.samples, 1.0, 1.0, MAX_NEW_TOKENS, args.seed)
    where = f"p.problem_id IN ({ids})"
    estimate_q0(
        lake,
        TransformersGenerator(model, tok),
        tok,
        where=where,
        settings=settings,
        model_id=model_id,
        tokenizer_id=tokenizer_identity(tok),
        unsafe_no_sandbox=args.unsafe_no_sandbox,
    )
    counted = load_problems(lake, where, q0_of=(model_id, q0_sampler_key(settings)))
    per_problem = {
        p["problem_id"]: {"samples": p["q0_samples"], "successes": p["q0_successes"]}
        for p in counted
    }
    hard = sorted(pid for pid, c in per_problem.items() if c["successes"] == 0)
    command = "python scripts/select_hard_problems.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    doc = {
        "description": (
            "train problems of the embedded set that the shipped pi_0 never solved in "
            f"{args.samples} samples at T = 1 (spo demo's hard set; scripts/select_hard_problems.py)"
        ),
        "problem_ids": hard,
        "pi0_model_id": model_id,
        "selection": {
            "seed": args.seed,
            "samples": args.samples,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": MAX_NEW_TOKENS,
            "candidates": len(candidates),
            "judge": "in-process (--unsafe-no-sandbox)" if args.unsafe_no_sandbox else "sandbox",
            "command": command,
        },
        "per_problem": {pid: per_problem[pid] for pid in sorted(per_problem)},
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    solved_rate = sum(c["successes"] for c in per_problem.values()) / max(
        1, sum(c["samples"] for c in per_problem.values())
    )
    print(
        f"{len(hard)} of {len(per_problem)} problems never solved in {args.samples} samples "
        f"(mean pass rate {solved_rate:.3f}); wrote {args.out} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
