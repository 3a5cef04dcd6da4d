"""Issue 19 item 11: `spo lake verify` finds damage. Real single-bit flips in the real data
files of a lake of real CodeContests rows: every flip that changes a checked value or breaks
decoding is reported; a clean lake verifies clean."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import lance
import pytest

from spo_store.lake import Lake
from spo_store.verify import verify_lake
from tests.conftest import CC_SAMPLE

CHECKED = {
    "trajectories": ["traj_id", "problem_id", "source", "response", "content_hash", "reward"],
    "problems": [
        "problem_id",
        "name",
        "source_dataset",
        "statement",
        "public_tests",
        "private_tests",
        "generated_tests",
        "num_tests",
    ],
}


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory):
    """Real CodeContests problems (statements, tests) and 200 JSONL solutions."""
    if not CC_SAMPLE.exists():
        pytest.skip(f"shared data not found at {CC_SAMPLE}")
    tmp = tmp_path_factory.mktemp("verify")
    lake = tmp / "lake"
    sols = tmp / "sols.jsonl"
    with sols.open("w") as fh:
        for i in range(40):
            row = {
                "name": f"sum{i}",
                "statement": f"Print a + {i} * b.",
                "tests": [{"input": "1 2\n", "output": f"{1 + 2 * i}\n"}],
                "solutions": [
                    f"a, b = map(int, input().split())\nprint(a + {i} * b + {k} - {k})\n"
                    for k in range(5)
                ],
            }
            fh.write(json.dumps(row) + "\n")
    for path in (CC_SAMPLE, sols):
        r = spo("ingest", "human-solutions", str(path), "--lake", str(lake))
        assert r.returncode == 0, r.stderr
    return lake


def read(lake: Path, table: str):
    return lance.dataset(str(lake / f"{table}.lance")).to_table(columns=CHECKED[table]).to_pylist()


def test_clean_lake_verifies_clean(lake_dir):
    r = spo("lake", "verify", "--lake", str(lake_dir), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["damage"] == [] and out["rows"]["trajectories"] == 200


@pytest.mark.parametrize("table", ["trajectories", "problems"])
def test_bit_flips_are_found(lake_dir, table):
    # the largest data file (problems: the CodeContests rows)
    data = max(
        (lake_dir / f"{table}.lance" / "data").glob("*.lance"), key=lambda p: p.stat().st_size
    )
    original = data.read_bytes()
    before = read(lake_dir, table)
    rng = random.Random(19)
    changed = found = silent = 0
    try:
        for _ in range(30):
            pos = rng.randrange(len(original))
            flipped = bytearray(original)
            flipped[pos] ^= 1 << rng.randrange(8)
            data.write_bytes(bytes(flipped))
            try:
                differs = read(lake_dir, table) != before
            except Exception:  # noqa: BLE001 - Lance's decode failed: damage, and visible
                differs = True
            report = verify_lake(Lake(str(lake_dir)), [table])
            changed += differs
            found += differs and not report.ok
            silent += differs and report.ok
    finally:
        data.write_bytes(original)
    print(f"{table}: {changed} of 30 flips changed rows, {found} found, {silent} silent")
    assert changed >= 5, changed  # the flips did hit rows
    assert silent == 0, f"{silent} of {changed} flips changed rows unnoticed"
    assert verify_lake(Lake(str(lake_dir)), [table]).ok


def test_cli_reports_a_changed_solution(lake_dir, tmp_path):
    """The issue's example: a stored solution's `+` became `*` (one bit: 0x2b -> 0x2a)."""
    lake = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(lake_dir), str(lake)], check=True)
    (data,) = (lake / "trajectories.lance" / "data").glob("*.lance")
    raw = bytearray(data.read_bytes())
    at = raw.find(b" + ")
    assert at > 0
    raw[at + 1] ^= 0x01  # '+' -> '*'
    data.write_bytes(bytes(raw))
    r = spo("lake", "verify", "--lake", str(lake))
    assert r.returncode == 1
    assert "content_hash is not the hash of problem_id and response" in r.stdout
    assert "damage found" in r.stderr and "When the lake is damaged" in r.stderr
