"""`spo bench step`: tokens/s, model FLOPs utilisation and peak memory of one training step of
SPO, PPO and GRPO (project issue 14, point 3; docs/gpu.md), and TOPR when `--algos` names it.

What is timed is what `scripts/bench_algorithms.py` times and `spo_train.train.loop` runs per
step: `Algorithm.update(batch, learner)` (the algorithm's forwards, backwards and optimizer
steps; PPO: its value model's too). The batch is synthetic (random token ids, alternating
rewards 0 / -1, pi_0's log-probs computed once before timing, as the lake's cache hands them to
the step), because a step's cost depends on shapes, not on which tokens: `batch_size` rows of
`prompt_len` prompt and `seq_len - prompt_len` response tokens, in groups of `group_size` (PPO
and GRPO minibatch whole groups). No rollouts, judging or reference forward are timed: those are
outside the learner's step for all three algorithms alike (the reference log-probs come cached).

Model FLOPs (PaLM, Chowdhery et al. 2022, App. B): a forward and backward of a token costs
`6 N + 12 n_layer d_model T` FLOPs, N the non-embedding parameters (the LM head counted, as it
is a matrix product), T the sequence length (attention, not halved for causality, as PaLM);
a forward alone a third of it. Per step: every algorithm trains the policy on every row once per
epoch; PPO adds its value model's no-grad forward and its training forward and backward. MFU
is model FLOPs / step time / the device's peak dense bf16 FLOPs (`PEAK_BF16_FLOPS`, known
GPUs only; None on a CPU): activation checkpointing's recomputation counts as overhead, not
as model FLOPs.

Memory: on CUDA, `torch.cuda.max_memory_allocated` over the timed steps (after a warm-up
step, so AdamW's state exists): everything the step holds (weights, gradients, optimizer state,
activations). On a CPU, the process's resident-set high-water mark (`VmHWM`, reset through
`/proc/self/clear_refs` before the steps where Linux allows): every allocation of the process,
torch's or not, so it includes the interpreter and imported libraries.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from spo_store.errors import SpoError
from spo_train.lm.fast_step import check_device, resolve_precision

ALGOS = ("spo", "ppo", "grpo", "topr")
MODES = ("fast", "plain")

PEAK_BF16_FLOPS: dict[str, float] = {
    # Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets:
    # H100/H200: https://www.nvidia.com/en-us/data-center/h100/ (SXM 989 TFLOPS, PCIe 756),
    # https://www.nvidia.com/en-us/data-center/h200/ (989); A100: A100 datasheet (312).
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
}

RANDOM_LLAMAS: dict[str, dict[str, int]] = {
    # TinyLlama-1.1B's shape (Zhang et al. 2024): 1.10e9 parameters.
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    # A 35M-parameter Llama with a real 32k vocabulary, small enough for a CPU step: where
    # the [tokens, vocab] float32 logits are a large share of the step's memory.
    "30m": {
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
}


@dataclass
class BenchSpec:
    """One `spo bench step` invocation (CLI flags of the same names)."""

    algos: Sequence[str] = ALGOS
    modes: Sequence[str] = ("fast",)
    model: str | None = None  # None: the embedded pi_0
    random_llama: str | None = None  # a RANDOM_LLAMAS key instead of --model
    device: str = "cpu"
    batch_size: int = 8
    seq_len: int = 256
    prompt_len: int = 64
    group_size: int = 4
    micro_batch_size: int | None = None
    steps: int = 3
    precision: str = "auto"
    logprob_chunk_size: int = 256
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    profile: int = 0  # > 0: profile the timed steps, keep this many top ops by self time
    extra: dict[str, Any] = field(default_factory=dict)


def peak_flops_of(name: str) -> float | None:
    """Peak dense bf16 FLOPs/s of a GPU named `name` (`torch.cuda.get_device_name`), None when
    it is not in `PEAK_BF16_FLOPS` (the first key whose words all occur in the name)."""
    for key, value in PEAK_BF16_FLOPS.items():
        if all(part in name for part in key.split()):
            return value
    return None


def peak_flops(device: str) -> tuple[float | None, str | None]:
    """(peak dense bf16 FLOPs/s, device name) of a CUDA device, (None, name) when unknown."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None, platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(dev)
    return peak_flops_of(name), name


def model_flops(model: torch.nn.Module, rows: int, seq_len: int, response_len: int) -> float:
    """FLOPs of one forward+backward of `model` over `rows` rows of `seq_len` tokens, the LM
    head applied at `response_len` positions per row (module docstring; PaLM App. B)."""
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else 0
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embed - (0 if tied else head_params)
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    return rows * (6 * body * seq_len + 6 * head_params * response_len + attn * seq_len)


# ----------------------------------------------------------------------------- memory
def _status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- setup
def _model_dir(spec: BenchSpec, workdir: Path) -> Path:
    """The directory every run loads its policy (and PPO its value model) from."""
    from spo_train.lm.models import resolve_model_path

    if spec.random_llama is None:
        return resolve_model_path(spec.model)
    return save_random_llama(
        spec.random_llama, workdir / f"llama-{spec.random_llama}", spec.device, spec.seed
    )


def save_random_llama(size: str, out: Path, device: str = "cpu", seed: int = 0) -> Path:
    """Write a randomly initialised Llama of `size` (a `RANDOM_LLAMAS` key), float32, with the
    embedded tokenizer, to the directory `out` (a model directory `--model` accepts; the GPU
    script builds the 1B once and reuses it). Raises SpoError for an unknown size."""
    if size not in RANDOM_LLAMAS:
        raise SpoError(f"--random-llama {size}: choose one of {', '.join(RANDOM_LLAMAS)}")
    from transformers import LlamaConfig, LlamaForCausalLM

    from spo_train.lm.models import default_model_path, load_tokenizer

    cfg = LlamaConfig(**RANDOM_LLAMAS[size], tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    del model
    # the token ids are random anyway: the embedded tokenizer (its ids are < 32000) serves
    load_tokenizer(default_model_path()).save_pretrained(out)
    return Path(out)


def _config(spec: BenchSpec, algo: str, mode: str, model_dir: Path, workdir: Path) -> Any:
    from spo_train.config import TrainConfig

    fast = mode == "fast"
    config = TrainConfig(
        model=str(model_dir),
        lake=str(workdir / "lake"),
        output=str(workdir / f"out-{algo}"),
        algo=algo,
        batch_size=spec.batch_size,
        rollout_n=spec.group_size,
        micro_batch_size=spec.micro_batch_size,
        seed=spec.seed,
        device=spec.device,
        precision=spec.precision if fast else "fp32",
        logprob_chunk_size=spec.logprob_chunk_size if fast else 0,
        activation_checkpointing=spec.activation_checkpointing if fast else False,
        compile=spec.compile if fast else False,
        eval_problems=0,
        tensorboard=False,
        wandb="off",
    )
    config.validate()
    return config.resolved()


def synthetic_batch(spec: BenchSpec, vocab: int, ref_model: torch.nn.Module) -> Any:
    """A `TrainBatch` of random tokens: rewards alternate 0 / -1 within each group, q0 = -0.5,
    pi_0's log-probs from one no-grad forward of `ref_model` (also PPO/GRPO's pi_old)."""
    from spo_train.algorithms import TrainBatch
    from spo_train.lm.logprobs import response_logprobs

    gen = torch.Generator().manual_seed(spec.seed)
    b, p = spec.batch_size, spec.prompt_len
    # ids from 3 up: 0-2 are pad / bos / eos in the embedded tokenizer
    ids = torch.randint(3, vocab, (b, spec.seq_len), generator=gen).tolist()
    prompts, responses = [row[:p] for row in ids], [row[p:] for row in ids]
    ref_lp, mask = response_logprobs(
        ref_model,
        prompts,
        responses,
        pad_token_id=0,
        micro_batch_size=spec.micro_batch_size,
        requires_grad=False,
    )
    ref_lp = ref_lp.float().cpu()
    return TrainBatch(
        traj_ids=[f"t{i}" for i in range(b)],
        problem_ids=[f"p{i // spec.group_size}" for i in range(b)],
        sources=["online"] * b,
        prompt_ids=prompts,
        response_ids=responses,
        ref_logprobs=ref_lp,
        mask=mask.cpu(),
        reward=torch.tensor([0.0 if i % 2 == 0 else -1.0 for i in range(b)]),
        q0=torch.full((b,), -0.5),
        group=torch.tensor([i // spec.group_size for i in range(b)]),
        model_logprobs=ref_lp.clone(),
        behaviour_seq_logprob=(ref_lp * mask.cpu()).sum(1),  # TOPR's mu: pi_0 drew them
    )


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure(
    spec: BenchSpec,
    algo: str,
    mode: str,
    model_dir: Path,
    workdir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Build the learner and `algo` as the trainer does, run 1 warm-up and `spec.steps` timed
    steps; returns the measurements (module docstring)."""
    from spo_train.train.learner import build_learner

    cuda = torch.device(spec.device).type == "cuda"
    config = _config(spec, algo, mode, model_dir, workdir)
    torch.manual_seed(spec.seed)
    parts = build_learner(config, model_dir, device=spec.device)  # as the trainer builds it
    learner, algorithm = parts.learner, parts.algorithm
    policy = learner.policy
    vocab = policy.get_input_embeddings().weight.shape[0]
    batch = synthetic_batch(spec, vocab, policy)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    cpu_times: list[float] = []

    def step() -> float:
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        parts.step(batch)
        sync()
        cpu_times.append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    warmup_s = step()  # allocates AdamW's state; compiles under --compile
    _free(spec.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak_rss()
        before = _status_bytes("VmRSS") or 0
    times = []
    with _profiler(spec, cuda) as prof:
        for i in range(spec.steps):
            times.append(step())
            say(f"{algo} {mode}: step {i + 1}/{spec.steps} {times[-1]:.3f} s")
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        memory_measure = "torch.cuda.max_memory_allocated"
    else:
        peak = _peak_rss_bytes()
        memory_measure = "process VmHWM (RSS high-water)" + ("" if reset else ", not reset")
    median = statistics.median(times)
    rows, seq, resp = spec.batch_size, spec.seq_len, spec.seq_len - spec.prompt_len
    epochs = config.update_epochs if algo in ("ppo", "grpo") else 1  # spo, topr: one pass
    flops = epochs * model_flops(policy, rows, seq, resp)
    if algo == "ppo":
        value = algorithm.value_model.backbone
        # the value model: one no-grad forward (1/3) and, per epoch, a forward and backward
        per = model_flops(_as_lm(value, policy), rows, seq, 0)
        flops += per / 3 + epochs * per
    peak_flops_s, device_name = peak_flops(spec.device)
    tokens = rows * seq
    out = {
        "algo": algo,
        "mode": mode,
        "precision": config.precision,
        "compute_dtype": str(resolve_precision(config.precision, spec.device)).removeprefix(
            "torch."
        ),
        "logprob_chunk_size": config.logprob_chunk_size,
        "activation_checkpointing": config.activation_checkpointing,
        "compile": config.compile,
        "rows": rows,
        "tokens": tokens,
        "response_tokens": rows * resp,
        "policy_params": sum(p.numel() for p in policy.parameters()),
        "extra_params": algorithm.extra_parameters(),
        "optimizer_steps_per_step": learner.optimizer_steps // (spec.steps + 1),
        "warmup_s": warmup_s,
        "step_s": median,
        "step_s_all": times,
        # CPU seconds of this process (all its threads) per step: on a shared, loaded CPU
        # machine less disturbed by other processes than wall time (a 1-thread run waiting for
        # a core is not charged); not a GPU measure (kernels run asynchronously)
        "step_cpu_s": statistics.median(cpu_times[1:]),
        "tokens_per_s": tokens / median,
        "model_flops_per_step": flops,
        "achieved_flops_per_s": flops / median,
        "mfu": flops / median / peak_flops_s if peak_flops_s else None,
        "peak_flops_per_s": peak_flops_s,
        "device_name": device_name,
        "peak_memory_bytes": peak,
        "step_memory_bytes": max(0, peak - before),
        "memory_measure": memory_measure,
    }
    if prof is not None:
        out["profile"] = profile_summary(prof, spec.profile, cuda, spec.steps)
    return out


@contextlib.contextmanager
def _profiler(spec: BenchSpec, cuda: bool):
    """torch.profiler over the timed steps when `spec.profile` (profiling slows them: step
    times of a profiled run are not the benchmark's), else nothing."""
    if not spec.profile:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        yield prof


def profile_summary(prof: Any, top: int, cuda: bool, steps: int) -> list[dict[str, Any]]:
    """The `top` operators by self time (device time on CUDA), per step: name, calls, self
    seconds and share of the profiled self time."""
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, key, 0) for e in events) or 1
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_s_per_step": getattr(e, key, 0) / 1e6 / steps,
            "share": getattr(e, key, 0) / total,
        }
        for e in rows
    ]


def _as_lm(backbone: torch.nn.Module, policy: torch.nn.Module) -> Any:
    """A view of PPO's value backbone that `model_flops` can read (the policy's config and
    embeddings, no LM head: the value head is one scalar per token)."""

    class _View:
        config = policy.config

        @staticmethod
        def get_input_embeddings():
            return backbone.get_input_embeddings()

        @staticmethod
        def get_output_embeddings():
            return None

        @staticmethod
        def parameters():
            return backbone.parameters()

    return _View()


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def check_spec(spec: BenchSpec) -> None:
    """One SpoError line for a spec that cannot run, before any model loads."""
    bad = [a for a in spec.algos if a not in ALGOS]
    if bad or not spec.algos:
        raise SpoError(f"--algos {','.join(spec.algos)}: choose from {', '.join(ALGOS)}")
    bad = [m for m in spec.modes if m not in MODES]
    if bad or not spec.modes:
        raise SpoError(f"--modes {','.join(spec.modes)}: choose from {', '.join(MODES)}")
    if not 0 < spec.prompt_len < spec.seq_len:
        raise SpoError(
            f"--prompt-len {spec.prompt_len} must be between 1 and --seq-len {spec.seq_len} - 1"
        )
    if spec.batch_size < 1 or spec.steps < 1 or spec.group_size < 1:
        raise SpoError("--batch-size, --steps and --group-size must be at least 1")
    if spec.batch_size % spec.group_size:
        raise SpoError(
            f"--batch-size {spec.batch_size} is not a multiple of --group-size {spec.group_size}"
        )
    check_device(spec.device)
    if spec.model is not None and spec.random_llama is not None:
        raise SpoError("give --model or --random-llama, not both")


def run(spec: BenchSpec, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Measure every (algorithm, mode) of `spec`; returns the JSON document `spo bench step
    --json` prints: machine, settings, one result per pair and PPO/GRPO-to-SPO ratios."""
    check_spec(spec)
    from spo_train.config import TrainConfig

    TrainConfig(precision=spec.precision, logprob_chunk_size=spec.logprob_chunk_size).validate()
    results = []
    with tempfile.TemporaryDirectory(prefix="spo-bench-step-") as tmp:
        model_dir = _model_dir(spec, Path(tmp))
        for mode in spec.modes:
            for algo in spec.algos:
                say(f"{algo} {mode}: building")
                results.append(measure(spec, algo, mode, model_dir, Path(tmp), say))
                _free(spec.device)  # the run's models and optimizer state went with measure()
    ratios: dict[str, dict[str, float]] = {}
    for mode in spec.modes:
        by = {r["algo"]: r for r in results if r["mode"] == mode}
        if "spo" not in by:
            continue
        for algo, r in by.items():
            if algo != "spo":
                ratios[f"spo_over_{algo}_{mode}"] = {
                    "step_s": by["spo"]["step_s"] / r["step_s"],
                    "peak_memory": by["spo"]["peak_memory_bytes"] / r["peak_memory_bytes"],
                }
    if "fast" in spec.modes and "plain" in spec.modes:
        for algo in spec.algos:
            f = next(r for r in results if r["algo"] == algo and r["mode"] == "fast")
            p = next(r for r in results if r["algo"] == algo and r["mode"] == "plain")
            ratios[f"fast_over_plain_{algo}"] = {
                "step_s": f["step_s"] / p["step_s"],
                "peak_memory": f["peak_memory_bytes"] / p["peak_memory_bytes"],
            }
    settings = {k: v for k, v in vars(replace(spec)).items() if k != "extra"}
    settings["algos"], settings["modes"] = list(spec.algos), list(spec.modes)
    return {
        "machine": machine(spec.device),
        "settings": settings,
        "results": results,
        "ratios": ratios,
    }
