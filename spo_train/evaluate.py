"""`spo eval`: pass@k of a model on lake problems (unbiased estimator, Codex paper).

Samples n responses per problem (paper: n=20, temperature 0.4, top-p 0.95), judges them,
stores them as `source='eval'` trajectories and the results in `metrics`.

Only judged samples count (reward NOT NULL, `spo_train.judge.verdict_reward`): a sample the
sandbox could not judge is neither a pass nor a failure. Each problem's pass@k uses its own
`n = judged samples`; a problem with fewer than k judged samples has no unbiased pass@k, so it
is left out of that k's mean and *reported* (`short_of_k`), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.selection import explain_empty
from spo_train.diversity import diversity
from spo_train.lm.prompting import extract_code
from spo_train.metrics import mean_pass_at_k
from spo_train.rollouts.sampling import SamplerSettings, sample_and_judge


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
    """pass@k for each k in `ks`, plus counts; writes trajectories and metrics to the lake.

    Returns `pass@k` (None when no problem has k judged samples), `pass@k_problems` (how many
    problems entered that mean), `problems`, `samples`, `judged`, `unjudged`, `correct`, `n`,
    `correct_by_problem` and `judged_by_problem` (per problem id), `short_of_k`
    (`{"pass@k": [problem names with fewer than k judged samples]}`) and `diversity` (of the
    correct samples, `spo_train.diversity.diversity`). Logs `<prefix>/pass@k`,
    `<prefix>/unjudged` and `<prefix>/diversity/<name>` (`diversity_metrics`). Raises SpoError with no problems or a k outside 1..n.
    """
    if not problems:
        raise SpoError(f"eval: {explain_empty(lake, split=split)} (check --split or --where)")
    bad = [k for k in ks if k < 1 or k > settings.n]
    if bad:
        raise SpoError(f"pass@k needs 1 <= k <= n={settings.n}; got k={bad}")
    correct: dict[str, int] = {}
    judged: dict[str, int] = {}
    programs: dict[str, list[str]] = {}  # the correct samples' code, for `diversity`
    total = unjudged = 0
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
            if row["reward"] is None:
                unjudged += 1
                continue
            pid = row["problem_id"]
            judged[pid] = judged.get(pid, 0) + 1
            correct[pid] = correct.get(pid, 0) + (row["reward"] == 0)
            if row["reward"] == 0:
                programs.setdefault(pid, []).append(extract_code(row["response"]))
        total += len(rows)
    ids = [p["problem_id"] for p in problems]
    names = {p["problem_id"]: p.get("name", p["problem_id"]) for p in problems}
    result: dict[str, Any] = {}
    short: dict[str, list[str]] = {}
    for k in ks:
        counts = [(judged.get(i, 0), correct.get(i, 0)) for i in ids if judged.get(i, 0) >= k]
        result[f"pass@{k}"] = mean_pass_at_k(counts, k) if counts else None
        result[f"pass@{k}_problems"] = len(counts)
        missing = [names[i] for i in ids if judged.get(i, 0) < k]
        if missing:
            short[f"pass@{k}"] = missing
    result.update(
        problems=len(problems),
        samples=total,
        judged=total - unjudged,
        unjudged=unjudged,
        correct=sum(correct.values()),
        n=settings.n,
        correct_by_problem={i: correct.get(i, 0) for i in ids},
        judged_by_problem={i: judged.get(i, 0) for i in ids},
        short_of_k=short,
        diversity=diversity(
            problems, programs, judged, temperature=settings.temperature, top_p=settings.top_p
        ),
    )
    tag = f"{metric_prefix}/{split}" if split else metric_prefix
    values = {f"{tag}/pass@{k}": result[f"pass@{k}"] for k in ks if result[f"pass@{k}"] is not None}
    values[f"{tag}/unjudged"] = float(unjudged)
    values |= diversity_metrics(result["diversity"], tag)
    lake.log_metrics(run_id, step, values, split=split)
    return result


DIVERSITY_METRICS = (
    "distinct_programs",
    "distinct_fraction",
    "styles",
    "log_pass_at_k_slope",
    "log_mean_pass_at_k_slope",
)
"""The scalars of `diversity` logged beside pass@k, as `<tag>/diversity/<name>` (the stability
curves of docs/RESULTS.md plot them against step)."""


def diversity_metrics(div: dict[str, Any], tag: str) -> dict[str, float]:
    """`{<tag>/diversity/<name>: value}` for DIVERSITY_METRICS that are defined (a set without
    a correct sample, or not the embedded generator's for `styles`, logs none)."""
    return {
        f"{tag}/diversity/{name}": float(div[name])
        for name in DIVERSITY_METRICS
        if div.get(name) is not None
    }


def eval_notes(result: dict[str, Any]) -> list[str]:
    """Lines a user must read next to the pass@k table: unjudged samples, problems short of k."""
    notes = []
    if result.get("unjudged"):
        notes.append(
            f"{result['unjudged']} of {result['samples']} samples could not be judged (reward "
            "NULL: sandbox or checker failure); pass@k counts only judged samples"
        )
    for key, names in (result.get("short_of_k") or {}).items():
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        notes.append(
            f"{key}: {len(names)} problem(s) have fewer judged samples than k and are not in its "
            f"mean ({result[key + '_problems']} are): {shown}"
        )
    return notes
