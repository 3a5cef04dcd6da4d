"""pass@k: the unbiased estimator against its exact combinatorial definition."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spo_store.errors import SpoError
from spo_train.metrics import mean_pass_at_k, pass_at_k


@st.composite
def nck(draw, max_n: int = 60):
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


def exact(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@given(nck())
def test_matches_exact_combinatorial_formula(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-12)


@given(nck(max_n=500))
def test_k1_is_fraction_correct(args):
    n, c, _ = args
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


@given(nck())
def test_monotone_in_c(args):
    n, c, k = args
    if c < n:
        assert pass_at_k(n, c + 1, k) >= pass_at_k(n, c, k) - 1e-12


@given(nck())
def test_monotone_in_k(args):
    n, c, k = args
    if k < n:
        assert pass_at_k(n, c, k + 1) >= pass_at_k(n, c, k) - 1e-12


@given(nck())
def test_one_when_too_few_wrong_samples(args):
    n, c, k = args
    if n - c < k:
        assert pass_at_k(n, c, k) == 1.0
    if c == 0:
        assert pass_at_k(n, c, k) == 0.0


def test_known_values_and_large_n():
    assert pass_at_k(20, 0, 1) == 0.0
    assert pass_at_k(20, 20, 20) == 1.0
    assert pass_at_k(10, 5, 2) == pytest.approx(1 - 10 / 45)
    # No overflow where C(n, k) has hundreds of digits.
    assert 0.0 < pass_at_k(2000, 3, 100) < 1.0
    assert pass_at_k(2000, 3, 100) == pytest.approx(exact(2000, 3, 100), rel=1e-9)


@pytest.mark.parametrize(
    "n,c,k",
    [
        (5, 6, 1),
        (5, 2, 6),
        (5, 2, 0),
        (-1, 0, 1),
        (5, -1, 1),
        (5, 1, -2),
        (5.0, 1, 1),
        (5, 1, True),
    ],
)
def test_invalid_arguments_raise(n, c, k):
    with pytest.raises(SpoError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    assert mean_pass_at_k([(10, 0), (10, 10)], 1) == pytest.approx(0.5)
    assert mean_pass_at_k(iter([(4, 1), (4, 2)]), 2) == pytest.approx(
        (exact(4, 1, 2) + exact(4, 2, 2)) / 2
    )
    with pytest.raises(SpoError):
        mean_pass_at_k([], 1)
    with pytest.raises(SpoError):
        mean_pass_at_k([(3, 1)], 4)


def test_paired_difference_and_its_interval():
    from spo_train.metrics import paired_pass_at_k_difference

    before = [(20, c) for c in (0, 2, 5, 10, 0, 1)] * 10
    same = paired_pass_at_k_difference(before, before, 10)
    assert same == (0.0, 0.0, 0.0)
    better = [(20, min(20, c + 3)) for _, c in before]
    diff, low, high = paired_pass_at_k_difference(before, better, 10)
    assert diff == pytest.approx(mean_pass_at_k(better, 10) - mean_pass_at_k(before, 10))
    assert 0 < low <= diff <= high
    mixed = [(20, c + 5) if i % 2 else (20, 0) for i, (_, c) in enumerate(before)]
    d2, lo2, hi2 = paired_pass_at_k_difference(before, mixed, 10)
    assert lo2 < d2 < hi2 and hi2 - lo2 > high - low  # mixed changes: a wider interval
    with pytest.raises(SpoError, match="same problems"):
        paired_pass_at_k_difference(before, before[:3], 10)
