"""`spo estimate-q0`: Monte-Carlo estimates of each prompt's soft value under pi_0.

For each selected problem, responses are sampled from pi_0 and judged; from the judged
samples, an unbiased estimate of the success rate S0 and its exact 95% interval, and
`q0 = beta * log(S0 + (1 - S0) * exp(-1/beta))` with its interval (method doc, "Values" and
"Sequential Q0"). Every sample is stored as a `source='pi0'` trajectory (reusable offline data;
since the sampler is pi_0 itself at temperature 1, its log-probs are stored as reference
log-probs).

How many samples (`spo_store.q0_sequential.StoppingRule`): `sequential` (the command's
default) samples a problem in rounds until r successes or the cap (`--samples`), so easy
problems stop early and hard ones get the cap; `fixed` draws exactly the cap.

Q0 belongs to the reference model and sampler that estimated it (issue 9, item 8): each
estimate is one `q0_estimates` row keyed by (problem, reference model identity, sampler key:
temperature, top-p, max_new_tokens). `n` and `c` count only *judged* samples (reward NOT NULL).

Resumable and incremental: problems are done in chunks; each round of a chunk is committed as
one trajectories append and one q0_estimates write (new keys with `Lake.insert_new`, more
samples by `update_rows` on `estimate_id`), so a stored sequential estimate records the checks
its rule took. A run selects the problems matching `where` in id order, the first `limit` of
them (the same problems on every run), works on those whose estimate is not done (fewer than
the cap judged samples and, when sequential, fewer than r successes), and first reuses this
model's own `pi0` samples with the same sampler settings already in the lake (a run killed
between the two commits loses nothing; `--samples 800` after 4 samples goes on from those 4).
A rerun with the same settings adds nothing. Problems with a `judge_issue` are left out unless
`include_unreliable`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote
from spo_store.q0_estimates import estimate_row, sampler_key, write_estimates
from spo_store.q0_sequential import StoppingRule, parse_stopping
from spo_store.selection import (
    RELIABLE,
    count_problems,
    explain_empty,
    judge_issue_counts,
    left_out_line,
)
from spo_train.algorithms.losses import q0_from_success_rate
from spo_train.rollouts.sampling import SamplerSettings, load_problems, sample_and_judge

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
    `already_done`: selected problems whose estimate is already done (>= n judged samples, or
    >= r successes under a sequential rule; a rerun that works on 0 problems says this many
    were done before); `stopping`, `cap`: the rule; `judged`: n summed over the problems worked
    on; `stopped`: problems per reason they stopped (`successes`, `cap`).
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
    stopping: str = "fixed"
    cap: int = 0
    judged: int = 0
    stopped: dict[str, int] = field(default_factory=dict)
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


def q0_done(p: dict[str, Any], n: int, stopping: StoppingRule | None = None) -> bool:
    """Whether problem row `p` (with its `q0_samples`, `q0_successes`) needs no more samples:
    `n` (the cap) judged samples, or, for a sequential rule, its r successes."""
    if (p.get("q0_samples") or 0) >= n:
        return True
    r = stopping.successes if stopping is not None and stopping.kind == "sequential" else None
    return r is not None and (p.get("q0_successes") or 0) >= r


def q0_todo(
    lake: Lake,
    where: str,
    *,
    model_id: str,
    settings: SamplerSettings,
    limit: int | None = None,
    include_unreliable: bool = False,
    stopping: StoppingRule | None = None,
) -> list[dict[str, Any]]:
    """The problems `estimate_q0` would work on: of `q0_selected`, those not done under
    `stopping` (`q0_done`; default fixed at `settings.n`), ordered by id."""
    selected = q0_selected(
        lake,
        where,
        model_id=model_id,
        settings=settings,
        limit=limit,
        include_unreliable=include_unreliable,
    )
    return [p for p in selected if not q0_done(p, settings.n, stopping)]


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
    stopping: StoppingRule | None = None,
    model_path: str | None = None,
) -> Q0Report:
    """Estimate q0 of the model `model_id` (the generator's; it is pi_0 here) for the problems
    matching `where` (SQL over `p`: problems plus this model's and sampler's q0 columns) whose
    estimate is not done under `stopping` (default: fixed at `settings.n`; see the module
    docstring). `settings.n` is the cap of a sequential rule (its `cap` is set to it).

    Raises SpoError (before any run is recorded) for a temperature range (q0 needs one
    sampler), a `where` matching no problem (naming the splits present), or one whose every
    problem has a judge_issue while `include_unreliable` is off.
    """
    key = q0_sampler_key(settings)
    rule = replace(stopping or StoppingRule("fixed"), cap=settings.n)
    r_done = rule.successes if rule.kind == "sequential" else None
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
    todo = [p for p in selected if not q0_done(p, settings.n, rule)]
    report = Q0Report(problems=len(todo), sampler_key=key, stopping=rule.kind, cap=rule.cap)
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
        "stopping": rule.kind,
        "stop_successes": r_done,
    }
    report.run_id = lake.start_run(
        "estimate-q0", config, model_id=model_id, tokenizer_id=tokenizer_id
    )
    try:
        for start in range(0, len(todo), chunk_problems):
            chunk = todo[start : start + chunk_problems]
            _estimate_chunk(
                lake,
                generator,
                tokenizer,
                chunk,
                start,
                rule,
                settings,
                beta,
                report,
                model_id=model_id,
                tokenizer_id=tokenizer_id,
                workers=workers,
                on_samples=on_samples,
                unsafe_no_sandbox=unsafe_no_sandbox,
            )
            if on_problems:
                on_problems(len(chunk))
    except BaseException as exc:
        lake.end_run(report.run_id, run_status(exc))  # Ctrl-C / SIGTERM: interrupted
        raise
    lake.end_run(report.run_id, "completed")
    return report


@dataclass
class _State:
    """One problem's sampling state in a run: judged samples n, successes c, the judged
    counts at which a sequential rule checked (`checks`), and whether it is done."""

    n: int
    c: int
    checks: list[int]
    done: bool = False


def _start_state(p: dict[str, Any], n: int, c: int, rule: StoppingRule) -> _State:
    """Where a problem's sampling resumes from its judged samples in the lake (n, c) and its
    stored estimate (`p['q0_stopping']`, `p['q0_samples']`).

    A sequential estimate of the same r continues its own checks (a run killed between a
    round's two commits left n past the stored row: that round's check is taken now, at n).
    Any other history (none, a fixed-n estimate, another r) is a first stage of n samples, with
    a check at n (if any): exact when n was fixed in advance, as fixed estimates and a first
    round are; changing r on a sequential estimate is the one case the unbiasedness does not
    cover (docs/method.md, "Sequential Q0")."""
    r_old, checks_old = parse_stopping(p.get("q0_stopping"))
    if rule.kind == "fixed":
        return _State(n, c, [], done=n >= rule.cap)
    stored_n = p.get("q0_samples") or 0
    if r_old == rule.successes and checks_old and checks_old[-1] == stored_n and n >= stored_n:
        checks = checks_old if n == stored_n else [*checks_old, n]
    else:
        checks = [n] if n > 0 else []
    return _State(n, c, checks, done=n > 0 and rule.stopped(n, c))


def _estimate_chunk(
    lake: Lake,
    generator: Any,
    tokenizer: Any,
    chunk: list[dict[str, Any]],
    start: int,
    rule: StoppingRule,
    settings: SamplerSettings,
    beta: float,
    report: Q0Report,
    *,
    model_id: str,
    tokenizer_id: str,
    workers: int | None,
    on_samples: Callable[[int], None] | None,
    unsafe_no_sandbox: bool,
) -> None:
    """Sample one chunk of problems in rounds until each is done under `rule`; after every
    round, one trajectories append and one q0_estimates write (so a stored estimate always
    records the checks its rule took)."""
    have = _existing_samples(lake, [p["problem_id"] for p in chunk], model_id, settings)
    state: dict[str, _State] = {}
    for p in chunk:
        n, c = have.get(p["problem_id"], (0, 0))
        state[p["problem_id"]] = _start_state(p, n, c, rule)
        report.reused += n
    by_id = {p["problem_id"]: p for p in chunk}

    def row_of(pid: str, st: _State) -> dict[str, Any]:
        return estimate_row(
            pid,
            model_id,
            temperature=float(settings.temperature),  # type: ignore[arg-type]
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            samples=st.n,
            successes=st.c,
            beta=beta,
            run_id=report.run_id,
            stopping=rule,
            checks=st.checks,
        )

    changed = set(state)  # every problem's row is (re)written once at least
    while True:
        # Problems at the same judged count draw the same round, in one generate call; the
        # seed moves with the samples already there, so later rounds never repeat draws.
        groups: dict[int, list[dict[str, Any]]] = {}
        for pid, st in state.items():
            if not st.done:
                groups.setdefault(st.n, []).append(by_id[pid])
        if groups:
            new_rows: list[dict[str, Any]] = []
            for n_have, probs in sorted(groups.items()):
                need = (rule.cap if rule.kind == "fixed" else rule.next_check(n_have)) - n_have
                seed = settings.seed + start + 1_000_003 * n_have
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
            judged: dict[str, tuple[int, int]] = {}
            for row in new_rows:
                if row["reward"] is None:  # not judged: not a sample of S0
                    report.unjudged += 1
                    continue
                dn, dc = judged.get(row["problem_id"], (0, 0))
                judged[row["problem_id"]] = (dn + 1, dc + (row["reward"] == 0))
            for probs in groups.values():
                for p in probs:
                    st = state[p["problem_id"]]
                    dn, dc = judged.get(p["problem_id"], (0, 0))
                    if dn == 0:
                        # A round the judge could not judge at all: stop here (a rerun
                        # samples replacements), rather than loop on a broken judge.
                        st.done = True
                        continue
                    st.n, st.c = st.n + dn, st.c + dc
                    st.checks.append(st.n)
                    st.done = rule.stopped(st.n, st.c)
                    changed.add(p["problem_id"])
        rows = []
        for pid in sorted(changed):
            st = state[pid]
            if st.n == 0:
                continue
            rows.append(row_of(pid, state[pid]))
        inserted, updated = write_estimates(lake, rows)
        report.inserted += inserted
        report.updated += updated
        changed = set()
        if not groups:
            break
    for p in chunk:
        st = state[p["problem_id"]]
        if st.n == 0:
            report.no_estimate.append(p["name"])
            continue
        row = row_of(p["problem_id"], st)
        report.successes += st.c
        report.judged += st.n
        stopped_by = (
            "successes"
            if rule.kind == "sequential" and st.c >= rule.successes and st.n < rule.cap
            else "cap"
        )
        report.stopped[stopped_by] = report.stopped.get(stopped_by, 0) + 1
        report.per_problem.append(
            {
                "problem_id": p["problem_id"],
                "name": p["name"],
                "n": st.n,
                "c": st.c,
                "s0": row["s0"],
                "q0": row["q0"],
                "q0_low": row["q0_low"],
                "q0_high": row["q0_high"],
                "stopping": row["stopping"],
            }
        )


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
