"""Per-step rollout outcome rates and the sampler's entropy (spo_train.rollouts.tally): what the
stability curves of issue 22 item 3 read."""

from __future__ import annotations

import math
import pickle

import pytest

from spo_train.rollouts.tally import RATE_STATUSES, RolloutTally
from tests.train.test_train_q0_and_eval import _config


def _row(status, reward, lps, finish="stop"):
    return {
        "judge_status": status,
        "reward": reward,
        "behaviour_logprobs": lps,
        "finish_reason": finish,
    }


ROWS = [
    _row("ok", 0.0, [-0.5, -1.5]),
    _row("compile_error", -1.0, [-2.0], finish="length"),
    _row("runtime_error", -1.0, [-1.0, -1.0, -1.0]),
    _row("wrong_answer", -1.0, []),
    _row("sandbox_error", None, [-4.0]),  # not judged: in no rate, in the entropy
]


def test_rates_are_shares_of_judged_rows_and_entropy_is_per_token():
    m = RolloutTally().add_rows(ROWS).metrics()
    assert m["rollout/reward_mean"] == pytest.approx(-3 / 4)
    assert m["rollout/unjudged"] == 1
    assert m["rollout/compile_error_rate"] == pytest.approx(1 / 4)
    assert m["rollout/runtime_error_rate"] == pytest.approx(1 / 4)
    assert m["rollout/wrong_answer_rate"] == pytest.approx(1 / 4)
    assert m["rollout/time_limit_rate"] == 0.0
    assert m["rollout/truncated_rate"] == pytest.approx(1 / 5)
    assert m["rollout/sampler_entropy"] == pytest.approx((0.5 + 1.5 + 2 + 3 + 4) / 7)


def test_worker_tallies_add_up_to_the_tally_of_all_rows():
    parts = [RolloutTally().add_rows(ROWS[:2]), RolloutTally().add_rows(ROWS[2:])]
    total = RolloutTally()
    for p in parts:  # as a Ray worker sends it: a plain dict through pickle
        total.add(pickle.loads(pickle.dumps(p.as_dict())))
    assert total.metrics() == RolloutTally().add_rows(ROWS).metrics()


def test_nothing_judged_is_missing_not_zero():
    m = RolloutTally().add_rows([_row("sandbox_error", None, [])]).metrics()
    assert all(math.isnan(m[f"rollout/{s}_rate"]) for s in RATE_STATUSES)
    assert math.isnan(m["rollout/reward_mean"]) and math.isnan(m["rollout/sampler_entropy"])
    assert m["rollout/truncated_rate"] == 0.0 and m["rollout/unjudged"] == 1


def test_a_step_logs_the_rates_of_the_rows_it_committed(small_lake, tiny_model, tmp_path):
    """A real run (tiny model, real sandbox): the logged rates and entropy are those of the
    online rows this step wrote to the lake."""
    from spo_train.train.loop import train

    config = _config(
        small_lake, tiny_model, tmp_path, algo="sft", mix="online:1", batch_size=4, rollout_n=2,
    )  # fmt: skip
    result = train(config)
    m = result.metrics[0]
    rows = small_lake.sql_arrow(
        "SELECT judge_status, reward, finish_reason, behaviour_logprobs FROM trajectories "
        f"WHERE source = 'online' AND run_id = '{result.run_id}'"
    ).to_pylist()
    assert len(rows) == 4
    judged = [r for r in rows if r["reward"] is not None]
    for status in RATE_STATUSES:
        want = sum(r["judge_status"] == status for r in judged) / len(judged)
        assert m[f"rollout/{status}_rate"] == pytest.approx(want), status
    tokens = [x for r in rows for x in r["behaviour_logprobs"]]
    assert m["rollout/sampler_entropy"] == pytest.approx(-sum(tokens) / len(tokens), rel=1e-5)
    assert m["rollout/sampler_entropy"] > 0
    truncated = sum(r["finish_reason"] == "length" for r in rows) / len(rows)
    assert m["rollout/truncated_rate"] == pytest.approx(truncated)
