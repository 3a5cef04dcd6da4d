"""SPO: one optimizer step per batch on the chosen loss variant (method doc, "Losses"; paper
Sec. 3). The batch is any mixture of lake rows (online and offline): SPO needs no behaviour
log-probs, only pi_0's log-probs, the reward and the q0 estimate of each row's problem."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spo_train.algorithms import Algorithm, Learner, TrainBatch
from spo_train.algorithms.losses import spo_loss
from spo_train.config import TrainConfig

# CE clip margin per variant when --ce-clip-eps is not given (see TrainConfig.ce_clip_eps).
DEFAULT_CE_CLIP_EPS = {"terminal_ce": 0.1, "reverse_q_ce": 1e-6}
# The Monte-Carlo term's clip, whatever the main term's: its targets S_t take any value in
# [0, 1], and a clip eps moves every target above exp(-eps) to 1 (docs/losses.md).
MC_CLIP_EPS = 1e-6


def effective_ce_clip_eps(config: TrainConfig) -> float:
    """The CE clip margin the loss gets: `config.ce_clip_eps`, else the variant's default
    (`DEFAULT_CE_CLIP_EPS`; see `TrainConfig.ce_clip_eps` for where a clip moves the optimum)."""
    if config.ce_clip_eps is not None:
        return config.ce_clip_eps
    return DEFAULT_CE_CLIP_EPS.get(config.loss, 0.1)


class SPO(Algorithm):
    """Soft Policy Optimization with `config.loss` (`spo_train.algorithms.losses.spo_loss`)."""

    name = "spo"

    def __init__(
        self,
        config: TrainConfig,
        *,
        pi0_path: object = None,
        say: Callable[[str], None] = lambda _m: None,
    ):
        self.config = config
        self.eps = effective_ce_clip_eps(config)
        if config.loss == "reverse_q_ce" and self.eps > DEFAULT_CE_CLIP_EPS["reverse_q_ce"]:
            say(
                f"--ce-clip-eps {self.eps:g} with reverse_q_ce moves every per-token target above "
                f"exp(-{self.eps:g}) = {math.exp(-self.eps):.3g} to probability 1 (docs/losses.md)"
            )

    def update(self, batch: TrainBatch, learner: Learner) -> dict[str, float]:
        c = self.config
        self.configure_policy(learner)
        policy_lp = learner.policy_logprobs(batch)
        dev = policy_lp.device
        ref_lp, mask = batch.ref_logprobs.to(dev), batch.mask.to(dev)
        loss, diag = spo_loss(
            policy_lp,
            ref_lp,
            batch.q0.to(dev),
            batch.reward.to(dev),
            mask,
            c.beta,
            c.loss,
            eps=self.eps,
            return_diagnostics=True,
        )
        mc = None
        if c.mc_weight > 0 and batch.mc_positions is not None:
            mc_loss, mc = spo_loss(
                policy_lp,
                ref_lp,
                batch.q0.to(dev),
                batch.reward.to(dev),
                mask,
                c.beta,
                "mc_ce",
                mc_positions=batch.mc_positions.to(dev),
                mc_targets=batch.mc_targets.to(dev),
                eps=MC_CLIP_EPS,
                return_diagnostics=True,
            )
            loss = loss + c.mc_weight * mc_loss
        grad_norm = learner.optimize(loss)
        metrics = {f"train/{k}": v for k, v in diag.to_dict().items()}
        if mc is not None:  # beside the main term: total, MC term, targets, clipped share
            metrics["train/loss"] = float(loss.detach())
            metrics["train/loss_mc"] = float(mc.loss_mc)
            metrics["train/mc_count"] = float(mc.mc_count)
            metrics["train/mc_clip_fraction"] = float(mc.mc_clip_fraction)
        metrics["train/grad_norm"] = grad_norm
        # Per-sequence log-ratio sum(log pi_theta - log pi_0): successes should rise and
        # failures fall; the batch mean alone (kl_estimate) hides which one moves.
        log_ratio = (policy_lp.detach() - ref_lp).mul(mask).sum(1).cpu()
        success = batch.reward == 0
        if success.any():
            metrics["train/success_log_ratio"] = float(log_ratio[success].mean())
        if (~success).any():
            metrics["train/failure_log_ratio"] = float(log_ratio[~success].mean())
        is_online = torch.tensor([s == "online" for s in batch.sources])
        if is_online.any():
            err = log_ratio * c.beta + batch.q0 - batch.reward
            metrics["train/online_terminal_abs_error"] = float(err[is_online].abs().mean())
        return metrics
