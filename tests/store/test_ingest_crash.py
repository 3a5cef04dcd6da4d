"""Issue 19 item 8: derived state survives a crash. `ingest --verify` killed (SIGKILL) right
after committing new solutions, before flagging their problem `labels_disagree`: the rerun
finds the solutions stored and still sets the flag, from their stored verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import needs_sandbox, write_jsonl

ADD = {
    "name": "add",
    "statement": "Print a + b.",
    "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}],
    # three labelled correct: one passes, two give wrong answers
    "solutions": [
        "a, b = map(int, input().split())\nprint(a + b)\n",
        "a, b = map(int, input().split())\nprint(a - b)\n",
        "a, b = map(int, input().split())\nprint(b * a)\n",
    ],
}

KILL_AFTER_SOLUTIONS = textwrap.dedent(
    """
    import os, signal, sys
    import spo_store.lake as lake_mod
    original = lake_mod.Lake.insert_new
    def insert_new(self, name, rows):
        out = original(self, name, rows)
        if name == "trajectories" and out[1]:
            os.kill(os.getpid(), signal.SIGKILL)  # between the solutions and the flag
        return out
    lake_mod.Lake.insert_new = insert_new
    from spo_cli.main import main
    main(sys.argv[1:])
    """
)


def sql(lake, q):
    r = subprocess.run(
        ["spo", "sql", q, "--format", "json", "--lake", str(lake)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@needs_sandbox
def test_a_kill_between_solutions_and_flag_loses_no_flag(tmp_path):
    # the problem is in the lake already (ingested before, without solutions): the flag is an
    # update of its row, a commit after the solutions' one
    lake = tmp_path / "lake"
    first = write_jsonl(tmp_path / "problem.jsonl", [{**ADD, "solutions": []}])
    r = subprocess.run(
        ["spo", "ingest", "human-solutions", str(first), "--lake", str(lake)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    path = write_jsonl(tmp_path / "a.jsonl", [ADD])
    args = ["ingest", "human-solutions", str(path), "--lake", str(lake), "--verify"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_SOLUTIONS, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    assert sql(lake, "SELECT count(*) AS n FROM trajectories") == [{"n": 3}]
    assert sql(lake, "SELECT judge_issue FROM problems") == [{"judge_issue": None}]
    rerun = subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "0 new solutions" in rerun.stdout
    issue = sql(lake, "SELECT judge_issue FROM problems")[0]["judge_issue"]
    assert issue == "labels_disagree: 2 of 3 labelled-correct solutions fail (wrong_answer), 1 pass"
    assert "add: labels_disagree" in rerun.stdout
