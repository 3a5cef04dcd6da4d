"""Second new-user trial (issue 9): a kill -9'd run is swept by `spo sql` with an end time,
`spo sql` is read-only, option errors are one line, `spo lake runs --json`, short problem
names, re-ingest reports flags already in the lake - all through `python -m spo_cli.main`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from spo_store.lake import Lake


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args], capture_output=True, text=True, timeout=300
    )


def test_kill_9_run_is_swept_by_spo_sql_with_an_end_time(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    code = (
        "import time; from spo_store.lake import Lake; "
        f"print(Lake.open({str(lake_dir)!r}).start_run('victim'), flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = spo("sql", "SELECT run_id, status, ended_at FROM runs", "--format", "json",
              "--lake", str(lake_dir))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "marked 1 run(s) interrupted" in out.stderr and run_id in out.stderr
    [row] = json.loads(out.stdout)
    assert row["status"] == "interrupted" and row["ended_at"] is not None


def test_spo_sql_is_read_only(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    target = tmp_path / "x.csv"
    out = spo("sql", f"COPY (SELECT * FROM problems) TO '{target}'", "--lake", str(lake_dir))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "read-only" in out.stderr
    assert "COPY" in out.stderr and not target.exists()
    # EXPLAIN ANALYZE runs the statement it explains.
    out = spo("sql", f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'", "--lake", str(lake_dir))
    assert out.returncode == 2 and "read-only" in out.stderr and not target.exists()
    out = spo("sql", "CREATE TABLE t AS SELECT 1", "--lake", str(lake_dir))
    assert out.returncode == 2 and "read-only" in out.stderr
    for ok in ("WITH a AS (SELECT 1 AS x) SELECT x FROM a", "DESCRIBE problems",
               "SUMMARIZE SELECT 1 AS x", "SHOW TABLES"):  # fmt: skip
        out = spo("sql", ok, "--lake", str(lake_dir))
        assert out.returncode == 0, (ok, out.stderr)


def test_option_errors_are_one_line_naming_the_command_help() -> None:
    cases = [
        (["train", "--stpes", "2"], "no such option: --stpes", "spo train --help"),
        (["train", "--steps", "two"], "'--steps'", "spo train --help"),
        (["sql", "SELECT 1", "--format", "xml"], "'xml'", "spo sql --help"),
        (["sql"], "missing argument", "spo sql --help"),
        (["lake", "runs", "--limit"], "requires an argument", "spo lake runs --help"),
    ]
    for argv, what, see in cases:
        out = spo(*argv)
        assert out.returncode == 2, (argv, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, out.stderr)
        assert lines[0].startswith("error: ") and what in lines[0], lines
        assert f"(see {see})" in lines[0] and "Usage:" not in out.stderr
    # --threads belongs to spo itself: the line says where it goes.
    out = spo("eval", "--threads", "1")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "spo --threads N eval" in out.stderr


def test_lake_runs_json_and_80_columns_keep_ids_whole(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    lk = Lake.open(lake_dir)
    run_id = lk.start_run("estimate-q0")
    lk.end_run(run_id)
    out = subprocess.run(
        [sys.executable, "-m", "spo_cli.main", "lake", "runs", "--lake", str(lake_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert out.returncode == 0, out.stderr
    [line] = [ln for ln in out.stdout.splitlines() if "completed" in ln]
    assert run_id in line and len(line.rstrip()) <= 80
    day = run_id.split("-")[2][4:8]  # 20261201T... -> "1201": the date is shown
    assert f"{day[:2]}-{day[2:]}" in line
    out = spo("lake", "runs", "--lake", str(lake_dir), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    [row] = doc["runs"]
    assert row["run_id"] == run_id and row["status"] == "completed"
    assert row["ended"].startswith(row["started"][:10]) and row["kind"] == "estimate-q0"


def _two_problems(lake_dir: Path) -> Lake:
    lk = Lake.open(lake_dir)
    lk.insert_new(
        "problems",
        [
            {"problem_id": "cc-1", "name": "127_C. Hot Bath", "split": "train",
             "source_dataset": "code_contests"},
            {"problem_id": "cc-2", "name": "127_D. Password", "split": "train",
             "source_dataset": "code_contests"},
            {"problem_id": "cc-3", "name": "127_D. Password", "split": "train",
             "source_dataset": "other"},
        ],
    )  # fmt: skip
    return lk


def test_short_problem_names_up_to_the_dot(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    lk = _two_problems(lake_dir)
    assert lk.get_problem("127_C")["problem_id"] == "cc-1"
    out = spo("lake", "set-split", "valid", "--problem", "127_C", "--lake", str(lake_dir))
    assert out.returncode == 0, out.stderr
    assert "moved 1 problem(s)" in out.stdout
    rows = Lake.open(lake_dir).sql_arrow("SELECT problem_id, split FROM problems").to_pylist()
    assert {r["problem_id"]: r["split"] for r in rows} == {
        "cc-1": "valid", "cc-2": "train", "cc-3": "train"
    }  # fmt: skip
    # "127_" is no short name (the prefix must end at the '. '); "127_D" is ambiguous.
    out = spo("lake", "set-split", "valid", "--problem", "127_", "--lake", str(lake_dir))
    assert out.returncode == 2 and "no problem with id or name '127_'" in out.stderr
    out = spo("lake", "set-split", "valid", "--problem", "127_D", "--lake", str(lake_dir))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "matches several problems" in out.stderr and "cc-2" in out.stderr
    assert "cc-3" in out.stderr


def test_reingest_reports_flags_already_in_the_lake(tmp_path: Path, cc_sample: Path) -> None:
    lake_dir = tmp_path / "lake"
    first = spo("ingest", "human-solutions", str(cc_sample), "--lake", str(lake_dir))
    assert first.returncode == 0, first.stderr
    assert "flagged 6 problem(s) with a judge_issue" in first.stdout
    again = spo("ingest", "human-solutions", str(cc_sample), "--split", "valid",
                "--lake", str(lake_dir))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "flagged: none" not in again.stdout
    assert "6 problem(s) have a judge_issue (0 new): 1 interactive, 5 multiple_answers" in (
        again.stdout
    )
    assert "1256_C. Platforms Jumping: multiple_answers" in again.stdout


def test_bad_counts_use_one_wording_and_lower_case_error(tmp_path: Path, cc_sample: Path) -> None:
    lake_dir = tmp_path / "lake"
    out = spo("ingest", "human-solutions", str(cc_sample), "--workers", "-1",
              "--lake", str(lake_dir))  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --workers -1: must be at least 1"
    out = spo("sql", "SELECT 1", "--max-width", "0", "--lake", str(lake_dir))
    assert out.stderr.strip() == "error: --max-width 0: must be at least 1"
    # estimate-q0 on a lake with no train problem: one lower-case line, no "Error:" block.
    assert spo("ingest", "human-solutions", str(cc_sample), "--split", "valid",
               "--lake", str(lake_dir)).returncode == 0  # fmt: skip
    out = spo("estimate-q0", "--split", "train", "--lake", str(lake_dir))
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: --split train: no problem in split 'train'")
