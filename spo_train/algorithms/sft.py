"""SFT: supervised fine-tuning on the successful solutions a lake mixture draws (`--mix`,
default `offline:1`: the lake's correct solutions from outside this run, the rows SPO's offline
half draws), with no q0, no reward model and no rollouts when the mixture has no online part.

Per step, one optimizer step on the batch (`spo_train.algorithms.losses.sft_loss`):
1. the batch's successes (reward 0) are its training rows; failures (reward -1, which a mixture
   with `online`, `pi0` or a user source can draw) are dropped and counted
   (`train/dropped_failures`); the policy forwards the successes only;
2. loss = mean over every response token of the successes of -log pi_theta(y_t | x, y_<t), the
   token-level negative log-likelihood (prompt tokens excluded). No KL term, no importance
   weight: the rows are demonstrations, whoever drew them;
3. a batch without a success token (possible with an online-only mixture early on) takes no
   optimizer step: `train/loss` and `train/nll_mean` are NaN, `train/grad_norm` 0, the learning-rate
   schedule still advances with the step.
Metrics: train/loss, train/tokens, train/nll_mean, train/perplexity, train/rows,
train/dropped_failures, train/seq_logprob_mean, train/kl_estimate (mean over the successes of
sum_t log pi_theta - log pi_0), train/reward_mean, train/response_length_mean, train/grad_norm.
"""

from __future__ import annotations

import torch

from spo_train.algorithms import Algorithm, Learner, TrainBatch
from spo_train.algorithms.losses import sft_loss


class SFT(Algorithm):
    """See the module docstring."""

    name = "sft"

    def update(self, batch: TrainBatch, learner: Learner) -> dict[str, float]:
        self.configure_policy(learner)
        # successes with at least one response token (an empty one has nothing to imitate)
        success = ((batch.reward == 0) & batch.mask.any(1)).nonzero().flatten().tolist()
        width = batch.mask.shape[1]
        metrics: dict[str, float] = {
            "train/reward_mean": float(batch.reward.float().mean()),
            "train/response_length_mean": float(batch.mask.sum(1).float().mean()),
        }
        if not success:  # nothing to imitate: no forward, no optimizer step (AdamW would
            # still move the weights on a zero gradient: momentum, weight decay)
            empty = torch.zeros(len(batch), width)
            _, diag = sft_loss(empty, batch.reward, batch.mask)
            metrics |= {f"train/{k}": v for k, v in diag.to_dict().items()}
            metrics |= {"train/loss": float("nan"), "train/grad_norm": 0.0}
            metrics["train/kl_estimate"] = float("nan")
            learner.skip_step()
            return metrics
        rows_lp = learner.policy_logprobs(batch, success)  # [S, T], gradients on
        dev = rows_lp.device
        index = torch.tensor(success, device=dev)
        # The successes' log-probs at their rows of the batch, 0 elsewhere (dropped rows).
        policy_lp = torch.zeros(len(batch), width, device=dev, dtype=rows_lp.dtype)
        policy_lp = policy_lp.index_copy(0, index, rows_lp)
        mask = batch.mask.to(dev)
        loss, diag = sft_loss(policy_lp, batch.reward.to(dev), mask)
        metrics |= {f"train/{k}": v for k, v in diag.to_dict().items()}
        metrics["train/grad_norm"] = learner.optimize(loss)
        diff = rows_lp.detach().float() - batch.ref_logprobs.to(dev)[index]
        real = mask[index]
        log_ratio = torch.where(real, diff, torch.zeros_like(diff)).sum(1)  # padding may be inf
        metrics["train/kl_estimate"] = float(log_ratio.mean())
        return metrics
