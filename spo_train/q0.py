"""`spo estimate-q0`: Monte-Carlo estimates of each prompt's soft value under pi_0.

For each selected problem, n responses are sampled from pi_0 and judged; with c successes,
`S0 = c/n` and `q0 = beta * log(S0 + (1 - S0) * exp(-1/beta))` (method doc, "Values").
Every sample is stored as a `source='pi0'` trajectory (reusable offline data; since the
sampler is pi_0 itself at temperature 1, its log-probs are stored as reference log-probs).

Resumable: problems are done in chunks, each committed as one trajectories append and one
problems update. A rerun selects the problems still without q0 and first reuses pi_0 samples
already in the lake for them (a run killed between the two commits loses nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote
from spo_train.losses import q0_from_success_rate
from spo_train.rollout import SamplerSettings, load_problems, sample_and_judge

DEFAULT_BETA = 1.0 / math.log(100000.0)


def q0_value(successes: int, samples: int, beta: float) -> float:
    """beta * log(S0 + (1 - S0) exp(-1/beta)) with S0 = successes/samples (counts checked)."""
    if samples <= 0 or not 0 <= successes <= samples:
        raise SpoError(
            f"q0 needs 0 <= successes <= samples and samples > 0, got {successes}/{samples}"
        )
    return float(q0_from_success_rate(successes / samples, beta))


@dataclass
class Q0Report:
    run_id: str = ""
    problems: int = 0
    samples: int = 0
    reused: int = 0
    successes: int = 0
    per_problem: list[dict[str, Any]] = field(default_factory=list)


def estimate_q0(
    lake: Lake,
    generator: Any,
    tokenizer: Any,
    *,
    where: str,
    settings: SamplerSettings,
    beta: float = DEFAULT_BETA,
    model_id: str,
    tokenizer_id: str,
    chunk_problems: int = 16,
    limit: int | None = None,
    workers: int | None = None,
    on_problems: Callable[[int], None] | None = None,
    on_samples: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
) -> Q0Report:
    """Estimate q0 for the problems matching `where` that have none yet (see module docstring)."""
    todo = load_problems(lake, f"({where}) AND p.q0 IS NULL")
    if limit is not None:
        todo = todo[:limit]
    report = Q0Report(problems=len(todo))
    config = {
        "where": where,
        "n": settings.n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "beta": beta,
        "seed": settings.seed,
    }
    report.run_id = lake.start_run(
        "estimate-q0", config, model_id=model_id, tokenizer_id=tokenizer_id
    )
    try:
        for start in range(0, len(todo), chunk_problems):
            chunk = todo[start : start + chunk_problems]
            counts = _existing_samples(lake, [p["problem_id"] for p in chunk], model_id)
            fresh = [p for p in chunk if counts.get(p["problem_id"], (0, 0))[0] < settings.n]
            if fresh:
                chunk_settings = replace(settings, seed=settings.seed + start)
                rows = sample_and_judge(
                    generator,
                    tokenizer,
                    fresh,
                    chunk_settings,
                    source="pi0",
                    run_id=report.run_id,
                    model_id=model_id,
                    tokenizer_id=tokenizer_id,
                    ref_model_id=model_id,
                    workers=workers,
                    on_generated=on_samples,
                    unsafe_no_sandbox=unsafe_no_sandbox,
                )
                lake.append("trajectories", rows)
                report.samples += len(rows)
                for p in fresh:
                    mine = [r for r in rows if r["problem_id"] == p["problem_id"]]
                    counts[p["problem_id"]] = (len(mine), sum(r["reward"] == 0 for r in mine))
            report.reused += sum(counts[p["problem_id"]][0] for p in chunk if p not in fresh)
            updates = []
            for p in chunk:
                n, c = counts[p["problem_id"]]
                updates.append(
                    {
                        "problem_id": p["problem_id"],
                        "q0": q0_value(c, n, beta),
                        "q0_samples": n,
                        "q0_successes": c,
                        "q0_beta": beta,
                        "q0_run_id": report.run_id,
                    }
                )
                report.successes += c
                report.per_problem.append(
                    {
                        "problem_id": p["problem_id"],
                        "name": p["name"],
                        "n": n,
                        "c": c,
                        "q0": updates[-1]["q0"],
                    }
                )
            lake.update_rows("problems", "problem_id", updates)
            if on_problems:
                on_problems(len(chunk))
    except BaseException as exc:
        lake.end_run(
            report.run_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        )
        raise
    lake.end_run(report.run_id, "completed")
    return report


def _existing_samples(
    lake: Lake, problem_ids: list[str], model_id: str
) -> dict[str, tuple[int, int]]:
    """(n, c) of judged pi_0 samples of this model already in the lake, per problem."""
    ids = ", ".join(sql_quote(p) for p in problem_ids)
    rows = lake.sql_arrow(
        "SELECT problem_id, count(*) AS n, count(*) FILTER (WHERE reward = 0) AS c FROM trajectories "
        f"WHERE source = 'pi0' AND model_id = {sql_quote(model_id)} AND reward IS NOT NULL "
        f"AND problem_id IN ({ids}) GROUP BY problem_id"
    ).to_pylist()
    return {r["problem_id"]: (int(r["n"]), int(r["c"])) for r in rows}
