"""Issue 10 item 4: the split of ingested problems is reported and can be set or changed."""

from __future__ import annotations

import subprocess

from spo_store.lake import Lake


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=120)


def _splits(lake) -> dict[str, int]:
    rows = Lake.open(lake).sql("SELECT split, count(*) AS n FROM problems GROUP BY 1").to_dicts()
    return {r["split"]: r["n"] for r in rows}


def test_split_is_reported_and_reingest_with_split_moves_problems(tmp_path, cc_sample):
    lake = tmp_path / "lake"
    r = spo("ingest", "human-solutions", str(cc_sample), "--lake", str(lake))
    assert r.returncode == 0, r.stderr
    assert "splits: 20 unspecified" in r.stdout and "spo lake set-split" in r.stdout
    r = spo("ingest", "human-solutions", str(cc_sample), "--lake", str(lake), "--split", "train")
    assert r.returncode == 0, r.stderr
    assert "moved 20 problem(s) already in the lake to the split given" in r.stdout
    assert _splits(lake) == {"train": 20}
    r = spo("ingest", "human-solutions", str(cc_sample), "--lake", str(lake), "--split", "tran")
    assert r.returncode == 2 and "--split 'tran' is not one of train, valid, test" in r.stderr
    assert _splits(lake) == {"train": 20}


def test_set_split_command(tmp_path, cc_sample):
    lake = tmp_path / "lake"
    assert spo("ingest", "human-solutions", str(cc_sample), "--lake", str(lake)).returncode == 0
    r = spo("lake", "set-split", "valid", "--lake", str(lake), "--problem", "a3", "-p", "chefbm")
    assert r.returncode == 0 and "moved 2 problem(s) to split valid" in r.stdout
    r = spo("lake", "set-split", "train", "--lake", str(lake), "--from-split", "unspecified")
    assert r.returncode == 0 and "moved 18 problem(s)" in r.stdout
    assert _splits(lake) == {"train": 18, "valid": 2}
    for args, message in (
        (["tran", "--from-split", "train"], "split 'tran' is not one of train, valid, test"),
        (["test", "--from-split", "tran"], "no problem has split 'tran'; present: train, valid"),
        (["test", "--problem", "nope"], "no problem with id or name 'nope'"),
        (["test"], "name the problems to move"),
    ):
        r = spo("lake", "set-split", *args, "--lake", str(lake))
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert _splits(lake) == {"train": 18, "valid": 2}
