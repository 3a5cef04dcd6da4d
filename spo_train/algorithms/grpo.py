"""GRPO (Shao et al. 2024, DeepSeekMath Sec. 4.1, outcome supervision) on this run's online
rollouts: `rollout_n` = G samples per problem, no value model.

Per step, on the groups just drawn:
1. advantage of every token of response i = (r_i - mean_group r) / (std_group r + 1e-6)
   (`losses.grpo_advantages`; unbiased std as DeepSeekMath and TRL; `grpo_scale_rewards
   false` only centres, as Dr. GRPO); a group whose rewards are all equal gives 0;
2. `update_epochs` passes over `minibatches` minibatches of whole groups, each with the clipped
   ratio pi_theta / pi_old (pi_old = the rows' `model_logprobs`, the sampling policy's own
   temperature-1 log-probs), times the truncated importance weight pi_old / mu when rollouts
   were not drawn from pi_old itself, plus `kl_coef` x KL(pi_theta || pi_0) per token with
   the k3 estimator exp(q) - q - 1, q = log pi_0 - log pi_theta (DeepSeekMath Eq. 4; unbiased,
   non-negative);
3. reduction `grpo_length_norm`: `sequence` = mean over each response's tokens then over the
   responses (the GRPO paper's 1/|o_i|), `token` = mean over all tokens of the minibatch (DAPO).
These three choices (std scaling, length normalisation, KL estimator and its place in the loss
rather than the reward) are where implementations differ; docs/algorithms.md lists them.

`--grpo-reference-per-group N` (mixed-policy GRPO, as LUFFY, arXiv 2504.14945): each group
also holds N correct offline solutions of its problem (`spo_train.train.batch_sources.GroupBatches`,
source `offline`). They take part in the group's mean/std like the samples: G failures and
one reference give the reference A = G / sqrt(G+1) and each failure -1 / sqrt(G+1).
Not sampled by pi_old, they have no pi_old: their term is the plain on-policy one, ratio
pi_theta / sg(pi_theta) = 1 with the gradient of log pi_theta, no clip, no importance weight
(LUFFY's off-policy term with pi_phi = 1 and no policy shaping); the KL term applies as usual.
A minibatch none of whose rows has a non-zero advantage (every group's rewards equal) takes no
optimizer step: it is counted (`learner.skip_step`, train/skipped_minibatches this step) and
left out, as DAPO's dynamic sampling leaves such groups out (its KL term alone would still
move every weight by about lr through AdamW).
Metrics: train/policy_loss, train/clip_frac, train/kl_to_ref (the k3 term's mean),
train/approx_kl, train/groups_without_signal (groups whose rewards are all equal),
train/skipped_minibatches, train/grad_norm (mean over the steps taken, 0 when none);
with reference rows on: train/reference_rows, train/groups_without_reference (problems without
a correct offline solution: their group is left as is), train/reference_advantage_mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spo_train.algorithms import (
    Algorithm,
    Learner,
    TrainBatch,
    minibatch_rows,
    old_logprobs_and_weights,
)
from spo_train.algorithms.losses import grpo_advantages, masked_mean
from spo_train.config import TrainConfig


def grpo_token_loss(
    policy_logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    kl_coef: float,
    length_norm: str = "sequence",
    importance_weights: Tensor | None = None,
    on_policy_rows: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO's objective, negated (DeepSeekMath Eq. 3 with the k3 KL of Eq. 4).

    `[B, T]` log-probs (policy with gradients; old, ref constants), `advantages` `[B]` (one per
    response, broadcast to its tokens), `mask` `[B, T]` bool. Per token:
    L_t = -min(rho_t A, clip(rho_t, 1 +- clip_eps) A) * w_t + kl_coef * (exp(q_t) - q_t - 1),
    q_t = log pi_0 - log pi_theta. Reduced by `length_norm` ("sequence" or "token").
    `on_policy_rows` `[B]` bool (GRPO's reference rows, which have no pi_old): those rows'
    surrogate is rho_t A with rho_t = pi_theta / sg(pi_theta) (value 1), no clip, no weight.
    Returns `(loss, diagnostics)`: clip_frac, approx_kl (k2 vs pi_old), kl_to_ref (k3 mean);
    the first two over the rows with a pi_old.
    """
    mask = mask.to(torch.bool)
    zero = torch.zeros_like(policy_logprobs)
    log_ratio = torch.where(mask, policy_logprobs - old_logprobs, zero)
    ratio = log_ratio.exp()
    adv = advantages.detach()[:, None]
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    if importance_weights is not None:
        surr = surr * importance_weights.detach()
    sampled = mask
    if on_policy_rows is not None and bool(on_policy_rows.any()):
        rows = on_policy_rows.to(torch.bool)[:, None]
        self_ratio = torch.where(mask, policy_logprobs - policy_logprobs.detach(), zero).exp()
        surr = torch.where(rows, self_ratio * adv, surr)
        sampled = mask & ~rows
    q = torch.where(mask, ref_logprobs - policy_logprobs, zero)
    k3 = q.exp() - q - 1
    per_tok = torch.where(mask, -surr + kl_coef * k3, zero)
    if length_norm == "sequence":
        lengths = mask.sum(1).clamp(min=1)
        has = mask.any(1)
        per_seq = per_tok.sum(1) / lengths
        loss = per_seq[has].mean() if has.any() else per_tok.sum() * 0
    elif length_norm == "token":
        loss = masked_mean(per_tok, mask)
    else:
        raise ValueError(f"length_norm must be 'sequence' or 'token', got {length_norm!r}")
    with torch.no_grad():
        outside = (ratio > 1 + clip_eps) | (ratio < 1 - clip_eps)
        diag = {
            "clip_frac": masked_mean(outside.float(), sampled),
            "approx_kl": masked_mean(0.5 * log_ratio**2, sampled),
            "kl_to_ref": masked_mean(k3, mask),
        }
    return loss, diag


class GRPO(Algorithm):
    """See the module docstring."""

    name = "grpo"

    def __init__(
        self,
        config: TrainConfig,
        *,
        pi0_path: object = None,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.config = config
        self.kl_coef = config.beta if config.kl_coef is None else config.kl_coef
        self.generator = torch.Generator().manual_seed(config.seed + 17)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    @staticmethod
    def advantages(reward: Tensor, group: Tensor, *, scale: bool) -> tuple[Tensor, int]:
        """`[B]` advantages from `[B]` rewards and group ids (groups may differ in size when
        unjudged samples were dropped); also the number of groups with no signal."""
        adv = torch.zeros_like(reward, dtype=torch.float32)
        flat = 0
        for g in torch.unique(group):
            rows = torch.nonzero(group == g).flatten()
            r = reward[rows].float()
            if len(rows) < 2 or bool((r == r[0]).all()):
                flat += 1
                continue
            adv[rows] = grpo_advantages(r[None, :], scale=scale)[0]
        return adv, flat

    def update(self, batch: TrainBatch, learner: Learner) -> dict[str, float]:
        c = self.config
        self.configure_policy(learner)
        mask = batch.mask
        old_lp, weights = old_logprobs_and_weights(batch, learner, c.importance_weight_cap)
        adv, flat = self.advantages(batch.reward, batch.group, scale=c.grpo_scale_rewards)
        reference = torch.tensor([s == "offline" for s in batch.sources], dtype=torch.bool)
        sums: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(c.update_epochs):
            for rows in minibatch_rows(batch.group, c.minibatches, self.generator):
                idx = torch.tensor(rows)
                if not bool(adv[idx].ne(0).any()):
                    # No group here has a reward spread (a reference member with it would have
                    # one): only the KL term would remain, and AdamW would still take an
                    # lr-sized step on it. Skipped, as DAPO's dynamic sampling drops such groups.
                    learner.skip_step()
                    skipped += 1
                    continue
                lp = learner.policy_logprobs(batch, rows)
                dev = lp.device
                loss, diag = grpo_token_loss(
                    lp,
                    old_lp[idx].to(dev),
                    batch.ref_logprobs[idx].to(dev),
                    adv[idx].to(dev),
                    mask[idx].to(dev),
                    clip_eps=c.clip_eps,
                    kl_coef=self.kl_coef,
                    length_norm=c.grpo_length_norm,
                    importance_weights=None if weights is None else weights[idx].to(dev),
                    on_policy_rows=reference[idx].to(dev),
                )
                out = {"grad_norm": learner.optimize(loss), "policy_loss": loss.detach(), **diag}
                for k, v in out.items():
                    sums.setdefault(f"train/{k}", []).append(float(v))
        metrics = {k: sum(v) / len(v) for k, v in sums.items()}
        metrics.setdefault("train/grad_norm", 0.0)  # no step taken
        metrics["train/groups_without_signal"] = float(flat)
        metrics["train/skipped_minibatches"] = float(skipped)
        if c.grpo_reference_per_group:
            with_reference = set(batch.group[reference].tolist())
            metrics["train/reference_rows"] = float(reference.sum())
            metrics["train/groups_without_reference"] = float(
                len(set(batch.group.tolist()) - with_reference)
            )
            metrics["train/reference_advantage_mean"] = (
                float(adv[reference].mean()) if bool(reference.any()) else float("nan")
            )
        metrics["train/reward_mean"] = float(batch.reward.mean())
        metrics["train/response_length_mean"] = float(mask.sum(1).float().mean())
        if weights is not None:
            # over the samples: a reference row's weight is not used (ratio 1, no weight)
            sampled = mask & ~reference[:, None]
            metrics["train/importance_weight_mean"] = float(masked_mean(weights, sampled))
        return metrics
