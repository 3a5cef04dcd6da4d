"""The two-level (seeds x problems) bootstrap of `spo report` intervals (issue 22, item 1).

No models and no lake: the statistics are exercised on synthetic per-seed per-problem values
and on `RunEvals` built in memory (tests/experiment/test_report.py runs the same through real lakes).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from spo_store.errors import SpoError
from spo_train.experiment.report import (
    FEW_SEEDS_MARK,
    FEW_SEEDS_NOTE,
    MIN_SEEDS,
    RunEvals,
    few_seeds_note,
    group_difference,
    paired_interval,
    seed_change,
    table_rows,
)
from spo_train.metrics import (
    PROBLEMS_ONLY,
    SEEDS_X_PROBLEMS,
    bootstrap_mean,
    bootstrap_seeds_problems,
    pass_at_k,
)


def _arm(values: np.ndarray, prefix: str = "s") -> dict[str, dict[str, float]]:
    """`(seeds, problems)` array -> {seed: {problem: value}}, ids p0000, p0001, ... in order."""
    return {
        f"{prefix}{i}": {f"p{j:04d}": float(v) for j, v in enumerate(row)}
        for i, row in enumerate(values)
    }


def _width(got) -> float:
    return got.high - got.low


# ----------------------------------------------------------------------------- reduction
def test_one_seed_is_exactly_the_problem_bootstrap():
    rng = np.random.default_rng(3)
    a, b = rng.random((1, 37)), rng.random((1, 37))
    one = bootstrap_seeds_problems(_arm(a))
    assert (one.diff, one.low, one.high) == bootstrap_mean(a[0])
    assert one.seeds == (1,) and one.problems == 37 and one.levels == PROBLEMS_ONLY
    two = bootstrap_seeds_problems(_arm(a), _arm(b, "r"))
    assert (two.diff, two.low, two.high) == bootstrap_mean(a[0] - b[0])
    assert two.seeds == (1, 1) and two.levels == PROBLEMS_ONLY
    # Many problems: the replicates are computed in blocks, with the same numbers.
    many = rng.random((1, 3000))
    got = bootstrap_seeds_problems(_arm(many))
    assert (got.diff, got.low, got.high) == bootstrap_mean(many[0])
    # Problems sorted by id: the draw does not depend on the order the values come in.
    shuffled = {"s0": dict(reversed(list(_arm(a)["s0"].items())))}
    assert bootstrap_seeds_problems(shuffled) == one


def test_one_seed_through_the_report_matches_the_problem_bootstrap():
    """`seed_change` of one seed is the paired problem bootstrap of that seed's changes."""
    rng = np.random.default_rng(4)
    counts = {step: {f"p{j}": (8, int(rng.integers(0, 9))) for j in range(25)} for step in (0, 5)}
    ev = RunEvals(counts={"valid": counts})
    got = seed_change({"run-a": ev}, "valid", 0, 5, 2)
    want = bootstrap_mean(
        [pass_at_k(*counts[5][p], 2) - pass_at_k(*counts[0][p], 2) for p in sorted(counts[0])]
    )
    assert (got["diff"], *got["ci95"]) == want
    assert got["seeds"] == [1] and got["interval"] == "problems" and got["few_seeds"]
    assert paired_interval(counts[0], counts[5], 2) == got


# ----------------------------------------------------------------------------- seed level
def test_seeds_that_disagree_widen_the_interval():
    """Seeds with their own offsets (training noise): averaging seeds first hides it, the
    two-level interval shows it."""
    rng = np.random.default_rng(5)
    problems = 0.5 + rng.normal(0.0, 0.1, 200)
    offsets = np.array([-0.08, -0.04, 0.0, 0.04, 0.08])
    values = problems[None, :] + offsets[:, None] + rng.normal(0, 0.01, (5, 200))
    two_level = bootstrap_seeds_problems(_arm(values))
    averaged_first = bootstrap_mean(values.mean(axis=0))
    assert two_level.diff == pytest.approx(averaged_first[0])
    assert two_level.levels == SEEDS_X_PROBLEMS and two_level.seeds == (5,)
    assert _width(two_level) > 2 * (averaged_first[2] - averaged_first[1])
    # Seeds that agree add (almost) nothing: the two intervals are then close.
    agree = problems[None, :] + rng.normal(0, 0.001, (5, 200))
    wide = bootstrap_seeds_problems(_arm(agree))
    narrow = bootstrap_mean(agree.mean(axis=0))
    assert _width(wide) == pytest.approx(narrow[2] - narrow[1], rel=0.15)


def test_problem_pairing_is_kept_across_arms_and_steps():
    """A constant shift between arms over very different problems: one problem draw serves
    both arms, so the difference does not move (zero width); drawn apart it would."""
    rng = np.random.default_rng(6)
    base = rng.random(60)
    ref = np.tile(base, (3, 1))
    other = np.tile(base + 0.125, (4, 1))
    got = bootstrap_seeds_problems(_arm(other, "o"), _arm(ref, "r"))
    assert got.diff == pytest.approx(0.125)
    assert got.low == pytest.approx(0.125) and got.high == pytest.approx(0.125)
    assert got.seeds == (4, 3) and got.levels == SEEDS_X_PROBLEMS
    # Unpaired (each arm's problems drawn on their own) the same data are far from 0 width.
    alone = bootstrap_seeds_problems(_arm(other, "o"))
    assert _width(alone) > 0.05
    # Within a group, each seed's own change keeps its two steps paired.
    counts = {step: {f"p{j}": (4, j % 5) for j in range(30)} for step in (0, 3)}
    evals = {f"run-{s}": RunEvals(counts={"valid": counts}) for s in range(3)}
    change = seed_change(evals, "valid", 0, 3, 1)
    assert change["ci95"] == [0.0, 0.0] and change["seeds"] == [3]


def test_seeds_of_two_arms_are_drawn_independently():
    """Seed offsets that happen to match across arms are not cancelled: the arms' seeds are
    different runs, so each arm's seeds are resampled on their own."""
    rng = np.random.default_rng(7)
    base = rng.random(50)
    offsets = np.array([-0.1, 0.0, 0.1])[:, None]
    got = bootstrap_seeds_problems(_arm(base + offsets, "a"), _arm(base + offsets, "b"))
    assert got.diff == pytest.approx(0.0, abs=1e-12)
    assert _width(got) > 0.05


def test_missing_values_follow_the_point_estimate():
    """A seed without some problems: per problem the mean over the seeds that have it, then
    over problems, as `spo report` always averaged; a seed with none of them is not a seed."""
    arm = {"a": {"p1": 0.0, "p2": 1.0}, "b": {"p1": 1.0}, "c": {}}
    got = bootstrap_seeds_problems(arm)
    assert got.diff == pytest.approx((0.5 + 1.0) / 2)
    assert got.seeds == (2,) and got.problems == 2
    assert 0.0 <= got.low <= got.diff <= got.high <= 1.0
    # Differences are over the problems both arms have.
    diff = bootstrap_seeds_problems(arm, {"r": {"p1": 0.25, "p9": 0.0}})
    assert diff.problems == 1 and diff.diff == pytest.approx(0.5 - 0.25)


def test_matches_a_replicate_by_replicate_loop():
    """The vectorised replicates equal the plain definition computed one by one from the same
    draws: problems drawn once for both arms, each arm's seeds drawn on their own, per drawn
    problem the mean over the drawn seeds that have it, problems no drawn seed has dropped."""
    rng = np.random.default_rng(11)
    a = rng.random((4, 12))
    a[rng.random(a.shape) < 0.3] = np.nan  # seeds missing some problems
    b = rng.random((2, 12))
    b[0, :3] = np.nan
    arm = {
        f"a{i}": {f"p{j:02d}": v for j, v in enumerate(r) if not np.isnan(v)}
        for i, r in enumerate(a)
    }
    minus = {
        f"b{i}": {f"p{j:02d}": v for j, v in enumerate(r) if not np.isnan(v)}
        for i, r in enumerate(b)
    }
    resamples = 300
    got = bootstrap_seeds_problems(arm, minus, resamples=resamples, seed=5)

    draws = np.random.default_rng(5)
    picks = draws.integers(0, 12, size=(resamples, 12))
    seed_draws = [draws.integers(0, n, size=(resamples, n)) for n in (4, 2)]
    means = []
    for r in range(resamples):
        terms = []
        for p in picks[r]:
            per_arm = [np.nanmean(x[d, p]) if not np.isnan(x[d, p]).all() else None
                       for x, d in ((a, seed_draws[0][r]), (b, seed_draws[1][r]))]  # fmt: skip
            if None not in per_arm:
                terms.append(per_arm[0] - per_arm[1])
        if terms:
            means.append(np.mean(terms))
    low, high = np.quantile(means, [0.025, 0.975])
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    point = np.nanmean(a, axis=0) - np.nanmean(b, axis=0)
    assert got.diff == pytest.approx(point.mean()) and got.seeds == (4, 2)


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(SpoError, match="at least one value"):
        bootstrap_seeds_problems({"s": {}})
    with pytest.raises(SpoError, match="problems both arms have"):
        bootstrap_seeds_problems({"s": {"p1": 1.0}}, {"r": {"p2": 1.0}})
    with pytest.raises(SpoError, match="finite values.*'s'.*'p1'"):
        bootstrap_seeds_problems({"s": {"p1": float("nan")}})
    with pytest.raises(SpoError, match="at least 1 resample"):
        bootstrap_seeds_problems({"s": {"p1": 1.0}}, resamples=0)


# ----------------------------------------------------------------------------- determinism
def test_same_inputs_same_interval_whatever_their_order():
    rng = np.random.default_rng(8)
    a, b = _arm(rng.random((5, 80)), "a"), _arm(rng.random((3, 80)), "b")
    first = bootstrap_seeds_problems(a, b)
    assert bootstrap_seeds_problems(a, b) == first
    reordered_a = {s: dict(reversed(list(v.items()))) for s, v in reversed(list(a.items()))}
    reordered_b = dict(reversed(list(b.items())))
    assert bootstrap_seeds_problems(reordered_a, reordered_b) == first
    assert bootstrap_seeds_problems(a, b, seed=1) != first


def test_fast_enough_for_thousands_of_replicates():
    rng = np.random.default_rng(9)
    a, b = _arm(rng.random((5, 200)), "a"), _arm(rng.random((5, 200)), "b")
    start = time.perf_counter()
    got = bootstrap_seeds_problems(a, b, resamples=5000)
    # measured 0.12 s on a shared 2-core machine; a per-replicate Python loop takes ~10x
    assert time.perf_counter() - start < 1.5
    assert got.low < got.diff < got.high


# ----------------------------------------------------------------------------- coverage
def test_coverage_with_five_seeds_is_near_nominal():
    """200 synthetic experiments, two arms x 5 seeds x 40 problems, with a known true
    difference 0.05 and every source of noise (problem difficulty shared by the arms, an
    arm-by-problem effect, each seed's offset, per-seed per-problem sampling noise): the
    two-level 95% interval covers the truth in roughly 90-98% of them, where the problem
    bootstrap of seed-averaged values, blind to the seed offsets, covers it far less often."""
    rng = np.random.default_rng(2026)
    seeds, problems, delta = 5, 40, 0.05
    covered = averaged_covered = 0
    for _ in range(200):
        difficulty = rng.normal(0.0, 0.3, problems)
        interaction = rng.normal(0.0, 0.05, problems)
        arms = []
        for shift, extra in ((delta, interaction), (0.0, 0.0)):
            offsets = rng.normal(0.0, 0.03, (seeds, 1))
            noise = rng.normal(0.0, 0.05, (seeds, problems))
            arms.append(difficulty + extra + shift + offsets + noise)
        got = bootstrap_seeds_problems(_arm(arms[0], "a"), _arm(arms[1], "b"), resamples=1000)
        covered += got.low <= delta <= got.high
        _, low, high = bootstrap_mean(arms[0].mean(axis=0) - arms[1].mean(axis=0), resamples=1000)
        averaged_covered += low <= delta <= high
    assert 0.90 <= covered / 200 <= 0.98, covered
    # measured: 188 of 200 (94%) two-level, 113 (56%) seed-averaged problem bootstrap
    assert averaged_covered / 200 < 0.8, averaged_covered


# ----------------------------------------------------------------------------- report cells
def _evals(rng, n_seeds: int, prefix: str, shift: int = 0) -> dict[str, RunEvals]:
    out = {}
    for s in range(n_seeds):
        counts = {
            step: {f"p{j}": (4, int(min(4, rng.integers(0, 4) + shift))) for j in range(20)}
            for step in (0, 2)
        }
        out[f"{prefix}-{s}"] = RunEvals(counts={"valid": counts})
    return out


def test_report_cells_say_seeds_levels_and_few_seeds():
    rng = np.random.default_rng(10)
    ref, other = _evals(rng, 2, "ref"), _evals(rng, MIN_SEEDS, "new", shift=1)
    vs = group_difference(ref, other, "valid", 2, 1)
    assert vs["seeds"] == [MIN_SEEDS, 2] and vs["interval"] == "seeds x problems"
    assert vs["few_seeds"] and vs["problems"] == 20
    assert set(vs) == {"diff", "ci95", "problems", "seeds", "interval", "few_seeds", "noise"}
    change = seed_change(other, "valid", 0, 2, 1)
    assert change["seeds"] == [MIN_SEEDS] and not change["few_seeds"]
    # Sequence input (positions as keys) gives the same numbers as the run-id mapping when
    # the run ids sort like the positions.
    assert seed_change(list(other.values()), "valid", 0, 2, 1) == change
    assert group_difference(ref, other, "other", 2, 1) is None  # no samples of that set

    row = {
        "group": "new",
        "set": "valid",
        "k": 1,
        "seeds": MIN_SEEDS,
        "first_step": 0,
        "last_step": 2,
        "steps_differ": False,
        "seed_last_steps": [2] * MIN_SEEDS,
        "first": {"mean": 0.5, "std": 0.1, "n": MIN_SEEDS},
        "last": {"mean": 0.6, "std": 0.1, "n": MIN_SEEDS},
        "change": change,
        "vs_reference": {"step": 2, **vs},
    }
    summary = {"tables": [row], "reference": "ref"}
    full = table_rows(summary, "valid", 1)[0]
    assert full[-2].endswith(f"(20 problems, {MIN_SEEDS} seeds)")
    assert full[-1].endswith(f"(20 problems, {MIN_SEEDS} vs 2 seeds) {FEW_SEEDS_MARK}")
    assert table_rows(summary, "valid", 1, compact=True)[0][-1].endswith(FEW_SEEDS_MARK)
    assert few_seeds_note(summary) == FEW_SEEDS_NOTE
    row["vs_reference"] = {"reference": True}
    assert few_seeds_note(summary) is None
