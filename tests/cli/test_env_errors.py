"""Issue 19 item 13: every failure a user's environment can cause is one line and a non-zero
exit, never "internal error": a read-only lake, a full disk, a garbage schema version, damaged
data files, an absurd limit. Mapped in one place (`spo_store.errors.environment_error`, used
by the CLI's last handler). The mounts need root (read-only bind mount, a 2 MiB tmpfs)."""

from __future__ import annotations

import os
import subprocess

import lance
import pytest

from tests.conftest import write_jsonl


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=300)


def one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and lines[0].startswith("error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def problem(i: int, statement: str = "echo") -> dict:
    return {
        "name": f"p{i}",
        "statement": statement,
        "tests": [{"input": "1\n", "output": "1\n"}],
        "solutions": [f"print(input())  # {i}"],
    }


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only_lake(tmp_path):
    """A lake of 2 ingests (several fragments: compact has work) seen through a read-only
    bind mount."""
    src = tmp_path / "src"
    for i in range(2):
        path = write_jsonl(tmp_path / f"a{i}.jsonl", [problem(i)])
        assert (
            spo("ingest", "human-solutions", str(path), "--lake", str(src / "lake")).returncode == 0
        )
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or not mount("--bind", str(src), str(ro)):
        pytest.skip("needs root to bind-mount a read-only view")
    try:
        if not mount("-o", "remount,ro,bind", str(ro)):
            pytest.skip("cannot remount read-only")
        yield ro / "lake"
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_read_only_lake(read_only_lake, tmp_path):
    lake = str(read_only_lake)
    more = write_jsonl(tmp_path / "b.jsonl", [problem(9)])
    for args in (
        ["lake", "compact"],
        ["lake", "tag", "t1"],
        ["lake", "migrate"],
        ["ingest", "human-solutions", str(more)],
    ):
        one_line(spo(*args, "--lake", lake), "read-only file system", "--lake")
    new = one_line(spo("ingest", "human-solutions", str(more), "--lake", lake + "2"))
    assert "read-only file system" in new
    # reading still works
    r = spo("sql", "SELECT count(*) AS n FROM problems", "--format", "csv", "--lake", lake)
    assert r.returncode == 0 and r.stdout.split() == ["n", "2"]


@pytest.fixture
def tiny_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)):
        pytest.skip("needs root to mount a 2 MiB tmpfs")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_full_disk(tiny_disk, tmp_path):
    rows = [problem(i, os.urandom(4000).hex()) for i in range(900)]  # ~3.6 MB, incompressible
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    lake = str(tiny_disk / "lake")
    one_line(spo("ingest", "human-solutions", str(path), "--lake", lake), "no space left on device")
    r = spo("sql", "SELECT status FROM runs", "--format", "csv", "--lake", lake)
    assert r.stdout.split() == ["status", "failed"]
    r = spo("sql", "SELECT count(*) AS n FROM problems", "--format", "csv", "--lake", lake)
    assert r.stdout.split() == ["n", "0"]  # nothing half-written is visible


@pytest.fixture
def lake_dir(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [problem(1)])
    lake = tmp_path / "lake"
    assert spo("ingest", "human-solutions", str(path), "--lake", str(lake)).returncode == 0
    return lake


def test_garbage_schema_version(lake_dir):
    ds = lance.dataset(str(lake_dir / "runs.lance"))
    ds.update_schema_metadata({"spo.schema_version": "garbage"}, replace=True)
    for args in (["sql", "SELECT 1"], ["lake", "migrate"], ["lake", "versions"]):
        one_line(spo(*args, "--lake", str(lake_dir)), "'garbage', not a number", "damaged")


def test_truncated_data_files(lake_dir, tmp_path):
    for table in ("problems", "trajectories"):
        (data,) = (lake_dir / f"{table}.lance" / "data").glob("*.lance")
        os.truncate(data, 100)
    prog = tmp_path / "p.py"
    prog.write_text("print(input())\n")
    for args in (
        ["lake", "export", str(tmp_path / "out")],
        ["judge", str(prog), "--problem", "p1"],
        ["sql", "SELECT * FROM trajectories"],
        ["estimate-q0", "--where", "p.name = 'p1'", "--samples", "1"],  # not blamed on --where
    ):
        line = one_line(spo(*args, "--lake", str(lake_dir)), "cannot be read", "spo lake verify")
        assert "--where" not in line, line


def test_damaged_manifests(lake_dir, tmp_path):
    # A table whose committed versions cannot be read is damaged, not missing: before, `sql`
    # said "has no table 'problems'" and `ingest` tried to create it again (an internal error
    # for some damage: "Unknown Lance storage version").
    for manifest in (lake_dir / "problems.lance" / "_versions").glob("*.manifest"):
        os.truncate(manifest, 10)
    prog = tmp_path / "p.py"
    prog.write_text("print(input())\n")
    again = write_jsonl(tmp_path / "b.jsonl", [problem(2)])
    for args in (
        ["sql", "SELECT 1"],
        ["ingest", "human-solutions", str(again)],
        ["judge", str(prog), "--problem", "p1"],
        ["lake", "compact"],
    ):
        r = spo(*args, "--lake", str(lake_dir))
        one_line(r, "table 'problems'", "exists but cannot be opened", "spo lake verify")
        assert r.returncode == 1
    r = spo("lake", "verify", "--lake", str(lake_dir))
    assert r.returncode == 1 and "problems: table: cannot be opened" in r.stdout, r.stdout


def test_absurd_limits(lake_dir, tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("print(input())\n")
    for flag, value in (
        ("--time-limit", "1e300"),
        ("--time-limit", "nan"),
        ("--memory-limit", "0"),
    ):
        r = spo("judge", str(prog), "--problem", "p1", flag, value, "--lake", str(lake_dir))
        one_line(r, flag, "outside")
    r = spo("judge", str(prog), "--problem", "p1", "--time-limit", "0.5", "--lake", str(lake_dir))
    assert r.returncode == 0, r.stderr
