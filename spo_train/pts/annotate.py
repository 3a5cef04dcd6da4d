"""`spo pts` as a command: which trajectories to annotate (`select_trajectories`, their token
ids: `load_targets`) and the batched, resumable run over them (`annotate`, `PTSReport`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spo_store.annotations import (
    ROLLOUT_SOURCE,
    annotation_id,
    annotation_row,
    existing_annotation_ids,
    rollout_key,
    write_annotations,
)
from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote
from spo_train.pts.search import (
    DEFAULT_SAMPLES,
    DEFAULT_THRESHOLD,
    Judge,
    RolloutEstimator,
    Sampler,
    Target,
    pivotal_token_search,
    sandbox_judge,
)


# ------------------------------------------------------------------------------------ selection
def selection_sql(where: str | None, include_unreliable: bool) -> str:
    """The trajectories `spo pts` may annotate (one per distinct response, by traj_id)."""
    preds = ["t.reward = 0", f"t.source <> '{ROLLOUT_SOURCE}'"]
    if not include_unreliable:
        preds.append("p.judge_issue IS NULL")
    if where:
        preds.append(f"({where})")
    return (
        "SELECT t.traj_id FROM trajectories t JOIN problems p USING (problem_id) "
        f"WHERE {' AND '.join(preds)} "
        "QUALIFY row_number() OVER (PARTITION BY coalesce(t.content_hash, t.traj_id) "
        "ORDER BY t.traj_id) = 1 ORDER BY t.traj_id"
    )


def select_trajectories(lake: Lake, where: str | None, include_unreliable: bool) -> list[str]:
    """Successful trajectories matching `where` (SQL over t and p). Raises SpoError (one line)
    for SQL that does not run, or when no successful trajectory matches (saying what does)."""
    base = "FROM trajectories t JOIN problems p USING (problem_id)"
    try:
        matched = lake.sql_arrow(f"SELECT count(*) {base} WHERE ({where or 'TRUE'})")
    except SpoError as exc:
        detail = str(exc).removeprefix("SQL error: ")
        raise SpoError(
            f"--where: not valid SQL over trajectories (alias t) and problems (alias p): {detail}"
        ) from None
    ids = lake.sql_arrow(selection_sql(where, include_unreliable)).column(0).to_pylist()
    if ids:
        return ids
    n = matched.column(0)[0].as_py()
    what = f"--where {where!r}" if where else "the lake"
    if n == 0:
        raise SpoError(f"pts: {what} matches no trajectory (lake {lake.uri})")
    ok = lake.sql_arrow(
        f"SELECT count(*) FILTER (WHERE t.reward = 0) AS ok, count(*) FILTER (WHERE t.reward = 0 "
        f"AND t.source <> '{ROLLOUT_SOURCE}' AND p.judge_issue IS NOT NULL) AS flagged "
        f"{base} WHERE ({where or 'TRUE'})"
    ).to_pylist()[0]
    hint = (
        f" ({ok['flagged']} are of problems with a judge_issue: --include-unreliable keeps them)"
        if ok["flagged"] and not include_unreliable
        else ""
    )
    raise SpoError(
        f"pts: {what} matches {n} trajectories but no successful one (reward 0, not itself a "
        f"PTS rollout) to annotate{hint}"
    )


def load_targets(
    lake: Lake,
    traj_ids: Sequence[str],
    tokenizer: Any,
    *,
    tokenizer_id: str,
    ref_model_id: str,
    sampler: Sampler,
    k: int,
    threshold: float,
) -> list[Target]:
    """The trajectories as search targets, with the token ids the trainer uses for them."""
    from spo_train.lm.prompting import encode_prompt, encode_response, problem_prompt
    from spo_train.rollouts.sampling import load_problems

    if not traj_ids:
        return []
    quoted = ", ".join(sql_quote(i) for i in traj_ids)
    cols = [
        "traj_id",
        "problem_id",
        "response",
        "finish_reason",
        "tokenizer_id",
        "prompt_ids",
        "response_ids",
        "ref_model_id",
        "ref_logprobs",
    ]
    rows = lake.dataset("trajectories").to_table(columns=cols, filter=f"traj_id IN ({quoted})")
    by_id = {r["traj_id"]: r for r in rows.to_pylist()}
    pids = sorted({r["problem_id"] for r in by_id.values()})
    problems = {
        p["problem_id"]: p
        for p in load_problems(lake, f"p.problem_id IN ({', '.join(map(sql_quote, pids))})")
    }
    out = []
    for traj_id in traj_ids:
        r = by_id[traj_id]
        problem = problems[r["problem_id"]]
        own = (
            r["tokenizer_id"] == tokenizer_id
            and r["prompt_ids"] is not None
            and r["response_ids"] is not None
        )
        if own:
            prompt_ids, response_ids = list(r["prompt_ids"]), list(r["response_ids"])
        else:  # as spo_train.train.batch.ReferenceCache.prepare encodes it
            prompt_ids = encode_prompt(tokenizer, problem_prompt(problem, tokenizer))
            response_ids = encode_response(tokenizer, r["response"], r["finish_reason"])
        ref = r["ref_logprobs"] if own and r["ref_model_id"] == ref_model_id else None
        out.append(
            Target(
                traj_id=traj_id,
                problem=problem,
                prompt_ids=prompt_ids,
                response_ids=response_ids,
                rollout_key=rollout_key(traj_id, ref_model_id, tokenizer_id, sampler.key),
                annotation_id=annotation_id(
                    traj_id, ref_model_id, tokenizer_id, sampler.key, k, threshold
                ),
                ref_logprobs=list(ref)
                if ref is not None and len(ref) == len(response_ids)
                else None,
            )
        )
    return out


# ------------------------------------------------------------------------------------ the command
@dataclass
class PTSReport:
    """What one `spo pts` run did (`--json`): trajectories annotated now, already annotated
    before (with these settings), prefixes estimated, rollouts sampled now and reused,
    rollouts not judged (not counted in any estimate), pivotal tokens found (adjacent
    positions whose S differs by more than the threshold), wall time; trajectories skipped for
    an empty response, or for a prompt and response longer than the model's context (they stay
    unannotated)."""

    run_id: str = ""
    selected: int = 0
    already_done: int = 0
    trajectories: int = 0
    empty: int = 0
    too_long: int = 0
    prefixes: int = 0
    rollouts: int = 0
    reused: int = 0
    unjudged: int = 0
    pivots: int = 0
    seconds: float = 0.0
    ref_model_id: str = ""
    sampler_key: str = ""
    annotation_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        done = max(self.trajectories, 1)
        return {
            "run_id": self.run_id or None,  # None: nothing to annotate, no run recorded
            "selected": self.selected,
            "already_done": self.already_done,
            "trajectories": self.trajectories,
            "skipped_empty": self.empty,
            "skipped_too_long": self.too_long,
            "prefixes": self.prefixes,
            "rollouts": self.rollouts,
            "reused": self.reused,
            "unjudged": self.unjudged,
            "pivots": self.pivots,
            "prefixes_per_trajectory": self.prefixes / done,
            "rollouts_per_trajectory": (self.rollouts + self.reused) / done,
            "seconds": round(self.seconds, 3),
            "seconds_per_trajectory": round(self.seconds / done, 3),
            "ref_model_id": self.ref_model_id,
            "sampler_key": self.sampler_key,
        }


def pivots_of(estimates: Mapping[int, tuple[int, int]], length: int, threshold: float) -> list[int]:
    """Positions t (token indices) where S jumps by more than `threshold` from position t - 1,
    both estimated (position T - 1 has S = 1): the pivotal tokens found."""
    s = {p - 1: c / n for p, (n, c) in estimates.items() if n}
    s[length - 1] = 1.0
    return [p for p in sorted(s) if p - 1 in s and abs(s[p] - s[p - 1]) > threshold]


def annotate(
    lake: Lake,
    generator: Any,
    tokenizer: Any,
    *,
    where: str | None,
    samples: int = DEFAULT_SAMPLES,
    threshold: float = DEFAULT_THRESHOLD,
    sampler: Sampler = Sampler(),
    model_id: str,
    tokenizer_id: str,
    limit: int | None = None,
    seed: int = 0,
    chunk_trajectories: int = 8,
    include_unreliable: bool = False,
    judge: Judge | None = None,
    decode: Callable[[list[int]], str] | None = None,
    config: Mapping[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_trajectories: Callable[[int], None] | None = None,
    on_prefixes: Callable[[int], None] | None = None,
    on_rollouts: Callable[[int], None] | None = None,
) -> PTSReport:
    """Annotate the first `limit` successful trajectories matching `where` (SQL over t and p,
    by traj_id) that have no annotation with these settings yet, by pivotal token search under
    `model_id` (the generator's model, pi_0). See the module docstring.

    `judge` (default: the sandbox, `sandbox_judge`) and `decode` (default: the tokenizer's,
    special tokens skipped) turn rollouts into rewards. Raises SpoError before any run is
    recorded for bad SQL, a selection without a successful trajectory, K < 1 or a threshold
    outside (0, 1).
    """
    if samples < 1:
        raise SpoError(f"--samples {samples}: must be at least 1")
    if not 0 < threshold < 1:
        raise SpoError(f"--threshold {threshold}: must be in (0, 1)")
    started = time.perf_counter()
    report = PTSReport(ref_model_id=model_id, sampler_key=sampler.key)
    # The first `limit` of the selection in id order, done or not: the same trajectories on
    # every run, so a rerun resumes them and a rerun of a finished one adds nothing.
    candidates = select_trajectories(lake, where, include_unreliable)[:limit]
    keys = {
        t: annotation_id(t, model_id, tokenizer_id, sampler.key, samples, threshold)
        for t in candidates
    }
    done = existing_annotation_ids(lake, keys.values())
    todo = [t for t in candidates if keys[t] not in done]
    report.selected, report.already_done = len(candidates), len(candidates) - len(todo)
    if on_start:
        on_start(len(todo))
    if not todo:  # nothing to annotate: no run is recorded (run_id stays None)
        report.seconds = time.perf_counter() - started
        return report
    run_config = {
        "where": where,
        "samples": samples,
        "threshold": threshold,
        "sampler_key": sampler.key,
        "limit": limit,
        "seed": seed,
        "include_unreliable": include_unreliable,
        **dict(config or {}),
    }
    report.run_id = lake.start_run("pts", run_config, model_id=model_id, tokenizer_id=tokenizer_id)
    estimator = RolloutEstimator(
        lake,
        generator,
        decode or (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)),
        judge or sandbox_judge(),
        sampler,
        samples,
        run_id=report.run_id,
        ref_model_id=model_id,
        tokenizer_id=tokenizer_id,
        seed=seed,
        on_rollouts=on_rollouts,
    )

    def token_text(token: int) -> str:  # special tokens (eos) shown, not skipped
        return tokenizer.decode([token]) if tokenizer is not None else estimator.decode([token])

    try:
        for start in range(0, len(todo), chunk_trajectories):
            targets = load_targets(
                lake,
                todo[start : start + chunk_trajectories],
                tokenizer,
                tokenizer_id=tokenizer_id,
                ref_model_id=model_id,
                sampler=sampler,
                k=samples,
                threshold=threshold,
            )
            context = getattr(generator, "max_positions", None)
            if context is not None:
                # a rollout after the longest prefix (all but the last token) must have room for
                # max_new_tokens, else the generator cuts it short while the annotation and the
                # rollout rows store max_new_tokens as their bound (issue 20, item 3)
                room = context - sampler.max_new_tokens
                fits = [t for t in targets if len(t.prompt_ids) + max(t.length - 1, 0) <= room]
                report.too_long += len(targets) - len(fits)
                targets = fits
            report.prefixes += pivotal_token_search(
                targets, estimator, threshold, on_prefixes=on_prefixes
            )
            rows = []
            for t in targets:
                if t.length == 0:
                    report.empty += 1
                    continue
                estimates = {p - 1: nc for p, nc in t.estimates.items() if nc[0] > 0}
                rows.append(
                    annotation_row(
                        traj_id=t.traj_id,
                        run_id=report.run_id,
                        ref_model_id=model_id,
                        tokenizer_id=tokenizer_id,
                        sampler_key=sampler.key,
                        temperature=sampler.temperature,
                        top_p=sampler.top_p,
                        max_new_tokens=sampler.max_new_tokens,
                        rollouts_per_estimate=samples,
                        threshold=threshold,
                        response_tokens=t.length,
                        estimates=estimates,
                        rollout_key_=t.rollout_key,
                        tokens=[token_text(i) for i in t.response_ids],
                    )
                )
                report.pivots += len(pivots_of(t.estimates, t.length, threshold))
            write_annotations(lake, rows)
            report.annotation_ids += [r["annotation_id"] for r in rows]
            report.trajectories += len(rows)
            if on_trajectories:
                on_trajectories(min(chunk_trajectories, len(todo) - start))
    except BaseException as exc:
        lake.end_run(report.run_id, run_status(exc))  # Ctrl-C / SIGTERM: interrupted
        raise
    lake.end_run(report.run_id, "completed")
    report.rollouts, report.reused = estimator.sampled, estimator.reused
    report.unjudged = estimator.unjudged
    report.seconds = time.perf_counter() - started
    return report
