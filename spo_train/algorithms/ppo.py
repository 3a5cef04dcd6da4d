"""PPO, the paper's baseline (method doc, "PPO baseline"; paper Sec. 4; Ouyang et al. 2022;
Gehring et al. 2024), on this run's online rollouts.

Per step, on the batch of rollouts just drawn (whole groups per problem):
1. pi_old = the rollout policy's own temperature-1 log-probs of the taken tokens (the rows'
   `model_logprobs`, written by the sampler that drew them: the workers' log-probs);
2. per-token KL-regularised reward r_t = -beta (log pi_old - log pi_0)_t, plus the judge's
   reward (0 / -1) on the last token (`losses.kl_regularised_token_rewards`);
3. values V_t of the value model (a copy of pi_0's transformer with a scalar head, zero-init)
   before the update, GAE with gamma 1 and `gae_lambda` (`losses.gae`), advantages whitened
   over the batch's tokens;
4. `update_epochs` passes, each over `minibatches` shuffled minibatches of whole groups: the
   clipped policy loss (`losses.ppo_loss`) with the per-token importance weight pi_old / mu
   (mu = the distribution that drew the token, the rows' `behaviour_logprobs`; 1 when rollouts
   are sampled at temperature 1 without top-p, the default), truncated at
   `importance_weight_cap`; then the clipped value loss (`losses.value_loss`) on the value
   model, with its own AdamW (the value model's forwards and backwards run
   `micro_batch_size` rows at a time, gradients accumulated).
A batch whose rows all have one reward takes no policy step (each is counted,
`learner.skip_step`): its returns rank no response above another, and whitening would blow the
value model's errors and the KL shaping up to unit-variance advantages; the value model still
fits the returns. Decided per batch, not per minibatch: the advantages are whitened over the
batch, so a minibatch of failures beside a batch's successes still carries their contrast.
Metrics: train/policy_loss, train/value_loss, train/clip_frac (policy ratio outside the clip,
mean over minibatches), train/value_clip_frac, train/approx_kl (k2 of pi_old vs pi_theta),
train/kl_to_ref (mean per-sequence sum of log pi_old - log pi_0), train/advantage_std,
train/importance_weight_mean, train/grad_norm (0 when no policy step), train/value_grad_norm,
train/skipped_minibatches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spo_train.algorithms import (
    Algorithm,
    Learner,
    TrainBatch,
    minibatch_rows,
    old_logprobs_and_weights,
)
from spo_train.algorithms.losses import (
    gae,
    kl_regularised_token_rewards,
    masked_mean,
    ppo_loss,
    value_loss,
)
from spo_train.config import TrainConfig
from spo_train.lm.fast_step import (
    StepOptions,
    autocast,
    enable_activation_checkpointing,
    step_options,
)
from spo_train.lm.logprobs import build_batch


class ValueModel(nn.Module):
    """pi_0's transformer (no LM head) with a scalar head: `V[i, j]` is the value of the state
    *before* response token `j` of row `i` (read at the position that predicts that token).

    Head initialised to zero, so the first values are 0 (the usual start: the reward scale is
    0 / -1 here). Dropout off (eval mode), like the policy's loss forward. `options`: the
    policy's precision, activation checkpointing and compile (`spo_train.lm.fast_step`); the
    scalar head always runs in float32."""

    def __init__(
        self, pi0_path: str | Path, device: str = "cpu", options: StepOptions | None = None
    ) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        # pi_0's LM head is not loaded here: transformers would report it as an unexpected key
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.backbone = AutoModel.from_pretrained(str(pi0_path), local_files_only=True)
        finally:
            hf_logging.set_verbosity(level)
        self.backbone.to(device)
        self.backbone.float()
        hidden = self.backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1, device=device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.options = options or StepOptions()
        if self.options.activation_checkpointing:
            enable_activation_checkpointing(self.backbone)
        if self.options.compile:
            self.backbone.compile(dynamic=True)
        self.eval()

    def forward(  # type: ignore[override]
        self, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_token_id: int | None
    ) -> Tensor:
        """`[B, T]` values (0 on padding), T = the longest response."""
        dev = self.head.weight.device
        b = build_batch(prompt_ids, response_ids, pad_token_id=pad_token_id, device=dev)
        with autocast(self.options, dev):
            hidden = self.backbone(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                position_ids=b["position_ids"],
                use_cache=False,
            ).last_hidden_state
        v = self.head(hidden[b["predict_mask"]].float()).squeeze(-1)
        out = torch.zeros(b["mask"].shape, dtype=torch.float32, device=dev)
        return out.masked_scatter(b["mask"], v)


def _pad_to(x: Tensor, width: int) -> Tensor:
    return x if x.shape[1] >= width else torch.nn.functional.pad(x, (0, width - x.shape[1]))


class PPO(Algorithm):
    """See the module docstring."""

    name = "ppo"

    def __init__(
        self,
        config: TrainConfig,
        *,
        pi0_path: str | Path,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.config = config
        self.value_model = ValueModel(pi0_path, device=config.device, options=step_options(config))
        self.value_optimizer = torch.optim.AdamW(
            self.value_model.parameters(),
            lr=config.value_learning_rate,  # the rules fill it (PPORules.resolve)
            weight_decay=config.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(config.seed + 17)

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.value_model.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {
            "value_model": self.value_model.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value_model.load_state_dict(state["value_model"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.generator.set_state(state["generator"])

    def values(self, batch: TrainBatch, rows: list[int]) -> Tensor:
        """`[len(rows), T]` values of `rows`, the forward run `micro_batch_size` rows at a time."""
        pad = getattr(self, "pad_token_id", None)
        step = self.config.micro_batch_size or len(rows)
        parts = [
            _pad_to(
                self.value_model(
                    [batch.prompt_ids[i] for i in chunk],
                    [batch.response_ids[i] for i in chunk],
                    pad,
                ),
                batch.mask.shape[1],
            )
            for chunk in (rows[i : i + step] for i in range(0, len(rows), step))
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def value_step(
        self, batch: TrainBatch, rows: list[int], old_values: Tensor, returns: Tensor
    ) -> dict[str, float]:
        """One clipped value-loss step on `rows`: backward per micro-batch (gradients
        accumulate, each chunk weighted by its share of the rows' tokens, so the step equals
        one over the whole minibatch while only a micro-batch's activations are held)."""
        c = self.config
        step = c.micro_batch_size or len(rows)
        total = int(batch.mask[rows].sum().clamp(min=1))
        self.value_optimizer.zero_grad(set_to_none=True)
        sums = {"train/value_loss": 0.0, "train/value_clip_frac": 0.0, "train/value_error": 0.0}
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            idx = torch.tensor(chunk)
            share = float(batch.mask[chunk].sum()) / total
            v = self.values(batch, chunk)
            loss, diag = value_loss(
                v,
                old_values[idx].to(v.device),
                returns[idx].to(v.device),
                batch.mask[idx].to(v.device),
                c.value_clip_eps,
            )
            (loss * share).backward()
            sums["train/value_loss"] += float(diag.loss) * share
            sums["train/value_clip_frac"] += float(diag.clip_fraction) * share
            sums["train/value_error"] += float(diag.value_error) * share
        norm = torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), c.max_grad_norm)
        self.value_optimizer.step()
        return {**sums, "train/value_grad_norm": float(norm)}

    def update(self, batch: TrainBatch, learner: Learner) -> dict[str, float]:
        c = self.config
        self.configure_policy(learner)
        self.pad_token_id = getattr(learner, "pad_token_id", None)
        mask = batch.mask
        old_lp, weights = old_logprobs_and_weights(batch, learner, c.importance_weight_cap)
        all_rows = list(range(len(batch)))
        with torch.no_grad():
            old_values = self.values(batch, all_rows).cpu()
        token_rewards = kl_regularised_token_rewards(
            old_lp, batch.ref_logprobs, batch.reward, mask, c.beta
        )
        adv, returns = gae(token_rewards, old_values, mask, gamma=1.0, lam=c.gae_lambda)
        mean = masked_mean(adv, mask)
        std = masked_mean((adv - mean) ** 2, mask).sqrt()
        adv = torch.where(mask, (adv - mean) / (std + 1e-8), torch.zeros_like(adv))
        sums: dict[str, list[float]] = {}

        def add(name: str, value: float) -> None:
            sums.setdefault(name, []).append(float(value))

        # One reward for the whole batch (every sample failed, or every one passed): the
        # returns say nothing about which response is better, and whitening would scale the
        # value model's errors and the KL shaping up to unit-variance advantages. The policy
        # step is skipped (counted); the value model still fits the returns.
        signal = bool((batch.reward != batch.reward[0]).any())
        skipped = 0
        for _ in range(c.update_epochs):
            for rows in minibatch_rows(batch.group, c.minibatches, self.generator):
                idx = torch.tensor(rows)
                if not signal:
                    learner.skip_step()
                    skipped += 1
                    for name, value in self.value_step(batch, rows, old_values, returns).items():
                        add(name, value)
                    continue
                lp = learner.policy_logprobs(batch, rows)
                dev = lp.device
                loss, diag = ppo_loss(
                    lp,
                    old_lp[idx].to(dev),
                    adv[idx].to(dev),
                    mask[idx].to(dev),
                    c.clip_eps,
                    importance_weights=None if weights is None else weights[idx].to(dev),
                )
                add("train/grad_norm", learner.optimize(loss))
                add("train/policy_loss", diag.loss)
                add("train/clip_frac", diag.clip_fraction)
                add("train/approx_kl", diag.approx_kl)
                add("train/ratio_mean", diag.ratio_mean)
                for name, value in self.value_step(batch, rows, old_values, returns).items():
                    add(name, value)
        metrics = {k: sum(v) / len(v) for k, v in sums.items()}
        metrics.setdefault("train/grad_norm", 0.0)  # no policy step taken
        metrics["train/skipped_minibatches"] = float(skipped)
        kl = torch.where(mask, old_lp - batch.ref_logprobs, torch.zeros_like(old_lp)).sum(1)
        metrics["train/kl_to_ref"] = float(kl.mean())
        metrics["train/advantage_std"] = float(std)
        metrics["train/reward_mean"] = float(batch.reward.mean())
        metrics["train/response_length_mean"] = float(mask.sum(1).float().mean())
        if weights is not None:
            metrics["train/importance_weight_mean"] = float(masked_mean(weights, mask))
        return metrics
