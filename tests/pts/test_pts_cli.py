"""`spo pts` on the command line: bad input is one line and writes nothing; a run killed with
`kill -9` is finished by running it again, without a duplicate rollout or annotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from tests.conftest import PROBLEMS, needs_sandbox, write_jsonl


def spo(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


@pytest.fixture
def small(tmp_path) -> Lake:
    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", PROBLEMS)])
    return lake


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--samples", "0"], "--samples 0: must be at least 1"),
        (["--threshold", "1.5"], "--threshold 1.5: must be in (0, 1)"),
        (["--threshold", "0"], "--threshold 0.0: must be in (0, 1)"),
        (["--where", "t.no_such_column = 1"], "--where: not valid SQL over trajectories"),
        (["--where", "p.name = 'nothing'"], "matches no trajectory"),
        (["--where", "t.reward = -1"], "but no successful one"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(small, args, words):
    before = {t: small.dataset(t).version for t in ("runs", "trajectories", "annotations")}
    res = spo("pts", "--lake", small.uri, *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    small = Lake.open(small.uri)
    assert {t: small.dataset(t).version for t in before} == before


@needs_sandbox
def test_kill_9_then_rerun_finishes_without_duplicates(small):
    args = ["pts", "--lake", small.uri, "--where", "p.name = 'add1'", "--samples", "2",
            "--max-new-tokens", "8", "--workers", "1", "--chunk-trajectories", "1", "--json"]  # fmt: skip
    cmd = [sys.executable, "-m", "spo_cli.main", "--threads", "1", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    stored = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            stored = (
                Lake.open(small.uri).dataset("trajectories").count_rows(filter="source = 'pts'")
            )
            if stored:
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert stored > 0, "the first round's rollouts were never committed"
    lake = Lake.open(small.uri)
    annotated = lake.dataset("annotations").count_rows()
    assert annotated < 2  # killed mid-way

    res = spo(*args)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["reused"] >= stored and summary["trajectories"] == 2 - annotated
    lake = Lake.open(small.uri)
    a = lake.sql("SELECT annotation_id, positions, rollout_key FROM annotations").to_dicts()
    assert len(a) == len({r["annotation_id"] for r in a}) == 2
    ids = lake.sql("SELECT traj_id FROM trajectories WHERE source = 'pts'")["traj_id"].to_list()
    assert len(ids) == len(set(ids)) == 2 * sum(len(r["positions"]) for r in a)
    runs = lake.sql("SELECT status FROM runs WHERE kind = 'pts' ORDER BY started_at")["status"]
    assert runs.to_list() == ["interrupted", "completed"]  # the dead one swept at the rerun
