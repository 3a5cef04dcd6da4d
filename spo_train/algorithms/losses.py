"""SPO losses (project issue #5, item 1) and the baselines' losses (PPO, GAE, GRPO, TOPR, SFT).

References: "method doc" is `docs/method.md` (items 1-5 of "Losses"); "Eq. N" is the
paper (Cohen et al., ICML 2025, `shared/papers/spo-paper.txt`).

Tensor contract, shared with `spo_train.lm.logprobs.response_logprobs`:

- `policy_logprobs`, `ref_logprobs`, `old_logprobs`: `[B, T]` float, log-probs of the *taken*
  response tokens, right-padded; values at padded positions are ignored (may even be -inf/NaN);
- `mask`: `[B, T]` bool, True on real response tokens (prompt tokens are never in these tensors);
- `q0` (`Q_hat_0`, the soft value of the prompt under `pi_0`) and `reward`: `[B]` float.

All SPO losses are averaged over *sequences* (not tokens); a variant that sums over tokens or
positions inside a sequence says so. Every loss is computed in at least float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SPO_VARIANTS",
    "SPODiagnostics",
    "PPODiagnostics",
    "ValueLossDiagnostics",
    "log1mexp",
    "q0_from_success_rate",
    "success_prob_target",
    "advantages",
    "cumulative_q",
    "clipped_log_ce",
    "pad_mc_targets",
    "spo_loss",
    "ppo_loss",
    "value_loss",
    "gae",
    "kl_regularised_token_rewards",
    "grpo_advantages",
    "TOPRDiagnostics",
    "topr_loss",
    "SFTDiagnostics",
    "sft_loss",
    "masked_mean",
]

SPOVariant = Literal[
    "terminal_ce", "terminal_sq", "reverse_q_ce", "reverse_q_sq", "advantage_bce", "mc_ce"
]
SPO_VARIANTS: tuple[str, ...] = (
    "terminal_ce",
    "terminal_sq",
    "reverse_q_ce",
    "reverse_q_sq",
    "advantage_bce",
    "mc_ce",
)

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------


def _float(t: Tensor) -> Tensor:
    """Promote to at least float32 (bf16/fp16 cumulative sums over 4k tokens lose too much)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def log1mexp(x: Tensor) -> Tensor:
    """`log(1 - exp(x))` for `x < 0`, stable everywhere (Maechler 2012).

    Uses `log(-expm1(x))` for `x > -ln 2` (where `1 - exp(x)` cancels) and `log1p(-exp(x))`
    otherwise. Both branches are evaluated on inputs that are safe for them, so neither the
    value nor the gradient of the unused branch can be NaN. `x = 0` gives `-inf` (the true
    value); `x > 0` gives NaN: callers clip first (see `clipped_log_ce`).
    """
    near_zero = x > -_LN2
    # Feed each branch a harmless constant where it is not selected (NaN-free gradients).
    x_near = torch.where(near_zero, x, torch.full_like(x, -1.0))
    x_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


@overload
def q0_from_success_rate(s0: float, beta: float) -> float: ...
@overload
def q0_from_success_rate(s0: np.ndarray, beta: float) -> np.ndarray: ...
@overload
def q0_from_success_rate(s0: Tensor, beta: float) -> Tensor: ...
def q0_from_success_rate(s0, beta):
    """Soft value from a success probability (method doc "Values"; paper Sec. 3.1.3):

        Q = beta * log(S + (1 - S) * exp(-1/beta))
          = beta * logaddexp(log S, log(1 - S) - 1/beta)

    computed in log space, so it is exact at the ends (`S = 0 -> -1`, `S = 1 -> 0`) and finite for
    tiny `beta` (where `exp(-1/beta)` underflows). Used both for `Q_hat_0 = Q(S_hat_0)` and for
    Monte-Carlo targets `Q_t = Q(S_t)`. Accepts a Python float (returns float), a numpy array
    (returns an array) or a tensor (returns a tensor of the same dtype, float32 at least).
    Raises ValueError for `S` outside `[0, 1]` or `beta <= 0`.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if isinstance(s0, Tensor):
        s = _float(s0)
        if bool(((s < 0) | (s > 1) | torch.isnan(s)).any()):
            raise ValueError("success rates must lie in [0, 1]")
        # log(0) = -inf is the intended value here; logaddexp(-inf, finite) is exact.
        return beta * torch.logaddexp(torch.log(s), torch.log1p(-s) - 1.0 / beta)
    arr = np.asarray(s0, dtype=np.float64)
    if np.any((arr < 0) | (arr > 1) | np.isnan(arr)):
        raise ValueError("success rates must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        out = beta * np.logaddexp(np.log(arr), np.log1p(-arr) - 1.0 / beta)
    if np.ndim(s0) == 0 and not isinstance(s0, np.ndarray):
        return float(out)
    return out


def success_prob_target(s: Tensor, beta: float) -> Tensor:
    """Target probability `x = exp(Q(S)/beta) = S + (1 - S) * exp(-1/beta)` (method doc item 5).

    Linear in `S`, hence an unbiased target when `S` is an unbiased Monte-Carlo estimate
    (paper Sec. 3.1.3), unlike `Q(S)` itself, which is biased by the log.
    """
    s = _float(s)
    return s + (1.0 - s) * math.exp(-1.0 / beta)


# --------------------------------------------------------------------------------------------
# Cumulative Q-parameterization (method doc "Cumulative Q-parameterization"; Eq. 11, 12)
# --------------------------------------------------------------------------------------------


def advantages(policy_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float) -> Tensor:
    """`A_t = beta * (log pi_theta(a_t|.) - log pi_0(a_t|.))` (Eq. 11), `[B, T]`, 0 on padding.

    Padding is removed with `torch.where`, so non-finite values at padded positions do not leak
    into values or gradients.
    """
    diff = _float(policy_logprobs) - _float(ref_logprobs)
    return torch.where(mask.to(torch.bool), beta * diff, torch.zeros_like(diff))


def cumulative_q(
    policy_logprobs: Tensor, ref_logprobs: Tensor, q0: Tensor, mask: Tensor, beta: float
) -> Tensor:
    """Cumulative Q-parameterization (Eq. 12; method doc "Cumulative Q-parameterization").

        Q_t = q0 + sum_{t' <= t, mask} beta * (log pi_theta - log pi_0)_{t'}

    Args:
        policy_logprobs, ref_logprobs: `[B, T]` log-probs of the taken tokens.
        q0: `[B]` (`Q_hat_0`, the prompt's soft value under `pi_0`).
        mask: `[B, T]` bool, True on real response tokens.
        beta: KL coefficient (`> 0`).

    Returns:
        `[B, T]` (float32 or wider): column `j` is `Q` after the response prefix `a_{<=j+1}`
        (paper's `Q_{j+1}`). Padding contributes 0 to the sum, so padded positions carry the
        last real value; in particular `Q[:, -1]` is `Q_T` for every row (and `q0` for a row
        with no real token). `Q_0 = q0` itself is not a column.
    """
    a = advantages(policy_logprobs, ref_logprobs, mask, beta)
    return _float(q0).to(a.dtype).unsqueeze(-1) + torch.cumsum(a, dim=-1)


# --------------------------------------------------------------------------------------------
# Losses on log-probability-valued predictions (paper Sec. 3.1.1)
# --------------------------------------------------------------------------------------------


def clipped_log_ce(y_hat: Tensor, x: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Binary cross-entropy with a log-probability prediction (method doc item 1; Sec. 3.1.1):

        L(y_hat, x) = x * relu(-y_hat) - (1 - x) * log(1 - exp(y_hat_clipped))

    - `y_hat`: predicted `log p(o=1)` (e.g. `Q/beta`), any shape, any finite value;
    - `x`: target probability `p(o=1)` in `[0, 1]`, same shape (e.g. `exp(r/beta)`);
    - `y_hat_clipped = min(y_hat, -eps)` in the forward pass, with a straight-through gradient
      (forward value exactly `clipped`): the backward pass ignores the clip, so the gradient
      is the unclipped expression's derivative evaluated at the clipped point.
    - `x * relu(-y_hat) = -x * min(y_hat, 0)`: it equals the usual `-x * log p` for
      `y_hat <= 0` and is flat (zero gradient) above 0, so nothing pushes `y_hat` above 0 (the
      paper's modification). For `y_hat > -eps` the second term's gradient is
      `(1 - x) / expm1(eps)` (about `(1 - x) / eps`), a large push back below 0: downstream
      gradient clipping is expected.

    For `y_hat <= -eps` this is the exact cross-entropy `-x log p - (1-x) log(1-p)`, `p=exp(y_hat)`;
    its minimum over `y_hat` is at `y_hat = log x`. Returns `(loss, clip_active)`, both shaped like
    `y_hat`; `clip_active` is a bool tensor, True where `y_hat > -eps`. Finite for every finite input.
    """
    y_hat = _float(y_hat)
    x = _float(x).to(y_hat.dtype)
    clipped = torch.clamp(y_hat, max=-eps)
    # Straight-through: forward value is exactly `clipped` (`y - y.detach()` is exactly 0,
    # whereas `y + (clipped - y).detach()` cancels catastrophically for |y| >> eps); backward
    # is the identity.
    y_st = clipped.detach() + (y_hat - y_hat.detach())
    loss = x * F.relu(-y_hat) - (1.0 - x) * log1mexp(y_st)
    return loss, (y_hat > -eps)


def _prob_target_from_log(y: Tensor) -> Tensor:
    """`exp(y)` for a log-probability target, with `y` clamped to `<= 0` (target prob in [0,1])."""
    return torch.exp(torch.clamp(_float(y), max=0.0))


# --------------------------------------------------------------------------------------------
# SPO loss
# --------------------------------------------------------------------------------------------


@dataclass
class SPODiagnostics:
    """Detached 0-dim tensors (no host sync until read); `to_dict()` gives Python floats.

    - `loss`: total loss; `loss_main` the variant's term; `loss_mc` the Monte-Carlo term (0 if none).
    - `q_T_mean`: mean over sequences of `Q_T`.
    - `terminal_abs_error` / `terminal_error`: mean `|Q_T - r|` / mean `(Q_T - r)`.
    - `kl_estimate`: mean over sequences of `sum_t (log pi_theta - log pi_0)` on the taken tokens.
      This is the sampled (k1) estimator of `KL(pi_theta || pi_0)` per sequence; it is unbiased
      only when the responses were sampled from `pi_theta` itself; on off-policy / offline data it
      is biased (it can even be negative). Equals `mean(Q_T - q0) / beta`.
    - `clip_fraction`: fraction of sequences where the terminal CE clip `min(Q_T/beta, -eps)` is
      active (`Q_T/beta > -eps`); reported for every variant (for non-CE variants it just flags
      `Q_T >= 0`).
    - `token_clip_fraction`: for `reverse_q_ce`, the fraction of real tokens where the clip on
      `Q_t/beta` is active; else 0.
    - `mc_clip_fraction`: fraction of Monte-Carlo positions where the clip is active (0 if none).
    - `advantage_mean`: mean of `A_t` over real tokens; `advantage_sum_mean`: mean over sequences
      of `sum_t A_t = Q_T - q0`.
    - `q0_mean`, `reward_mean`, `response_length_mean`, `mc_count` (number of MC targets used).
    """

    loss: Tensor
    loss_main: Tensor
    loss_mc: Tensor
    q_T_mean: Tensor
    terminal_abs_error: Tensor
    terminal_error: Tensor
    kl_estimate: Tensor
    clip_fraction: Tensor
    token_clip_fraction: Tensor
    mc_clip_fraction: Tensor
    advantage_mean: Tensor
    advantage_sum_mean: Tensor
    q0_mean: Tensor
    reward_mean: Tensor
    response_length_mean: Tensor
    mc_count: Tensor

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def __iter__(self):  # `dict(diag)` gives the tensors, for loggers that take tensors
        for f in fields(self):
            yield f.name, getattr(self, f.name)


def pad_mc_targets(
    per_sequence: list[tuple[list[int], list[float]] | None],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Pack sparse Monte-Carlo targets into the padded layout `spo_loss` takes.

    `per_sequence[i]` is `(positions, success_rates)` for sequence `i` (or None / empty for
    none); positions follow `spo_loss`'s convention (prefix length `t`, see there). Returns
    `(mc_positions [B, K] long, -1 for absent; mc_targets [B, K] dtype, 0 where absent)`,
    `K = max(1, max number of targets)`.
    """
    k = max([1] + [len(p[0]) for p in per_sequence if p])
    batch = len(per_sequence)
    pos = torch.full((batch, k), -1, dtype=torch.long)
    tgt = torch.zeros((batch, k), dtype=dtype)
    for i, item in enumerate(per_sequence):
        if not item:
            continue
        p, s = item
        if len(p) != len(s):
            raise ValueError(f"row {i}: {len(p)} positions but {len(s)} success rates")
        if len(p):
            pos[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
            tgt[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    if device is not None:
        pos, tgt = pos.to(device), tgt.to(device)
    return pos, tgt


def _mc_term(
    q: Tensor,
    q0: Tensor,
    lengths: Tensor,
    mc_positions: Tensor,
    mc_targets: Tensor,
    beta: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """MC cross-entropy (method doc item 5): `(per-sequence sum over targets [B],
    number of clipped targets, number of targets)`."""
    if mc_positions.shape != mc_targets.shape or mc_positions.ndim != 2:
        raise ValueError("mc_positions and mc_targets must both be [B, K]")
    if mc_positions.shape[0] != q.shape[0]:
        raise ValueError(f"mc_positions has {mc_positions.shape[0]} rows, batch has {q.shape[0]}")
    pos = mc_positions.to(device=q.device, dtype=torch.long)
    present = pos >= 0
    s = _float(mc_targets.to(q.device)).to(q.dtype)
    if bool((present & ((pos > lengths.unsqueeze(-1)) | (s < 0) | (s > 1) | s.isnan())).any()):
        raise ValueError("MC target position beyond the response, or S_t outside [0, 1]")
    # Q with Q_0 prepended: column t is Q_t (t = prefix length), t = 0 gives q0 (no gradient).
    q_ext = torch.cat([q0.to(q.dtype).unsqueeze(-1), q], dim=-1)
    q_t = q_ext.gather(-1, torch.where(present, pos, torch.zeros_like(pos)))
    x = success_prob_target(s, beta).to(q.dtype)
    per, clip = clipped_log_ce(q_t / beta, x, eps)
    per = torch.where(present, per, torch.zeros_like(per))
    n = present.sum()
    return per.sum(-1), (clip & present).sum(), n


def spo_loss(
    policy_logprobs: Tensor,
    ref_logprobs: Tensor,
    q0: Tensor,
    reward: Tensor,
    mask: Tensor,
    beta: float,
    variant: str = "terminal_ce",
    *,
    mc_positions: Tensor | None = None,
    mc_targets: Tensor | None = None,
    mc_weight: float = 1.0,
    eps: float = 1e-6,
    return_diagnostics: bool = False,
) -> Tensor | tuple[Tensor, SPODiagnostics]:
    """Soft Policy Optimization losses (method doc items 1-5; paper Sec. 3.1, Eq. 13).

    With `A_t = beta * (log pi_theta - log pi_0)_t` and `Q_t = q0 + sum_{t'<=t} A_t'` (Eq. 12,
    see `cumulative_q`), `Q_T` the value after the last real token, and, per sequence:

    - `terminal_ce` (item 1, the paper's main SPO): `clipped_log_ce(Q_T / beta, exp(r / beta))`.
      Target probability `exp(r/beta)` (1 for success, `exp(-1/beta)` for failure), not `exp(r)`.
    - `terminal_sq` (item 2): `(Q_T - r)^2`.
    - `reverse_q_sq` / `reverse_q_ce` (item 3): reverse-Q targets
      `R_t = detach(r - sum_{t'>t} A_t') = detach(r - Q_T + Q_t)`, loss **summed** over the real
      tokens `t = 1..T` of `(Q_t - R_t)^2`, or of `clipped_log_ce(Q_t/beta, exp(min(R_t/beta, 0)))`.
      `R_t > 0` (later advantages sum below `r`) is not a log-probability; its target
      probability is clamped to 1 (the paper: "we use clipping on both y and y_hat").
    - `advantage_bce` (item 4): `BCEWithLogits(z, sigmoid((r - q0)/beta))` with the logit
      `z = sum_t A_t / beta = (Q_T - q0)/beta` (sigmoid warping of Eq. 13 minus `Q_hat_0`).
    - `mc_ce` (item 5 alone): only the Monte-Carlo term below.

    Monte-Carlo term (item 5; Sec. 3.1.3): `mc_positions [B, K]` long and `mc_targets [B, K]`
    float. `mc_positions[i, k] = t` names the prefix length (number of response tokens in the
    prefix, the paper's `t`, `1 <= t <= T_i`; `t = 0` means `Q_0 = q0` and carries no gradient;
    any negative value marks an absent slot). `mc_targets[i, k] = S_t` in `[0, 1]`, the estimated
    success probability after `a_<=t`. Per sequence the term is
    `sum_k clipped_log_ce(Q_t/beta, S_t + (1 - S_t) exp(-1/beta))` (unbiased target probability).
    With `variant != "mc_ce"` and MC targets given, the total is `main + mc_weight * mc`;
    with `variant == "mc_ce"` it is the MC term alone (`mc_weight` unused). Validating the
    positions costs one host sync per call.
    See `pad_mc_targets` to build these from per-sequence lists.

    Reduction: every variant's per-sequence loss is averaged over the `B` sequences (rows with
    no real token included: their `Q_T = q0` contributes a constant, no gradient). The
    reverse-Q variants and the MC term sum over tokens/targets *within* a sequence (so their
    scale grows with length / number of targets).

    Args:
        policy_logprobs: `[B, T]` log pi_theta of taken tokens (carries the gradient).
        ref_logprobs: `[B, T]` log pi_0 of the same tokens (treated as constant).
        q0: `[B]` `Q_hat_0` per prompt (e.g. `q0_from_success_rate(S_hat_0, beta)`).
        reward: `[B]` terminal reward `r` (project: 0 or -1; any value `<= 0` is meaningful).
        mask: `[B, T]` bool, True on real response tokens.
        beta: KL coefficient (paper `1/log(100000)`).
        variant: one of `SPO_VARIANTS`.
        mc_weight: weight of the MC term when combined with a main variant.
        eps: CE clip margin: `y_hat` is clipped to `<= -eps` in the forward pass.
        return_diagnostics: also return `SPODiagnostics`.

    Returns:
        scalar loss, or `(loss, SPODiagnostics)`.
    """
    if variant not in SPO_VARIANTS:
        raise ValueError(f"unknown SPO variant {variant!r}; expected one of {SPO_VARIANTS}")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if policy_logprobs.shape != ref_logprobs.shape or policy_logprobs.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: policy {tuple(policy_logprobs.shape)}, "
            f"ref {tuple(ref_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    batch = policy_logprobs.shape[0]
    if q0.shape != (batch,) or reward.shape != (batch,):
        raise ValueError(f"q0 and reward must be [B]=[{batch}]")
    if (mc_positions is None) != (mc_targets is None):
        raise ValueError("give both mc_positions and mc_targets, or neither")
    if variant == "mc_ce" and mc_positions is None:
        raise ValueError("variant 'mc_ce' needs mc_positions and mc_targets")

    mask = mask.to(torch.bool)
    a = advantages(policy_logprobs, ref_logprobs, mask, beta)  # [B, T]
    dtype = a.dtype
    q0f = _float(q0).to(dtype)
    r = _float(reward).to(dtype)
    q = q0f.unsqueeze(-1) + torch.cumsum(a, dim=-1)  # [B, T], Eq. 12
    q_T = q[:, -1] if q.shape[1] > 0 else q0f  # padding carries the last real value
    zero = q_T.new_zeros(())

    token_clip = zero
    if variant == "terminal_ce":
        per_seq, clip = clipped_log_ce(q_T / beta, torch.exp(r / beta), eps)
    elif variant == "terminal_sq":
        per_seq = (q_T - r) ** 2
    elif variant in ("reverse_q_sq", "reverse_q_ce"):
        # R_t = r - sum_{t'>t} A_t' = r - (Q_T - Q_t); detached (paper Sec. 3.1.2).
        r_t = (r.unsqueeze(-1) - q_T.unsqueeze(-1) + q).detach()
        if variant == "reverse_q_sq":
            per_tok = (q - r_t) ** 2
        else:
            per_tok, clip_tok = clipped_log_ce(q / beta, _prob_target_from_log(r_t / beta), eps)
            n_tok = mask.sum().clamp(min=1)
            token_clip = (clip_tok & mask).sum().to(dtype) / n_tok
        per_seq = torch.where(mask, per_tok, torch.zeros_like(per_tok)).sum(-1)
    elif variant == "advantage_bce":
        z = (q_T - q0f) / beta  # = sum_t A_t / beta
        target = torch.sigmoid((r - q0f) / beta)
        per_seq = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    else:  # mc_ce: the MC term only
        per_seq = torch.zeros_like(q_T)
    loss_main = per_seq.mean() if variant != "mc_ce" else zero

    loss_mc = zero
    mc_clip = zero
    mc_count = zero
    if mc_positions is not None:
        lengths = mask.sum(-1)
        mc_per_seq, n_clip, n_mc = _mc_term(q, q0f, lengths, mc_positions, mc_targets, beta, eps)
        loss_mc = mc_per_seq.mean()
        mc_count = n_mc.to(dtype)
        mc_clip = n_clip.to(dtype) / n_mc.clamp(min=1).to(dtype)
    loss = loss_main + (loss_mc if variant == "mc_ce" else mc_weight * loss_mc)

    if not return_diagnostics:
        return loss
    with torch.no_grad():
        lengths_f = mask.sum(-1).to(dtype)
        n_tokens = lengths_f.sum().clamp(min=1)
        err = q_T - r
        diag = SPODiagnostics(
            loss=loss.detach(),
            loss_main=loss_main.detach(),
            loss_mc=loss_mc.detach(),
            q_T_mean=q_T.mean().detach(),
            terminal_abs_error=err.abs().mean().detach(),
            terminal_error=err.mean().detach(),
            kl_estimate=((q_T - q0f) / beta).mean().detach(),
            clip_fraction=(q_T / beta > -eps).to(dtype).mean(),
            token_clip_fraction=token_clip.detach(),
            mc_clip_fraction=mc_clip.detach(),
            advantage_mean=(a.sum() / n_tokens).detach(),
            advantage_sum_mean=(q_T - q0f).mean().detach(),
            q0_mean=q0f.mean(),
            reward_mean=r.mean(),
            response_length_mean=lengths_f.mean(),
            mc_count=mc_count,
        )
    return loss, diag


# --------------------------------------------------------------------------------------------
# Baselines: PPO / GAE / GRPO (method doc "PPO baseline")
# --------------------------------------------------------------------------------------------


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over True entries of `mask` (0 when the mask is empty)."""
    mask = mask.to(torch.bool)
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1).to(total.dtype)


@dataclass
class PPODiagnostics:
    """Detached 0-dim tensors: `clip_fraction` = fraction of real tokens whose ratio lies outside
    `[1 - clip_eps, 1 + clip_eps]`; `approx_kl` = token mean of `0.5 * (log ratio)^2`
    (Schulman's k2 estimator of `KL(pi_old || pi_theta)`); `ratio_mean`; `loss`."""

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def ppo_loss(
    policy_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    *,
    importance_weights: Tensor | None = None,
) -> tuple[Tensor, PPODiagnostics]:
    """Clipped-surrogate PPO policy loss (Schulman et al. 2017, Eq. 7), per token:

        rho_t = exp(log pi_theta - log pi_old);  L_t = -min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)

    `[B, T]` inputs; `advantages` are treated as constants. `importance_weights` (`[B, T]`,
    detached), if given, multiply `L_t`: the paper's asynchronous-staleness correction
    (method doc "PPO baseline"; paper Sec. 3.1.4), e.g. `exp(log pi_old - log pi_worker)` when
    `old_logprobs` are recomputed by the trainer and the workers' log-probs differ.
    Reduction: mean over real tokens of the whole batch.
    """
    mask = mask.to(torch.bool)
    log_ratio = torch.where(
        mask,
        _float(policy_logprobs) - _float(old_logprobs),
        torch.zeros_like(_float(policy_logprobs)),
    )
    ratio = torch.exp(log_ratio)
    adv = _float(advantages).detach()
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    per_tok = -surr
    if importance_weights is not None:
        per_tok = per_tok * _float(importance_weights).detach()
    loss = masked_mean(per_tok, mask)
    with torch.no_grad():
        outside = (ratio > 1.0 + clip_eps) | (ratio < 1.0 - clip_eps)
        diag = PPODiagnostics(
            loss=loss.detach(),
            clip_fraction=masked_mean(outside.to(ratio.dtype), mask),
            approx_kl=masked_mean(0.5 * log_ratio**2, mask),
            ratio_mean=masked_mean(ratio, mask),
        )
    return loss, diag


@dataclass
class ValueLossDiagnostics:
    """Detached 0-dim tensors: `clip_fraction` = fraction of real tokens where the clipped
    value error is the larger one (the clip binds); `value_error` = token mean `|V - R|`."""

    loss: Tensor
    clip_fraction: Tensor
    value_error: Tensor

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, ValueLossDiagnostics]:
    """Clipped value loss (PPO2 / Gehring et al. style), per token:

        V_clip = old_V + clip(V - old_V, -eps, eps);  L_t = 0.5 * max((V - R)^2, (V_clip - R)^2)

    `[B, T]` inputs; `returns` and `old_values` are constants. Reduction: mean over real tokens.
    """
    mask = mask.to(torch.bool)
    v = _float(values)
    old = _float(old_values).detach()
    ret = _float(returns).detach()
    v_clip = old + torch.clamp(v - old, -clip_eps, clip_eps)
    err = (v - ret) ** 2
    err_clip = (v_clip - ret) ** 2
    loss = masked_mean(0.5 * torch.maximum(err, err_clip), mask)
    with torch.no_grad():
        diag = ValueLossDiagnostics(
            loss=loss.detach(),
            clip_fraction=masked_mean((err_clip > err).to(v.dtype), mask),
            value_error=masked_mean((v - ret).abs(), mask),
        )
    return loss, diag


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right-padded `[B, T]`:

        delta_t = r_t + gamma * V_{t+1} - V_t   (V after the last real token is 0: terminal)
        A_t = delta_t + gamma * lam * A_{t+1};  returns_t = A_t + V_t

    `values[t]` is the value of the state *before* token `t` is emitted (the usual LM layout).
    Returns `(advantages, returns)`, detached, 0 at padded positions. Assumes each row's real
    tokens are a contiguous prefix (right padding).
    """
    mask = mask.to(torch.bool)
    r = torch.where(mask, _float(rewards), torch.zeros_like(_float(rewards))).detach()
    v = torch.where(mask, _float(values), torch.zeros_like(_float(values))).detach()
    batch, t_len = r.shape
    # V_{t+1}, 0 past the last real token (and on padding); deltas computed in one shot.
    next_mask = torch.zeros_like(mask)
    next_mask[:, :-1] = mask[:, 1:]
    next_v = torch.zeros_like(v)
    next_v[:, :-1] = v[:, 1:]
    next_v = torch.where(next_mask, next_v, torch.zeros_like(next_v))
    delta = torch.where(mask, r + gamma * next_v - v, torch.zeros_like(r))
    decay = gamma * lam * next_mask.to(r.dtype)
    adv = torch.zeros_like(r)
    last = torch.zeros(batch, dtype=r.dtype, device=r.device)
    for t in reversed(range(t_len)):  # only the recursion is sequential
        last = delta[:, t] + decay[:, t] * last
        adv[:, t] = last
    returns = torch.where(mask, adv + v, torch.zeros_like(adv))
    return adv, returns


def kl_regularised_token_rewards(
    old_logprobs: Tensor, ref_logprobs: Tensor, reward: Tensor, mask: Tensor, beta: float
) -> Tensor:
    """Per-token PPO reward (method doc "PPO baseline"; Ziegler et al. 2019), `[B, T]`:

        r_t = -beta * (log pi_old - log pi_0)_t  (+ r on the last real token)

    0 at padded positions. A row without real tokens gets no reward (nothing to credit).
    Detached.
    """
    mask = mask.to(torch.bool)
    kl = _float(old_logprobs) - _float(ref_logprobs)
    out = torch.where(mask, -beta * kl, torch.zeros_like(kl)).detach()
    if out.shape[-1] == 0:
        return out
    lengths = mask.sum(-1)
    has = lengths > 0
    last = (lengths - 1).clamp(min=0)
    bonus = torch.where(has, _float(reward).to(out.dtype), torch.zeros_like(out[:, 0]))
    return out.scatter_add(-1, last.unsqueeze(-1), bonus.detach().unsqueeze(-1))


def grpo_advantages(rewards: Tensor, eps: float = 1e-6, *, scale: bool = True) -> Tensor:
    """Group-relative advantages (Shao et al. 2024, GRPO outcome supervision).

    `rewards` `[G, N]`: `G` groups (prompts) of `N` responses. Returns `[G, N]`
    `(r - mean_group) / (std_group + eps)` with the unbiased std (as in the DeepSeekMath and TRL
    implementations); `scale=False` skips the division (Dr. GRPO). Groups of one response, and
    groups whose rewards are all equal, get advantage 0. Broadcast to tokens by the caller.
    """
    r = _float(rewards)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [G, N], got {tuple(r.shape)}")
    centred = r - r.mean(dim=-1, keepdim=True)
    if not scale:
        return centred
    if r.shape[-1] < 2:
        return torch.zeros_like(r)
    return centred / (r.std(dim=-1, keepdim=True) + eps)


# --------------------------------------------------------------------------------------------
# TOPR (Le Roux et al. 2025, "Tapered Off-Policy REINFORCE", arXiv 2503.14286)
# --------------------------------------------------------------------------------------------


@dataclass
class TOPRDiagnostics:
    """Detached 0-dim tensors: `loss`; `positive_fraction` = share of the B rows in the
    untruncated set (`r - b >= 0`); `negative_taper_mean` = mean taper `[pi/mu]_0^1` over the
    negative rows that have mu (NaN when none); `taper_clip_fraction` = share of those whose
    ratio pi/mu exceeded 1 and was truncated to 1 (NaN when none); `negatives_without_mu` =
    negative rows left out for want of behaviour log-probs; `log_ratio_mean` = mean over rows
    with mu of `log pi_theta(tau) - log mu(tau)` (NaN when none); `seq_logprob_mean` = mean
    `log pi_theta(tau)`."""

    loss: Tensor
    positive_fraction: Tensor
    negative_taper_mean: Tensor
    taper_clip_fraction: Tensor
    negatives_without_mu: Tensor
    log_ratio_mean: Tensor
    seq_logprob_mean: Tensor

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def topr_loss(
    policy_logprobs: Tensor,
    behaviour_seq_logprob: Tensor,
    reward: Tensor,
    mask: Tensor,
    baseline: float = -0.5,
) -> tuple[Tensor, TOPRDiagnostics]:
    """TOPR's objective, negated: the TOPR gradient of arXiv 2503.14286 (Sec. 3,
    "Tapered Off-Policy REINFORCE", the definition of grad J_TOPR) with a constant baseline,

        grad J = sum_{tau: A >= 0} mu(tau) A(tau) grad log pi(tau)
               + sum_{tau: A < 0}  mu(tau) [pi(tau)/mu(tau)]_0^1 A(tau) grad log pi(tau),

    `A(tau) = r(tau) - b`, `[x]_0^1 = min(max(x, 0), 1)`: positive trajectories get no
    importance weight (the SFT term), negative ones the truncated ratio, a constant (stop-
    gradient) coefficient. Sampled from mu (the batch), per sequence
    `L_i = -sg(alpha_i) * A_i * log pi_theta(tau_i)`, `alpha_i = 1` for `A_i >= 0`, else
    `min(pi_theta(tau_i) / mu(tau_i), 1)` computed in log space; the loss is the mean over the
    B sequences (the paper's sum over the dataset, divided by its size).

    `policy_logprobs` `[B, T]` log pi_theta of the taken tokens (carries the gradient; padded
    positions ignored, may be non-finite); `behaviour_seq_logprob` `[B]` log mu(tau) of each
    whole response (NaN where unknown: a negative row without it gets alpha 0, i.e. is left
    out; a positive row needs none); `reward` `[B]`; `mask` `[B, T]` bool; `baseline` b.
    Returns `(loss, TOPRDiagnostics)`. Raises ValueError on mismatched shapes.
    """
    if policy_logprobs.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: policy {tuple(policy_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    batch = policy_logprobs.shape[0]
    if behaviour_seq_logprob.shape != (batch,) or reward.shape != (batch,):
        raise ValueError(f"behaviour_seq_logprob and reward must be [B]=[{batch}]")
    mask = mask.to(torch.bool)
    lp = _float(policy_logprobs)
    seq_lp = torch.where(mask, lp, torch.zeros_like(lp)).sum(-1)  # log pi_theta(tau), [B]
    adv = _float(reward).to(seq_lp.dtype) - baseline
    mu = _float(behaviour_seq_logprob).to(seq_lp.dtype)
    with torch.no_grad():
        has_mu = ~torch.isnan(mu)
        positive = adv >= 0
        log_ratio = seq_lp.detach() - torch.where(has_mu, mu, torch.zeros_like(mu))
        # [pi/mu]_0^1 in log space: exp(min(log ratio, 0)), never overflows.
        taper = torch.exp(torch.clamp(log_ratio, max=0.0))
        alpha = torch.where(
            positive,
            torch.ones_like(taper),
            torch.where(has_mu, taper, torch.zeros_like(taper)),
        )
    loss = (-(alpha * adv) * seq_lp).mean() if batch else seq_lp.sum()
    with torch.no_grad():
        nan = seq_lp.new_tensor(float("nan"))
        neg = ~positive & has_mu
        n_neg = neg.sum()
        n_mu = has_mu.sum()
        diag = TOPRDiagnostics(
            loss=loss.detach(),
            positive_fraction=positive.to(seq_lp.dtype).mean() if batch else nan,
            negative_taper_mean=(taper[neg].sum() / n_neg) if n_neg else nan,
            taper_clip_fraction=((log_ratio[neg] > 0).sum() / n_neg) if n_neg else nan,
            negatives_without_mu=(~positive & ~has_mu).sum().to(seq_lp.dtype),
            log_ratio_mean=(log_ratio[has_mu].sum() / n_mu) if n_mu else nan,
            seq_logprob_mean=seq_lp.detach().mean() if batch else nan,
        )
    return loss, diag


# --------------------------------------------------------------------------------------------
# SFT: token-level negative log-likelihood of the successful responses
# --------------------------------------------------------------------------------------------


@dataclass
class SFTDiagnostics:
    """Detached 0-dim tensors: `loss`; `tokens` = response tokens trained on (those of the
    successes); `nll_mean` = mean negative log-likelihood per such token (nats; NaN when none);
    `perplexity` = exp(`nll_mean`); `rows` = successful rows trained on; `dropped_failures` =
    rows left out because their reward is not a pass (failures); `seq_logprob_mean` = mean
    `log pi_theta(tau)` over the successful rows (NaN when none)."""

    loss: Tensor
    tokens: Tensor
    nll_mean: Tensor
    perplexity: Tensor
    rows: Tensor
    dropped_failures: Tensor
    seq_logprob_mean: Tensor

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def sft_loss(
    policy_logprobs: Tensor, reward: Tensor, mask: Tensor
) -> tuple[Tensor, SFTDiagnostics]:
    """Supervised fine-tuning on the batch's successes: the token-level negative
    log-likelihood, averaged over every response token of the successful rows of the batch,

        L = -(1 / N) sum_{i: r_i = 0} sum_{t: mask_it} log pi_theta(y_it | x_i, y_i<t),
        N = sum_{i: r_i = 0} |y_i|,

    the standard causal-LM SFT loss (the cross-entropy of Hugging Face `Trainer` / TRL's
    `SFTTrainer` on completion tokens only: prompt tokens are never in these tensors). A row
    is a success when its reward is 0, the lake's pass (`docs/lake.md`: reward 0 = passed every
    test, -1 = failed); every other row is dropped (no gradient) and counted.

    `policy_logprobs` `[B, T]` log pi_theta of the taken tokens (carries the gradient; padded
    positions and the positions of dropped rows are ignored and may be non-finite); `reward`
    `[B]`; `mask` `[B, T]` bool, True on real response tokens. Returns `(loss, SFTDiagnostics)`;
    a batch without a successful token gives a 0 loss with zero gradient (and NaN `nll_mean`).
    Raises ValueError on mismatched shapes.
    """
    if policy_logprobs.shape != mask.shape:
        raise ValueError(
            f"shape mismatch: policy {tuple(policy_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    batch = policy_logprobs.shape[0]
    if reward.shape != (batch,):
        raise ValueError(f"reward must be [B]=[{batch}], got {tuple(reward.shape)}")
    lp = _float(policy_logprobs)
    success = _float(reward).to(lp.device) == 0
    keep = mask.to(torch.bool) & success[:, None]
    picked = torch.where(keep, lp, torch.zeros_like(lp))
    n_tokens = keep.sum()
    loss = -picked.sum() / n_tokens.clamp(min=1)
    with torch.no_grad():
        nan = lp.new_tensor(float("nan"))
        nll = loss.detach() if n_tokens else nan
        n_rows = success.sum()
        diag = SFTDiagnostics(
            loss=loss.detach(),
            tokens=n_tokens.to(lp.dtype),
            nll_mean=nll,
            perplexity=torch.exp(nll),
            rows=n_rows.to(lp.dtype),
            dropped_failures=(~success).sum().to(lp.dtype),
            seq_logprob_mean=(picked.sum(-1)[success].sum() / n_rows) if n_rows else nan,
        )
    return loss, diag
