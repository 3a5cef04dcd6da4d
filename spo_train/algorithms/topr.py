"""TOPR: Tapered Off-Policy REINFORCE (Le Roux, Bellemare et al. 2025, arXiv 2503.14286), on
the same lake mixture as SPO (`--mix`, default online:0.5,offline:0.5), with the judge's
rewards and no q0.

Per step, one optimizer step on the batch (`spo_train.algorithms.losses.topr_loss`, the TOPR gradient of
the paper's Sec. 3):
1. each row's weight A = r - b (`--topr-baseline` b, default -0.5: a success +0.5, a failure
   -0.5, the paper's rewards +-1 halved);
2. rows with A >= 0 (successes) are REINFORCE / SFT terms without importance weight; rows with
   A < 0 (failures) are weighted by the truncated sequence ratio [pi_theta(tau) / mu(tau)]_0^1,
   a stop-gradient constant, with mu(tau) the distribution that drew the response (the sum of
   its `behaviour_logprobs`: temperature and top-p applied). A failure without behaviour
   log-probs (an ingested wrong solution: no mu) is left out and counted;
3. loss = mean over the batch's rows of -alpha * A * log pi_theta(tau), with log pi_theta(tau)
   summed over the response's tokens. No KL term (the paper trains without one).
Metrics: train/loss, train/positive_fraction, train/negative_taper_mean,
train/taper_clip_fraction, train/negatives_without_mu, train/log_ratio_mean,
train/seq_logprob_mean, train/kl_estimate (mean sum_t log pi_theta - log pi_0), train/reward_mean,
train/response_length_mean, train/grad_norm.
"""

from __future__ import annotations

import torch

from spo_train.algorithms import Algorithm, Learner, TrainBatch
from spo_train.algorithms.losses import topr_loss


class TOPR(Algorithm):
    """See the module docstring."""

    name = "topr"

    def update(self, batch: TrainBatch, learner: Learner) -> dict[str, float]:
        c = self.config
        self.configure_policy(learner)
        policy_lp = learner.policy_logprobs(batch)
        dev = policy_lp.device
        mask = batch.mask.to(dev)
        mu = batch.behaviour_seq_logprob
        if mu is None:  # no behaviour column at all: every row is without mu
            mu = torch.full((len(batch),), float("nan"))
        loss, diag = topr_loss(
            policy_lp, mu.to(dev), batch.reward.to(dev), mask, baseline=c.topr_baseline
        )
        metrics = {f"train/{k}": v for k, v in diag.to_dict().items()}
        metrics["train/grad_norm"] = learner.optimize(loss)
        ref_lp = batch.ref_logprobs.to(dev)
        diff = policy_lp.detach().float() - ref_lp
        log_ratio = torch.where(mask, diff, torch.zeros_like(diff)).sum(1)  # padding may be inf
        metrics["train/kl_estimate"] = float(log_ratio.mean()) if len(batch) else float("nan")
        metrics["train/reward_mean"] = float(batch.reward.float().mean())
        metrics["train/response_length_mean"] = float(batch.mask.sum(1).float().mean())
        return metrics
