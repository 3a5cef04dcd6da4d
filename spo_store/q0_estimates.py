"""Keys, reads and writes of the `q0_estimates` table: Q0 belongs to its reference model and sampler.

A q0 is the soft value of a prompt under the reference policy pi_0 that trains on it (method
doc, "Values"), estimated from samples drawn with particular sampler settings. Estimates are
therefore keyed by `(problem_id, ref_model_id, sampler_key)`; a model or sampler change gets a
new estimate, never another model's value.

This module has no torch: the q0 formula below is the same as `spo_train.algorithms.losses.
q0_from_success_rate` (tested against it), written in plain floats for SQL-side and store use.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote, utc_now
from spo_store.q0_sequential import StoppingRule, s0_estimate, s0_interval

# Q0 is defined under pi_0 itself: temperature 1, top-p 1 (the length bound is the caller's).
DEFAULT_Q0_TEMPERATURE = 1.0
DEFAULT_Q0_TOP_P = 1.0
# The columns a problems view gains from its estimate (see `problems_with_q0_sql`).
Q0_VIEW_COLUMNS = (
    "q0",
    "q0_samples",
    "q0_successes",
    "q0_beta",
    "q0_estimate_id",
    "q0_s0",
    "q0_stopping",
)


def sampler_key(temperature: float, top_p: float, max_new_tokens: int) -> str:
    """Canonical text of the sampler settings behind an estimate, e.g.
    `temperature=1,top_p=1,max_new_tokens=256` (floats printed with `%g`)."""
    return f"temperature={float(temperature):g},top_p={float(top_p):g},max_new_tokens={int(max_new_tokens)}"


def estimate_id(problem_id: str, ref_model_id: str, sampler_key_: str) -> str:
    """The key of one estimate: a hash of problem, reference model and sampler settings."""
    digest = hashlib.sha256(f"{problem_id}\0{ref_model_id}\0{sampler_key_}".encode()).hexdigest()
    return f"q0-{digest[:24]}"


def q0_at_beta(successes: int, samples: int, beta: float) -> float:
    """`beta * log(S0 + (1 - S0) exp(-1/beta))`, `S0 = successes/samples`, in log space (exact
    at S0 = 0 -> -1 and S0 = 1 -> 0, finite for tiny beta). Raises SpoError on bad counts."""
    if samples <= 0 or not 0 <= successes <= samples:
        raise SpoError(
            f"q0 needs 0 <= successes <= samples and samples > 0, got {successes}/{samples}"
        )
    return q0_of_s0(successes / samples, beta)


def q0_of_s0(s0: float, beta: float) -> float:
    """`beta * log(S0 + (1 - S0) exp(-1/beta))` of a success rate `s0` in [0, 1] (log space:
    exact at 0 -> -1 and 1 -> 0). Raises SpoError for s0 outside [0, 1] or beta <= 0."""
    if not beta > 0:
        raise SpoError(f"q0 needs beta > 0, got {beta}")
    if not 0.0 <= s0 <= 1.0:
        raise SpoError(f"q0 needs a success rate in [0, 1], got {s0}")
    if s0 == 0.0:
        return -1.0
    if s0 == 1.0:
        return 0.0
    a, b = math.log(s0), math.log1p(-s0) - 1.0 / beta
    hi = max(a, b)
    return beta * (hi + math.log1p(math.exp(min(a, b) - hi)))


def estimate_row(
    problem_id: str,
    ref_model_id: str,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    samples: int,
    successes: int,
    beta: float,
    run_id: str,
    stopping: StoppingRule | None = None,
    checks: Sequence[int] = (),
) -> dict[str, Any]:
    """One `q0_estimates` row (key, settings, counts, S0's unbiased estimate and exact 95%
    interval, q0 and its interval at `beta`).

    `stopping` is the rule that drew the samples (default: fixed at `samples`) and `checks` the
    judged counts at which a sequential rule looked, ending at `samples`
    (`spo_store.q0_sequential`). Raises SpoError when the counts cannot end that design.
    """
    key = sampler_key(temperature, top_p, max_new_tokens)
    rule = stopping or StoppingRule("fixed", cap=max(int(samples), 1))
    if rule.kind == "fixed" or not checks:
        r, seen, text = None, [int(samples)], "fixed"
    else:
        r, seen, text = rule.successes, [int(x) for x in checks], rule.text(list(checks))
    s0 = s0_estimate(int(samples), int(successes), seen, r)
    low, high = s0_interval(int(samples), int(successes), seen, r, rule.schedule())
    return {
        "estimate_id": estimate_id(problem_id, ref_model_id, key),
        "problem_id": problem_id,
        "ref_model_id": ref_model_id,
        "sampler_key": key,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "samples": int(samples),
        "successes": int(successes),
        "beta": float(beta),
        "q0": q0_of_s0(s0, beta),
        "s0": s0,
        "s0_low": low,
        "s0_high": high,
        "q0_low": q0_of_s0(low, beta),
        "q0_high": q0_of_s0(high, beta),
        "stopping": text,
        "run_id": run_id,
        "created_at": utc_now(),
    }


def read_estimates(
    lake: Lake, ref_model_id: str, sampler_key_: str, problem_ids: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The estimates of one reference model and sampler, by problem id (latest lake version)."""
    where = f"ref_model_id = {sql_quote(ref_model_id)} AND sampler_key = {sql_quote(sampler_key_)}"
    if problem_ids is not None:
        ids = list(problem_ids)
        if not ids:
            return {}
        where += f" AND problem_id IN ({', '.join(sql_quote(p) for p in ids)})"
    rows = lake.dataset("q0_estimates").to_table(filter=where).to_pylist()
    return {r["problem_id"]: r for r in rows}


# The values an estimate's counts and stopping rule determine (rewritten with them).
ESTIMATE_VALUES = ("q0", "s0", "s0_low", "s0_high", "q0_low", "q0_high")


def write_estimates(lake: Lake, rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Store estimates: new keys with `Lake.insert_new`, changed ones by `update_rows` on
    `estimate_id`. Returns `(inserted, updated)`.

    A key inserted by a concurrent writer between the two steps is updated, not duplicated
    (insert_new is atomic per key); the last writer's counts win, and every writer counts all
    judged samples of the lake, so they agree up to samples added meanwhile.
    """
    if not rows:
        return 0, 0
    _, inserted = lake.insert_new("q0_estimates", rows)
    stored = {
        r["estimate_id"]: r
        for r in lake.dataset("q0_estimates")
        .to_table(
            columns=["estimate_id", "samples", "successes", "beta", "stopping", "run_id"],
            filter=f"estimate_id IN ({', '.join(sql_quote(r['estimate_id']) for r in rows)})",
        )
        .to_pylist()
    }
    fields = ("samples", "successes", "beta", "stopping", "run_id")
    updates = [
        {k: r[k] for k in ("estimate_id", *fields, *ESTIMATE_VALUES)}
        | {"created_at": r["created_at"]}
        for r in rows
        if any(stored[r["estimate_id"]][f] != r[f] for f in fields)
    ]
    if updates:
        # update_rows holds the table's keyed-write lock (the one insert_new takes).
        lake.update_rows("q0_estimates", "estimate_id", updates)
    return inserted, len(updates)


def problems_with_q0_sql(
    ref_model_id: str | None, sampler_key_: str | None, beta: float | None = None
) -> str:
    """A SQL subquery: every `problems` column plus the estimate of one reference model and
    sampler (LEFT JOIN: NULL where there is none) as `q0`, `q0_samples`, `q0_successes`,
    `q0_beta`, `q0_estimate_id`, `q0_s0`, `q0_stopping`. Use it aliased `p` so predicates over `p.q0` keep
    working.

    With `beta`, `q0` is recomputed at that beta from the stored unbiased `s0` (the stored q0
    was computed at the estimate's own beta; s0 is c/n for a fixed n, not for a sequential
    rule). `ref_model_id=None` gives a NULL q0 everywhere.
    """
    if ref_model_id is None or sampler_key_ is None:
        cond = "FALSE"
    else:
        cond = (
            f"ref_model_id = {sql_quote(ref_model_id)} AND sampler_key = {sql_quote(sampler_key_)}"
        )
    q0 = "q.q0" if beta is None else q0_sql_of_s0("q.s0", beta)
    # One estimate per problem even if a key was ever stored twice (the most samples wins), so
    # the join can never duplicate a problem (and with it every trajectory joined to it).
    estimates = (
        f"SELECT * FROM q0_estimates WHERE {cond} QUALIFY row_number() OVER "
        "(PARTITION BY problem_id ORDER BY samples DESC, created_at DESC) = 1"
    )
    return (
        f"SELECT pr.*, {q0} AS q0, q.samples AS q0_samples, q.successes AS q0_successes, "
        f"{'q.beta' if beta is None else f'CAST({float(beta)!r} AS DOUBLE)'} AS q0_beta, "
        "q.estimate_id AS q0_estimate_id, q.s0 AS q0_s0, q.stopping AS q0_stopping "
        f"FROM problems pr LEFT JOIN ({estimates}) q ON q.problem_id = pr.problem_id"
    )


def q0_sql(successes: str, samples: str, beta: float) -> str:
    """SQL for `q0_at_beta(successes, samples, beta)` over two count expressions (NULL-safe)."""
    b = float(beta)
    s = f"(CAST({successes} AS DOUBLE) / {samples})"
    # logaddexp(log S, log(1 - S) - 1/beta) without underflow: exact at S = 0 and S = 1
    return (
        f"CASE WHEN {samples} IS NULL OR {samples} = 0 THEN NULL "
        f"WHEN {successes} = 0 THEN -1.0 WHEN {successes} = {samples} THEN 0.0 "
        f"ELSE {b!r} * (ln({s}) + ln(1 + exp(ln(1 - {s}) - {1.0 / b!r} - ln({s})))) END"
    )


def q0_sql_of_s0(s0: str, beta: float) -> str:
    """SQL for `q0_of_s0(s0, beta)` over a success-rate expression in [0, 1] (NULL-safe)."""
    b = float(beta)
    s = f"CAST({s0} AS DOUBLE)"
    return (
        f"CASE WHEN {s0} IS NULL THEN NULL WHEN {s} <= 0 THEN -1.0 WHEN {s} >= 1 THEN 0.0 "
        f"ELSE {b!r} * (ln({s}) + ln(1 + exp(ln(1 - {s}) - {1.0 / b!r} - ln({s})))) END"
    )
