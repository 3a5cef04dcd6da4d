"""`spo train` trains against the q0 of its own --model and q0 sampler (issue 9, item 8) and
evaluates the policy it starts from and the one it ends with (item 9), on real parts."""

from __future__ import annotations

import subprocess

import pytest

from spo_store.errors import SpoError
from spo_store.q0_estimates import estimate_row, write_estimates
from spo_train.config import TrainConfig
from spo_train.lm.models import model_identity
from spo_train.train.loop import train


def _estimates(lake, model_dir, successes_of, max_new_tokens=8):
    """Estimates of `model_dir` for every train problem, with chosen counts (4 samples)."""
    ids = lake.sql("SELECT problem_id FROM problems WHERE split = 'train'")["problem_id"]
    rows = [
        estimate_row(
            pid,
            model_identity(model_dir),
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            samples=4,
            successes=successes_of,
            beta=0.5,
            run_id="fake-q0",
        )
        for pid in ids
    ]
    write_estimates(lake, rows)


def _config(lake, model_dir, tmp_path, **kw):
    base = dict(
        model=str(model_dir),
        lake=lake.uri,
        output=str(tmp_path / "run"),
        mix="offline:1",
        steps=1,
        batch_size=2,
        max_new_tokens=8,
        eval_problems=0,
        tensorboard=False,
        wandb="off",
        checkpoint_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_uses_only_the_q0_of_its_model_and_sampler(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tiny_model_b,  # noqa: F811
    tmp_path,
):
    # Model A's estimates say every problem always fails (q0 = -1); B has none yet.
    _estimates(small_lake, tiny_model, successes_of=0)
    with pytest.raises(SpoError) as err:
        train(_config(small_lake, tiny_model_b, tmp_path))
    msg = str(err.value)
    assert f"spo estimate-q0 --model {tiny_model_b} --lake {small_lake.uri} --split train" in msg
    assert "--max-new-tokens 8" in msg and "1 other model/sampler" in msg
    # B's estimates under another length bound do not count either...
    _estimates(small_lake, tiny_model_b, successes_of=4, max_new_tokens=16)
    with pytest.raises(SpoError, match="--max-new-tokens 8"):
        train(_config(small_lake, tiny_model_b, tmp_path))
    # ...unless the run names that q0 sampler; then q0 is B's (S0 = 1: q0 = 0), recomputed at
    # the training beta from the counts (the estimate was written at beta 0.5).
    result = train(_config(small_lake, tiny_model_b, tmp_path, q0_max_new_tokens=16))
    assert result.metrics[0]["train/q0_mean"] == 0.0
    # Model A trains against its own q0 = -1 (same lake, same problems).
    result = train(_config(small_lake, tiny_model, tmp_path / "a"))
    assert result.metrics[0]["train/q0_mean"] == -1.0


def test_q0_is_recomputed_at_the_training_beta(small_lake, tiny_model, tmp_path):  # noqa: F811
    import math

    _estimates(small_lake, tiny_model, successes_of=1)  # S0 = 1/4, stored at beta 0.5
    events: list[str] = []
    result = train(_config(small_lake, tiny_model, tmp_path, beta=1.0), on_event=events.append)
    assert result.metrics[0]["train/q0_mean"] == pytest.approx(
        math.log(0.25 + 0.75 * math.exp(-1.0)), abs=1e-6
    )
    assert any("recomputed from their (n, c) for beta 1" in e for e in events)


def test_train_evaluates_start_and_end_with_paper_settings_and_resume_skips_step0(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg = _config(small_lake, tiny_model, tmp_path, eval_problems=1, eval_every=0)
    assert (cfg.eval_n, cfg.eval_temperature, cfg.eval_top_p, cfg.eval_k) == (
        20,
        0.4,
        0.95,
        (1, 10),
    )
    result = train(cfg)
    assert [e["step"] for e in result.evals] == [0, 1]
    run = result.run_id
    rows = small_lake.sql(
        "SELECT policy_version AS v, count(*) AS n, min(temperature) AS t, max(top_p) AS p "
        f"FROM trajectories WHERE source = 'eval' AND run_id = '{run}' GROUP BY 1 ORDER BY 1"
    ).to_dicts()
    assert [(r["v"], r["n"]) for r in rows] == [(0, 20), (1, 20)]
    assert all(r["t"] == pytest.approx(0.4) and r["p"] == pytest.approx(0.95) for r in rows)
    logged = small_lake.sql(
        f"SELECT step, name FROM metrics WHERE run_id = '{run}' AND name LIKE 'eval/%pass@%'"
    ).to_dicts()
    assert sorted((m["step"], m["name"]) for m in logged) == [
        (0, "eval/valid/pass@1"),
        (0, "eval/valid/pass@10"),
        (1, "eval/valid/pass@1"),
        (1, "eval/valid/pass@10"),
    ]
    # Resume to 2 steps: evaluates the new end only, never step 0 again.
    cfg.steps, cfg.resume = 2, True
    resumed = train(cfg)
    assert resumed.run_id == run and [e["step"] for e in resumed.evals] == [2]
    steps = small_lake.sql(
        f"SELECT step, count(*) AS n FROM metrics WHERE run_id = '{run}' "
        "AND name = 'eval/valid/pass@1' GROUP BY 1 ORDER BY 1"
    ).to_dicts()
    assert steps == [{"step": 0, "n": 1}, {"step": 1, "n": 1}, {"step": 2, "n": 1}]


def test_eval_k_above_eval_n_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SpoError, match=r"--eval-k 1,10: pass@k needs 1 <= k <= --eval-n \(5\)"):
        TrainConfig(eval_n=5).validate()
    r = subprocess.run(
        ["spo", "train", "--eval-n", "5", "--lake", str(tmp_path / "lake"), "--output", "o"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--eval-k" in r.stderr and not (tmp_path / "lake").exists()


def test_train_leaves_out_judge_issue_problems_and_says_why(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    pids = small_lake.sql("SELECT problem_id FROM problems WHERE split = 'train' ORDER BY name")
    bad = pids["problem_id"].to_list()[:2]
    small_lake.update_rows(
        "problems",
        "problem_id",
        [{"problem_id": p, "judge_issue": "multiple_answers: any valid answer"} for p in bad],
    )
    events: list[str] = []
    train(_config(small_lake, tiny_model, tmp_path, steps=2, batch_size=8), on_event=events.append)
    assert any(
        "train (train): left out 2 problems the judge cannot handle reliably (2 multiple_answers)"
        in e
        for e in events
    ), events
    run = small_lake.sql("SELECT run_id FROM runs WHERE kind = 'train'")["run_id"][0]
    drawn = small_lake.sql(
        f"SELECT DISTINCT t.problem_id FROM batches b, unnest(b.traj_ids) AS u(id) "
        f"JOIN trajectories t ON t.traj_id = u.id WHERE b.run_id = '{run}'"
    )["problem_id"].to_list()
    assert drawn and not set(drawn) & set(bad)
    # --include-unreliable keeps them in the mixture
    keep = _config(small_lake, tiny_model, tmp_path / "all", steps=3, batch_size=16)
    keep.include_unreliable = True
    result = train(keep)
    drawn = small_lake.sql(
        f"SELECT DISTINCT t.problem_id FROM batches b, unnest(b.traj_ids) AS u(id) "
        f"JOIN trajectories t ON t.traj_id = u.id WHERE b.run_id = '{result.run_id}'"
    )["problem_id"].to_list()
    assert set(drawn) & set(bad)


def test_no_problems_to_evaluate_is_refused_before_a_run_starts(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg = _config(small_lake, tiny_model, tmp_path, eval_problems=5, eval_split="nope")
    with pytest.raises(SpoError, match="no 'nope' problems to evaluate on .* --eval-problems 0"):
        train(cfg)
    assert small_lake.sql("SELECT count(*) AS n FROM runs WHERE kind = 'train'")["n"][0] == 0
