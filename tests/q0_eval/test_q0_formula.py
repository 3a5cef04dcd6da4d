"""Q0 = beta * log(S0 + (1 - S0) exp(-1/beta)) (method doc, "Values")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spo_store.errors import SpoError
from spo_train.algorithms.losses import q0_from_success_rate
from spo_train.q0 import DEFAULT_BETA, q0_value


def test_endpoints_and_paper_beta():
    assert q0_value(0, 800, DEFAULT_BETA) == -1.0
    assert q0_value(800, 800, DEFAULT_BETA) == 0.0
    assert math.exp(-1 / DEFAULT_BETA) == pytest.approx(1e-5)
    # S0 = 1/2: beta * log(0.5 + 0.5e-5)
    assert q0_value(400, 800, DEFAULT_BETA) == pytest.approx(DEFAULT_BETA * math.log(0.5 + 0.5e-5))


@given(st.integers(1, 2000), st.data(), st.floats(0.01, 5.0))
def test_matches_definition_and_loss_module(n, data, beta):
    c = data.draw(st.integers(0, n))
    s0 = c / n
    direct = beta * math.log(s0 + (1 - s0) * math.exp(-1 / beta))
    assert q0_value(c, n, beta) == pytest.approx(direct, abs=1e-9)
    assert q0_value(c, n, beta) == pytest.approx(float(q0_from_success_rate(s0, beta)), abs=1e-9)
    assert -1.0 - 1e-12 <= q0_value(c, n, beta) <= 0.0


def test_monotone_in_successes():
    values = [q0_value(c, 20, DEFAULT_BETA) for c in range(21)]
    assert values == sorted(values)


@pytest.mark.parametrize(("c", "n"), [(-1, 5), (6, 5), (0, 0)])
def test_bad_counts(c, n):
    with pytest.raises(SpoError):
        q0_value(c, n, DEFAULT_BETA)


def test_training_at_another_beta_recomputes_q0_from_the_counts():
    from spo_train.train.setup import rebase_q0

    at_default = {"problem_id": "a", "q0": q0_value(3, 16, DEFAULT_BETA), "q0_samples": 16}
    at_default.update(q0_successes=3, q0_beta=DEFAULT_BETA)
    already = {"problem_id": "b", "q0": -0.3, "q0_samples": 8, "q0_successes": 2, "q0_beta": 0.5}
    assert rebase_q0([dict(at_default)], DEFAULT_BETA) == 0
    problems = [dict(at_default), dict(already)]
    assert rebase_q0(problems, 0.5) == 1
    assert problems[0]["q0"] == pytest.approx(0.5 * math.log(3 / 16 + 13 / 16 * math.exp(-2)))
    assert problems[1]["q0"] == -0.3  # estimated at this beta: kept as stored
    bare = {"problem_id": "c", "q0": -0.2, "q0_samples": None, "q0_successes": None, "q0_beta": 1}
    with pytest.raises(SpoError, match="problem c: .*spo estimate-q0"):
        rebase_q0([bare], 0.5)


@given(st.integers(1, 2000), st.data(), st.floats(1e-3, 10.0))
def test_store_formula_and_its_sql_match_the_loss_module(n, data, beta):
    """spo_store (no torch) computes q0 in Python and in DuckDB SQL (the mixture's p.q0 at the
    training beta); both equal spo_train.algorithms.losses.q0_from_success_rate."""
    import duckdb

    from spo_store.q0_estimates import q0_at_beta, q0_sql

    c = data.draw(st.integers(0, n))
    want = float(q0_from_success_rate(c / n, beta))
    assert q0_at_beta(c, n, beta) == pytest.approx(want, abs=1e-12)
    got = duckdb.sql(f"SELECT {q0_sql(str(c), str(n), beta)} AS q").fetchall()[0][0]
    assert got == pytest.approx(want, abs=1e-9)
