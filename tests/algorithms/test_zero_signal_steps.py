"""Steps without learning signal (issue 22 item 4): GRPO minibatches whose groups all have equal
rewards and PPO batches with one reward take no optimizer step (AdamW would still move every
weight by about lr); each is counted, and `train/optimizer_steps` (cumulative, every algorithm)
says how many steps were taken. Real tiny model, real AdamW."""

from __future__ import annotations

import torch

from spo_train.algorithms.grpo import GRPO
from spo_train.algorithms.ppo import PPO
from spo_train.config import TrainConfig
from spo_train.lm.models import load_model_and_tokenizer
from spo_train.train.learner import LearnerParts, PolicyLearner, adamw_steps
from tests.algorithms.test_algorithms import _batch


def _setup(tiny_model, tmp_path, algo: str):  # noqa: F811
    policy, tok = load_model_and_tokenizer(tiny_model)
    config = TrainConfig(
        model=str(tiny_model), algo=algo, batch_size=4, rollout_n=2, output=str(tmp_path / "o")
    ).resolved()
    return policy, tok, config, PolicyLearner(policy, config, tok.pad_token_id)


def _weights(policy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in policy.parameters()]


def _same(a, policy) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, policy.parameters(), strict=True))


def test_grpo_minibatch_without_signal_leaves_the_weights(tiny_model, tmp_path):  # noqa: F811
    policy, tok, config, learner = _setup(tiny_model, tmp_path, "grpo")
    grpo = GRPO(config)
    parts = LearnerParts(learner, grpo, tok)
    before = _weights(policy)
    # two groups (rows 0-1, 2-3), every reward -1: no advantage anywhere, only the KL term
    metrics = parts.step(_batch(tok, [3, 5, 2, 4], [-1.0, -1.0, -1.0, -1.0]))
    assert _same(before, policy)
    assert learner.optimizer_steps == 0 and learner.skipped_steps == config.minibatches == 2
    assert metrics["train/skipped_minibatches"] == 2.0
    assert metrics["train/optimizer_steps"] == 0.0
    assert metrics["train/skipped_optimizer_steps"] == 2.0
    # one group with a reward spread, one without: one step taken, one skipped
    metrics = parts.step(_batch(tok, [3, 5, 2, 4], [0.0, -1.0, -1.0, -1.0]))
    assert not _same(before, policy)
    assert metrics["train/skipped_minibatches"] == 1.0
    assert (metrics["train/optimizer_steps"], metrics["train/skipped_optimizer_steps"]) == (1, 3)
    assert metrics["train/grad_norm"] > 0
    assert adamw_steps(learner.optimizer) == 1  # what a resume restores the count from


def test_ppo_batch_with_one_reward_moves_only_the_value_model(tiny_model, tmp_path):  # noqa: F811
    policy, tok, config, learner = _setup(tiny_model, tmp_path, "ppo")
    ppo = PPO(config, pi0_path=tiny_model)
    parts = LearnerParts(learner, ppo, tok)
    before = _weights(policy)
    value_before = [p.detach().clone() for p in ppo.value_model.parameters()]
    metrics = parts.step(_batch(tok, [3, 5, 2, 4], [-1.0, -1.0, -1.0, -1.0]))
    assert _same(before, policy)
    assert not _same(value_before, ppo.value_model)  # the value model still fits the returns
    assert metrics["train/optimizer_steps"] == 0.0
    assert metrics["train/skipped_optimizer_steps"] == 2.0 == metrics["train/skipped_minibatches"]
    assert metrics["train/grad_norm"] == 0.0 and "train/value_loss" in metrics
    # one success in the batch: both minibatches step (whitening is over the batch)
    metrics = parts.step(_batch(tok, [3, 5, 2, 4], [-1.0, -1.0, -1.0, 0.0]))
    assert not _same(before, policy)
    assert (metrics["train/optimizer_steps"], metrics["train/skipped_optimizer_steps"]) == (2, 2)


def test_adamw_steps_before_any_step_is_zero(tiny_model, tmp_path):  # noqa: F811
    _, _, _, learner = _setup(tiny_model, tmp_path, "grpo")
    assert adamw_steps(learner.optimizer) == 0


def test_resume_restores_both_counts_and_reads_old_checkpoints(tiny_model, tmp_path):  # noqa: F811
    from spo_train.train.checkpoint import save_checkpoint
    from spo_train.train.learner import build_learner

    policy, tok, config, learner = _setup(tiny_model, tmp_path, "sft")
    batch = _batch(tok, [3, 5, 2, 4], [0.0, -1.0, -1.0, 0.0])
    learner.optimize(learner.policy_logprobs(batch).sum() * 0 + policy.lm_head.weight.sum())
    opt = (learner.optimizer, learner.scheduler)
    base = {"run_id": "r", "config": {"algo": "sft"}}
    # this release's checkpoint: 3 training steps, 1 taken, 2 skipped (counted)
    new = save_checkpoint(tmp_path / "a", 3, policy, tok, *opt, {**base, "step": 3,
                          "skipped_optimizer_steps": 2})  # fmt: skip
    parts = build_learner(config, tiny_model, new)
    assert (parts.learner.optimizer_steps, parts.learner.skipped_steps) == (1, 2)
    # a checkpoint from before the count: SFT's steps AdamW did not take were skipped
    old = save_checkpoint(tmp_path / "b", 4, policy, tok, *opt, {**base, "step": 4})
    parts = build_learner(config, tiny_model, old)
    assert (parts.learner.optimizer_steps, parts.learner.skipped_steps) == (1, 3)
