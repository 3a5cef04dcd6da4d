"""Where the cross-entropy clip `min(Q/beta, -eps)` moves the optimum (issue 9, item 10a).

For a CE term with target probability x the straight-through gradient at y = Q/beta is
`-x` (for y < 0) `+ (1 - x) e^c / (1 - e^c)`, c = min(y, -eps). Its zero is y = log x while
log x < -eps; for x > exp(-eps) it has no zero below 0 and the fixed point moves to y = 0
(probability 1). terminal_ce's targets (1 and exp(-1/beta)) are never in that range, so the
trainer's eps 0.1 is harmless there; reverse-Q CE's per-token targets are, so the trainer keeps
the paper's 1e-6 for it. docs/losses.md ("The CE clip and the optimum") has the derivation.
"""

from __future__ import annotations

import math

import pytest
import torch

from spo_store.errors import SpoError
from spo_train.algorithms.losses import clipped_log_ce, spo_loss
from spo_train.algorithms.spo import effective_ce_clip_eps
from spo_train.config import TrainConfig

PAPER_BETA = 1 / math.log(1e5)


def fixed_point(x: float, eps: float) -> float:
    """Where the straight-through gradient of `clipped_log_ce(y, x, eps)` crosses from < 0 to
    >= 0 on a fine grid of y in [-15, 1] (the point gradient descent settles at)."""
    y = torch.linspace(-15.0, 1.0, 160001, dtype=torch.float64, requires_grad=True)
    loss, _ = clipped_log_ce(y, torch.full_like(y, x), eps)
    (g,) = torch.autograd.grad(loss.sum(), y)
    crossing = torch.nonzero((g[:-1] < 0) & (g[1:] >= 0))
    assert len(crossing) == 1
    return float(y.detach()[crossing[0, 0] + 1])


@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_terminal_targets_keep_their_optimum_under_the_training_clip(eps):
    # failure: target exp(-1/beta), optimum Q_T/beta = -1/beta (Q_T = r = -1)
    assert fixed_point(math.exp(-1 / PAPER_BETA), eps) == pytest.approx(-1 / PAPER_BETA, abs=2e-4)
    # success: target 1; the gradient is 0 from y = 0 on, so the optimum Q_T >= 0 is kept
    assert fixed_point(1.0, eps) == pytest.approx(0.0, abs=2e-4)


def test_a_target_above_exp_minus_eps_is_moved_to_probability_one():
    x = 0.95  # log x = -0.0513: a prefix that succeeds 95% of the time
    assert fixed_point(x, 1e-6) == pytest.approx(math.log(x), abs=2e-4)
    assert fixed_point(x, 0.1) == pytest.approx(0.0, abs=2e-4)  # moved: exp(-0.1) = 0.905 < x
    assert fixed_point(0.85, 0.1) == pytest.approx(math.log(0.85), abs=2e-4)  # below: kept


def _reverse_q_at_optimum(beta: float = 0.5):
    """One successful 2-token sequence exactly at the soft optimum: Q_1 = beta log 0.95 (the
    prefix's value), Q_T = r = 0, so every reverse-Q target equals its prediction."""
    ref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    q0 = torch.tensor([beta * math.log(0.9)], dtype=torch.float64)
    lp = ref + torch.tensor([[math.log(0.95 / 0.9), -math.log(0.95)]], dtype=torch.float64)
    return lp.requires_grad_(True), ref, q0, torch.zeros(1, dtype=torch.float64), beta


def _grad(variant: str, eps: float) -> float:
    lp, ref, q0, r, beta = _reverse_q_at_optimum()
    mask = torch.ones_like(ref, dtype=torch.bool)
    loss = spo_loss(lp, ref, q0, r, mask, beta, variant, eps=eps)
    (g,) = torch.autograd.grad(loss, lp)
    return float(g.abs().max())


def test_trainer_eps_leaves_the_reverse_q_ce_optimum_in_place():
    eps = effective_ce_clip_eps(TrainConfig(loss="reverse_q_ce"))
    assert eps == 1e-6
    assert _grad("reverse_q_ce", eps) < 1e-9  # the optimum is a fixed point
    assert _grad("reverse_q_ce", 0.1) > 0.1  # eps 0.1 pushes it away (Q_1 towards 0)
    # terminal_ce's default 0.1 is harmless at the same optimum
    assert effective_ce_clip_eps(TrainConfig(loss="terminal_ce")) == 0.1
    assert _grad("terminal_ce", 0.1) < 1e-9
    # an explicit eps is used as given
    assert effective_ce_clip_eps(TrainConfig(loss="reverse_q_ce", ce_clip_eps=0.1)) == 0.1


def test_terminal_failure_at_its_optimum_is_a_fixed_point_with_eps_0_1():
    beta = PAPER_BETA
    ref = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    q0 = torch.tensor([-0.3], dtype=torch.float64)
    # Q_T = q0 + beta * sum(lp - ref) = -1 = r
    lp = (ref + torch.tensor([[0.0, (-1.0 + 0.3) / beta]], dtype=torch.float64)).requires_grad_()
    loss = spo_loss(lp, ref, q0, torch.tensor([-1.0], dtype=torch.float64),
                    torch.ones_like(ref, dtype=torch.bool), beta, "terminal_ce", eps=0.1)  # fmt: skip
    (g,) = torch.autograd.grad(loss, lp)
    assert float(g.abs().max()) < 1e-9


def test_an_eps_that_would_move_the_failure_optimum_is_refused():
    # the failure target's optimum is Q_T/beta = -1/beta: an eps beyond it would move it
    with pytest.raises(SpoError, match=r"--ce-clip-eps must be in \(0, 1/beta = 2\)"):
        TrainConfig(beta=0.5, ce_clip_eps=2.5).validate()
    TrainConfig(beta=0.5, ce_clip_eps=1.5).validate()  # below 1/beta: allowed
