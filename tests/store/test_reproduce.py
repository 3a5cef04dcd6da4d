"""A logged batch reproduces after `spo lake compact` and `spo lake cleanup` (issue 9, item 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from spo_store.lake import Lake, utc_now
from spo_store.reproduce import reproduce_batch
from tests import helpers_lake as h


def spo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


def test_batch_reproduces_after_compact_and_cleanup_through_the_cli(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    lake = Lake.open(uri)
    for i in range(6):  # several appends: several fragments and versions
        lake.append("trajectories", h.batch_rows(f"c{i}", 20))
    version = lake.dataset("trajectories").version
    ids = [f"c{i}-{j:04d}" for i, j in [(0, 3), (5, 19), (2, 7), (0, 3), (4, 0)]]
    lake.append(
        "batches",
        [
            {
                "run_id": "train-x",
                "step": 0,
                "trajectories_version": version,
                "traj_ids": ids,
                "sources": ["offline"] * len(ids),
                "seed": 0,
                "created_at": utc_now(),
            }
        ],
    )
    lake.append("trajectories", h.batch_rows("later", 20))  # the lake moves on
    first = reproduce_batch(lake, "train-x", 0)
    assert first.exact_version and first.table.column("traj_id").to_pylist() == ids

    assert spo("lake", "compact", "--lake", uri).returncode == 0
    out = spo("lake", "cleanup", "--lake", uri, "--older-than-hours", "0")
    assert out.returncode == 0, out.stderr
    out = spo("lake", "batch", "train-x", "--step", "0", "--lake", uri, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["logged_version"] == version and got["read_version"] != version
    assert [r["traj_id"] for r in got["rows"]] == ids
    for r in got["rows"]:
        want = h.traj_row(r["traj_id"])
        assert (r["reward"], r["content_hash"]) == (want["reward"], want["content_hash"])
    # the heavy columns come back whole too
    again = reproduce_batch(Lake.open(uri), "train-x", 0)
    assert all(h.row_is_whole(r) for r in again.table.to_pylist())


def test_batch_cli_errors_are_one_line(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    Lake.open(uri)
    out = spo("lake", "batch", "nope", "--step", "0", "--lake", uri)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "logged no batch" in out.stderr
