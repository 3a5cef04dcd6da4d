"""SFT as `spo train --algo sft` (issue 22, item 2): the token-level NLL loss against hand
computations (masking, only successes count), its rules and refusals, an experiment arm naming
it, a run that samples nothing without an online part, and real runs on the tiny model that
lower the NLL of the lake's human solutions, drop failures a mixture draws, log metrics to the
lake and resume."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

from spo_store.errors import SpoError
from spo_train.algorithm_rules import RULES
from spo_train.algorithms.losses import sft_loss
from spo_train.config import TrainConfig
from tests.train.test_train_q0_and_eval import _config

NAN = float("nan")


def _mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


# ----------------------------------------------------------------------------- the loss
def test_sft_loss_is_the_token_mean_nll_of_the_successes_by_hand():
    # rows: success of 2 tokens, failure (NaN log-probs: never read), success of 1 token
    # (99 on its padding: ignored), unjudged-looking reward NaN (not a pass: dropped).
    mask = _mask([2, 2, 1, 2])
    lp = torch.tensor([[-1.0, -2.0], [NAN, NAN], [-0.5, 99.0], [-3.0, -3.0]], requires_grad=True)
    reward = torch.tensor([0.0, -1.0, 0.0, NAN])
    loss, diag = sft_loss(lp, reward, mask)
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)  # 3 success tokens
    loss.backward()
    want = torch.tensor([[-1 / 3, -1 / 3], [0.0, 0.0], [-1 / 3, 0.0], [0.0, 0.0]])
    assert torch.allclose(lp.grad, want, atol=1e-7)  # failures and padding: no gradient
    d = diag.to_dict()
    assert d["tokens"] == 3 and d["rows"] == 2 and d["dropped_failures"] == 2
    assert d["nll_mean"] == pytest.approx(3.5 / 3)
    assert d["perplexity"] == pytest.approx(math.exp(3.5 / 3))
    assert d["seq_logprob_mean"] == pytest.approx((-3.0 - 0.5) / 2)


def test_sft_loss_on_a_batch_without_successes_is_zero_with_no_gradient():
    lp = torch.full((2, 3), -1.0, requires_grad=True)
    loss, diag = sft_loss(lp, torch.tensor([-1.0, -1.0]), _mask([3, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(lp.grad) == 0
    d = diag.to_dict()
    assert d["tokens"] == 0 and d["dropped_failures"] == 2
    assert math.isnan(d["nll_mean"]) and math.isnan(d["perplexity"])
    with pytest.raises(ValueError, match=r"reward must be \[B\]=\[2\]"):
        sft_loss(lp, torch.zeros(3), _mask([3, 2]))
    with pytest.raises(ValueError, match="shape mismatch"):
        sft_loss(lp, torch.zeros(2), _mask([2, 2]))


# ----------------------------------------------------------------------------- the rules
def test_sft_rules_defaults_and_refusals(tmp_path):
    rules = RULES["sft"]
    assert not rules.needs_q0 and not rules.online_only and not rules.has_mc_term
    resolved = TrainConfig(algo="sft", output=str(tmp_path / "r")).resolved()
    assert resolved.mix == "offline:1"
    assert "nll 0.5000 ppl 1.65" in rules.progress(
        {"train/nll_mean": 0.5, "train/perplexity": 1.6487}
    )
    with pytest.raises(SpoError, match=r"--mc-weight 1 is an spo loss term; --algo sft"):
        TrainConfig(algo="sft", mc_weight=1.0, output=str(tmp_path / "r")).validate()
    with pytest.raises(SpoError, match=r"--rollout-workers 2: --algo sft with --mix offline:1"):
        TrainConfig(algo="sft", rollout_workers=2, output=str(tmp_path / "r")).validate()
    with pytest.raises(SpoError, match=r"--rollout-workers 2: .* samples no rollouts"):
        TrainConfig(
            algo="sft", mix="online:0e0,human:1", rollout_workers=2, output=str(tmp_path / "r")
        ).validate()
    # an online part (rejection-sampling fine-tuning on its own successes) takes workers
    TrainConfig(
        algo="sft", mix="online:0.5,offline:0.5", rollout_workers=2, output=str(tmp_path / "r")
    ).validate()
    # the CLI: listed in --help; a refusal is one line, non-zero exit, nothing written
    spo = ["python", "-m", "spo_cli.main", "--threads", "1", "train"]
    r = subprocess.run([*spo, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sft (token-level NLL" in " ".join(r.stdout.split())
    r = subprocess.run(
        [*spo, "--algo", "sft", "--rollout-workers", "2", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode != 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--rollout-workers 2: --algo sft" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_an_experiment_arm_may_name_sft_at_spo_offline_dose(tmp_path):
    from spo_train.experiment.config import load_experiment

    path = tmp_path / "e.toml"
    path.write_text(
        '[experiment]\nname = "t"\nseeds = [0]\n[common]\nsteps = 1\nbatch_size = 8\n'
        '[arms.spo]\nalgo = "spo"\n'
        '[arms.sft_dose]\nalgo = "sft"\nbatch_size = 4\n'
        '[arms.sft_same]\nalgo = "sft"\nmix = "human:1"\n'
    )
    exp = load_experiment(path)
    assert exp.settings("sft_dose")["algo"] == "sft" and exp.settings("sft_dose")["batch_size"] == 4
    assert exp.settings("sft_same")["mix"] == "human:1"
    # the dose: SPO's offline rows per step at its default mixture = SFT's batch
    from spo_store.mixture import MixtureSpec, load_sources

    spo_offline = MixtureSpec.parse("online:0.5,offline:0.5", list(load_sources())).counts(8)
    assert spo_offline["offline"] == 4


def test_a_run_without_online_rows_samples_nothing(small_lake, tiny_model, tmp_path):  # noqa: F811
    from spo_train.rollouts.local import RolloutProducer
    from spo_train.rollouts.sources import NoRollouts, open_rollouts

    policy = torch.nn.Linear(1, 1)
    kw = dict(
        pi0_path=tiny_model, problems=[], run_id="r", tokenizer_id="t", ref_model_id="m",
        version=0,
    )  # fmt: skip
    config = _config(small_lake, tiny_model, tmp_path, algo="sft").resolved()
    none = open_rollouts(small_lake, policy, None, config=config, rows_per_step=0, **kw)
    assert isinstance(none, NoRollouts) and none.metrics() == {}
    none.sync(policy, 10)
    assert none.version == 10
    online = _config(small_lake, tiny_model, tmp_path, algo="sft", mix="online:1").resolved()
    from spo_train.lm.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model)
    some = open_rollouts(small_lake, model, tok, config=online, rows_per_step=2, **kw)
    assert isinstance(some, RolloutProducer)


# ----------------------------------------------------------------------------- real runs
def test_train_sft_on_human_solutions_lowers_their_nll_and_resumes(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    from spo_train.train.loop import train

    # 8 distinct human solutions of the train split (4 problems x 2), no q0 in this lake; a
    # batch of 8 drawn without replacement is all of them at every step, so train/nll_mean
    # (under the policy before the step's update) measures the same tokens each step.
    kw = dict(
        algo="sft", mix=None, batch_size=8, learning_rate=1e-2, warmup_steps=0, checkpoint_every=1
    )
    result = train(_config(small_lake, tiny_model, tmp_path, steps=4, **kw))
    summary = result.summary()
    assert summary["algo"] == "sft" and summary["steps"] == 4
    steps = [m for m in result.metrics]
    assert {m["train/tokens"] for m in steps} == {steps[0]["train/tokens"]}
    assert steps[0]["train/tokens"] > 0
    assert {m["train/rows"] for m in steps} == {8.0}
    nll = [m["train/nll_mean"] for m in steps]
    assert all(b < a for a, b in zip(nll, nll[1:], strict=False)), nll  # lower at every step
    assert nll[-1] < nll[0] - 0.5, nll  # measurably: by over half a nat per token
    assert all(math.isfinite(m["train/grad_norm"]) for m in steps)
    assert all(m["train/dropped_failures"] == 0 for m in steps)
    assert not any(k.startswith("rollout/") for m in steps for k in m)  # nothing sampled
    rows = small_lake.sql(
        "SELECT DISTINCT t.source FROM batches b, unnest(b.traj_ids) AS u(id) "
        f"JOIN trajectories t ON t.traj_id = u.id WHERE b.run_id = '{result.run_id}'"
    )
    assert rows["source"].to_list() == ["human"]
    online = small_lake.sql("SELECT count(*) AS n FROM trajectories WHERE source = 'online'")
    assert online["n"][0] == 0
    resumed = train(_config(small_lake, tiny_model, tmp_path, steps=5, resume=True, **kw))
    assert resumed.run_id == result.run_id and resumed.steps_done == 5
    assert resumed.metrics[-1]["train/nll_mean"] < nll[-1]  # the resumed policy, trained on
    logged = small_lake.sql(
        f"SELECT step, value FROM metrics WHERE run_id = '{result.run_id}' "
        "AND name = 'train/nll_mean' ORDER BY step"
    )
    assert logged["step"].to_list() == [0, 1, 2, 3, 4]
    assert logged["value"].to_list()[:4] == pytest.approx(nll)
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'algo = "sft"' in saved and 'mix = "offline:1"' in saved


def test_train_sft_drops_the_failures_a_mixture_draws(small_lake, tiny_model, tmp_path):  # noqa: F811
    from spo_train.train.loop import train

    # A user source of every human row: 8 correct and 4 incorrect train solutions.
    sources = tmp_path / "sources.toml"
    sources.write_text("[sources]\nall_human = \"t.source = 'human'\"\n")
    config = _config(
        small_lake, tiny_model, tmp_path, algo="sft", mix="all_human:1", batch_size=12,
        sources_file=str(sources),
    )  # fmt: skip
    m = train(config).metrics[0]
    assert m["train/rows"] == 8 and m["train/dropped_failures"] == 4
    assert m["train/reward_mean"] == pytest.approx(-4 / 12)
    assert math.isfinite(m["train/nll_mean"]) and m["train/grad_norm"] > 0


def test_train_sft_online_only_without_a_success_takes_no_step(small_lake, tiny_model, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from spo_train.train.loop import train

    # Rejection-sampling fine-tuning on its own successes: the random tiny model solves
    # nothing, so the step has no row to imitate: no optimizer step, the weights stay pi_0's.
    config = _config(
        small_lake, tiny_model, tmp_path, algo="sft", mix="online:1", batch_size=2, rollout_n=2,
    )  # fmt: skip
    result = train(config)
    m = result.metrics[0]
    assert m["train/rows"] == 0 and m["train/dropped_failures"] == 2 and m["train/tokens"] == 0
    assert m["train/grad_norm"] == 0.0
    assert "train/loss" not in m and "train/nll_mean" not in m  # NaN: not stored
    assert m["rollout/reward_mean"] == -1.0  # it sampled and judged this run's rollouts
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(tmp_path / "run" / "checkpoint-000001" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
