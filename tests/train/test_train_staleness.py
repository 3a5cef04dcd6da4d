"""The online staleness window counts from the rollout policy's version, not the trainer step
(issue 9, item 10d; documented in TrainConfig.staleness)."""

from __future__ import annotations

from spo_train.config import TrainConfig
from spo_train.train.loop import train
from tests.train.test_train_q0_and_eval import _config, _estimates


def test_window_counts_from_the_rollout_version(small_lake, tiny_model, tmp_path):  # noqa: F811
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg: TrainConfig = _config(
        small_lake,
        tiny_model,
        tmp_path,
        mix="online:1",
        steps=3,
        batch_size=4,
        rollout_n=2,
        model_update_interval=2,
        staleness=0,
    )
    result = train(cfg)
    rows = small_lake.sql(
        "SELECT b.step, list_sort(list_distinct(list(t.policy_version))) AS versions "
        "FROM batches b, unnest(b.traj_ids) AS u(id) JOIN trajectories t ON t.traj_id = u.id "
        f"WHERE b.run_id = '{result.run_id}' GROUP BY 1 ORDER BY 1"
    ).to_dicts()
    # Rollout versions: steps 0, 1 -> 0 (weights taken at step 0); step 2 -> 2. With staleness
    # 0, step 1 still trains on version-0 rows: a step-based window (1 - 0 .. 1) would have none.
    assert [(r["step"], r["versions"]) for r in rows] == [(0, [0]), (1, [0]), (2, [2])]
