"""Re-ingest adds nothing across the v1 -> v2 upgrade: keys are what schema v1 wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from spo_store.migrate import migrate_lake

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_reingest_after_migration_adds_nothing(tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(FIXTURES / "lake_v1", root)
    migrate_lake(root)
    lake = Lake.open(root)
    before = lake.sql(
        "SELECT (SELECT count(*) FROM problems) AS p, (SELECT count(*) FROM trajectories) AS t"
    ).to_dicts()[0]
    small = ingest_human_solutions(lake, [FIXTURES / "lake_v1_small.jsonl"])
    cc = ingest_human_solutions(lake, [FIXTURES / "lake_v1_cc_train.parquet"], split="train")
    assert (small.problems_added, small.solutions_added) == (0, 0)
    assert small.skipped == {"already in the lake": small.solutions_seen} and small.solutions_seen
    assert (cc.problems_added, cc.solutions_added, cc.split_changed) == (0, 0, 0)
    after = lake.sql(
        "SELECT (SELECT count(*) FROM problems) AS p, (SELECT count(*) FROM trajectories) AS t"
    ).to_dicts()[0]
    assert after == before
    # The migrated rows went through annotate_problem: the statement's tolerance, the flag.
    rows = {r["name"]: r for r in lake.sql("SELECT * FROM problems").to_dicts()}
    assert rows["1045_D. Interstellar battle"]["float_tolerance"] == 1e-4
    assert rows["1256_C. Platforms Jumping"]["judge_issue"].startswith("multiple_answers")
