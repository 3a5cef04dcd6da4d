"""Sample responses to lake problems, judge them in the sandbox, and build trajectory rows.

One path serves Q0 estimation (`source='pi0'`), evaluation (`source='eval'`) and online
rollouts (`source='online'`): rows carry the token ids, the behaviour policy's log-probs and,
when the sampling model is the reference model, the reference log-probs too, so later
training batches skip both tokenisation and the reference forward.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spo_store.lake import Lake, problem_tests, sql_quote, utc_now
from spo_train.prompting import build_prompt, extract_code
from spo_train.sandbox import JudgeJob, judge_batch

PROBLEM_COLUMNS = [
    "problem_id",
    "name",
    "split",
    "statement",
    "public_tests",
    "private_tests",
    "generated_tests",
    "time_limit_s",
    "memory_limit_mb",
    "float_tolerance",
    "q0",
    "q0_samples",
    "q0_successes",
    "q0_beta",
]


@dataclass
class SamplerSettings:
    """How responses are drawn. `temperature` is fixed, or a `(low, high)` range drawn per sample."""

    n: int = 20
    temperature: float | tuple[float, float] = 0.4
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0


def load_problems(lake: Lake, where: str) -> list[dict[str, Any]]:
    """Problems matching a SQL predicate over `problems` (aliased `p`), ordered by id."""
    cols = ", ".join(f"p.{c}" for c in PROBLEM_COLUMNS)
    return lake.sql_arrow(
        f"SELECT {cols} FROM problems p WHERE {where} ORDER BY p.problem_id"
    ).to_pylist()


def split_predicate(split: str) -> str:
    return f"p.split = {sql_quote(split)}"


def judge_responses(
    problems: Sequence[Mapping[str, Any]],
    codes: Sequence[str],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
) -> list[Any]:
    """Judge `codes[i]` against all tests of `problems[i]` (in parallel, sandboxed)."""
    jobs = [
        JudgeJob(
            code,
            [(t["input"], t["output"]) for t in problem_tests(p)],
            float(p.get("time_limit_s") or 2.0),
            int(p.get("memory_limit_mb") or 256),
            p.get("float_tolerance"),
        )
        for p, code in zip(problems, codes, strict=True)
    ]
    return judge_batch(
        jobs, workers=workers, progress=progress, unsafe_no_sandbox=unsafe_no_sandbox
    )


def sample_and_judge(
    generator: Any,
    tokenizer: Any,
    problems: Sequence[Mapping[str, Any]],
    settings: SamplerSettings,
    *,
    source: str,
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    policy_version: int | None = None,
    ref_model_id: str | None = None,
    workers: int | None = None,
    on_generated: Callable[[int], None] | None = None,
    on_judged: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
) -> list[dict[str, Any]]:
    """`settings.n` responses per problem, judged; returns `trajectories` rows (not yet written).

    When `ref_model_id` is given the sampling model *is* that reference model, so the behaviour
    log-probs (temperature 1) are stored as reference log-probs too.
    """
    prompts = [build_prompt(p["statement"], tokenizer) for p in problems]
    rng = np.random.default_rng(settings.seed)
    if isinstance(settings.temperature, tuple):
        low, high = settings.temperature
        temps: float | list[float] = rng.uniform(low, high, size=len(prompts) * settings.n).tolist()
    else:
        temps = float(settings.temperature)
    samples = generator.generate(
        prompts,
        n=settings.n,
        temperature=temps,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    if on_generated:
        on_generated(len(prompts) * settings.n)
    flat_problems, flat_samples = [], []
    for prob, group in zip(problems, samples, strict=True):
        for sample in group:
            flat_problems.append(prob)
            flat_samples.append(sample)
    codes = [extract_code(s.text) for s in flat_samples]
    verdicts = judge_responses(
        flat_problems,
        codes,
        workers=workers,
        progress=on_judged,
        unsafe_no_sandbox=unsafe_no_sandbox,
    )
    now = utc_now()
    rows = []
    for prob, sample, verdict in zip(flat_problems, flat_samples, verdicts, strict=True):
        digest = hashlib.sha256(f"{prob['problem_id']}\0{sample.text}".encode()).hexdigest()
        logprobs = [float(x) for x in sample.logprobs]
        rows.append(
            {
                "traj_id": f"{source[:3]}-{uuid.uuid4().hex[:20]}",
                "problem_id": prob["problem_id"],
                "run_id": run_id,
                "source": source,
                "policy_version": policy_version,
                "model_id": model_id,
                "temperature": float(sample.temperature),
                "top_p": float(sample.top_p),
                "language": "python3",
                "response": sample.text,
                "response_chars": len(sample.text),
                "reward": 0.0 if verdict.passed else -1.0,
                "reward_source": "judge",
                "judge_status": verdict.status,
                "passed_tests": verdict.passed_tests,
                "total_tests": verdict.total_tests,
                "finish_reason": sample.finish_reason,
                "content_hash": digest,
                "tokenizer_id": tokenizer_id,
                "prompt_ids": list(sample.prompt_ids),
                "response_ids": list(sample.response_ids),
                "num_response_tokens": len(sample.response_ids),
                "behaviour_logprobs": logprobs,
                "ref_model_id": ref_model_id,
                "ref_logprobs": logprobs if ref_model_id else None,
                "created_at": now,
            }
        )
    return rows
