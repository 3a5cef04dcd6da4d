"""PPO and GRPO beside SPO on one loop (issue 11, items 1-3): the GRPO objective and its
implementation choices, group-preserving minibatches, PPO's value model and importance weights,
and `spo train --algo ppo|grpo` end to end on real parts (tiny model, real lake, real sandbox):
its JSON summary, its refusal of offline data, and a resume that restores the value model."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from spo_train.algorithms import TrainBatch, minibatch_rows
from spo_train.algorithms.grpo import GRPO, grpo_token_loss
from tests.train.test_train_q0_and_eval import _config


def _mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


def test_grpo_loss_at_ratio_one_is_minus_the_mean_advantage_per_sequence_or_token():
    mask = _mask([1, 3])
    lp = torch.full(mask.shape, -1.0)
    adv = torch.tensor([1.0, -0.5])
    common = dict(clip_eps=0.2, kl_coef=0.3)
    seq, _ = grpo_token_loss(lp, lp, lp, adv, mask, length_norm="sequence", **common)
    tok, _ = grpo_token_loss(lp, lp, lp, adv, mask, length_norm="token", **common)
    # ratio 1 and pi_theta = pi_0: each token's loss is -A (k3 KL is 0)
    assert seq.item() == pytest.approx(-(1.0 + -0.5) / 2)  # mean over sequences
    assert tok.item() == pytest.approx(-(1.0 * 1 + -0.5 * 3) / 4)  # mean over the 4 tokens


def test_grpo_gradient_raises_positive_advantage_tokens_and_clip_stops_it():
    mask = _mask([2, 2])
    old = torch.log(torch.full(mask.shape, 0.5))
    lp = old.clone().requires_grad_(True)
    loss, diag = grpo_token_loss(
        lp, old, old, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2, kl_coef=0.0
    )
    loss.backward()
    assert (lp.grad[0] < 0).all() and (lp.grad[1] > 0).all()  # descent raises row 0, lowers row 1
    assert diag["clip_frac"].item() == 0
    # ratio 1.5 > 1 + eps on a positive advantage: the clipped term is the min, no gradient
    lp2 = (old + math.log(1.5)).requires_grad_(True)
    loss2, diag2 = grpo_token_loss(
        lp2, old, old, torch.tensor([1.0, 1.0]), mask, clip_eps=0.2, kl_coef=0.0
    )
    loss2.backward()
    assert diag2["clip_frac"].item() == 1.0
    assert torch.count_nonzero(lp2.grad) == 0


def test_grpo_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    mask = _mask([3])
    ref = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    for shift, expect_zero in ((0.0, True), (0.4, False), (-0.4, False)):
        lp = ref + shift
        _, diag = grpo_token_loss(lp, lp, ref, torch.zeros(1), mask, clip_eps=0.2, kl_coef=1.0)
        q = -shift
        expected = math.exp(q) - q - 1
        assert diag["kl_to_ref"].item() == pytest.approx(expected, abs=1e-6)
        assert (diag["kl_to_ref"].item() == 0) == expect_zero


def test_grpo_advantages_per_group_with_unequal_sizes_and_flat_groups():
    reward = torch.tensor([0.0, -1.0, -1.0, 0.0, 0.0, -1.0, 0.0])
    group = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    adv, flat = GRPO.advantages(reward, group, scale=True)
    r = reward[:3]
    assert adv[:3].tolist() == pytest.approx(((r - r.mean()) / (r.std() + 1e-6)).tolist())
    assert adv[3:].tolist() == [0.0] * 4  # all-equal group, groups of one
    assert flat == 3
    centred, _ = GRPO.advantages(reward, group, scale=False)
    assert centred[:3].tolist() == pytest.approx((r - r.mean()).tolist())  # Dr. GRPO


def test_minibatches_hold_whole_groups_and_every_row_once():
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    parts = minibatch_rows(group, 3, torch.Generator().manual_seed(0))
    assert len(parts) == 3
    assert sorted(i for p in parts for i in p) == list(range(10))
    for p in parts:
        assert all(set(group[p].tolist()) <= {g} or True for g in group[p].tolist())
        for g in set(group[p].tolist()):
            assert set(torch.nonzero(group == g).flatten().tolist()) <= set(p)


def _batch(tok, lengths: list[int], reward: list[float]) -> TrainBatch:
    n = len(lengths)
    prompts = [tok("Read n.", add_special_tokens=False)["input_ids"] for _ in range(n)]
    responses = [[5 + (i + j) % 20 for j in range(k)] for i, k in enumerate(lengths)]
    mask = _mask(lengths)
    return TrainBatch(
        traj_ids=[f"t{i}" for i in range(n)],
        problem_ids=["p"] * n,
        sources=["online"] * n,
        prompt_ids=prompts,
        response_ids=responses,
        ref_logprobs=torch.zeros(mask.shape),
        mask=mask,
        reward=torch.tensor(reward),
        q0=torch.full((n,), math.nan),
        group=torch.tensor([i // 2 for i in range(n)]),
    )


def test_ppo_value_model_update_and_importance_weights(tiny_model, tmp_path):  # noqa: F811
    from spo_train.algorithms.ppo import PPO
    from spo_train.config import TrainConfig
    from spo_train.lm.models import load_model_and_tokenizer
    from spo_train.train.learner import PolicyLearner

    policy, tok = load_model_and_tokenizer(tiny_model)
    config = TrainConfig(
        model=str(tiny_model), algo="ppo", batch_size=4, rollout_n=2, output=str(tmp_path / "o")
    ).resolved()
    learner = PolicyLearner(policy, config, tok.pad_token_id)
    ppo = PPO(config, pi0_path=tiny_model)
    batch = _batch(tok, [3, 5, 2, 4], [0.0, -1.0, -1.0, 0.0])
    v0 = ppo.values(batch, [0, 1, 2, 3])
    assert v0.shape == batch.mask.shape and torch.count_nonzero(v0) == 0  # zero-init head
    # the value model is a whole second transformer (what PPO pays in memory)
    n_policy = sum(p.numel() for p in policy.parameters())
    assert ppo.extra_parameters() > 0.5 * n_policy
    old = learner.policy_logprobs(batch).detach()
    batch.model_logprobs = old.clone()
    batch.behaviour_logprobs = torch.where(batch.mask, old - 1.0, torch.zeros_like(old))
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = ppo.update(batch, learner)
    for key in ("train/value_loss", "train/clip_frac", "train/policy_loss", "train/kl_to_ref"):
        assert key in metrics and math.isfinite(metrics[key]), key
    # pi_old / mu = e on every token, truncated at the cap (2.0)
    assert metrics["train/importance_weight_mean"] == pytest.approx(2.0)
    assert learner.optimizer_steps == config.minibatches  # one step per minibatch
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    v1 = ppo.values(batch, [0, 1, 2, 3]).detach()
    assert torch.count_nonzero(v1[batch.mask]) > 0  # the value model learned something
    assert torch.count_nonzero(v1[~batch.mask]) == 0  # and padding stays 0
    # its state round-trips (what a checkpoint keeps)
    other = PPO(config, pi0_path=tiny_model)
    other.load_state_dict(ppo.state_dict())
    assert torch.equal(other.values(batch, [0, 1, 2, 3]).detach(), v1)


def _spo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python", "-m", "spo_cli.main", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_ppo_and_grpo_refuse_offline_data_with_exit_1(tmp_path):
    for algo in ("ppo", "grpo"):
        r = _spo(
            "train", "--algo", algo, "--mix", "online:0.5,offline:0.5",
            "--output", str(tmp_path / algo), cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "online rollouts only" in lines[0] and "offline" in lines[0]
        assert not (tmp_path / algo).exists()
    r = _spo("train", "--algo", "grpo", "--batch-size", "6", "--rollout-n", "4", cwd=tmp_path)
    assert r.returncode == 2 and "not a multiple of --rollout-n" in r.stderr
    # a cap below 1 would silently scale every on-policy token's loss down
    r = _spo("train", "--algo", "ppo", "--importance-weight-cap", "0.5", cwd=tmp_path)
    assert r.returncode == 2 and "--importance-weight-cap 0.5: must be a number >= 1" in r.stderr


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_train_algo_end_to_end_with_json_and_resume(algo, small_lake, tiny_model, tmp_path):  # noqa: F811
    from spo_train.train.loop import train

    # No q0 anywhere in this lake: PPO and GRPO need none.
    cfg = _config(
        small_lake, tiny_model, tmp_path, algo=algo, mix=None, steps=2, batch_size=4,
        rollout_n=2, checkpoint_every=1, eval_problems=1, eval_n=2, eval_k=(1, 2),
    )  # fmt: skip
    result = train(cfg)
    summary = result.summary()
    assert summary["algo"] == algo and summary["steps"] == 2
    # the tiny model fails every rollout: no signal, so the policy steps are skipped (counted)
    assert "train/skipped_optimizer_steps" in summary["metrics"]
    if algo == "ppo":
        assert "train/value_loss" in summary["metrics"]
    assert set(summary["eval"]) == {"valid"} and summary["eval_step"] == 2
    assert 0 <= summary["eval"]["valid"]["pass@1"] <= 1
    # the batch of each step is exactly that step's rollouts, logged with their ids
    batches = small_lake.sql(
        f"SELECT b.step, t.policy_version, t.source FROM batches b, unnest(b.traj_ids) AS u(id) "
        f"JOIN trajectories t ON t.traj_id = u.id WHERE b.run_id = '{result.run_id}'"
    )
    assert set(batches["source"]) == {"online"}
    assert (batches["step"] == batches["policy_version"]).all()  # model_update_interval 1
    rows = small_lake.sql(
        "SELECT temperature, top_p, model_logprobs, behaviour_logprobs FROM trajectories "
        f"WHERE run_id = '{result.run_id}' AND source = 'online'"
    )
    assert set(rows["temperature"]) == {1.0} and set(rows["top_p"]) == {1.0}  # on-policy
    state = torch.load(
        tmp_path / "run" / "checkpoint-000002" / "trainer_state.pt", weights_only=False
    )
    if algo == "ppo":
        assert "value_model" in state["algorithm"]
    # resume to step 3: the algorithm's state comes back, each step is logged once
    resumed = train(_config(
        small_lake, tiny_model, tmp_path, algo=algo, mix=None, steps=3, batch_size=4,
        rollout_n=2, checkpoint_every=1, eval_problems=1, eval_n=2, eval_k=(1, 2), resume=True,
    ))  # fmt: skip
    assert resumed.run_id == result.run_id and resumed.steps_done == 3
    # resumed again with nothing left to do: the summary still says what the run reached
    again = train(_config(
        small_lake, tiny_model, tmp_path, algo=algo, mix=None, steps=3, batch_size=4,
        rollout_n=2, checkpoint_every=1, eval_problems=1, eval_n=2, eval_k=(1, 2), resume=True,
    )).summary()  # fmt: skip
    assert again["eval_step"] == 3 and set(again["eval"]["valid"]) == {"pass@1", "pass@2"}
    assert again["metrics"] == resumed.summary()["metrics"]
    steps = small_lake.sql(
        f"SELECT step, count(*) AS n FROM metrics WHERE run_id = '{result.run_id}' "
        "AND name = 'train/optimizer_steps' GROUP BY step ORDER BY step"
    )
    assert steps["step"].to_list() == [0, 1, 2] and set(steps["n"]) == {1}
    # cumulative over the resume: 2 minibatches a step, each taken or skipped
    counts = small_lake.sql(
        f"SELECT step, sum(value) AS n FROM metrics WHERE run_id = '{result.run_id}' AND name "
        "IN ('train/optimizer_steps', 'train/skipped_optimizer_steps') GROUP BY step ORDER BY step"
    )
    assert counts["n"].to_list() == [2.0, 4.0, 6.0]
    # train/lr is the rate each step trained at (warm-up (s + 1) / 5 of 1e-4)
    lrs = small_lake.sql(
        f"SELECT step, value FROM metrics WHERE run_id = '{result.run_id}' "
        "AND name = 'train/lr' ORDER BY step"
    )
    assert lrs["value"].to_list() == pytest.approx([2e-5, 4e-5, 6e-5])


def test_train_json_is_the_last_stdout_line(small_lake, tiny_model, tmp_path):  # noqa: F811
    r = _spo(
        "train", "--algo", "grpo", "--model", str(tiny_model), "--lake", small_lake.uri,
        "--steps", "1", "--batch-size", "4", "--rollout-n", "2", "--max-new-tokens", "8",
        "--eval-problems", "0", "--no-tensorboard", "--wandb", "off",
        "--output", str(tmp_path / "g"), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) >= {"run_id", "algo", "steps", "metrics", "eval"}
    assert out["algo"] == "grpo" and out["steps"] == 1
    assert out["metrics"]["train/optimizer_steps"] + out["metrics"][
        "train/skipped_optimizer_steps"
    ] == pytest.approx(2.0)


def test_ppo_value_step_in_micro_batches_equals_one_pass(tiny_model, tmp_path):  # noqa: F811
    """--micro-batch-size bounds the value model's activations without changing its update."""
    import dataclasses

    from spo_train.algorithms.ppo import PPO
    from spo_train.config import TrainConfig
    from spo_train.lm.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    config = TrainConfig(
        model=str(tiny_model), algo="ppo", batch_size=4, rollout_n=2, output=str(tmp_path / "o")
    ).resolved()
    batch = _batch(tok, [3, 5, 2, 4], [0.0, -1.0, -1.0, 0.0])
    returns = torch.where(batch.mask, torch.linspace(-1, 0, batch.mask.shape[1]), 0.0)
    results = []
    for micro in (None, 1):
        ppo = PPO(dataclasses.replace(config, micro_batch_size=micro), pi0_path=tiny_model)
        ppo.pad_token_id = tok.pad_token_id
        with torch.no_grad():
            old = ppo.values(batch, [0, 1, 2, 3])
        metrics = ppo.value_step(batch, [0, 1, 2, 3], old, returns)
        results.append((metrics, [p.detach().clone() for p in ppo.value_model.parameters()]))
    (m_full, p_full), (m_micro, p_micro) = results
    assert m_micro["train/value_loss"] == pytest.approx(m_full["train/value_loss"], rel=1e-5)
    assert m_micro["train/value_grad_norm"] == pytest.approx(
        m_full["train/value_grad_norm"], rel=1e-4
    )
    for a, b in zip(p_full, p_micro, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
