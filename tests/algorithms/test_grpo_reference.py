"""GRPO with reference solutions in its groups (`--grpo-reference-per-group`, issue 22 item 2):
the group advantages and loss of a reference row by hand, the batch source that adds a problem's
correct offline solution (and leaves a problem without one as is), its batch log and
reproduction, the rules' refusals, and a real `spo train --algo grpo` run that logs the metrics
and resumes."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from spo_store.errors import SpoError
from spo_store.ingest import ingest_human_solutions
from spo_train.algorithms.grpo import GRPO, grpo_token_loss
from spo_train.config import TrainConfig
from tests.conftest import write_jsonl
from tests.train.test_train_q0_and_eval import _config

# A train problem with a wrong solution only: no correct offline solution to add.
UNSOLVED = {
    "name": "unsolved",
    "statement": "Read an integer n and print n * 7.",
    "split": "train",
    "tests": [{"input": f"{i}\n", "output": f"{7 * i}\n"} for i in range(3)],
    "solutions": [],
    "incorrect_solutions": ["print(int(input()))"],
}


def _add_unsolved(lake, tmp_path) -> str:
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "unsolved.jsonl", [UNSOLVED])])
    return lake.sql(
        "SELECT problem_id FROM trajectories WHERE source = 'human' AND reward = -1 "
        "AND problem_id NOT IN (SELECT problem_id FROM trajectories WHERE reward = 0)"
    )["problem_id"][0]


# ----------------------------------------------------------------------------- by hand
def test_a_group_of_failures_gives_the_reference_the_advantage_by_hand():
    # G = 4 failures and one reference success: mean -4/5, unbiased std 1/sqrt(5), so
    # A_ref = (4/5) sqrt(5) = 4/sqrt(5), A_fail = -(1/5) sqrt(5) = -1/sqrt(5).
    reward = torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0, -1.0, -1.0])
    group = torch.tensor([0, 0, 0, 0, 0, 1, 1])  # group 1: two failures, no reference
    adv, flat = GRPO.advantages(reward, group, scale=True)
    want = [-1 / math.sqrt(5)] * 4 + [4 / math.sqrt(5), 0.0, 0.0]
    assert adv.tolist() == pytest.approx(want, abs=1e-5)
    assert flat == 1  # the group without a reference has no signal, as before
    # without the reference the same group has none either
    assert GRPO.advantages(reward[:4], group[:4], scale=True)[1] == 1


def test_a_reference_row_has_ratio_one_no_clip_and_the_plain_gradient():
    # Rows: a sample whose pi_old is far below pi_theta (ratio e^2: clipped, no gradient for a
    # positive advantage) and a reference row with the same (meaningless) pi_old: unclipped.
    lp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    old = lp.detach() - 2.0
    adv = torch.tensor([1.0, 1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, diag = grpo_token_loss(
        lp, old, lp.detach(), adv, mask, clip_eps=0.2, kl_coef=0.0,
        on_policy_rows=torch.tensor([False, True]),
    )  # fmt: skip
    # sample: -min(e^2, 1.2) = -1.2 per token; reference: -1 per token; mean of the 2 sequences
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2)
    loss.backward()
    # d/dlp of -A * exp(lp - sg(lp)) / (2 rows * 2 tokens) = -1/4 on the reference row only
    assert lp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, -0.25, -0.25])
    assert diag["clip_frac"].item() == 1.0  # over the sampled row only
    assert diag["approx_kl"].item() == pytest.approx(0.5 * 4)


# ----------------------------------------------------------------------------- rules
def test_the_rules_refuse_it_for_other_algorithms_and_negative_values(tmp_path):
    base = dict(output=str(tmp_path / "o"), batch_size=4, rollout_n=2)
    for algo in ("spo", "ppo", "topr", "sft"):
        with pytest.raises(SpoError, match=f"--grpo-reference-per-group 1 .*--algo {algo}"):
            TrainConfig(algo=algo, grpo_reference_per_group=1, **base).validate()
    TrainConfig(algo="grpo", grpo_reference_per_group=1, **base).validate()
    with pytest.raises(SpoError, match="grpo_reference_per_group|grpo-reference-per-group"):
        TrainConfig(algo="grpo", grpo_reference_per_group=-1, **base).validate()
    r = subprocess.run(
        ["spo", "train", "--algo", "ppo", "--grpo-reference-per-group", "1",
         "--output", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "--algo ppo" in lines[0], r.stderr
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------------- batch source
def _online_groups(lake, run_id: str, problem_ids: list[str]) -> list[list[str]]:
    """Two failed 'online' rollouts of this run per problem, copies of real lake rows with
    grouped ids (as `spo_train.rollouts.sampling.grouped_traj_ids` writes them)."""
    base = lake.dataset("trajectories").to_table().to_pylist()
    rows, groups = [], []
    for j, pid in enumerate(problem_ids):
        src = next(r for r in base if r["problem_id"] == pid)
        ids = [f"{run_id}-s000000-p{j:03d}-{k:03d}" for k in range(2)]
        groups.append(ids)
        for i in ids:
            rows.append(
                {**src, "traj_id": i, "source": "online", "run_id": run_id,
                 "policy_version": 0, "reward": -1.0}
            )  # fmt: skip
    lake.append("trajectories", rows)
    return groups


def test_group_batches_add_a_reference_log_it_and_reproduce(small_lake, tmp_path):  # noqa: F811
    from spo_store.reproduce import reproduce_batch
    from spo_train.train.batch_sources import GroupBatches
    from spo_train.train.loop import batch_row

    unsolved = _add_unsolved(small_lake, tmp_path)
    solved = small_lake.sql(
        "SELECT min(problem_id) AS p FROM trajectories WHERE source = 'human' AND reward = 0"
    )["p"][0]
    groups = _online_groups(small_lake, "run-ref", [solved, unsolved])
    config = TrainConfig(
        algo="grpo", batch_size=4, rollout_n=2, grpo_reference_per_group=1, seed=3,
        output=str(tmp_path / "o"),
    )  # fmt: skip
    source = GroupBatches(small_lake, config)
    source.bind("run-ref")
    batch = source.draw(0, 0)
    # the newest group first; both hold their rollouts, only the solved one a reference
    by_group: dict[int, list[int]] = {}
    for k, g in enumerate(batch.groups):
        by_group.setdefault(g, []).append(k)
    rows = batch.table.to_pylist()
    refs = [k for k, s in enumerate(batch.sources) if s == "offline"]
    assert len(refs) == 1 and len(batch.traj_ids) == 5
    ref = rows[refs[0]]
    assert ref["problem_id"] == solved and ref["reward"] == 0 and ref["source"] == "human"
    assert ref["traj_id"] not in {i for g in groups for i in g}
    ref_group = batch.groups[refs[0]]
    assert {rows[k]["problem_id"] for k in by_group[ref_group]} == {solved}
    assert len(by_group[ref_group]) == 3  # 2 rollouts + the reference
    other = next(g for g in by_group if g != ref_group)
    assert [batch.traj_ids[k] for k in by_group[other]] == groups[1]  # as is
    assert batch.traj_ids == [r["traj_id"] for r in rows]
    # the same (seed, step) draws the same rows; logged, the batch reproduces
    again = GroupBatches(small_lake, config)
    again.bind("run-ref")
    assert again.draw(0, 0).traj_ids == batch.traj_ids
    small_lake.append("batches", [batch_row("run-ref", 0, batch, config.seed)])
    back = reproduce_batch(small_lake, "run-ref", 0, ["traj_id"]).table
    assert back.column("traj_id").to_pylist() == batch.traj_ids
    logged = small_lake.sql("SELECT sources FROM batches WHERE run_id = 'run-ref'")
    assert list(logged["sources"][0]) == batch.sources
    # the reference rows of a logged batch do not make its groups fresh again
    assert source.fresh_groups(0) == []
    # off (0): the group source is what it was
    plain = GroupBatches(small_lake, TrainConfig(algo="grpo", batch_size=4, rollout_n=2))
    plain.bind("run-plain")
    _online_groups(small_lake, "run-plain", [solved, unsolved])
    assert set(plain.draw(0, 0).sources) == {"online"}


# ----------------------------------------------------------------------------- a real run
def test_train_grpo_with_references_logs_the_metrics_and_resumes(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    from spo_train.train.loop import train

    unsolved = _add_unsolved(small_lake, tmp_path)
    kw = dict(
        algo="grpo", mix=None, batch_size=4, rollout_n=2, minibatches=1, checkpoint_every=1,
        grpo_reference_per_group=1,
    )  # fmt: skip
    result = train(_config(small_lake, tiny_model, tmp_path, steps=2, **kw))
    # resumed by the command line, as a user would
    r = subprocess.run(
        ["spo", "train", "--algo", "grpo", "--model", str(tiny_model), "--lake", small_lake.uri,
         "--output", str(tmp_path / "run"), "--steps", "3", "--batch-size", "4", "--rollout-n",
         "2", "--minibatches", "1", "--max-new-tokens", "8", "--eval-problems", "0",
         "--no-tensorboard", "--wandb", "off", "--grpo-reference-per-group", "1", "--resume",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    assert resumed["run_id"] == result.run_id and resumed["steps"] == 3
    assert "train/groups_without_reference" in resumed["metrics"]
    run = result.run_id
    metrics = small_lake.sql(
        f"SELECT step, name, value FROM metrics WHERE run_id = '{run}' AND name IN "
        "('train/reference_rows', 'train/groups_without_reference') ORDER BY step, name"
    ).to_dicts()
    got = {(m["step"], m["name"]): m["value"] for m in metrics}
    assert sorted({s for s, _ in got}) == [0, 1, 2]
    # each step's batch log: 2 groups; a reference row for each group whose problem has one
    rows = small_lake.sql(
        "SELECT u.step, u.id, t.problem_id, t.source, t.reward, u.label FROM (SELECT step, "
        "unnest(traj_ids) AS id, unnest(sources) AS label FROM batches "
        f"WHERE run_id = '{run}') u JOIN trajectories t ON t.traj_id = u.id"
    ).to_dicts()
    seen = 0
    for step in range(3):
        these = [r for r in rows if r["step"] == step]
        online = [r for r in these if r["label"] == "online"]
        refs = [r for r in these if r["label"] == "offline"]
        assert len(online) == 4 and all(r["source"] == "online" for r in online)
        assert all(r["source"] == "human" and r["reward"] == 0 for r in refs)
        problems = {r["problem_id"] for r in online}
        assert {r["problem_id"] for r in refs} == problems - {unsolved}
        assert got[(step, "train/reference_rows")] == len(refs)
        assert got[(step, "train/groups_without_reference")] == len(problems & {unsolved})
        seen += len(refs)
    assert seen > 0  # the run trained on reference rows
    assert all(math.isfinite(v) for v in got.values())


def test_pi_old_of_a_row_without_sampler_logprobs_is_the_policy_now(tiny_model, tmp_path):  # noqa: F811
    """A batch mixing sampled rows and a reference row: the sampled rows keep their stored
    pi_old and mu, the reference row (NaN: none stored) gets the policy's own log-probs and
    weight 1."""
    from spo_train.algorithms import TrainBatch, old_logprobs_and_weights
    from spo_train.lm.models import load_model_and_tokenizer
    from spo_train.train.learner import PolicyLearner

    model, tok = load_model_and_tokenizer(tiny_model)
    config = TrainConfig(algo="grpo", output=str(tmp_path / "o"))
    learner = PolicyLearner(model, config, tok.pad_token_id)
    nan = float("nan")
    stored = torch.tensor([[-1.0, -2.0], [nan, nan]])
    mu = torch.tensor([[-1.5, -2.0], [nan, nan]])
    batch = TrainBatch(
        traj_ids=["a", "b"], problem_ids=["p", "p"], sources=["online", "offline"],
        prompt_ids=[[5, 6], [5, 6]], response_ids=[[7, 8], [9, 10]],
        ref_logprobs=torch.zeros(2, 2), mask=torch.ones(2, 2, dtype=torch.bool),
        reward=torch.tensor([-1.0, 0.0]), q0=torch.full((2,), nan), group=torch.tensor([0, 0]),
        model_logprobs=stored, behaviour_logprobs=mu,
    )  # fmt: skip
    old, weights = old_logprobs_and_weights(batch, learner, cap=2.0)
    now = learner.policy_logprobs(batch).detach()
    assert old[0].tolist() == [-1.0, -2.0]
    assert torch.allclose(old[1], now[1]) and not old.isnan().any()
    assert weights[0].tolist() == pytest.approx([math.exp(0.5), 1.0])
    assert weights[1].tolist() == [1.0, 1.0]
