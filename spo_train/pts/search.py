"""Pivotal token search itself: the settings (`PTSConfig`), the bisection over prefix lengths
(`next_prefixes`, `pivotal_token_search`) and the Monte-Carlo estimator of S at a prefix
(`RolloutEstimator`: K rollouts of pi_0, judged in the sandbox, stored and reused). See
`spo_train.pts` for the method and the conventions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spo_store.annotations import (
    ROLLOUT_SOURCE,
    rollout_rewards,
    rollout_traj_id,
)
from spo_store.errors import SpoError
from spo_store.lake import Lake, utc_now
from spo_store.q0_estimates import sampler_key
from spo_train.config import at_least, seed_check, setting, validate_fields
from spo_train.rollouts.sampling import trajectory_row

DEFAULT_SAMPLES = 10
"""K, rollouts per estimate (the paper's)."""
DEFAULT_THRESHOLD = 0.2

Judge = Callable[[Sequence[Mapping[str, Any]], Sequence[str]], list[dict[str, Any]]]
"""(problems, full response texts) -> one dict per response: reward (0, -1, None: not judged),
judge_status, passed_tests, total_tests."""


def _threshold_check(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


def _plot_check(v: str | None) -> str | None:
    """The plot's file type is checked before any work (matplotlib picks it by extension)."""
    if v is None:
        return None
    from pathlib import Path

    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(v).suffix.lower().lstrip(".")
    if suffix not in formats:
        return f"the file name must end in an image type ({', '.join(sorted(formats))})"
    parent = Path(v).parent
    if not parent.is_dir():
        return f"its folder {str(parent)!r} does not exist"
    return None


@dataclass
class PTSConfig:
    """`spo pts`: estimate S_t along successful trajectories by rollouts of pi_0, bisecting where
    S changes (the settings of the command; `spo pts --help`)."""

    where: str | None = setting(None, metavar="SQL")
    """SQL predicate over trajectories (alias t) and problems (alias p) choosing the
    trajectories to annotate; only successful ones (t.reward = 0) are taken, PTS rollouts
    themselves never (default: every successful trajectory)"""
    limit: int | None = setting(None, check=at_least(1))
    """the first N selected trajectories by traj_id, annotated or not (the same N on every run;
    those already annotated with these settings are skipped)"""
    samples: int = setting(DEFAULT_SAMPLES, short="-n", check=at_least(1))
    """K: rollouts of pi_0 per estimated prefix (the paper: 10)"""
    threshold: float = setting(DEFAULT_THRESHOLD, check=_threshold_check)
    """bisect an interval while S at its two ends differs by more than this"""
    max_new_tokens: int = setting(256, check=at_least(1))
    """tokens a rollout may add after its prefix"""
    seed: int = setting(0, check=seed_check)
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
    plot: str | None = setting(None, metavar="PNG", check=_plot_check)
    """also draw S_t along the response of the selected annotation with the largest jump of S
    (annotated now or before) to this PNG file"""

    def validate(self) -> None:
        validate_fields(self)
        if self.where is not None and not self.where.strip():
            raise SpoError("--where is empty: give an SQL predicate over t and p, or leave it out")
        if self.where is not None:
            from spo_store.predicates import check_predicate

            check_predicate(self.where, "--where")


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
    from spo_train.lm.prompting import extract_code
    from spo_train.rollouts.sampling import judge_responses

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
            rows.append(
                trajectory_row(
                    traj_id=rid,
                    problem_id=t.problem["problem_id"],
                    run_id=self.run_id,
                    source=ROLLOUT_SOURCE,
                    model_id=self.ref_model_id,
                    temperature=self.sampler.temperature,
                    top_p=self.sampler.top_p,
                    max_new_tokens=self.sampler.max_new_tokens,
                    response=text,
                    reward=v["reward"],
                    judge_status=v.get("judge_status"),
                    passed_tests=v.get("passed_tests"),
                    total_tests=v.get("total_tests"),
                    finish_reason=s.finish_reason,
                    tokenizer_id=self.tokenizer_id,
                    prompt_ids=t.prompt_ids,
                    response_ids=response_ids,
                    # the prefix was not drawn by this sampler: no behaviour/model log-probs
                    ref_model_id=self.ref_model_id if ref is not None else None,
                    ref_logprobs=ref,
                    created_at=now,
                )
            )
        return rows
