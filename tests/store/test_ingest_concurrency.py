"""Issue 9 item 12: concurrent `spo ingest human-solutions` on one new lake store each key once."""

from __future__ import annotations

import subprocess

from spo_store.adapters import problem_id
from spo_store.ingest import content_hash
from spo_store.lake import Lake
from tests.conftest import write_jsonl


def _problems(lo: int, hi: int) -> list[dict]:
    return [
        {
            "name": f"p{i:03d}",
            "statement": f"Print {i}.",
            "tests": [{"input": "", "output": str(i)}],
            # the same solution twice, an empty one and a distinct wrong one
            "solutions": [f"print({i})", f"print({i})", "   "],
            "incorrect_solutions": [f"print({i + 1})"],
        }
        for i in range(lo, hi)
    ]


def test_concurrent_ingests_store_each_problem_and_solution_once(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _problems(0, 30))
    b = write_jsonl(tmp_path / "b.jsonl", _problems(20, 50))  # overlaps a on 20..29
    lake = tmp_path / "lake"  # new: the processes also race to create it
    procs = [
        subprocess.Popen(
            ["spo", "ingest", "human-solutions", str(path), "--lake", str(lake)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in (a, a, b, b)  # two on the same file, twice
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    lk = Lake.open(lake)
    got = lk.sql(
        "SELECT (SELECT count(*) FROM problems) AS problems, "
        "(SELECT count(DISTINCT problem_id) FROM problems) AS distinct_problems, "
        "(SELECT count(*) FROM trajectories) AS solutions, "
        "(SELECT count(DISTINCT traj_id) FROM trajectories) AS distinct_solutions"
    ).to_dicts()[0]
    assert got == {
        "problems": 50,
        "distinct_problems": 50,
        "solutions": 100,  # per problem: one correct, one wrong (empty and repeat skipped)
        "distinct_solutions": 100,
    }
    pid = problem_id("jsonl", "p007")
    ids = set(lk.sql("SELECT traj_id FROM trajectories")["traj_id"])
    assert "h-" + content_hash(pid, "print(7)")[:24] in ids  # the v1 key, so old rows dedupe
