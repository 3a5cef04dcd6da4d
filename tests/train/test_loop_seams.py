"""The seams of the training loop (issue 21): one group identity written and read by one helper
pair, and every algorithm's rules in one torch-free registry that names its module."""

from __future__ import annotations

import importlib
import subprocess
import sys

import duckdb
import pytest

from spo_store.errors import SpoError
from spo_train.algorithm_rules import RULES, rules_of
from spo_train.config import ALGORITHMS, TrainConfig
from spo_train.rollouts.sampling import group_id_sql, grouped_id_sql, grouped_traj_ids


@pytest.mark.parametrize("n", [1, 4, 1000, 1203])
def test_group_ids_round_trip_through_sql(n):
    """The SQL that reads a group back gives the prefix and problem slot the writer used, for
    any number of samples (4-digit sample indexes included), and marks old ungrouped ids."""
    ids = grouped_traj_ids("onl-abc-w1-b000007", 3, n)
    assert len(ids) == len(set(ids)) == 3 * n
    con = duckdb.connect()
    con.execute("CREATE TABLE t (traj_id VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in [*ids, "onl-0123456789abcdef0123"]])
    rows = con.execute(
        f"SELECT {group_id_sql()} AS g, count(*) FROM t WHERE {grouped_id_sql()} "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [(f"onl-abc-w1-b000007-p{j:03d}", n) for j in range(3)]


def test_every_algorithm_has_rules_and_a_module_of_its_name():
    assert ALGORITHMS == tuple(RULES) and ALGORITHMS[0] == "spo"
    for name, rules in RULES.items():
        module, _, cls = rules.implementation.partition(":")
        assert getattr(importlib.import_module(module), cls).name == name == rules.name
    assert [a for a, r in RULES.items() if r.needs_q0] == ["spo"]
    assert [a for a, r in RULES.items() if r.online_only] == ["ppo", "grpo"]
    with pytest.raises(ValueError, match="unknown algorithm 'rloo'"):
        rules_of("rloo")


def test_rules_fill_defaults_and_refuse_per_algorithm(tmp_path):
    out = str(tmp_path / "o")
    grpo = TrainConfig(algo="grpo", output=out).resolved()
    assert (grpo.kl_coef, grpo.mix, grpo.model_update_interval) == (grpo.beta, "online:1", 1)
    ppo = TrainConfig(algo="ppo", output=out, learning_rate=3e-5).resolved()
    assert ppo.value_learning_rate == 3e-5 and ppo.rollout_temperature == (1.0, 1.0)
    assert TrainConfig(output=out).resolved().mix == "online:0.5,offline:0.5"
    with pytest.raises(SpoError, match="--mc-weight 0.5 is an spo loss term; --algo grpo"):
        TrainConfig(algo="grpo", output=out, mc_weight=0.5).validate()
    with pytest.raises(SpoError, match="not a multiple of --rollout-n 4"):
        TrainConfig(algo="ppo", output=out, batch_size=6, rollout_n=4).validate()
    TrainConfig(algo="spo", output=out, batch_size=6, rollout_n=4).validate()  # SPO: any mix
    assert "reward -1.000" in RULES["ppo"].progress({"rollout/reward_mean": -1.0})
    assert "loss 0.2500" in RULES["spo"].progress({"train/loss": 0.25})


def test_settings_and_rules_load_without_torch():
    """The CLI checks settings before torch loads: the rules must not pull it in."""
    code = "import sys, spo_train.config, spo_train.algorithm_rules; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_local_group_batches_are_the_steps_whole_groups_read_from_the_lake(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    """GRPO without workers: each step's batch is the groups that step sampled (keyed rows with
    grouped ids, one problem per group), read back from the lake, reproducible from `batches`."""
    from spo_store.reproduce import reproduce_batch
    from spo_train.train.loop import train
    from tests.train.test_train_q0_and_eval import _config

    cfg = _config(
        small_lake, tiny_model, tmp_path, algo="grpo", mix=None, steps=2, batch_size=4,
        rollout_n=2, minibatches=1,
    )  # fmt: skip
    run = train(cfg).run_id
    rows = {
        r["traj_id"]: r
        for r in small_lake.sql(
            "SELECT traj_id, problem_id, policy_version, worker_id FROM trajectories "
            f"WHERE run_id = '{run}' AND source = 'online' AND reward IS NOT NULL"
        ).to_dicts()
    }
    batches = small_lake.sql(
        f"SELECT step, traj_ids FROM batches WHERE run_id = '{run}' ORDER BY step"
    ).to_dicts()
    assert [b["step"] for b in batches] == [0, 1]
    seen: list[str] = []
    for b in batches:
        groups: dict[str, list[str]] = {}
        for i in b["traj_ids"]:
            groups.setdefault(i.rsplit("-", 1)[0], []).append(i)
        assert len(groups) == 2 and all(len(g) == 2 for g in groups.values())
        for g, members in groups.items():
            assert g.endswith(("-p000", "-p001")) and f"-s{b['step']:06d}-" in g
            assert len({rows[i]["problem_id"] for i in members}) == 1
            assert {rows[i]["policy_version"] for i in members} == {b["step"]}
        again = reproduce_batch(small_lake, run, b["step"], ["traj_id"]).table
        assert again.column("traj_id").to_pylist() == b["traj_ids"]
        seen += b["traj_ids"]
    # every judged rollout of the run was trained on once; local rows name no worker
    assert sorted(seen) == sorted(rows) and {r["worker_id"] for r in rows.values()} == {None}


def test_train_where_keeps_rollouts_and_batches_to_the_matching_problems(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    """`--train-where` (issue 22: train on a chosen hard set without moving problems between
    splits): every rollout and every batch row of the run is of a matching problem."""
    from spo_train.train.loop import train
    from tests.train.test_train_q0_and_eval import _config

    keep = small_lake.sql(
        "SELECT problem_id FROM problems WHERE name IN ('add1', 'add3') ORDER BY 1"
    )["problem_id"].to_list()
    cfg = _config(
        small_lake, tiny_model, tmp_path, algo="grpo", mix=None, steps=2, batch_size=4,
        rollout_n=2, minibatches=1, train_where="p.name IN ('add1', 'add3')",
    )  # fmt: skip
    run = train(cfg).run_id
    drawn = small_lake.sql(
        "SELECT DISTINCT problem_id FROM trajectories "
        f"WHERE run_id = '{run}' AND source = 'online' ORDER BY 1"
    )["problem_id"].to_list()
    assert drawn and set(drawn) <= set(keep)
    batch_ids = small_lake.sql(f"SELECT unnest(traj_ids) AS t FROM batches WHERE run_id = '{run}'")[
        "t"
    ].to_list()
    in_batches = small_lake.sql(
        "SELECT DISTINCT problem_id FROM trajectories WHERE traj_id IN ("
        + ", ".join(f"'{t}'" for t in batch_ids)
        + ")"
    )["problem_id"].to_list()
    assert in_batches and set(in_batches) <= set(keep)


def test_train_where_with_a_subquery_keeps_a_mixture_to_the_matching_problems(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    """A --train-where with a subquery over another lake table (as `spo experiment`'s strata
    write over q0_estimates) works for the mixture algorithms too: the mixture's own index has
    no such table, so the matched problems are pinned by id at the start."""
    from spo_train.train.loop import train
    from tests.train.test_train_q0_and_eval import _config

    keep = small_lake.sql(
        "SELECT problem_id FROM problems WHERE name IN ('add1', 'add3') ORDER BY 1"
    )["problem_id"].to_list()
    where = "p.problem_id IN (SELECT problem_id FROM problems WHERE name IN ('add1', 'add3'))"
    cfg = _config(
        small_lake, tiny_model, tmp_path, algo="sft", mix="offline:1", steps=2, batch_size=4,
        train_where=where,
    )  # fmt: skip
    run = train(cfg).run_id
    batch_ids = small_lake.sql(f"SELECT unnest(traj_ids) AS t FROM batches WHERE run_id = '{run}'")[
        "t"
    ].to_list()
    in_batches = small_lake.sql(
        "SELECT DISTINCT problem_id FROM trajectories WHERE traj_id IN ("
        + ", ".join(f"'{t}'" for t in batch_ids)
        + ")"
    )["problem_id"].to_list()
    assert in_batches and set(in_batches) <= set(keep)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("p.nme = 'x'", "--train-where: not valid SQL over problems"),
        ("p.name = 'no such problem'", "no problem matches --train-where"),
    ],
)
def test_train_where_refuses_bad_sql_and_empty_selections_before_the_run(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
    where,
    message,
):
    from spo_train.train.loop import train
    from tests.train.test_train_q0_and_eval import _config

    cfg = _config(
        small_lake, tiny_model, tmp_path, algo="grpo", mix=None, steps=1, batch_size=4,
        rollout_n=2, minibatches=1, train_where=where,
    )  # fmt: skip
    runs_before = small_lake.sql("SELECT count(*) AS n FROM runs")["n"][0]
    with pytest.raises(SpoError, match=message):
        train(cfg)
    assert small_lake.sql("SELECT count(*) AS n FROM runs")["n"][0] == runs_before
