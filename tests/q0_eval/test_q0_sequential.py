"""Sequential Q0 (issue 23, item 1): the stopping rule's estimator is unbiased for S0 and its 95%
interval covers S0 at least 95% of the time, for the rule `spo estimate-q0` runs.

Proved by exact enumeration of every outcome of the design (no sampling error), and checked by
simulating the rule with Binomial draws the way `scripts/sim_q0_stopping.py` does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spo_store.errors import SpoError
from spo_store.q0_estimates import estimate_row, q0_of_s0
from spo_store.q0_sequential import (
    StoppingRule,
    _terminal_states,
    parse_stopping,
    s0_estimate,
    s0_interval,
)

RULES = [
    StoppingRule("sequential", cap=800, successes=12),  # the command's default
    StoppingRule("sequential", cap=800, successes=8),
    StoppingRule("sequential", cap=100, successes=3, first=5, growth=1.3),
    StoppingRule("sequential", cap=40, successes=2, first=1, growth=1.0001),  # every sample a check
    StoppingRule("fixed", cap=50),
]
PS = [0.0005, 0.004, 0.03, 0.2, 0.5, 0.93]


def _outcomes(rule: StoppingRule, p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every terminal state of the rule: (probability under p, estimate, (n, c) pairs)."""
    r = rule.successes if rule.kind == "sequential" else None
    probs, ests, ncs = [], [], []
    for n, cs, lw, lw1 in _terminal_states(rule.schedule(), r):
        probs.append(np.exp(lw + cs * math.log(p) + (n - cs) * math.log1p(-p)))
        ests.append(np.exp(lw1 - lw))
        ncs += [(n, int(c)) for c in cs]
    return np.concatenate(probs), np.concatenate(ests), np.array(ncs)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.kind}-{r.cap}-{r.successes}")
@pytest.mark.parametrize("p", PS)
def test_estimator_is_exactly_unbiased(rule: StoppingRule, p: float) -> None:
    prob, est, _ = _outcomes(rule, p)
    assert prob.sum() == pytest.approx(1.0, abs=1e-9)
    assert float((prob * est).sum()) == pytest.approx(p, rel=1e-7, abs=1e-12)


def test_every_sample_a_check_is_haldane_and_fixed_is_c_over_n() -> None:
    # inverse binomial sampling: stop at the r-th success at trial N -> (r - 1) / (N - 1)
    for r, n in [(2, 7), (3, 11), (5, 5)]:
        assert s0_estimate(n, r, list(range(1, n + 1)), r) == pytest.approx(
            (r - 1) / (n - 1) if n > 1 else 1
        )
    assert s0_estimate(800, 3, [800], None) == 3 / 800
    # with rounds, samples past the r-th success are used: 17 successes at check 48 after
    # fewer than 16 at 32 is not (16 - 1) / (48 - 1)
    assert s0_estimate(48, 17, [32, 48], 16) != pytest.approx(15 / 47)


@pytest.mark.parametrize(
    "rule", RULES[:3] + RULES[4:], ids=lambda r: f"{r.kind}-{r.cap}-{r.successes}"
)
@pytest.mark.parametrize("p", [0.002, 0.03, 0.6])
def test_interval_covers_at_least_95_percent_exactly(rule: StoppingRule, p: float) -> None:
    prob, _, ncs = _outcomes(rule, p)
    r = rule.successes if rule.kind == "sequential" else None
    sched = rule.schedule()
    covered = 0.0
    for w, (n, c) in zip(prob, ncs, strict=True):
        if w < 1e-9:
            continue
        checks = [b for b in sched if b <= n] if r else [n]
        lo, hi = s0_interval(int(n), int(c), checks, r, sched)
        covered += w * (lo <= p <= hi)
    assert covered >= 0.95 - 1e-6


def test_fixed_interval_is_clopper_pearson() -> None:
    lo, hi = s0_interval(10, 3, [10], None)
    assert (lo, hi) == (pytest.approx(0.0667395, abs=1e-6), pytest.approx(0.6524529, abs=1e-6))
    lo, hi = s0_interval(800, 0, [800], None)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 800), rel=1e-6)
    assert s0_interval(5, 5, [5], None)[1] == 1.0


def test_simulated_runs_average_to_the_truth() -> None:
    # the rule exactly as estimate-q0 runs it, with Binomial rounds
    rng = np.random.default_rng(7)
    rule = StoppingRule("sequential", cap=800, successes=16)
    sched = rule.schedule()
    # the estimate of every terminal state, once (s0_estimate per run would redo the DP);
    # spot-checked against s0_estimate below
    table = {
        (n, int(c)): math.exp(b - a)
        for n, cs, lw, lw1 in _terminal_states(sched, 16)
        for c, a, b in zip(cs, lw, lw1, strict=True)
    }
    assert table[(48, 17)] == pytest.approx(s0_estimate(48, 17, [32, 48], 16))
    for p in (0.01, 0.15):
        ests, samples = [], []
        for _ in range(3000):
            n = c = 0
            checks = []
            for b in sched:
                c += rng.binomial(b - n, p)
                n = b
                checks.append(b)
                if c >= 16:
                    break
            ests.append(table[(n, int(c))])
            samples.append(n)
        se = np.std(ests) / math.sqrt(len(ests))
        assert abs(np.mean(ests) - p) < 4 * se
        if p == 0.15:
            assert np.mean(samples) < 200  # stops far below the cap of 800


def test_rows_record_the_rule_and_an_interval_around_q0() -> None:
    rule = StoppingRule("sequential", cap=800, successes=16)
    row = estimate_row(
        "pid", "model", temperature=1.0, top_p=1.0, max_new_tokens=64, samples=72,
        successes=18, beta=0.1, run_id="r", stopping=rule, checks=[32, 48, 72],
    )  # fmt: skip
    assert row["stopping"] == "sequential(r=16,checks=32,48,72)"
    assert parse_stopping(row["stopping"]) == (16, [32, 48, 72])
    assert row["s0"] == pytest.approx(s0_estimate(72, 18, [32, 48, 72], 16))
    assert row["q0"] == pytest.approx(q0_of_s0(row["s0"], 0.1))
    assert row["s0_low"] < row["s0"] < row["s0_high"]
    assert row["q0_low"] < row["q0"] < row["q0_high"]
    fixed = estimate_row(
        "pid", "model", temperature=1.0, top_p=1.0, max_new_tokens=64, samples=20,
        successes=5, beta=0.1, run_id="r",
    )  # fmt: skip
    assert fixed["stopping"] == "fixed" and fixed["s0"] == 0.25


def test_bad_rules_and_impossible_counts_are_one_clear_error() -> None:
    with pytest.raises(SpoError, match="--stopping 'adaptive'"):
        StoppingRule("adaptive")
    with pytest.raises(SpoError, match="--stop-successes 1"):
        StoppingRule("sequential", successes=1)
    with pytest.raises(SpoError, match="cannot end checks"):
        s0_estimate(48, 40, [32, 48], 16)  # < 16 successes at 32, so at most 31 at 48
    with pytest.raises(SpoError, match="unreadable q0 stopping rule"):
        parse_stopping("sequential(r=x)")
