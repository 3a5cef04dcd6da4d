"""TOPR (Tapered Off-Policy REINFORCE, arXiv 2503.14286) as `spo train --algo topr` (issue 22,
item 2): the loss against hand computations (the taper on failures only, stop-gradient, log
space), its rules and refusals, the mixture without q0, an experiment arm naming it, and a real
run on the tiny model that trains on online + offline rows, logs metrics to the lake and
resumes."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

from spo_store.errors import SpoError
from spo_train.algorithm_rules import RULES
from spo_train.algorithms.losses import topr_loss
from spo_train.config import TrainConfig
from tests.train.test_train_q0_and_eval import _config

NAN = float("nan")


def _mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


# ----------------------------------------------------------------------------- the loss
def test_topr_loss_and_gradient_by_hand():
    # rows: success (mu known), failure with pi/mu = e^-1 < 1 (tapered), failure with
    # pi/mu = e^2 > 1 (truncated to 1), success without mu (a human solution), failure
    # without mu (left out); b = -0.5: A = +0.5 for successes, -0.5 for failures.
    mask = _mask([2, 2, 1, 2, 1])
    lp = torch.tensor(
        [[-1.0, -1.0], [-0.5, -0.5], [-1.0, 99.0], [-0.25, -0.25], [-3.0, 0.0]],
        requires_grad=True,
    )  # 99 on padding: ignored
    seq = [-2.0, -1.0, -1.0, -0.5, -3.0]  # log pi_theta(tau)
    mu = torch.tensor([-5.0, 0.0, -3.0, NAN, NAN])  # log mu(tau)
    reward = torch.tensor([0.0, -1.0, -1.0, 0.0, -1.0])
    loss, diag = topr_loss(lp, mu, reward, mask, baseline=-0.5)
    alpha = [1.0, math.exp(-1.0), 1.0, 1.0, 0.0]
    adv = [0.5, -0.5, -0.5, 0.5, -0.5]
    expected = sum(-a * w * s for a, w, s in zip(alpha, adv, seq, strict=True)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d loss / d log pi(a_t) = -alpha * A / B on every real token: alpha is a constant (sg)
    want = torch.tensor([[-a * w / 5] * 2 for a, w in zip(alpha, adv, strict=True)])
    want = torch.where(mask, want, torch.zeros_like(want))
    assert torch.allclose(lp.grad, want, atol=1e-7)
    assert lp.grad[1, 0] > 0 and lp.grad[0, 0] < 0  # failures pushed down, successes up
    d = diag.to_dict()
    assert d["positive_fraction"] == pytest.approx(0.4)
    assert d["negative_taper_mean"] == pytest.approx((math.exp(-1.0) + 1.0) / 2)
    assert d["taper_clip_fraction"] == pytest.approx(0.5)  # the e^2 ratio was truncated
    assert d["negatives_without_mu"] == 1.0
    assert d["log_ratio_mean"] == pytest.approx((3.0 - 1.0 + 2.0) / 3)
    assert d["seq_logprob_mean"] == pytest.approx(sum(seq) / 5)


def test_topr_positive_rows_take_no_importance_weight_and_huge_ratios_stay_finite():
    mask = _mask([3, 3])
    lp = torch.full((2, 3), -1.0, requires_grad=True)
    # mu far below pi (ratio e^2997) and far above it (ratio e^-1000): no overflow, and a
    # success ignores mu entirely (SFT term), so both rows of a success pair weigh the same
    for mu in (torch.tensor([-3000.0, -3000.0]), torch.tensor([997.0, 997.0])):
        loss, diag = topr_loss(lp, mu, torch.tensor([0.0, 0.0]), mask)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(-0.5 * -3.0)
        assert math.isnan(diag.to_dict()["negative_taper_mean"])  # no failure in the batch
    loss, _ = topr_loss(lp, torch.tensor([-3000.0, 997.0]), torch.tensor([-1.0, -1.0]), mask)
    # failure 0: ratio truncated to 1; failure 1: ratio e^-1000 = 0 in float32
    assert loss.item() == pytest.approx((-(1.0 * -0.5) * -3.0) / 2)


def test_topr_baseline_ends_give_successes_only_or_failures_only():
    mask = _mask([1, 1])
    reward = torch.tensor([0.0, -1.0])
    mu = torch.tensor([0.0, 0.0])
    for baseline, moved in ((-1.0, 0), (0.0, 1)):  # b=-1: SFT on successes; b=0: failures only
        lp = torch.full((2, 1), -1.0, requires_grad=True)
        loss, _ = topr_loss(lp, mu, reward, mask, baseline=baseline)
        loss.backward()
        assert torch.count_nonzero(lp.grad).item() == 1 and lp.grad[moved, 0] != 0
    with pytest.raises(ValueError, match=r"\[B\]=\[2\]"):
        topr_loss(lp, torch.zeros(3), reward, mask)


def test_behaviour_sequence_logprob_is_per_row_nan_where_a_row_has_none():
    import pyarrow as pa

    from spo_train.train.learner import _row_logprob_sums, _row_logprobs

    table = pa.table({"behaviour_logprobs": [[-0.5, -0.25], None, []]})
    sums = _row_logprob_sums(table, "behaviour_logprobs")
    assert sums[0].item() == -0.75 and math.isnan(sums[1].item()) and sums[2].item() == 0.0
    rows = _row_logprobs(table, "behaviour_logprobs", 2)  # PPO's and GRPO's view: per row
    assert rows[0].tolist() == [-0.5, -0.25] and bool(rows[1].isnan().all())
    assert (
        _row_logprobs(pa.table({"behaviour_logprobs": [None, None]}), "behaviour_logprobs", 2)
        is None
    )
    assert _row_logprob_sums(pa.table({"x": [1]}), "behaviour_logprobs") is None


def test_behaviour_logprobs_that_are_no_log_probability_leave_the_row_without_mu():
    # rows written outside spo's sampler: a NULL among the values (crashed the batch), a token
    # drawn with probability 0 (-inf: a failure would weigh 1, the untruncated negative term),
    # inf and "probabilities" above 1 (tapered to 0 as if known); all are unknown mu
    import pyarrow as pa

    from spo_train.train.learner import _row_logprob_sums, _row_logprobs

    bad = [[None, -0.1], [-math.inf, -0.1], [math.inf], [1e30, 1e30], [5.0], [math.nan]]
    fine = [[-0.5, -0.25], [0.0, 0.0], [1e-7, 0.0]]  # greedy tokens may round just above 0
    table = pa.table({"behaviour_logprobs": bad + fine})
    sums = _row_logprob_sums(table, "behaviour_logprobs").tolist()
    assert all(math.isnan(v) for v in sums[: len(bad)])
    assert sums[len(bad) :] == pytest.approx([-0.75, 0.0, 1e-7])
    # PPO's and GRPO's view: the rows not all known are unknown (NaN), the others as stored
    rows = _row_logprobs(table, "behaviour_logprobs", 2)
    assert bool(rows[: len(bad)].isnan().all()) and not rows[len(bad) :].isnan().any()
    assert rows[len(bad)].tolist() == [-0.5, -0.25]
    # in the loss: the failures are left out and counted, not weighed
    mask = _mask([1] * len(sums))
    lp = torch.full((len(sums), 1), -1.0, requires_grad=True)
    reward = torch.full((len(sums),), -1.0)
    _, diag = topr_loss(lp, torch.tensor(sums), reward, mask)
    d = diag.to_dict()
    assert d["negatives_without_mu"] == len(bad)
    assert math.isfinite(d["log_ratio_mean"]) and math.isfinite(d["negative_taper_mean"])


# ----------------------------------------------------------------------------- the rules
def test_topr_rules_defaults_and_refusals(tmp_path):
    rules = RULES["topr"]
    assert not rules.needs_q0 and not rules.online_only and not rules.has_mc_term
    resolved = TrainConfig(algo="topr", output=str(tmp_path / "r")).resolved()
    assert resolved.mix == "online:0.5,offline:0.5" and resolved.model_update_interval == 10
    assert resolved.rollout_temperature == (0.1, 0.8) and resolved.rollout_top_p == 0.95
    assert resolved.topr_baseline == -0.5
    assert "taper 0.250" in rules.progress({"train/negative_taper_mean": 0.25})
    from spo_train.experiment.report_data import settings_label

    assert settings_label({"algo": "topr", "topr_baseline": -0.5, "mix": None}) == "topr"
    with pytest.raises(SpoError, match=r"--mc-weight 1 is an spo loss term; --algo topr"):
        TrainConfig(algo="topr", mc_weight=1.0, output=str(tmp_path / "r")).validate()
    # the CLI: a baseline outside [-1, 0] is one line, exit 2, nothing written
    r = subprocess.run(
        ["python", "-m", "spo_cli.main", "--threads", "1", "train", "--algo", "topr",
         "--topr-baseline", "0.5", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--topr-baseline 0.5: must be in [-1, 0]" in lines[0]
    assert not (tmp_path / "out").exists()


def test_rollout_workers_none_of_which_samples_the_current_policy_are_refused(tmp_path):
    # the mixture's online source would never fill: the trainer waited 30 minutes, then failed
    def config(algo: str, decoding: str, workers: int = 1, mix: str | None = None) -> TrainConfig:
        return TrainConfig(
            algo=algo, mix=mix, rollout_workers=workers, rollout_worker_decoding=decoding,
            output=str(tmp_path / "r"),
        )  # fmt: skip

    for algo in ("topr", "spo"):
        with pytest.raises(SpoError, match=r"none of the 1 rollout worker\(s\) samples the cur"):
            config(algo, "reference:1:1").validate()
        # specs are cycled over the workers: one worker takes only the first
        with pytest.raises(SpoError, match="none of the 1 rollout worker"):
            config(algo, "reference:1:1;current", workers=1).validate()
        config(algo, "reference:1:1;current", workers=2).validate()
        config(algo, "reference:1:1", mix="offline:1").validate()  # no online source: fine
        config(algo, "reference:1:1", mix="online:0,offline:1").validate()


def test_resuming_a_checkpoint_of_another_algo_is_refused_in_one_line(tmp_path):
    # config.toml edited from topr to ppo, then --resume: PPO read TOPR's algorithm state
    # ("internal error: KeyError: 'value_model'")
    from spo_train.algorithms.topr import TOPR
    from spo_train.train.checkpoint import load_trainer_state

    ckpt = tmp_path / "checkpoint-000002"
    ckpt.mkdir()
    torch.save(
        {"config": {"algo": "ppo"}, "algorithm": {"value_model": {}}}, ckpt / "trainer_state.pt"
    )
    topr = TOPR(TrainConfig(algo="topr", output=str(tmp_path)))
    with pytest.raises(
        SpoError, match=r"trained with --algo ppo, but this run asks for --algo topr"
    ):
        load_trainer_state(ckpt, None, topr)


def test_an_experiment_arm_may_name_topr(tmp_path):
    from spo_train.experiment.config import load_experiment

    base = '[experiment]\nname = "t"\nseeds = [0]\n[common]\nsteps = 1\n'
    path = tmp_path / "e.toml"
    path.write_text(base + '[arms.topr]\nalgo = "topr"\ntopr_baseline = -0.25\n')
    exp = load_experiment(path)
    assert exp.settings("topr")["algo"] == "topr"
    assert exp.settings("topr")["topr_baseline"] == -0.25
    path.write_text(base + '[arms.topr]\nalgo = "topr"\ntopr_baseline = 1\n')
    with pytest.raises(SpoError, match=r"topr_baseline.*must be in \[-1, 0\]"):
        load_experiment(path)


def test_a_mixture_without_q0_draws_judged_rows_of_problems_without_estimates(small_lake):  # noqa: F811
    from spo_store.mixture import MixtureSampler

    with pytest.raises(SpoError, match="has a q0 estimate"):  # SPO's mixture: none here
        MixtureSampler(small_lake, "offline:1").check_sources()
    topr = MixtureSampler(small_lake, "offline:1", require_q0=False)
    topr.check_sources()
    batch = topr.sample(3, step=0)
    assert len(batch.traj_ids) == 3 and set(batch.table.column("reward").to_pylist()) == {0.0}
    empty = MixtureSampler(small_lake, "pi0:1", require_q0=False)
    with pytest.raises(SpoError) as err:
        empty.check_sources()
    assert "q0" not in str(err.value)  # the reason given is not one TOPR cannot have


# ----------------------------------------------------------------------------- a real run
def test_train_topr_on_online_and_offline_rows_without_q0_and_resume(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    from spo_train.train.loop import train

    # No q0 in this lake; the offline rows are its human solutions (no behaviour log-probs).
    kw = dict(algo="topr", mix=None, batch_size=4, rollout_n=2, checkpoint_every=1)
    result = train(_config(small_lake, tiny_model, tmp_path, steps=2, **kw))
    summary = result.summary()
    assert summary["algo"] == "topr" and summary["steps"] == 2
    m = summary["metrics"]
    for name in ("train/loss", "train/positive_fraction", "train/grad_norm", "train/kl_estimate"):
        assert math.isfinite(m[name]), name
    # the online rows carry mu (their ratio is measured); the human solutions are successes
    assert math.isfinite(m["train/log_ratio_mean"]) and m["train/negatives_without_mu"] == 0
    batches = small_lake.sql(
        "SELECT b.step, t.source, t.behaviour_logprobs IS NULL AS no_mu FROM batches b, "
        f"unnest(b.traj_ids) AS u(id) JOIN trajectories t ON t.traj_id = u.id "
        f"WHERE b.run_id = '{result.run_id}'"
    )
    assert set(batches["source"]) == {"online", "human"}  # the half-online mixture
    rows = batches.to_dicts()
    assert {r["no_mu"] for r in rows if r["source"] == "human"} == {True}  # no mu: SFT rows
    assert {r["no_mu"] for r in rows if r["source"] == "online"} == {False}
    resumed = train(_config(small_lake, tiny_model, tmp_path, steps=3, resume=True, **kw))
    assert resumed.run_id == result.run_id and resumed.steps_done == 3
    steps = small_lake.sql(
        f"SELECT step, count(*) AS n FROM metrics WHERE run_id = '{result.run_id}' "
        "AND name = 'train/positive_fraction' GROUP BY step ORDER BY step"
    )
    assert steps["step"].to_list() == [0, 1, 2] and set(steps["n"]) == {1}
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'algo = "topr"' in saved and "topr_baseline = -0.5" in saved
