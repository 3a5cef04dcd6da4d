"""Step cost of SPO, PPO and GRPO side by side: same model, same batch, one run.

The learner's step is what differs between the algorithms (rollouts come from the same
sampler), so this times `Algorithm.update(batch, learner)` plus the schedule step, exactly as
`spo_train.train.loop` calls it, on one batch that all three share:

1. setup (this process): a temporary lake with the embedded problem set, then one step of
   rollouts from pi_0 through the trainer's own `RolloutProducer` at PPO/GRPO's defaults
   (`--batch-size` rows = `--batch-size / --rollout-n` train problems x `--rollout-n`
   samples, T=1, judged in the sandbox). The judged rows are the batch, saved once to Parquet.
   For SPO every row's problem gets q0 = `q0_value(successes, n, beta)` of its own group
   (what `spo estimate-q0` would store from those samples). It also times one step of
   rollouts at each algorithm's shipped sampler (SPO half online: half as many rollouts per
   step, T ~ U(0.1, 0.8), top-p 0.95; PPO/GRPO: the whole batch at T=1).
2. per algorithm, per round, a fresh Python process (so memory is per algorithm) builds what
   the trainer builds: `TrainConfig(algo=...).resolved()` with the trainer's defaults (PPO and
   GRPO: `update_epochs` 1, `minibatches` 2), pi_0 frozen as the reference, the policy, the
   rollout policy's copy (the producer's), `PolicyLearner`, `make_algorithm(...)` (PPO: its
   value model, a copy of pi_0's transformer with a scalar head, and its AdamW), and the batch
   through `ReferenceCache.prepare` and `learner.to_train_batch`. It records its RSS, resets
   the peak (`/proc/self/clear_refs`), runs 1 warm-up and `--steps` timed steps, and reports
   the peak RSS of the steps, the bytes of the trained state (parameters, gradients and AdamW
   moments, counted from the live tensors) and, on CUDA, `torch.cuda.max_memory_allocated`.
3. rounds rotate the order (SPO, PPO, GRPO; PPO, GRPO, SPO; ...) so background load falls on
   all three alike; the table pools every timed step.

Not timed: rollouts inside the step, judging, the lake's batch draw and the pi_0 forward for
rows without cached reference log-probs (the same for all three).

    python scripts/bench_algorithms.py                  # B=32, 256 new tokens, 5 steps x 3 rounds
    python scripts/bench_algorithms.py --model DIR --device cuda --json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from spo_train.train.bench_step import (  # one way to read memory and the machine, shared
    _peak_rss_bytes,
    _reset_peak_rss,
    _status_bytes,
    machine,
)

ALGOS = ("spo", "ppo", "grpo")
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    """`VmRSS` / `VmHWM` of this process in KiB (Linux /proc; the peak falls back to
    getrusage's, which `_reset_peak_rss` cannot reset)."""
    if field == "VmHWM":
        return _peak_rss_bytes() // 1024
    value = _status_bytes(field)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return value // 1024


def trained_state_bytes(optimizer: Any) -> int:
    """Bytes held for what `optimizer` trains: parameters, their gradients and its state
    tensors (AdamW: step, exp_avg, exp_avg_sq)."""
    import torch

    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            total += p.numel() * p.element_size()
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
    return total


# ----------------------------------------------------------------------------- setup
def _config(args: argparse.Namespace, algo: str, workdir: Path) -> Any:
    from spo_train.config import TrainConfig

    config = TrainConfig(
        model=args.model,
        lake=str(workdir / "lake"),
        output=str(workdir / f"out-{algo}"),
        algo=algo,
        batch_size=args.batch_size,
        rollout_n=args.rollout_n,
        max_new_tokens=args.max_new_tokens,
        micro_batch_size=args.micro_batch_size,
        update_epochs=args.update_epochs,
        minibatches=args.minibatches,
        seed=args.seed,
        device=args.device,
        eval_problems=0,
        tensorboard=False,
        wandb="off",
    )
    config.validate()
    return config.resolved()


def online_per_step(config: Any) -> int:
    """Rollouts the trainer samples per step (`config` resolved): the mixture's online share
    for SPO, the whole batch for PPO and GRPO (as `trainer._train_locked`)."""
    from spo_store.mixture import MixtureSpec
    from spo_train.algorithm_rules import rules_of

    if rules_of(config.algo).online_only:
        return config.batch_size
    names = [part.partition(":")[0].strip() for part in config.mix.split(",")]
    return MixtureSpec.parse(config.mix, names).counts(config.batch_size).get("online", 0)


def setup(args: argparse.Namespace, workdir: Path, say: Any) -> dict[str, Any]:
    """Build the shared batch (Parquet + per-problem q0 JSON under `workdir`) and time one
    step of rollouts at each algorithm's shipped sampler; returns facts for the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spo_store.lake import Lake
    from spo_store.selection import RELIABLE, split_predicate
    from spo_train.embedded.defaults import ensure_problems
    from spo_train.lm.models import (
        load_model_and_tokenizer,
        model_identity,
        resolve_model_path,
        tokenizer_identity,
    )
    from spo_train.q0 import q0_value
    from spo_train.rollouts.local import RolloutProducer
    from spo_train.rollouts.sampling import load_problems
    from spo_train.train.setup import set_seed

    pi0 = resolve_model_path(args.model)
    lake = Lake.open(workdir / "lake")
    ensure_problems(lake)
    problems = load_problems(lake, f"{split_predicate('train')} AND {RELIABLE}")
    configs = {a: _config(args, a, workdir) for a in ALGOS}
    set_seed(args.seed)
    policy, tokenizer = load_model_and_tokenizer(pi0, device=args.device)
    ref_id, tok_id = model_identity(pi0), tokenizer_identity(tokenizer)
    run_id = lake.start_run("bench-algorithms", vars(args), model_id=ref_id, tokenizer_id=tok_id)
    rollouts: dict[str, dict[str, Any]] = {}
    rows_by_algo: dict[str, list[dict[str, Any]]] = {}
    try:
        # PPO's and GRPO's defaults are the same sampler: one draw serves both (and is the batch)
        for algo in ("ppo", "spo"):
            config = configs[algo]
            n = online_per_step(config)
            producer = RolloutProducer(
                lake,
                policy,
                tokenizer,
                config=config,
                problems=problems,
                run_id=run_id,
                tokenizer_id=tok_id,
                ref_model_id=ref_id,
                online_per_step=n,
                version=0,
            )
            start = time.perf_counter()
            rows = producer.produce(0)
            took = time.perf_counter() - start
            rows_by_algo[algo] = rows
            t = config.rollout_temperature
            rollouts[algo] = {
                "rollouts_per_step": n,
                "rollout_s": took,
                "response_tokens": sum(r["num_response_tokens"] for r in rows),
                "sampler": f"T={t[0]:g}"
                + (f"-{t[1]:g}" if t[1] != t[0] else "")
                + f", top-p {config.rollout_top_p:g}",
                "weight_sync_every": config.model_update_interval,
            }
            say(f"rollouts at {algo}'s defaults: {n} in {took:.1f} s")
        rollouts["grpo"] = dict(rollouts["ppo"])
    finally:
        lake.end_run(run_id, "completed")
    judged = [r for r in rows_by_algo["ppo"] if r["reward"] is not None]
    if not judged:
        from spo_store.errors import SpoError

        raise SpoError("none of the batch's rollouts was judged (sandbox trouble: spo judge)")
    pq.write_table(pa.Table.from_pylist(judged), workdir / "batch.parquet")
    by_problem: dict[str, list[float]] = defaultdict(list)
    for r in judged:
        by_problem[r["problem_id"]].append(r["reward"])
    beta = configs["spo"].beta
    q0 = {p: q0_value(sum(x == 0 for x in rs), len(rs), beta) for p, rs in by_problem.items()}
    (workdir / "q0.json").write_text(json.dumps(q0))
    lengths = [r["num_response_tokens"] for r in judged]
    prompts = [len(r["prompt_ids"]) for r in judged]
    return {
        "model": str(pi0),
        "rows": len(judged),
        "problems": len(by_problem),
        "response_tokens": sum(lengths),
        "response_length_min_mean_max": [min(lengths), sum(lengths) / len(lengths), max(lengths)],
        "prompt_length_min_mean_max": [min(prompts), sum(prompts) / len(prompts), max(prompts)],
        "successes": sum(r["reward"] == 0 for r in judged),
        "rollouts": rollouts,
    }


# ----------------------------------------------------------------------------- one algorithm
def measure(args: argparse.Namespace, algo: str, workdir: Path) -> dict[str, Any]:
    """In this (fresh) process: build the learner and `algo` as the trainer does, then time
    1 warm-up and `args.steps` steps on the shared batch; returns the measurements."""
    import pyarrow.parquet as pq
    import torch

    from spo_store.lake import Lake
    from spo_train.lm.models import (
        load_model_and_tokenizer,
        model_identity,
        resolve_model_path,
        tokenizer_identity,
    )
    from spo_train.train.batch import ReferenceCache
    from spo_train.train.learner import build_learner, to_train_batch
    from spo_train.train.setup import set_seed

    rss_start = _rss_kib("VmRSS")
    config = _config(args, algo, workdir)
    pi0 = resolve_model_path(config.model)
    set_seed(config.seed)
    # the models a trainer process holds: pi_0 frozen, the policy, the rollout policy's copy
    ref_model, tokenizer = load_model_and_tokenizer(pi0, device=config.device)
    ref_model.eval().requires_grad_(False)
    parts = build_learner(config, pi0)  # as the trainer builds it
    learner, algorithm = parts.learner, parts.algorithm
    policy = learner.policy
    rollout_copy = copy.deepcopy(policy).eval().requires_grad_(False)
    # the batch, through the trainer's path (rows carry pi_0's log-probs: no reference forward)
    lake = Lake.open(workdir / "lake", create=False)
    table = pq.read_table(workdir / "batch.parquet")
    q0 = json.loads((workdir / "q0.json").read_text()) if algorithm.rules.needs_q0 else {}
    problems = {
        p: {"problem_id": p, "q0": q0.get(p)} for p in table.column("problem_id").to_pylist()
    }
    cache = ReferenceCache(
        lake,
        tokenizer,
        tokenizer_identity(tokenizer),
        ref_model,
        model_identity(pi0),
        "bench",
        config.micro_batch_size,
    )
    prepared = cache.prepare(table, problems)
    if not algorithm.rules.online_only:
        groups = list(range(table.num_rows))
    else:
        group_of: dict[str, int] = {}
        groups = [
            group_of.setdefault(p, len(group_of)) for p in table.column("problem_id").to_pylist()
        ]
    batch = to_train_batch(prepared, table, ["online"] * table.num_rows, groups)
    # A step's cost depends on shapes, not on who passed; but PPO and GRPO skip the policy step
    # of rows without a reward spread (docs/algorithms.md): each problem whose samples all got
    # one reward has its first sample's reward flipped, so every algorithm takes its full step.
    forced = 0
    by_problem: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(table.column("problem_id").to_pylist()):
        by_problem[p].append(i)
    for rows in by_problem.values():
        if len({float(batch.reward[i]) for i in rows}) == 1:
            batch.reward[rows[0]] = -1.0 - batch.reward[rows[0]]  # 0 <-> -1
            forced += 1
    tokens = int(batch.mask.sum())
    cuda = config.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    sync()
    rss_ready = _rss_kib("VmRSS")
    peak_load = _rss_kib("VmHWM")
    times: list[float] = []
    opt_steps: list[int] = []
    metrics: dict[str, float] = {}

    def step() -> float:
        nonlocal metrics
        before = learner.optimizer_steps
        sync()
        start = time.perf_counter()
        metrics = parts.step(batch)
        sync()
        opt_steps.append(learner.optimizer_steps - before)
        return time.perf_counter() - start

    # From here on, memory above `rss_ready` is the steps': AdamW's moments and gradients
    # (allocated by the first step and kept), activations and temporaries.
    reset = _reset_peak_rss()
    cuda_mem: dict[str, float] = {}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_mem["cuda_ready_mib"] = torch.cuda.memory_allocated() / MIB
    warmup_s = step()
    rss_warm = _rss_kib("VmRSS")
    for _ in range(args.steps):
        times.append(step())
    peak_steps = _rss_kib("VmHWM")
    if cuda:
        cuda_mem["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
        cuda_mem["cuda_step_increase_mib"] = cuda_mem["cuda_peak_mib"] - cuda_mem["cuda_ready_mib"]
    state = trained_state_bytes(learner.optimizer)
    value_opt = getattr(algorithm, "value_optimizer", None)
    value_state = trained_state_bytes(value_opt) if value_opt is not None else 0
    frozen = sum(
        p.numel() * p.element_size() for m in (ref_model, rollout_copy) for p in m.parameters()
    )
    out = {
        "algo": algo,
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "policy_params": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "extra_params": algorithm.extra_parameters(),
        "rows": len(batch),
        "tokens": tokens,
        "step_s": times,
        "optimizer_steps_per_step": opt_steps[-1],
        "rewards_flipped": forced,  # problems given a reward spread (see above)
        "warmup_s": warmup_s,
        "rss_start_mib": rss_start / 1024,
        "rss_ready_mib": rss_ready / 1024,
        "rss_after_warmup_mib": rss_warm / 1024,
        "peak_rss_mib": max(peak_load, peak_steps) / 1024,
        "peak_reset": reset,
        # the steps' peak above the RSS they start from (None: the peak could not be reset,
        # so the steps' peak is not separable from loading's)
        "step_rss_increase_mib": max(0, peak_steps - rss_ready) / 1024 if reset else None,
        "trained_state_mib": (state + value_state) / MIB,
        "value_state_mib": value_state / MIB,
        "frozen_models_mib": frozen / MIB,
        "metrics": {
            k: v for k, v in metrics.items() if k in ("train/value_loss", "train/clip_frac")
        },
    }
    out.update(cuda_mem)
    return out


# ----------------------------------------------------------------------------- report
def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per algorithm, pooled over its processes: step-time median and spread, memory (median
    over processes), params, tokens/s, and ratios against SPO (when SPO was measured)."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["algo"]].append(r)
    table: dict[str, dict[str, Any]] = {}
    for algo, runs in by.items():
        steps = [t for r in runs for t in r["step_s"]]
        median = statistics.median(steps)
        first = runs[0]
        row = {
            "processes": len(runs),
            "timed_steps": len(steps),
            "threads": first["threads"],
            "policy_params": first["policy_params"],
            "extra_params": first["extra_params"],
            "rows": first["rows"],
            "tokens": first["tokens"],
            "optimizer_steps_per_step": first["optimizer_steps_per_step"],
            "step_s_median": median,
            "step_s_min": min(steps),
            "step_s_max": max(steps),
            "step_s_process_medians": [statistics.median(r["step_s"]) for r in runs],
            "tokens_per_s": first["tokens"] / median,
            "trained_state_mib": first["trained_state_mib"],
            "value_state_mib": first["value_state_mib"],
            "frozen_models_mib": first["frozen_models_mib"],
        }
        for key in ("peak_rss_mib", "rss_ready_mib"):
            row[key] = statistics.median(r[key] for r in runs)
        inc = [r["step_rss_increase_mib"] for r in runs if r["step_rss_increase_mib"] is not None]
        row["step_rss_increase_mib"] = statistics.median(inc) if inc else None
        for key in ("cuda_ready_mib", "cuda_peak_mib", "cuda_step_increase_mib"):
            if key in first:
                row[key] = statistics.median(r[key] for r in runs)
        table[algo] = row
    if "spo" in table:
        base = table["spo"]
        for row in table.values():
            for key in (
                "step_s_median",
                "peak_rss_mib",
                "trained_state_mib",
                "step_rss_increase_mib",
                "cuda_peak_mib",
            ):
                if row.get(key) is not None and base.get(key):
                    row[f"ratio_{key}"] = row[key] / base[key]
    return table


def print_table(report: dict[str, Any]) -> None:
    """Two rich tables (time, memory) and a line on the batch and the machine."""
    from rich.console import Console
    from rich.table import Table

    summary, rollouts = report["summary"], report["rollouts"]
    algos = [a for a in ALGOS if a in summary]
    console = Console()

    def ratio(r: dict[str, Any], key: str) -> str:
        v = r.get(f"ratio_{key}")
        return "" if v is None else f" (x{v:.2f})"

    t = Table(title="learner step time (same batch; x = ratio to SPO)")
    for c in ("algo", "opt steps", "step s median", "min-max", "tokens/s", "rollouts/step"):
        t.add_column(c)
    for algo in algos:
        r, ro = summary[algo], rollouts[algo]
        t.add_row(
            algo,
            str(r["optimizer_steps_per_step"]),
            f"{r['step_s_median']:.2f}{ratio(r, 'step_s_median')}",
            f"{r['step_s_min']:.2f}-{r['step_s_max']:.2f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{ro['rollouts_per_step']} ({ro['rollout_s']:.1f} s, {ro['sampler']})",
        )
    console.print(t)
    cuda = any("cuda_peak_mib" in summary[a] for a in algos)
    m = Table(title="memory, MiB (median over processes; x = ratio to SPO)")
    cols = ["algo", "params policy / value", "trained state", "RSS ready", "+steps"]
    cols += ["peak RSS"] + (["CUDA peak", "CUDA +steps"] if cuda else [])
    for c in cols:
        m.add_column(c)
    for algo in algos:
        r = summary[algo]
        inc = r["step_rss_increase_mib"]
        cells = [
            algo,
            f"{r['policy_params']:,} / {r['extra_params']:,}",
            f"{r['trained_state_mib']:.1f}{ratio(r, 'trained_state_mib')}",
            f"{r['rss_ready_mib']:.0f}",
            "n/a" if inc is None else f"{inc:.0f}{ratio(r, 'step_rss_increase_mib')}",
            f"{r['peak_rss_mib']:.0f}{ratio(r, 'peak_rss_mib')}",
        ]
        if cuda:
            cells += [
                f"{r['cuda_peak_mib']:.0f}{ratio(r, 'cuda_peak_mib')}",
                f"{r['cuda_step_increase_mib']:.0f}",
            ]
        m.add_row(*cells)
    console.print(m)
    lo, mean, hi = report["response_length_min_mean_max"]
    plo, pmean, phi = report.get("prompt_length_min_mean_max", (0, 0, 0))
    load = report["machine"]["load_average"][0], report["load_average_end"][0]
    console.print(
        f"batch: {report['rows']} rollouts of pi_0 ({report['problems']} problems), "
        f"{report['response_tokens']:,} response tokens (length {lo}-{hi}, mean {mean:.0f}; "
        f"prompts {plo}-{phi}, mean {pmean:.0f}), "
        f"{report['successes']} successes; torch threads {summary[algos[0]]['threads']}; "
        f"load average {load[0]:.2f} at start, {load[1]:.2f} at end"
    )


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pi_0 directory (default: the embedded one)")
    ap.add_argument("--batch-size", type=int, default=32, help="rollouts in the batch")
    ap.add_argument("--rollout-n", type=int, default=4, help="samples per problem")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument(
        "--minibatches",
        type=int,
        default=2,
        help="ppo, grpo: optimizer steps per pass (the trainer's default 2; 1: the whole batch "
        "in one forward and one step, as SPO)",
    )
    ap.add_argument("--update-epochs", type=int, default=1, help="ppo, grpo: passes per batch")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per process (+1 warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per algorithm, rotating")
    ap.add_argument("--algos", default=",".join(ALGOS), help="subset, e.g. spo,ppo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ap.add_argument("--child", choices=ALGOS, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    positive = ("batch_size", "rollout_n", "max_new_tokens", "steps", "rounds", "minibatches")
    for name in (*positive, "update_epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if bad or not algos:
        ap.error(f"--algos {args.algos}: choose from {', '.join(ALGOS)}")
    args.algo_list = algos
    return args


def child_argv(args: argparse.Namespace, algo: str, workdir: Path) -> list[str]:
    argv = [sys.executable, __file__, "--child", algo, "--workdir", str(workdir)]
    for name in (
        "batch_size",
        "rollout_n",
        "max_new_tokens",
        "steps",
        "seed",
        "minibatches",
        "update_epochs",
    ):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    argv += ["--device", args.device]
    if args.model:
        argv += ["--model", args.model]
    if args.micro_batch_size:
        argv += ["--micro-batch-size", str(args.micro_batch_size)]
    return argv


def run(args: argparse.Namespace) -> dict[str, Any]:
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="spo-bench-algorithms-"))
    try:
        facts = setup(args, workdir, say)
        facts["machine"] = machine(args.device)
        results = []
        n = len(args.algo_list)
        for rnd in range(args.rounds):
            order = args.algo_list[rnd % n :] + args.algo_list[: rnd % n]
            for algo in order:
                proc = subprocess.run(
                    child_argv(args, algo, workdir), capture_output=True, text=True
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0 or not lines:
                    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    raise RuntimeError(f"{algo} process failed (exit {proc.returncode}): {tail}")
                res = json.loads(lines[-1])
                res["round"] = rnd + 1
                results.append(res)
                say(
                    f"round {rnd + 1}/{args.rounds} {algo}: median step "
                    f"{statistics.median(res['step_s']):.2f} s, peak RSS "
                    f"{res['peak_rss_mib']:.0f} MiB"
                )
        facts["load_average_end"] = os.getloadavg()
        return {
            "settings": {
                k: v
                for k, v in vars(args).items()
                if k not in ("child", "workdir", "json", "algo_list")
            },
            **facts,
            "summary": summarise(results),
            "processes": results,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from spo_store.errors import SpoError

    args = parse_args(argv)
    try:
        if args.child:
            print(json.dumps(measure(args, args.child, Path(args.workdir))))
            return 0
        report = run(args)
    except (SpoError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
