"""`spo pts`: pivotal token search, Monte-Carlo success probabilities `S_t` of response prefixes.

Method doc, "Pivotal Token Search" (Phi-4 report, as used by the SPO paper, Sec. 3.1.3 and
5.1): for a successful trajectory `a_1..a_T`, `S` after a prefix is estimated by `K` rollouts
of the reference model pi_0 (temperature 1, top-p 1: pi_0 itself) continuing the prefix, each
judged in the sandbox. Bisection: `S` is known at both ends of an interval of prefix lengths;
if the two differ by more than `threshold`, `S` is estimated at the midpoint and both halves
are searched, down to single tokens. Each pivotal token costs O(log T) estimates, not T.

Conventions (see `spo_store.annotations`): internally a prefix is named by its length
`L = 0..T` (`spo_loss`'s `t`); stored positions are token indices `L - 1` (`-1`: the prompt
alone), so position `t` holds `S` after emitting tokens `0..t`, and `S` after the whole
response is 1 (the trajectory passed; not estimated, not stored). Token ids are those the
trainer uses (`spo_train.batch.ReferenceCache`): the row's own ids when its tokenizer is the
one in use, else `encode_prompt` / `encode_response` of the text.

Everything is batched: each round estimates every prefix that the search of every trajectory of
a chunk needs next, with one `generate_ids` call per distinct number of missing rollouts and one
judge batch. Rollouts are `trajectories` rows (`source='pts'`, deterministic ids
`pts-<rollout_key>@<position>#<k>`), inserted by key after each round: a run killed at any
point is resumed by running it again (stored rollouts are reused, never sampled twice or
stored twice). An annotation is written (by key) when its trajectory's search is done.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.annotations import (
    ROLLOUT_SOURCE,
    annotation_id,
    annotation_row,
    existing_annotation_ids,
    pooled_targets,
    rollout_key,
    rollout_rewards,
    rollout_traj_id,
    write_annotations,
)
from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote, utc_now
from spo_store.q0_estimates import sampler_key
from spo_train.config import at_least, setting, validate_fields

DEFAULT_SAMPLES = 10
"""K, rollouts per estimate (the paper's)."""
DEFAULT_THRESHOLD = 0.2

Judge = Callable[[Sequence[Mapping[str, Any]], Sequence[str]], list[dict[str, Any]]]
"""(problems, full response texts) -> one dict per response: reward (0, -1, None: not judged),
judge_status, passed_tests, total_tests."""


def _threshold_check(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


@dataclass
class PTSConfig:
    """`spo pts`: estimate S_t along successful trajectories by rollouts of pi_0, bisecting where
    S changes (the settings of the command; `spo pts --help`)."""

    where: str | None = setting(None, metavar="SQL")
    """SQL predicate over trajectories (alias t) and problems (alias p) choosing the
    trajectories to annotate; only successful ones (t.reward = 0) are taken, PTS rollouts
    themselves never (default: every successful trajectory)"""
    limit: int | None = setting(None, check=at_least(1))
    """annotate at most this many trajectories (of those not annotated yet with these settings,
    by traj_id)"""
    samples: int = setting(DEFAULT_SAMPLES, short="-n", check=at_least(1))
    """K: rollouts of pi_0 per estimated prefix (the paper: 10)"""
    threshold: float = setting(DEFAULT_THRESHOLD, check=_threshold_check)
    """bisect an interval while S at its two ends differs by more than this"""
    max_new_tokens: int = setting(256, check=at_least(1))
    """tokens a rollout may add after its prefix"""
    seed: int = setting(0, check=at_least(0))
    """sampling seed"""
    chunk_trajectories: int = setting(8, check=at_least(1))
    """trajectories searched together (one generate call per round); annotations are committed
    per chunk"""
    model: str | None = setting(None, metavar="DIR")
    """pi_0, the reference model whose S_t is estimated (default: the embedded model)"""
    lake: str | None = setting(None, metavar="URI")
    """lake URI (default: $SPO_LAKE, else ./spo-lake)"""
    workers: int | None = setting(None, check=at_least(1))
    """judge processes (default: all cores)"""
    include_unreliable: bool = setting(False)
    """keep trajectories of problems with a judge_issue (left out by default: their rewards are
    not trustworthy)"""
    unsafe_no_sandbox: bool = setting(False)
    """run programs without bubblewrap (trusted code only)"""
    plot: str | None = setting(None, metavar="PNG")
    """also draw S_t along the response of the selected annotation with the largest jump of S
    (annotated now or before) to this PNG file"""

    def validate(self) -> None:
        validate_fields(self)
        if self.where is not None and not self.where.strip():
            raise SpoError("--where is empty: give an SQL predicate over t and p, or leave it out")


@dataclass(frozen=True)
class Sampler:
    """How rollouts continue a prefix: pi_0 itself (temperature 1, top-p 1) by default."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0

    @property
    def key(self) -> str:
        return sampler_key(self.temperature, self.top_p, self.max_new_tokens)


@dataclass
class Target:
    """One trajectory under search. `estimates`: prefix length -> (judged rollouts, successes);
    `intervals`: the (lo, hi) prefix-length intervals still to examine."""

    traj_id: str
    problem: Mapping[str, Any]
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_key: str
    annotation_id: str
    ref_logprobs: list[float] | None = None  # the row's own, under the model in use, else None
    estimates: dict[int, tuple[int, int]] = field(default_factory=dict)
    intervals: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.response_ids)

    def s(self, prefix: int) -> float | None:
        """S after `prefix` tokens: 1 after the whole (successful) response, else the estimate
        (None when none of its rollouts was judged)."""
        if prefix == self.length:
            return 1.0
        n, c = self.estimates.get(prefix, (0, 0))
        return c / n if n else None


def next_prefixes(target: Target, threshold: float) -> list[int]:
    """One bisection step over `target.intervals` (both ends known): keep the intervals whose
    ends differ by more than `threshold` and span more than one token, split at their
    midpoints; returns the midpoints not estimated yet. An end with no judged rollout cannot
    be compared: its interval is dropped."""
    kept: list[tuple[int, int]] = []
    need: list[int] = []
    for lo, hi in target.intervals:
        s_lo, s_hi = target.s(lo), target.s(hi)
        if s_lo is None or s_hi is None or abs(s_hi - s_lo) <= threshold or hi - lo < 2:
            continue
        mid = (lo + hi) // 2
        kept += [(lo, mid), (mid, hi)]
        if mid not in target.estimates:
            need.append(mid)
    target.intervals = kept
    return need


def pivotal_token_search(
    targets: Sequence[Target],
    estimate: Callable[[list[tuple[Target, int]]], dict[tuple[str, int], tuple[int, int]]],
    threshold: float,
    *,
    on_prefixes: Callable[[int], None] | None = None,
) -> int:
    """Run the bisection of every target to the end, all targets' next prefixes estimated in
    one `estimate` call per round (`[(target, prefix length)] -> {(traj_id, prefix): (n, c)}`).
    Returns the number of prefixes estimated. Targets with an empty response are skipped."""
    active = [t for t in targets if t.length > 0]
    need: dict[str, list[int]] = {}
    for t in active:
        t.intervals = [(0, t.length)]
        need[t.traj_id] = [] if 0 in t.estimates else [0]  # S after the whole response is 1
    done = 0
    while True:
        requests: list[tuple[Target, int]] = []
        for t in active:
            prefixes = need[t.traj_id]
            while not prefixes and t.intervals:  # both ends known: refine
                prefixes = next_prefixes(t, threshold)
            requests += [(t, p) for p in prefixes]
        if not requests:
            return done
        results = estimate(requests)
        for t, p in requests:
            t.estimates[p] = results[(t.traj_id, p)]
        done += len(requests)
        if on_prefixes:
            on_prefixes(len(requests))
        need = {t.traj_id: [] for t in active}


def sandbox_judge(*, workers: int | None = None, unsafe_no_sandbox: bool = False) -> Judge:
    """The real judge: the program of each response (`extract_code`) against all tests of its
    problem, in the sandbox."""
    from spo_train.judge import verdict_reward
    from spo_train.prompting import extract_code
    from spo_train.rollout import judge_responses

    def judge(problems: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> list[dict[str, Any]]:
        verdicts = judge_responses(
            problems,
            [extract_code(t) for t in texts],
            workers=workers,
            unsafe_no_sandbox=unsafe_no_sandbox,
        )
        return [
            {
                "reward": verdict_reward(v),
                "judge_status": v.status,
                "passed_tests": v.passed_tests,
                "total_tests": v.total_tests,
            }
            for v in verdicts
        ]

    return judge


class RolloutEstimator:
    """Estimates `S` after prefixes by `k` rollouts each: reuses the rollouts already in the
    lake (by their deterministic ids), samples the missing ones (`generator.generate_ids`),
    judges them, stores them as `trajectories` rows (`source='pts'`, inserted by key) and
    counts the judged ones (`n`) and the successes (`c`)."""

    def __init__(
        self,
        lake: Lake,
        generator: Any,
        decode: Callable[[list[int]], str],
        judge: Judge,
        sampler: Sampler,
        k: int,
        *,
        run_id: str,
        ref_model_id: str,
        tokenizer_id: str,
        seed: int = 0,
        on_rollouts: Callable[[int], None] | None = None,
    ) -> None:
        self.lake, self.generator, self.decode, self.judge = lake, generator, decode, judge
        self.sampler, self.k, self.seed = sampler, k, seed
        self.run_id, self.ref_model_id, self.tokenizer_id = run_id, ref_model_id, tokenizer_id
        self.on_rollouts = on_rollouts
        self.sampled = self.reused = self.unjudged = 0

    def __call__(
        self, requests: list[tuple[Target, int]]
    ) -> dict[tuple[str, int], tuple[int, int]]:
        ids = {
            (t.traj_id, p): [rollout_traj_id(t.rollout_key, p - 1, k) for k in range(self.k)]
            for t, p in requests
        }
        rewards = rollout_rewards(self.lake, [i for group in ids.values() for i in group])
        self.reused += len(rewards)
        # Requests missing the same number of rollouts share one generate call.
        groups: dict[int, list[tuple[Target, int, list[str]]]] = {}
        for t, p in requests:
            missing = [i for i in ids[(t.traj_id, p)] if i not in rewards]
            if missing:
                groups.setdefault(len(missing), []).append((t, p, missing))
        rows: list[dict[str, Any]] = []
        for need, group in sorted(groups.items()):
            rows += self._sample(need, group)
        if rows:
            self.lake.insert_new("trajectories", rows)
            # A concurrent run may have stored some of these ids first: the stored rows count.
            rewards.update(rollout_rewards(self.lake, [r["traj_id"] for r in rows]))
            self.sampled += len(rows)
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for key, group in ids.items():
            judged = [rewards[i] for i in group if rewards.get(i) is not None]
            self.unjudged += sum(1 for i in group if i in rewards and rewards[i] is None)
            out[key] = (len(judged), sum(1 for r in judged if r == 0))
        return out

    def _sample(
        self, need: int, group: list[tuple[Target, int, list[str]]]
    ) -> list[dict[str, Any]]:
        prompts = [t.prompt_ids + t.response_ids[:p] for t, p, _ in group]
        # Seeded by what is drawn: a rerun that must sample the same rollouts draws the same.
        digest = hashlib.sha256(f"{self.seed}\0{group[0][2][0]}\0{len(group)}".encode())
        samples = self.generator.generate_ids(
            prompts,
            n=need,
            temperature=self.sampler.temperature,
            top_p=self.sampler.top_p,
            max_new_tokens=self.sampler.max_new_tokens,
            seed=int(digest.hexdigest()[:15], 16),
            response_prefix_lengths=[p for _, p, _ in group],
        )
        flat = [
            (t, p, rid, s)
            for (t, p, missing), drawn in zip(group, samples, strict=True)
            for rid, s in zip(missing, drawn, strict=True)
        ]
        texts = [self.decode(t.response_ids[:p] + list(s.response_ids)) for t, p, _, s in flat]
        verdicts = self.judge([t.problem for t, _, _, _ in flat], texts)
        if self.on_rollouts:
            self.on_rollouts(len(flat))
        now = utc_now()
        rows = []
        for (t, p, rid, s), text, v in zip(flat, texts, verdicts, strict=True):
            response_ids = t.response_ids[:p] + [int(x) for x in s.response_ids]
            ref = None
            if t.ref_logprobs is not None and len(s.logprobs) == len(s.response_ids):
                # pi_0 sampled the continuation: its own log-probs are the reference's
                ref = [float(x) for x in t.ref_logprobs[:p]] + [float(x) for x in s.logprobs]
            digest = hashlib.sha256(f"{t.problem['problem_id']}\0{text}".encode()).hexdigest()
            rows.append(
                {
                    "traj_id": rid,
                    "problem_id": t.problem["problem_id"],
                    "run_id": self.run_id,
                    "source": ROLLOUT_SOURCE,
                    "model_id": self.ref_model_id,
                    "temperature": float(self.sampler.temperature),
                    "top_p": float(self.sampler.top_p),
                    "max_new_tokens": int(self.sampler.max_new_tokens),
                    "language": "python3",
                    "response": text,
                    "response_chars": len(text),
                    "reward": v["reward"],
                    "reward_source": "judge",
                    "judge_status": v.get("judge_status"),
                    "passed_tests": v.get("passed_tests"),
                    "total_tests": v.get("total_tests"),
                    "finish_reason": s.finish_reason,
                    "content_hash": digest,
                    "tokenizer_id": self.tokenizer_id,
                    "prompt_ids": list(t.prompt_ids),
                    "response_ids": response_ids,
                    "num_response_tokens": len(response_ids),
                    # the prefix was not drawn by this sampler: no behaviour/model log-probs
                    "ref_model_id": self.ref_model_id if ref is not None else None,
                    "ref_logprobs": ref,
                    "created_at": now,
                }
            )
        return rows


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
    from spo_train.prompting import encode_prompt, encode_response, problem_prompt
    from spo_train.rollout import load_problems

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
        else:  # as spo_train.batch.ReferenceCache.prepare encodes it
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
            "run_id": self.run_id,
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
    """Annotate the successful trajectories matching `where` (SQL over t and p) that have no
    annotation with these settings yet (at most `limit`), by pivotal token search under
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
    candidates = select_trajectories(lake, where, include_unreliable)
    keys = {
        t: annotation_id(t, model_id, tokenizer_id, sampler.key, samples, threshold)
        for t in candidates
    }
    done = existing_annotation_ids(lake, keys.values())
    todo = [t for t in candidates if keys[t] not in done]
    report.selected, report.already_done = len(candidates), len(candidates) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    if on_start:
        on_start(len(todo))
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
            if context is not None:  # a prefix this long cannot be continued by the model
                fits = [t for t in targets if len(t.prompt_ids) + t.length <= context]
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


# ------------------------------------------------------------------------------------ training
def attach_mc_targets(batch: Any, lake: Lake, *, ref_model_id: str, tokenizer_id: str) -> int:
    """Set `batch.mc_positions` / `batch.mc_targets` (`spo_train.losses.pad_mc_targets` layout)
    from the lake's PTS annotations of the batch's trajectories under this reference model and
    tokenizer; returns the number of targets. A stored position t becomes `spo_loss`'s prefix
    length t + 1 (Q after token t); position -1 (`Q_0 = q0`, no gradient) is left out, and so
    is an annotation whose response length differs from the batch row's (other token ids)."""
    from spo_train.losses import pad_mc_targets

    pooled = pooled_targets(
        lake, list(batch.traj_ids), ref_model_id=ref_model_id, tokenizer_id=tokenizer_id
    )
    per_row: list[tuple[list[int], list[float]] | None] = []
    count = 0
    for traj_id, response in zip(batch.traj_ids, batch.response_ids, strict=True):
        entry = pooled.get(traj_id)
        if entry is None or entry[0] != len(response):
            per_row.append(None)
            continue
        positions = [p for p in sorted(entry[1]) if 0 <= p < len(response)]
        per_row.append(
            ([p + 1 for p in positions], [entry[1][p][1] / entry[1][p][0] for p in positions])
        )
        count += len(positions)
    if count == 0:
        batch.mc_positions = batch.mc_targets = None
        return 0
    batch.mc_positions, batch.mc_targets = pad_mc_targets(per_row)
    return count


# ------------------------------------------------------------------------------------ analysis
def largest_jump_annotation(lake: Lake, annotation_ids: Sequence[str]) -> str | None:
    """The annotation among `annotation_ids` with the largest jump of S between adjacent
    stored positions (S = 1 after the last token included); None when there is none."""
    if not annotation_ids:
        return None
    ids = ", ".join(sql_quote(i) for i in annotation_ids)
    rows = lake.sql_arrow(
        "SELECT annotation_id, positions, s_t, response_tokens FROM annotations "
        f"WHERE annotation_id IN ({ids})"
    ).to_pylist()
    best, best_jump = None, -1.0
    for r in rows:
        s = dict(zip(r["positions"], r["s_t"], strict=True))
        s[r["response_tokens"] - 1] = 1.0
        ps = sorted(s)
        jump = max((abs(s[b] - s[a]) for a, b in zip(ps, ps[1:], strict=False)), default=0.0)
        if jump > best_jump:
            best, best_jump = r["annotation_id"], jump
    return best


def plot_annotation(lake: Lake, annotation: str, path: str | Path, tokenizer: Any) -> Path:
    """Draw S_t along the response of one annotation to a PNG: S at each estimated position
    (and 1 after the last token) as a step line (S is flat between estimates as far as the
    search knows), each estimate's 95% Wilson interval, pivotal tokens (adjacent positions
    with a jump above the threshold) labelled with their text. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = lake.sql_arrow(
        "SELECT a.*, t.problem_id, p.name, t.tokenizer_id AS row_tokenizer, t.response_ids, "
        "t.response, t.finish_reason FROM annotations a JOIN trajectories t USING (traj_id) "
        f"JOIN problems p USING (problem_id) WHERE a.annotation_id = {sql_quote(annotation)}"
    ).to_pylist()
    if not rows:
        raise SpoError(f"no annotation {annotation!r} in lake {lake.uri}")
    a = rows[0]
    length = a["response_tokens"]
    if a["row_tokenizer"] == a["tokenizer_id"] and a["response_ids"] is not None:
        ids = list(a["response_ids"])
    else:
        from spo_train.prompting import encode_response

        ids = encode_response(tokenizer, a["response"], a["finish_reason"])
    xs = [*a["positions"], length - 1]
    ys = [*a["s_t"], 1.0]
    fig = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.step(xs, ys, where="post", color="#1f77b4", lw=1.5, label="S_t (flat between estimates)")
    if a["positions"]:
        bounds = [_wilson(c, n) for c, n in zip(a["successes"], a["samples"], strict=True)]
        below = [s - b[0] for s, b in zip(a["s_t"], bounds, strict=True)]
        above = [b[1] - s for s, b in zip(a["s_t"], bounds, strict=True)]
        ax.errorbar(
            a["positions"],
            a["s_t"],
            yerr=[below, above],
            fmt="o",
            ms=4,
            color="#1f77b4",
            ecolor="#9ecae1",
            capsize=2,
            label=f"estimate ({a['rollouts_per_estimate']} rollouts each, 95% Wilson interval)",
        )
    s_at = dict(zip(xs, ys, strict=True))
    for p in sorted(s_at):
        jump = p - 1 in s_at and abs(s_at[p] - s_at[p - 1]) > (a["threshold"] or 0.0)
        if jump and 0 <= p < len(ids):
            token = tokenizer.decode([ids[p]]).replace("\n", "\\n")
            ax.annotate(
                repr(token)[1:-1],
                (p, s_at[p]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
                color="#d62728",
            )
            ax.axvline(p, color="#d62728", lw=0.6, ls=":")
    ax.set_xlim(-1.5, length - 0.5)
    ax.set_ylim(-0.05, 1.12)
    ax.set_xlabel("response token position t (-1: the prompt alone)")
    ax.set_ylabel("S_t = P(success | a_<=t) under pi_0")
    ax.set_title(
        f"{a['name']}: {a['traj_id']} ({length} tokens, threshold {a['threshold']:g})",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _wilson(c: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion c/n."""
    if n == 0:
        return 0.0, 1.0
    p = c / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
