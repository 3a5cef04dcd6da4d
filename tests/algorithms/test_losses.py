"""Unit and property tests of `spo_train.algorithms.losses` (SPO variants, numerics, baselines)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spo_train.algorithms.losses import (
    SPO_VARIANTS,
    SPODiagnostics,
    advantages,
    clipped_log_ce,
    cumulative_q,
    gae,
    grpo_advantages,
    kl_regularised_token_rewards,
    log1mexp,
    pad_mc_targets,
    ppo_loss,
    q0_from_success_rate,
    spo_loss,
    success_prob_target,
    value_loss,
)

PAPER_BETA = 1.0 / math.log(100000.0)
DT = torch.float64

# float(loss) on a graph-attached scalar is intended here (values are compared, then discarded).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Converting a tensor with requires_grad=True:UserWarning"
)


def make_batch(seed: int = 0, batch: int = 4, t_len: int = 7, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t_len, 3, 1, 5][:batch])
    mask = torch.arange(t_len).unsqueeze(0) < lengths.unsqueeze(1)
    lp = (-3 * torch.rand(batch, t_len, generator=g)).to(dtype)
    lp0 = (-3 * torch.rand(batch, t_len, generator=g)).to(dtype)
    q0 = torch.tensor([-0.3, -0.9, 0.0, -1.0], dtype=dtype)[:batch]
    reward = torch.tensor([0.0, -1.0, -1.0, 0.0], dtype=dtype)[:batch]
    return lp, lp0, q0, reward, mask


# --------------------------------------------------------------------------------------------
# log1mexp, q0_from_success_rate
# --------------------------------------------------------------------------------------------


def test_log1mexp_matches_float64_reference_and_is_finite() -> None:
    x = -torch.logspace(-7, 4, 400, dtype=DT)
    ref = torch.log(-torch.expm1(x))  # float64 reference (loses ~1e-18 abs. near 0, fine)
    assert torch.allclose(log1mexp(x), ref, rtol=1e-12, atol=1e-15)
    # far from 0 the log1p branch keeps relative accuracy where the naive form gives 0
    assert float(log1mexp(torch.tensor(-40.0, dtype=DT))) == pytest.approx(-math.exp(-40.0))
    x32 = x.float().requires_grad_(True)
    y = log1mexp(x32)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x32.grad).all()
    assert torch.allclose(y.double(), ref, rtol=1e-5)
    # both branches near the switch point -ln 2
    for v in (-math.log(2) + 1e-9, -math.log(2) - 1e-9):
        assert float(log1mexp(torch.tensor(v, dtype=DT))) == pytest.approx(
            math.log(1 - math.exp(v)), rel=1e-12
        )


def test_q0_from_success_rate_endpoints_types_and_formula() -> None:
    assert q0_from_success_rate(0.0, PAPER_BETA) == pytest.approx(-1.0, abs=1e-12)
    assert q0_from_success_rate(1.0, PAPER_BETA) == 0.0
    assert isinstance(q0_from_success_rate(0.25, 0.5), float)
    s = np.array([0.0, 0.1, 0.5, 1.0])
    out = q0_from_success_rate(s, 0.5)
    assert isinstance(out, np.ndarray)
    naive = 0.5 * np.log(s + (1 - s) * np.exp(-1 / 0.5))
    np.testing.assert_allclose(out, naive, rtol=1e-12)
    t = q0_from_success_rate(torch.tensor([0.0, 0.1, 0.5, 1.0]), 0.5)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), naive, rtol=1e-6, atol=1e-7)
    # tiny beta: exp(-1/beta) underflows, still exact in log space
    assert q0_from_success_rate(0.0, 1e-6) == pytest.approx(-1.0, rel=1e-12)
    assert q0_from_success_rate(0.5, 1e-6) == pytest.approx(1e-6 * math.log(0.5), rel=1e-9)
    assert float(q0_from_success_rate(torch.tensor(0.0), 1e-8)) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        q0_from_success_rate(1.5, 0.5)
    with pytest.raises(ValueError):
        q0_from_success_rate(torch.tensor([-0.1]), 0.5)
    with pytest.raises(ValueError):
        q0_from_success_rate(0.5, 0.0)


@settings(database=None, max_examples=60, deadline=None)
@given(
    s=st.floats(0.0, 1.0),
    s2=st.floats(0.0, 1.0),
    beta=st.floats(1e-4, 10.0),
)
def test_q0_from_success_rate_properties(s: float, s2: float, beta: float) -> None:
    q = q0_from_success_rate(s, beta)
    assert -1.0 - 1e-12 <= q <= 0.0
    # exp(Q/beta) is the (linear, unbiased) target probability S + (1-S) exp(-1/beta)
    assert math.exp(q / beta) == pytest.approx(
        float(success_prob_target(torch.tensor(s, dtype=DT), beta)), rel=1e-9, abs=1e-300
    )
    if s < s2:
        assert q <= q0_from_success_rate(s2, beta) + 1e-15  # monotone


# --------------------------------------------------------------------------------------------
# cumulative Q
# --------------------------------------------------------------------------------------------


def test_cumulative_q_matches_loop_and_carries_last_value_on_padding() -> None:
    lp, lp0, q0, _, mask = make_batch()
    beta = 0.3
    q = cumulative_q(lp, lp0, q0, mask, beta)
    for i in range(lp.shape[0]):
        acc = float(q0[i])
        n = int(mask[i].sum())
        for t in range(lp.shape[1]):
            if t < n:
                acc += beta * float(lp[i, t] - lp0[i, t])
            assert float(q[i, t]) == pytest.approx(acc, abs=1e-12)
        assert float(q[i, -1]) == pytest.approx(acc, abs=1e-12)  # Q_T in the last column


def test_padding_garbage_does_not_leak_into_values_or_gradients() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    lp_bad, lp0_bad = lp.clone(), lp0.clone()
    lp_bad[~mask] = -math.inf
    lp0_bad[~mask] = math.nan
    lp_bad.requires_grad_(True)
    for variant in SPO_VARIANTS[:-1]:
        loss = spo_loss(lp_bad, lp0_bad, q0, reward, mask, 0.5, variant)
        ref = spo_loss(lp, lp0, q0, reward, mask, 0.5, variant)
        assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-12)
        (grad,) = torch.autograd.grad(loss, lp_bad)
        assert torch.isfinite(grad).all()
        assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))


def test_zero_advantage_and_constant_q_when_policy_equals_reference() -> None:
    lp, _, q0, reward, mask = make_batch()
    beta = PAPER_BETA
    a = advantages(lp, lp.clone(), mask, beta)
    assert torch.equal(a, torch.zeros_like(a))
    q = cumulative_q(lp, lp.clone(), q0, mask, beta)
    assert torch.equal(q, q0.unsqueeze(-1).expand_as(q))
    loss, diag = spo_loss(
        lp, lp.clone(), q0, reward, mask, beta, "terminal_sq", return_diagnostics=True
    )
    assert float(loss) == pytest.approx(float(((q0 - reward) ** 2).mean()))
    assert float(diag.kl_estimate) == 0.0 and float(diag.advantage_mean) == 0.0
    assert float(diag.q_T_mean) == pytest.approx(float(q0.mean()))


# --------------------------------------------------------------------------------------------
# clipped cross-entropy
# --------------------------------------------------------------------------------------------


@settings(database=None, max_examples=80, deadline=None)
@given(y=st.floats(-50.0, -1e-3), x=st.floats(0.0, 1.0))
def test_clipped_ce_equals_exact_binary_cross_entropy_below_clip(y: float, x: float) -> None:
    yt = torch.tensor(y, dtype=DT, requires_grad=True)
    loss, clip = clipped_log_ce(yt, torch.tensor(x, dtype=DT))
    assert not bool(clip)
    p = math.exp(y)
    exact = -x * y - (1 - x) * math.log1p(-p)
    assert float(loss.detach()) == pytest.approx(exact, rel=1e-9, abs=1e-12)
    (g,) = torch.autograd.grad(loss, yt)
    # d/dy [-x y - (1-x) log(1-e^y)] = (e^y - x) / (1 - e^y)
    assert float(g) == pytest.approx((p - x) / (1 - p), rel=1e-7, abs=1e-12)


def test_clipped_ce_minimum_is_at_log_target() -> None:
    x = torch.tensor([1e-5, 0.1, 0.5, 0.9], dtype=DT)
    y = torch.log(x).requires_grad_(True)
    loss, _ = clipped_log_ce(y, x)
    (g,) = torch.autograd.grad(loss.sum(), y)
    assert torch.allclose(g, torch.zeros_like(g), atol=1e-12)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_clipped_ce_straight_through_gradient(eps: float) -> None:
    """Above -eps the forward uses -eps; the backward ignores the clip: the gradient is the
    unclipped expression's derivative evaluated at the clipped point."""
    y = torch.tensor([-eps / 2, 0.0, 0.3, 5.0, 1e4], dtype=DT, requires_grad=True)
    x = torch.tensor([0.2, 0.5, 1e-5, 0.0, 0.7], dtype=DT)
    loss, clip = clipped_log_ce(y, x, eps)
    assert clip.all()
    # forward: x*relu(-y) - (1-x) log(1 - exp(-eps))
    fwd = x * F.relu(-y.detach()) - (1 - x) * math.log(-math.expm1(-eps))
    assert torch.allclose(loss.detach(), fwd, rtol=1e-12)
    (g,) = torch.autograd.grad(loss.sum(), y)
    # reference: same expression on a leaf that holds the clipped value (no clip op at all)
    u = torch.full_like(y, -eps).requires_grad_(True)
    ref_second = -(1 - x) * torch.log(-torch.expm1(u))
    (g_u,) = torch.autograd.grad(ref_second.sum(), u)
    expected = torch.where(y.detach() < 0, -x, torch.zeros_like(x)) + g_u
    assert torch.allclose(g, expected, rtol=1e-12)
    assert torch.allclose(g_u, (1 - x) / math.expm1(eps), rtol=1e-9)
    # below the clip, gradient of the clipped loss == gradient of the plain expression
    y2 = torch.tensor([-0.5, -3.0], dtype=DT, requires_grad=True)
    x2 = torch.tensor([0.3, 0.01], dtype=DT)
    l2, _ = clipped_log_ce(y2, x2, eps)
    (g2,) = torch.autograd.grad(l2.sum(), y2)
    y3 = y2.detach().clone().requires_grad_(True)
    (g3,) = torch.autograd.grad((-x2 * y3 - (1 - x2) * torch.log1p(-torch.exp(y3))).sum(), y3)
    assert torch.allclose(g2, g3, rtol=1e-12)


def test_no_incentive_above_zero_for_success_target() -> None:
    y = torch.tensor([0.5, 3.0], dtype=DT, requires_grad=True)
    loss, _ = clipped_log_ce(y, torch.ones(2, dtype=DT))
    (g,) = torch.autograd.grad(loss.sum(), y)
    assert torch.equal(g, torch.zeros_like(g)) and float(loss.sum()) == 0.0


# --------------------------------------------------------------------------------------------
# SPO variants
# --------------------------------------------------------------------------------------------


def _q_T(lp, lp0, q0, mask, beta):
    return cumulative_q(lp, lp0, q0, mask, beta)[:, -1]


def test_terminal_ce_uses_exp_r_over_beta_target() -> None:
    """At Q_T = r the terminal CE is stationary (target exp(r/beta), not exp(r))."""
    beta = 0.5
    t_len = 3
    mask = torch.ones(2, t_len, dtype=torch.bool)
    q0 = torch.tensor([-0.4, -0.4], dtype=DT)
    reward = torch.tensor([0.0 - 1e-3, -1.0], dtype=DT)  # just below 0: not clipped
    lp0 = torch.full((2, t_len), -1.0, dtype=DT)
    # choose log-probs so that Q_T = r exactly
    lp = lp0.clone()
    lp[:, 0] += (reward - q0) / beta
    lp.requires_grad_(True)
    assert torch.allclose(_q_T(lp, lp0, q0, mask, beta), reward)
    loss = spo_loss(lp, lp0, q0, reward, mask, beta, "terminal_ce")
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.allclose(g, torch.zeros_like(g), atol=1e-10)
    y = reward / beta
    x = torch.exp(reward / beta)
    expected = (-x * y - (1 - x) * torch.log1p(-torch.exp(y))).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)


def test_terminal_sq_value_and_gradient() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    beta = 0.7
    lp.requires_grad_(True)
    loss = spo_loss(lp, lp0, q0, reward, mask, beta, "terminal_sq")
    q_t = _q_T(lp.detach(), lp0, q0, mask, beta)
    assert float(loss) == pytest.approx(float(((q_t - reward) ** 2).mean()), rel=1e-12)
    (g,) = torch.autograd.grad(loss, lp)
    expected = 2 * (q_t - reward).unsqueeze(-1) * beta / lp.shape[0] * mask
    assert torch.allclose(g, expected, rtol=1e-12)


def test_reverse_q_sq_error_equals_terminal_error_but_gradients_weight_early_tokens() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    beta = 0.7
    lp.requires_grad_(True)
    loss = spo_loss(lp, lp0, q0, reward, mask, beta, "reverse_q_sq")
    q_t = _q_T(lp.detach(), lp0, q0, mask, beta)
    n = mask.sum(-1).to(DT)
    # every term's error equals Q_T - r: sum over T_i terms, then mean over sequences
    assert float(loss) == pytest.approx(float((n * (q_t - reward) ** 2).mean()), rel=1e-12)
    (g,) = torch.autograd.grad(loss, lp)
    # d/d lp_t' = 2 (Q_T - r) beta (T_i - t') / B for 0-based t' (token t' is in T_i - t' terms)
    t_idx = torch.arange(lp.shape[1], dtype=DT)
    weight = (n.unsqueeze(-1) - t_idx).clamp(min=0)
    expected = 2 * (q_t - reward).unsqueeze(-1) * beta * weight / lp.shape[0] * mask
    assert torch.allclose(g, expected, rtol=1e-12)


def test_reverse_q_ce_matches_manual_and_clamps_positive_targets() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    beta = 0.4
    loss = spo_loss(lp, lp0, q0, reward, mask, beta, "reverse_q_ce")
    q = cumulative_q(lp, lp0, q0, mask, beta)
    q_t = q[:, -1:]
    r_t = reward.unsqueeze(-1) - q_t + q
    assert (r_t[mask] > 0).any(), "fixture should exercise R_t > 0"
    x = torch.exp(torch.clamp(r_t / beta, max=0.0))
    per, _ = clipped_log_ce(q / beta, x)
    expected = (per * mask).sum(-1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)


def test_advantage_bce_matches_manual_and_is_stationary_at_q_T_equals_r() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    beta = 0.4
    loss = spo_loss(lp, lp0, q0, reward, mask, beta, "advantage_bce")
    z = advantages(lp, lp0, mask, beta).sum(-1) / beta
    expected = F.binary_cross_entropy_with_logits(z, torch.sigmoid((reward - q0) / beta))
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    # at sum A = r - q0 the gradient vanishes
    lp2 = lp0.clone()
    lp2[:, 0] += (reward - q0) / beta
    lp2.requires_grad_(True)
    (g,) = torch.autograd.grad(spo_loss(lp2, lp0, q0, reward, mask, beta, "advantage_bce"), lp2)
    assert torch.allclose(g, torch.zeros_like(g), atol=1e-12)


def test_monte_carlo_term_positions_targets_and_combination() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    beta = 0.5
    # row 0: t=1 and t=7 (= T_0); row 1: t=0 (Q_0 = q0); row 2: none; row 3: t=5
    pos, tgt = pad_mc_targets([([1, 7], [0.2, 1.0]), ([0], [0.3]), None, ([5], [0.0])], dtype=DT)
    assert pos.tolist() == [[1, 7], [0, -1], [-1, -1], [5, -1]]
    loss_mc, diag = spo_loss(
        lp,
        lp0,
        q0,
        reward,
        mask,
        beta,
        "mc_ce",
        mc_positions=pos,
        mc_targets=tgt,
        return_diagnostics=True,
    )
    q = cumulative_q(lp, lp0, q0, mask, beta)

    def ce(q_val, s):
        x = s + (1 - s) * math.exp(-1 / beta)
        lval, _ = clipped_log_ce(torch.tensor(q_val / beta, dtype=DT), torch.tensor(x, dtype=DT))
        return float(lval)

    per_seq = [
        ce(float(q[0, 0]), 0.2) + ce(float(q[0, 6]), 1.0),
        ce(float(q0[1]), 0.3),
        0.0,
        ce(float(q[3, 4]), 0.0),
    ]
    assert float(loss_mc) == pytest.approx(sum(per_seq) / 4, rel=1e-12)
    assert float(diag.mc_count) == 4
    main = spo_loss(lp, lp0, q0, reward, mask, beta, "terminal_sq")
    both = spo_loss(
        lp,
        lp0,
        q0,
        reward,
        mask,
        beta,
        "terminal_sq",
        mc_positions=pos,
        mc_targets=tgt,
        mc_weight=0.25,
    )
    assert float(both) == pytest.approx(float(main) + 0.25 * float(loss_mc), rel=1e-12)
    # a position past the response end is an error, as is a missing half of the pair
    bad_pos, bad_tgt = pad_mc_targets([None, ([4], [0.5]), None, None])  # row 1 has 3 tokens
    with pytest.raises(ValueError):
        spo_loss(lp, lp0, q0, reward, mask, beta, "mc_ce", mc_positions=bad_pos, mc_targets=bad_tgt)
    with pytest.raises(ValueError):
        spo_loss(lp, lp0, q0, reward, mask, beta, "mc_ce")
    with pytest.raises(ValueError):
        spo_loss(lp, lp0, q0, reward, mask, beta, "terminal_ce", mc_positions=pos)


def test_diagnostics_values() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    beta = 0.5
    lp = lp.clone()
    lp[0, :] = lp0[0, :] + 1.0  # row 0: Q_T = q0 + 7 * 0.5 > 0 -> clip active
    loss, diag = spo_loss(lp, lp0, q0, reward, mask, beta, "terminal_ce", return_diagnostics=True)
    assert isinstance(diag, SPODiagnostics)
    q_t = _q_T(lp, lp0, q0, mask, beta)
    d = diag.to_dict()
    assert d["loss"] == pytest.approx(float(loss))
    assert d["q_T_mean"] == pytest.approx(float(q_t.mean()))
    assert d["terminal_abs_error"] == pytest.approx(float((q_t - reward).abs().mean()))
    assert d["terminal_error"] == pytest.approx(float((q_t - reward).mean()))
    kl = ((lp - lp0) * mask).sum(-1).mean()
    assert d["kl_estimate"] == pytest.approx(float(kl))
    assert d["clip_fraction"] == pytest.approx(float((q_t / beta > -1e-6).double().mean()))
    assert d["clip_fraction"] >= 0.25 and bool(q_t[0] > 0)
    a = advantages(lp, lp0, mask, beta)
    assert d["advantage_mean"] == pytest.approx(float(a.sum() / mask.sum()))
    assert d["response_length_mean"] == pytest.approx(float(mask.sum(-1).double().mean()))
    assert set(dict(diag)) == set(d)


def test_invalid_arguments_raise() -> None:
    lp, lp0, q0, reward, mask = make_batch()
    with pytest.raises(ValueError):
        spo_loss(lp, lp0, q0, reward, mask, 0.5, "terminal_l1")
    with pytest.raises(ValueError):
        spo_loss(lp, lp0[:, :3], q0, reward, mask, 0.5)
    with pytest.raises(ValueError):
        spo_loss(lp, lp0, q0[:2], reward, mask, 0.5)
    with pytest.raises(ValueError):
        spo_loss(lp, lp0, q0, reward, mask, 0.0)


# --------------------------------------------------------------------------------------------
# No NaN / inf at extreme inputs
# --------------------------------------------------------------------------------------------

EXTREME_BETAS = [1e-8, 1e-4, PAPER_BETA, 1.0, 100.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("variant", SPO_VARIANTS)
def test_finite_at_extreme_inputs(variant: str, dtype: torch.dtype) -> None:
    """log-probs of -1e4 (either side), sums over 4096 tokens, Q_hat_0 = 0 or -1, tiny/large
    beta: loss and gradients stay finite."""
    t_len = 4096
    batch = 6
    lp = torch.zeros(batch, t_len)
    lp0 = torch.zeros(batch, t_len)
    lp[0] = -1e4  # policy far below reference: Q_T very negative
    lp0[1] = -1e4  # policy far above reference: Q_T hugely positive -> clip
    lp[2] = -1e4
    lp0[2] = -1e4
    lp[3, ::2] = -1e4
    lp0[4, 1::2] = -1e4
    mask = torch.ones(batch, t_len, dtype=torch.bool)
    mask[5, 10:] = False
    q0 = torch.tensor([0.0, -1.0, 0.0, -1.0, -0.5, 0.0])
    reward = torch.tensor([0.0, -1.0, -1.0, 0.0, 0.0, -1.0])
    pos, tgt = pad_mc_targets(
        [
            ([1, 4096], [0.0, 1.0]),
            ([0, 17], [1.0, 0.5]),
            None,
            ([2048], [0.3]),
            ([1], [1.0]),
            ([10], [0.0]),
        ]
    )
    for beta in EXTREME_BETAS:
        p = lp.to(dtype).requires_grad_(True)
        loss, diag = spo_loss(
            p,
            lp0.to(dtype),
            q0,
            reward,
            mask,
            beta,
            variant,
            mc_positions=pos,
            mc_targets=tgt,
            return_diagnostics=True,
        )
        (g,) = torch.autograd.grad(loss, p)
        assert torch.isfinite(loss), (variant, beta, float(loss))
        assert torch.isfinite(g.float()).all(), (variant, beta)
        assert all(math.isfinite(v) for v in diag.to_dict().values()), (variant, beta)


@settings(database=None, max_examples=60, deadline=None)
@given(
    lp_val=st.floats(-1e4, 0.0),
    lp0_val=st.floats(-1e4, 0.0),
    q0=st.floats(-1.0, 0.0),
    r=st.sampled_from([0.0, -1.0]),
    beta=st.floats(1e-6, 10.0),
    t_len=st.integers(1, 64),
    variant=st.sampled_from(SPO_VARIANTS[:-1]),
)
def test_finite_property(lp_val, lp0_val, q0, r, beta, t_len, variant) -> None:
    p = torch.full((1, t_len), lp_val, requires_grad=True)
    loss = spo_loss(
        p,
        torch.full((1, t_len), lp0_val),
        torch.tensor([q0]),
        torch.tensor([r]),
        torch.ones(1, t_len, dtype=torch.bool),
        beta,
        variant,
    )
    (g,) = torch.autograd.grad(loss, p)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert float(loss) >= -1e-6  # every variant is a non-negative loss (BCE with soft targets
    # is minimised at a positive entropy value; squared and our CE are >= 0)


@settings(database=None, max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    beta=st.floats(0.01, 5.0),
    variant=st.sampled_from(SPO_VARIANTS[:-1]),
)
def test_loss_invariant_to_padding_amount(seed: int, beta: float, variant: str) -> None:
    """Extra right-padding columns change nothing (reduction is per sequence, not per token)."""
    lp, lp0, q0, reward, mask = make_batch(seed)
    pad = torch.zeros(lp.shape[0], 5, dtype=DT)
    l1 = spo_loss(lp, lp0, q0, reward, mask, beta, variant)
    l2 = spo_loss(
        torch.cat([lp, pad - 7], 1),
        torch.cat([lp0, pad], 1),
        q0,
        reward,
        torch.cat([mask, pad.bool()], 1),
        beta,
        variant,
    )
    assert float(l1) == pytest.approx(float(l2), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def test_gae_hand_computed() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    # row 0: deltas; V after the last real token is 0 (terminal), padding ignored
    d2 = 1.0 + 0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # row 1
    e1 = -1.0 - 0.5
    e0 = 0.5 + gamma * 0.5 - 0.4
    b1 = e1
    b0 = e0 + gamma * lam * b1
    expected = torch.tensor([[a0, a1, a2, 0.0], [b0, b1, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)
    # gamma = lam = 1: advantage = reward-to-go - V
    adv1, ret1 = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(ret1[0, :3], torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(ret1[1, :2], torch.tensor([-0.5, -1.0]))


def test_ppo_clip_fraction_and_gradients() -> None:
    old = torch.log(torch.full((1, 4), 0.5))
    ratios = torch.tensor([[1.0, 1.1, 1.5, 0.5]])
    new = (old + torch.log(ratios)).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, diag = ppo_loss(new, old, adv, mask, clip_eps=0.2)
    assert float(diag.clip_fraction) == pytest.approx(0.5)  # 1.5 and 0.5 are outside [0.8, 1.2]
    expected = -(1.0 + 1.1 + 1.2 + 0.5) / 4  # A>0: min(r, clip(r)) -> clipped only above
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    (g,) = torch.autograd.grad(loss, new)
    # gradient is -ratio*A/N where unclipped-or-pessimistic, 0 where the clip binds (r=1.5)
    assert torch.allclose(g, torch.tensor([[-0.25, -1.1 / 4, 0.0, -0.5 / 4]]), atol=1e-6)
    # on-policy: ratio 1, no clipping, approx KL 0
    loss0, diag0 = ppo_loss(old.clone().requires_grad_(True), old, adv, mask)
    assert float(diag0.clip_fraction) == 0.0 and float(diag0.approx_kl) == 0.0
    assert float(loss0) == pytest.approx(-1.0)
    # importance weights scale the per-token loss
    w = torch.tensor([[2.0, 0.0, 1.0, 1.0]])
    loss_w, _ = ppo_loss(new, old, adv, mask, importance_weights=w)
    assert float(loss_w) == pytest.approx(-(2.0 + 0.0 + 1.2 + 0.5) / 4, rel=1e-6)
    # masked tokens do not count
    m2 = torch.tensor([[True, True, False, False]])
    loss_m, diag_m = ppo_loss(new, old, adv, m2)
    assert float(loss_m) == pytest.approx(-(1.0 + 1.1) / 2, rel=1e-6)
    assert float(diag_m.clip_fraction) == 0.0


def test_value_loss_clipping() -> None:
    old_v = torch.tensor([[0.0, 0.0]])
    v = torch.tensor([[1.0, 0.1]], requires_grad=True)
    ret = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, diag = value_loss(v, old_v, ret, mask, clip_eps=0.2)
    # token 0: unclipped err 1, clipped v=0.2 -> err 3.24 (max); token 1: both 0.81 (|dv|<0.2)
    assert float(loss) == pytest.approx(0.5 * (3.24 + 0.81) / 2, rel=1e-6)
    assert float(diag.clip_fraction) == pytest.approx(0.5)


def test_kl_regularised_token_rewards() -> None:
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    reward = torch.tensor([0.0, -1.0])
    r = kl_regularised_token_rewards(old, ref, reward, mask, beta=0.1)
    expected = torch.tensor([[-0.05, 0.1, 0.0], [0.05 - 1.0, 0.0, 0.0]])
    assert torch.allclose(r, expected, atol=1e-7)
    # total = r - beta * sampled KL
    assert torch.allclose(r.sum(-1), reward - 0.1 * ((old - ref) * mask).sum(-1))


def test_grpo_advantages_normalised_per_group() -> None:
    rewards = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -1.0]])
    adv = grpo_advantages(rewards)
    assert torch.allclose(adv.mean(-1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(adv[[0, 2]].std(-1), torch.ones(2), atol=1e-4)
    assert torch.equal(adv[1], torch.zeros(4))
    assert adv[0, 0] > 0 and (adv[0, 1:] < 0).all()
    assert torch.equal(grpo_advantages(torch.tensor([[0.0], [-1.0]])), torch.zeros(2, 1))
    unscaled = grpo_advantages(rewards, scale=False)
    assert torch.allclose(unscaled[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
