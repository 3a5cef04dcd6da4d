"""Sweep `spo train` settings the way `spo demo` runs them, on one prepared base lake.

The numbers in docs/demo-tuning.md came from this script:

    # once: load the embedded problems, estimate Q0, evaluate pi_0 (writes BASE/before<n>.json)
    python scripts/demo_sweep.py prepare --base /tmp/sweep/base512 --q0-problems 512 --q0-samples 4
    python scripts/demo_sweep.py before --base /tmp/sweep/base512 --eval-n 20
    # per setting: copy the base lake, train exactly as the demo does, evaluate the same problems
    python scripts/demo_sweep.py run sq_1e-4 --base /tmp/sweep/base512 --eval-n 20 \
        '{"loss": "terminal_sq", "learning_rate": 1e-4, "steps": 100}'

Each `run` appends one JSON line (settings, before/after pass@k, per-step curves) to
BASE/../results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from spo_store.lake import Lake, sql_quote
from spo_train.config import TrainConfig
from spo_train.embedded.defaults import ensure_problems
from spo_train.evaluate import evaluate
from spo_train.lm.generation import TransformersGenerator
from spo_train.lm.models import (
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)
from spo_train.q0 import DEFAULT_BETA, estimate_q0
from spo_train.rollouts.sampling import SamplerSettings, load_problems
from spo_train.train.loop import train

EVAL_SEED, EVAL_PROBLEMS, MAX_NEW_TOKENS = 1, 100, 192  # as `spo demo`


def evaluate_on_test(lake: Lake, model, tok, model_id: str, n: int) -> dict:
    problems = load_problems(lake, "p.split = 'test' AND p.judge_issue IS NULL")[:EVAL_PROBLEMS]
    settings = SamplerSettings(n, 0.4, 0.95, MAX_NEW_TOKENS, seed=EVAL_SEED)
    return evaluate(
        lake,
        TransformersGenerator(model, tok),
        tok,
        problems,
        settings=settings,
        run_id="demo-sweep",
        model_id=model_id,
        tokenizer_id=tokenizer_identity(tok),
        split="test",
    )


def prepare(base: Path, q0_problems: int, q0_samples: int) -> None:
    lake = Lake.open(str(base / "lake"))
    ensure_problems(lake)
    path = resolve_model_path(None)
    model, tok = load_model_and_tokenizer(path)
    subset = load_problems(lake, "p.split = 'train' AND p.judge_issue IS NULL")[:q0_problems]
    ids = ", ".join(sql_quote(p["problem_id"]) for p in subset)
    estimate_q0(
        lake,
        TransformersGenerator(model, tok),
        tok,
        where=f"p.problem_id IN ({ids})",
        settings=SamplerSettings(q0_samples, 1.0, 1.0, MAX_NEW_TOKENS, 0),
        beta=DEFAULT_BETA,
        model_id=model_identity(path),
        tokenizer_id=tokenizer_identity(tok),
    )


def before(base: Path, n: int) -> None:
    lake = Lake.open(str(base / "lake"))
    model, tok = load_model_and_tokenizer(resolve_model_path(None))
    result = evaluate_on_test(lake, model, tok, "pi0", n)
    (base / f"before{n}.json").write_text(json.dumps(result))
    print({k: result[k] for k in ("pass@1", "pass@10")})


def run(base: Path, name: str, n: int, settings: dict) -> None:
    out = base.parent / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base / "lake", out / "lake")
    config = TrainConfig(
        lake=str(out / "lake"),
        output=str(out / "ckpt"),
        max_new_tokens=MAX_NEW_TOKENS,
        checkpoint_every=10**9,  # only the final checkpoint
        eval_problems=0,  # evaluated below on the test split, like the baseline
        tensorboard=False,
        wandb="off",
        # settings use TrainConfig's names; older sweep lines used "lr" for learning_rate
        **{("learning_rate" if k == "lr" else k): v for k, v in settings.items()},
    )
    t0 = time.perf_counter()
    result = train(config)
    train_s = time.perf_counter() - t0
    lake = Lake.open(str(out / "lake"))
    ckpt = out / "ckpt" / (out / "ckpt" / "latest").read_text().strip()
    model, tok = load_model_and_tokenizer(ckpt)
    after = evaluate_on_test(lake, model, tok, name, n)
    start = json.loads((base / f"before{n}.json").read_text())
    curves = {
        key: [round(m.get(f"train/{key}", float("nan")), 3) for m in result.metrics]
        for key in ("success_log_ratio", "failure_log_ratio", "kl_estimate", "grad_norm")
    }
    line = {
        "name": name,
        "settings": settings,
        "eval_n": n,
        "train_s": round(train_s),
        "before": {k: start[k] for k in ("pass@1", "pass@10")},
        "after": {k: after[k] for k in ("pass@1", "pass@10")},
        "curves": curves,
    }
    print(json.dumps({k: v for k, v in line.items() if k != "curves"}))
    with open(base.parent / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    shutil.rmtree(out / "lake")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prepare", "before", "run"])
    ap.add_argument("name", nargs="?", help="run: a name for the setting")
    ap.add_argument("settings", nargs="?", default="{}", help="run: TrainConfig fields as JSON")
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--q0-problems", type=int, default=512)
    ap.add_argument("--q0-samples", type=int, default=4)
    ap.add_argument("--eval-n", type=int, default=20)
    args = ap.parse_intermixed_args()
    if args.step == "prepare":
        prepare(args.base, args.q0_problems, args.q0_samples)
    elif args.step == "before":
        before(args.base, args.eval_n)
    else:
        if not args.name:
            ap.error("run needs a NAME")
        run(args.base, args.name, args.eval_n, json.loads(args.settings))


if __name__ == "__main__":
    main()
