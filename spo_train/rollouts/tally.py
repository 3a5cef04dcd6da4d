"""What a step's online rollouts looked like: outcome rates and the sampler's entropy.

The stability curves of issue 22 (item 3) read these per step: a policy that stops compiling, or
whose sampling distribution collapses, shows it here long before pass@k moves. One tally per
step in the trainer's process; a Ray rollout worker sends the tally of each batch it commits
(a plain dict, `RolloutTally.as_dict`) and the trainer adds them up.

Rates are over *judged* rows (reward not NULL), the rows whose `judge_status` is a verdict;
`rollout/truncated_rate` is over all rows. `rollout/sampler_entropy` estimates the per-token
entropy (nats) of the distribution the tokens were drawn from, mu (the rollout policy at the
row's temperature and top-p), as the mean of -log mu over the drawn tokens: unbiased for the
expected per-token entropy of mu along its own samples. For a fixed sampler (GRPO/PPO at T = 1,
top-p 1) mu is the rollout policy itself; SPO's default draws T ~ U(0.1, 0.8), so its value
is lower than the policy's own entropy and comparable across steps of one run, not across
samplers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RATE_STATUSES = ("compile_error", "runtime_error", "time_limit", "memory_limit", "wrong_answer")
"""Verdicts whose share of judged rows is logged as `rollout/<status>_rate`."""


@dataclass
class RolloutTally:
    """Counts over trajectory rows (`spo_train.rollouts.sampling.trajectory_row` dicts)."""

    rows: int = 0
    judged: int = 0
    reward_sum: float = 0.0
    truncated: int = 0
    tokens: int = 0
    neg_logprob_sum: float = 0.0  # sum over drawn tokens of -log mu (behaviour log-probs)
    statuses: Counter = field(default_factory=Counter)  # judge_status of judged rows

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> RolloutTally:
        """Count `rows` in; returns self."""
        for r in rows:
            self.rows += 1
            if r.get("finish_reason") == "length":
                self.truncated += 1
            lps = r.get("behaviour_logprobs") or []
            self.tokens += len(lps)
            self.neg_logprob_sum -= float(sum(lps))
            if r.get("reward") is not None:
                self.judged += 1
                self.reward_sum += float(r["reward"])
                self.statuses[str(r.get("judge_status"))] += 1
        return self

    def add(self, other: RolloutTally | Mapping[str, Any]) -> RolloutTally:
        """Add another tally (or its `as_dict`, as a Ray worker sends it); returns self."""
        o = other if isinstance(other, RolloutTally) else RolloutTally.from_dict(other)
        self.rows += o.rows
        self.judged += o.judged
        self.reward_sum += o.reward_sum
        self.truncated += o.truncated
        self.tokens += o.tokens
        self.neg_logprob_sum += o.neg_logprob_sum
        self.statuses.update(o.statuses)
        return self

    def as_dict(self) -> dict[str, Any]:
        """Plain, picklable form (`from_dict` reads it back)."""
        return {
            "rows": self.rows,
            "judged": self.judged,
            "reward_sum": self.reward_sum,
            "truncated": self.truncated,
            "tokens": self.tokens,
            "neg_logprob_sum": self.neg_logprob_sum,
            "statuses": dict(self.statuses),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutTally:
        return cls(
            rows=int(d["rows"]),
            judged=int(d["judged"]),
            reward_sum=float(d["reward_sum"]),
            truncated=int(d["truncated"]),
            tokens=int(d["tokens"]),
            neg_logprob_sum=float(d["neg_logprob_sum"]),
            statuses=Counter(d["statuses"]),
        )

    def metrics(self) -> dict[str, float]:
        """`rollout/reward_mean`, `rollout/unjudged`, `rollout/<status>_rate` (RATE_STATUSES),
        `rollout/truncated_rate`, `rollout/sampler_entropy` (nats/token); a rate of no rows is
        NaN (logged as missing), never 0."""
        nan = float("nan")
        out = {
            "rollout/reward_mean": self.reward_sum / self.judged if self.judged else nan,
            "rollout/unjudged": float(self.rows - self.judged),
            "rollout/truncated_rate": self.truncated / self.rows if self.rows else nan,
            "rollout/sampler_entropy": self.neg_logprob_sum / self.tokens if self.tokens else nan,
        }
        for status in RATE_STATUSES:
            out[f"rollout/{status}_rate"] = (
                self.statuses[status] / self.judged if self.judged else nan
            )
        return out
