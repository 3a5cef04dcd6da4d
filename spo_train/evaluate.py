"""`spo eval`: pass@k of a model on lake problems (unbiased estimator, Codex paper).

Samples n responses per problem (paper: n=20, temperature 0.4, top-p 0.95), judges them,
stores them as `source='eval'` trajectories and the results in `metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.metrics import mean_pass_at_k
from spo_train.rollout import SamplerSettings, sample_and_judge


def evaluate(
    lake: Lake,
    generator: Any,
    tokenizer: Any,
    problems: Sequence[Mapping[str, Any]],
    *,
    settings: SamplerSettings,
    ks: Sequence[int] = (1, 10),
    run_id: str,
    model_id: str,
    tokenizer_id: str,
    step: int = 0,
    policy_version: int | None = None,
    split: str | None = None,
    chunk_problems: int = 32,
    workers: int | None = None,
    on_samples: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
    metric_prefix: str = "eval",
) -> dict[str, Any]:
    """pass@k for each k in `ks`, plus counts; writes trajectories and metrics to the lake."""
    if not problems:
        raise SpoError("no problems to evaluate on (check --split or --where)")
    bad = [k for k in ks if k < 1 or k > settings.n]
    if bad:
        raise SpoError(f"pass@k needs 1 <= k <= n={settings.n}; got k={bad}")
    correct: dict[str, int] = {}
    total = 0
    for start in range(0, len(problems), chunk_problems):
        chunk = problems[start : start + chunk_problems]
        chunk_settings = replace(settings, seed=settings.seed + start)
        rows = sample_and_judge(
            generator,
            tokenizer,
            chunk,
            chunk_settings,
            source="eval",
            run_id=run_id,
            model_id=model_id,
            tokenizer_id=tokenizer_id,
            policy_version=policy_version,
            workers=workers,
            on_generated=on_samples,
            unsafe_no_sandbox=unsafe_no_sandbox,
        )
        lake.append("trajectories", rows)
        for row in rows:
            correct[row["problem_id"]] = correct.get(row["problem_id"], 0) + (row["reward"] == 0)
        total += len(rows)
    counts = [(settings.n, correct.get(p["problem_id"], 0)) for p in problems]
    result: dict[str, Any] = {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}
    result.update(
        problems=len(problems),
        samples=total,
        correct=sum(c for _, c in counts),
        n=settings.n,
        correct_by_problem={p["problem_id"]: correct.get(p["problem_id"], 0) for p in problems},
    )
    tag = f"{metric_prefix}/{split}" if split else metric_prefix
    lake.log_metrics(
        run_id, step, {f"{tag}/pass@{k}": result[f"pass@{k}"] for k in ks}, split=split
    )
    return result
