"""`spo estimate-q0`: Monte-Carlo estimates of each prompt's soft value under pi_0.

For each selected problem, n responses are sampled from pi_0 and judged; with c successes,
`S0 = c/n` and `q0 = beta * log(S0 + (1 - S0) * exp(-1/beta))` (method doc, "Values").
Every sample is stored as a `source='pi0'` trajectory (reusable offline data; since the
sampler is pi_0 itself at temperature 1, its log-probs are stored as reference log-probs).

Q0 belongs to the reference model and sampler that estimated it (issue 9, item 8): each
estimate is one `q0_estimates` row keyed by (problem, reference model identity, sampler key:
temperature, top-p, max_new_tokens). `n` and `c` count only *judged* samples (reward NOT NULL).

Resumable and incremental: problems are done in chunks, each committed as one trajectories
append and one q0_estimates write (new keys with `Lake.insert_new`, more samples by
`update_rows` on `estimate_id`). A run selects the problems matching `where` in id order,
the first `limit` of them (the same problems on every run), works on those whose estimate for
this model and sampler has fewer than n judged samples, and first reuses this model's own `pi0` samples with
the same sampler settings already in the lake (a run killed between the two commits loses
nothing; `--samples 800` after 4 samples 796 more). A rerun with the same settings adds nothing.
Problems with a `judge_issue` are left out unless `include_unreliable`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote
from spo_store.q0_estimates import estimate_row, sampler_key, write_estimates
from spo_store.selection import explain_empty
from spo_train.losses import q0_from_success_rate
from spo_train.rollout import (
    RELIABLE,
    SamplerSettings,
    count_problems,
    judge_issue_counts,
    left_out_line,
    load_problems,
    sample_and_judge,
)

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
    """What one estimate-q0 run did. `problems`: problems it worked on; `samples`: new samples
    drawn; `reused`: judged samples of this model and sampler already in the lake; `successes`:
    c summed over the problems; `unjudged`: new samples the judge could not judge (reward NULL,
    not counted in n); `no_estimate`: problems left without any judged sample (no row written);
    `left_out`: problems skipped for a judge_issue, per reason; `sampler_key`: the estimates' key;
    `already_done`: selected problems whose estimate already has >= n judged samples (a rerun
    that works on 0 problems says this many were done before).
    """

    run_id: str = ""
    problems: int = 0
    samples: int = 0
    reused: int = 0
    successes: int = 0
    unjudged: int = 0
    no_estimate: list[str] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    sampler_key: str = ""
    already_done: int = 0
    per_problem: list[dict[str, Any]] = field(default_factory=list)


def q0_sampler_key(settings: SamplerSettings) -> str:
    """The `q0_estimates.sampler_key` of `settings` (a fixed temperature is required)."""
    if isinstance(settings.temperature, tuple):
        raise SpoError("q0 needs one fixed sampling temperature, not a range")
    return sampler_key(settings.temperature, settings.top_p, settings.max_new_tokens)


def q0_selected(
    lake: Lake,
    where: str,
    *,
    model_id: str,
    settings: SamplerSettings,
    limit: int | None = None,
    include_unreliable: bool = False,
) -> list[dict[str, Any]]:
    """The problems an `estimate-q0` run covers: those matching `where` (reliable ones unless
    `include_unreliable`), ordered by id, the first `limit` of them. The same `where` and
    `limit` select the same problems on every run, done or not (issue 20, item 1): the limit is
    applied before the done ones are skipped, so a rerun resumes the same N, and a rerun of a
    finished one adds nothing."""
    reliable = "TRUE" if include_unreliable else RELIABLE
    selected = load_problems(
        lake, f"({where}) AND {reliable}", q0_of=(model_id, q0_sampler_key(settings))
    )
    return selected[:limit] if limit is not None else selected


def q0_todo(
    lake: Lake,
    where: str,
    *,
    model_id: str,
    settings: SamplerSettings,
    limit: int | None = None,
    include_unreliable: bool = False,
) -> list[dict[str, Any]]:
    """The problems `estimate_q0` would work on: of `q0_selected`, those whose estimate has
    fewer than `settings.n` judged samples, ordered by id."""
    return [
        p
        for p in q0_selected(
            lake,
            where,
            model_id=model_id,
            settings=settings,
            limit=limit,
            include_unreliable=include_unreliable,
        )
        if (p["q0_samples"] or 0) < settings.n
    ]


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
    include_unreliable: bool = False,
    on_problems: Callable[[int], None] | None = None,
    on_samples: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
    model_path: str | None = None,
) -> Q0Report:
    """Estimate q0 of the model `model_id` (the generator's; it is pi_0 here) for the problems
    matching `where` (SQL over `p`: problems plus this model's and sampler's q0 columns) whose
    estimate has fewer than `settings.n` judged samples (see module docstring).

    Raises SpoError (before any run is recorded) for a temperature range (q0 needs one
    sampler), a `where` matching no problem (naming the splits present), or one whose every
    problem has a judge_issue while `include_unreliable` is off.
    """
    key = q0_sampler_key(settings)
    # Nothing selected is one line saying why (a split with no problem, a typo), never a run
    # that "estimated 0 problems" and exits 0.
    if count_problems(lake, where) == 0:
        raise SpoError(f"estimate-q0: {explain_empty(lake, where)}")
    selected = q0_selected(
        lake,
        where,
        model_id=model_id,
        settings=settings,
        limit=limit,
        include_unreliable=include_unreliable,
    )
    todo = [p for p in selected if (p["q0_samples"] or 0) < settings.n]
    report = Q0Report(problems=len(todo), sampler_key=key)
    report.already_done = len(selected) - len(todo)
    if not include_unreliable:
        report.left_out = judge_issue_counts(lake, where, q0_of=(model_id, key))
        if not todo and count_problems(lake, f"({where}) AND {RELIABLE}") == 0:
            raise SpoError(
                f"{left_out_line(report.left_out, 'estimate-q0')}, and no other problem "
                "matches: nothing to estimate"
            )
    config = {
        "model": model_path,  # the --model directory (None: the embedded pi_0)
        "where": where,
        "limit": limit,
        "n": settings.n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "sampler_key": key,
        "beta": beta,
        "seed": settings.seed,
        "include_unreliable": include_unreliable,
    }
    report.run_id = lake.start_run(
        "estimate-q0", config, model_id=model_id, tokenizer_id=tokenizer_id
    )
    try:
        for start in range(0, len(todo), chunk_problems):
            chunk = todo[start : start + chunk_problems]
            have = _existing_samples(lake, [p["problem_id"] for p in chunk], model_id, settings)
            counts = {p["problem_id"]: have.get(p["problem_id"], (0, 0)) for p in chunk}
            report.reused += sum(n for n, _ in counts.values())
            # Problems needing the same number of new samples share one generate call; the seed
            # moves with the samples already there, so top-ups never repeat earlier draws.
            groups: dict[int, list[dict[str, Any]]] = {}
            for p in chunk:
                need = settings.n - counts[p["problem_id"]][0]
                if need > 0:
                    groups.setdefault(need, []).append(p)
            new_rows: list[dict[str, Any]] = []
            for need, probs in sorted(groups.items()):
                seed = settings.seed + start + 1_000_003 * (settings.n - need)
                new_rows += sample_and_judge(
                    generator,
                    tokenizer,
                    probs,
                    replace(settings, n=need, seed=seed),
                    source="pi0",
                    run_id=report.run_id,
                    model_id=model_id,
                    tokenizer_id=tokenizer_id,
                    ref_model_id=model_id,
                    workers=workers,
                    on_generated=on_samples,
                    unsafe_no_sandbox=unsafe_no_sandbox,
                )
            if new_rows:
                lake.append("trajectories", new_rows)
            report.samples += len(new_rows)
            for r in new_rows:
                if r["reward"] is None:  # not judged: not a sample of S0
                    report.unjudged += 1
                    continue
                n, c = counts[r["problem_id"]]
                counts[r["problem_id"]] = (n + 1, c + (r["reward"] == 0))
            rows = []
            for p in chunk:
                n, c = counts[p["problem_id"]]
                if n == 0:
                    report.no_estimate.append(p["name"])
                    continue
                row = estimate_row(
                    p["problem_id"],
                    model_id,
                    temperature=float(settings.temperature),  # type: ignore[arg-type]
                    top_p=settings.top_p,
                    max_new_tokens=settings.max_new_tokens,
                    samples=n,
                    successes=c,
                    beta=beta,
                    run_id=report.run_id,
                )
                rows.append(row)
                report.successes += c
                report.per_problem.append(
                    {
                        "problem_id": p["problem_id"],
                        "name": p["name"],
                        "n": n,
                        "c": c,
                        "q0": row["q0"],
                    }
                )
            inserted, updated = write_estimates(lake, rows)
            report.inserted += inserted
            report.updated += updated
            if on_problems:
                on_problems(len(chunk))
    except BaseException as exc:
        lake.end_run(report.run_id, run_status(exc))  # Ctrl-C / SIGTERM: interrupted
        raise
    lake.end_run(report.run_id, "completed")
    return report


def _existing_samples(
    lake: Lake, problem_ids: list[str], model_id: str, settings: SamplerSettings
) -> dict[str, tuple[int, int]]:
    """(n, c) of the judged pi_0 samples of this model under these sampler settings already in
    the lake, per problem (temperature and top-p are stored as float32: compared to 1e-6)."""
    ids = ", ".join(sql_quote(p) for p in problem_ids)
    rows = lake.sql_arrow(
        "SELECT problem_id, count(*) AS n, count(*) FILTER (WHERE reward = 0) AS c "
        f"FROM trajectories WHERE source = 'pi0' AND model_id = {sql_quote(model_id)} "
        f"AND reward IS NOT NULL AND max_new_tokens = {int(settings.max_new_tokens)} "
        f"AND abs(temperature - {float(settings.temperature)!r}) < 1e-6 "  # type: ignore[arg-type]
        f"AND abs(top_p - {float(settings.top_p)!r}) < 1e-6 "
        f"AND problem_id IN ({ids}) GROUP BY problem_id"
    ).to_pylist()
    return {r["problem_id"]: (int(r["n"]), int(r["c"])) for r in rows}
