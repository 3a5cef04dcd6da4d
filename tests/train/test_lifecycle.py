"""The life of a run (issue 10, item 9): SIGTERM (what `timeout`, Slurm and Docker send) ends
every command with its run marked `interrupted` and a line saying how to resume; a rerun
resumes; a run killed with kill -9 is found dead and marked `interrupted`; a refusal before
any work leaves no run behind; statuses mean the same in every command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spo_store.lake import RUN_STATUSES, Lake, run_status
from tests.conftest import needs_sandbox

EMBEDDED = sorted(
    (Path(__file__).resolve().parents[2] / "spo_train/embedded/assets/problems").glob("*.parquet")
)


def spo(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=timeout)


def runs(lake_dir: Path, kind: str | None = None) -> list[dict]:
    lk = Lake.open(lake_dir)
    where = f" WHERE kind = '{kind}'" if kind else ""
    return lk.sql_arrow(f"SELECT run_id, kind, status, ended_at FROM runs{where}").to_pylist()


def term_when(
    argv: list[str],
    lake_dir: Path,
    ready,
    limit_s: float = 240,
    delay_s: float = 0.0,
    sig: int = signal.SIGTERM,
) -> tuple[int, str]:
    """Start `spo argv`, send SIGTERM `delay_s` after `ready(lake)` holds (polled); return
    (rc, stderr). The command must stop within 15 s (Docker waits 10, Slurm 30)."""
    proc = subprocess.Popen(["spo", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + limit_s
    try:
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the command never reached the point to stop"
            if (lake_dir / "runs.lance").exists() and ready(Lake.open(lake_dir, create=False)):
                break
            time.sleep(0.3)
        time.sleep(delay_s)
        assert proc.poll() is None, "the command ended before it could be stopped"
        proc.send_signal(sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - sent < 15, f"took {time.monotonic() - sent:.0f} s to stop"
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err.decode()


def test_statuses_have_one_meaning():
    assert RUN_STATUSES == ("running", "completed", "failed", "interrupted")
    assert run_status(None) == "completed"
    assert run_status(KeyboardInterrupt()) == "interrupted"
    assert run_status(ValueError("x")) == "failed"


def test_end_run_failed_during_ctrl_c_records_interrupted(lake):
    """A command's `except BaseException: end_run(run, 'failed')` under Ctrl-C/SIGTERM."""
    run = lake.start_run("eval")
    try:
        raise KeyboardInterrupt
    except BaseException:
        lake.end_run(run, "failed")
    broken = lake.start_run("eval")
    try:
        raise RuntimeError("bug")
    except BaseException:
        lake.end_run(broken, "failed")
    status = dict(
        lake.sql_arrow("SELECT run_id, status FROM runs").to_pylist()[i].values() for i in range(2)
    )
    assert status == {run: "interrupted", broken: "failed"}
    with pytest.raises(Exception, match="not one of"):
        lake.end_run(run, "done")


def test_lake_run_context_marks_each_outcome(lake):
    with lake.run("a") as ok:
        pass
    with pytest.raises(KeyboardInterrupt), lake.run("b") as stopped:
        raise KeyboardInterrupt
    with pytest.raises(ValueError), lake.run("c") as bad:
        raise ValueError
    got = {r["run_id"]: r["status"] for r in lake.sql_arrow("SELECT * FROM runs").to_pylist()}
    assert got == {ok: "completed", stopped: "interrupted", bad: "failed"}


def test_kill_9_run_is_swept_to_interrupted(tmp_path):
    """kill -9 leaves `running`; `spo lake runs` (and any new run) marks it interrupted."""
    lake_dir = tmp_path / "lake"
    Lake.open(lake_dir)
    code = (
        "import sys, time; from spo_store.lake import Lake; "
        f"print(Lake.open({str(lake_dir)!r}).start_run('victim'), flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    # Alive: left running, by `spo lake runs` too.
    out = spo("lake", "runs", "--lake", str(lake_dir))
    assert out.returncode == 0, out.stderr
    assert runs(lake_dir)[0]["status"] == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = spo("lake", "runs", "--lake", str(lake_dir))
    assert out.returncode == 0, out.stderr
    assert "marked 1 run(s) interrupted" in out.stdout and run_id in out.stdout
    [row] = runs(lake_dir)
    assert row["status"] == "interrupted" and row["ended_at"] is not None  # noticed at
    # Listing filters by status; a bad one is one line.
    out = spo("lake", "runs", "--lake", str(lake_dir), "--status", "done")
    assert out.returncode == 2 and "--status 'done' is not one of" in out.stderr


def test_a_new_run_sweeps_dead_ones(tmp_path):
    lake_dir = tmp_path / "lake"
    lake = Lake.open(lake_dir)
    code = (
        f"from spo_store.lake import Lake; Lake.open({str(lake_dir)!r}).start_run('victim'); "
        "import os; os._exit(0)"  # no end_run: like kill -9
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert runs(lake_dir)[0]["status"] == "running"
    lake.start_run("next")
    assert {r["kind"]: r["status"] for r in runs(lake_dir)} == {
        "victim": "interrupted",
        "next": "running",  # this process is alive
    }


@needs_sandbox
def test_sigterm_ingest_marks_interrupted(tmp_path):
    """`--verify` judges every shipped solution (minutes): SIGTERM once the run is recorded."""
    lake_dir = tmp_path / "lake"
    argv = ["ingest", "human-solutions", *map(str, EMBEDDED), "--lake", str(lake_dir), "--verify"]
    # 10 s in, it is judging the first file's thousands of solutions: it must stop in seconds.
    rc, err = term_when(argv, lake_dir, lambda lk: lk.dataset("runs").count_rows() > 0, delay_s=10)
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "run the same command again" in err
    assert "nothing of this run was stored" in err and "Traceback" not in err
    [run] = runs(lake_dir, "ingest")
    assert run["status"] == "interrupted"
    # The line names the run it marked and the command that resumes it.
    assert f"run {run['run_id']} marked interrupted" in err
    assert "spo ingest human-solutions" in err


@needs_sandbox
def test_sigterm_estimate_q0_then_rerun_resumes(tmp_path):
    """The embedded default, tiny settings, one problem per commit: SIGTERM after the first
    estimate is committed -> exit 143, run interrupted; the rerun keeps that estimate and
    goes on with the others."""
    lake_dir = tmp_path / "lake"
    argv = [
        "estimate-q0", "--lake", str(lake_dir), "--samples", "2", "--max-new-tokens", "24",
        "--chunk-problems", "1", "--limit", "40",
    ]  # fmt: skip

    def first_estimate(lk: Lake) -> bool:
        return "q0_estimates" in lk.versions() and lk.dataset("q0_estimates").count_rows() > 0

    rc, err = term_when(argv, lake_dir, first_estimate)
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    [first] = runs(lake_dir, "estimate-q0")
    assert first["status"] == "interrupted" and first["ended_at"] is not None
    lk = Lake.open(lake_dir)
    kept = lk.sql_arrow("SELECT problem_id, run_id FROM q0_estimates").to_pylist()
    assert kept and {r["run_id"] for r in kept} == {first["run_id"]}
    # --limit N is the first N problems by id, done or not (issue 20, item 1): the stopped run
    # estimated the first ones, so --limit len(kept) + 2 adds exactly the next two.
    rerun = spo(*argv[:-2], "--limit", str(len(kept) + 2))
    assert rerun.returncode == 0, rerun.stderr
    after = {
        r["problem_id"]: r["run_id"] for r in lk.sql_arrow("SELECT * FROM q0_estimates").to_pylist()
    }
    # The interrupted run's estimates are kept as they were; the rerun added two new problems.
    assert all(after[r["problem_id"]] == first["run_id"] for r in kept)
    assert len(after) == len(kept) + 2
    first_ids = (
        lk.sql_arrow(
            "SELECT problem_id FROM problems WHERE split = 'train' AND judge_issue IS NULL "
            "ORDER BY problem_id "
            f"LIMIT {len(kept) + 2}"
        )
        .column(0)
        .to_pylist()
    )
    assert sorted(after) == sorted(first_ids)
    statuses = sorted(r["status"] for r in runs(lake_dir, "estimate-q0"))
    assert statuses == ["completed", "interrupted"]


@needs_sandbox
def test_sigterm_eval_marks_interrupted(tmp_path):
    lake_dir = tmp_path / "lake"
    argv = [
        "eval", "--lake", str(lake_dir), "--n", "2", "--k", "1", "--max-new-tokens", "24",
    ]  # fmt: skip
    rc, err = term_when(
        argv,
        lake_dir,
        lambda lk: lk.sql_arrow("SELECT 1 FROM runs WHERE kind = 'eval'").num_rows > 0,
    )
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert [r["status"] for r in runs(lake_dir, "eval")] == ["interrupted"]


def test_refusals_leave_no_running_run(tmp_path):
    """Bad options and empty selections are refused with one line; no run stays `running`
    (estimate-q0 records none at all)."""
    lake_dir = tmp_path / "lake"
    for argv, needle in [
        (["estimate-q0", "--split", "tran"], "'tran' is not a split"),
        (["estimate-q0", "--where", "p.name = 'nope'"], "no problem matches --where"),
        (["eval", "--split", "tran", "--n", "1", "--k", "1"], "'tran' is not a split"),
    ]:
        out = spo(*argv, "--lake", str(lake_dir))
        assert out.returncode == 2, out.stderr
        assert (
            needle in out.stderr
            and "splits present: test (200), train (2000), valid (100)" in out.stderr
        )
        assert "Traceback" not in out.stderr
    assert runs(lake_dir, "estimate-q0") == []
    assert all(r["status"] != "running" for r in runs(lake_dir))


def _tiny_online_train(
    tmp_path: Path, steps: int, checkpoint_every: int
) -> tuple[Path, Path, list[str]]:
    """A lake with q0 of 4 problems (2 samples each) and the argv of a tiny online-only
    `spo train` on it: (lake_dir, output, argv)."""
    lake_dir, out = tmp_path / "lake", tmp_path / "run"
    q0 = spo(
        "estimate-q0", "--lake", str(lake_dir), "--samples", "2", "--max-new-tokens", "16",
        "--limit", "4",
    )  # fmt: skip
    assert q0.returncode == 0, q0.stderr
    argv = [
        "train", "--lake", str(lake_dir), "--output", str(out), "--mix", "online:1",
        "--steps", str(steps), "--batch-size", "2", "--rollout-n", "1", "--max-new-tokens", "16",
        "--eval-problems", "0", "--checkpoint-every", str(checkpoint_every), "--wandb", "off",
    ]  # fmt: skip
    return lake_dir, out, argv


def _stepped(lk: Lake) -> bool:
    """A step after the first was logged (so at least one step is done)."""
    return lk.sql_arrow("SELECT 1 FROM metrics WHERE step >= 1").num_rows > 0


def test_resume_run_marks_the_run_running_again(lake):
    run = lake.start_run("train")
    lake.end_run(run, "interrupted")
    lake.resume_run(run)
    [row] = lake.sql_arrow("SELECT status, ended_at, host FROM runs").to_pylist()
    assert row["status"] == "running" and row["ended_at"] is None
    assert row["host"].endswith(f" pid {os.getpid()}")
    with pytest.raises(Exception, match="no run 'nope'"):
        lake.resume_run("nope")


@needs_sandbox
def test_sigterm_judge_says_terminated(tmp_path):
    """`spo judge` records no run; SIGTERM still ends it with 143 and the one line."""
    prog = tmp_path / "slow.py"
    prog.write_text("import time\nwhile True:\n    time.sleep(0.01)\n")
    tests = tmp_path / "tests.json"
    tests.write_text('[{"input": "1\\n", "output": "1\\n"}]' * 1)
    proc = subprocess.Popen(
        ["spo", "judge", str(prog), "--tests", str(tests), "--time-limit", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "terminated (SIGTERM)" in err.decode() and "Traceback" not in err.decode()


@needs_sandbox
def test_sigterm_train_then_resume(tmp_path):
    """`spo train` (tiny, online only): SIGTERM after its first logged step -> 143, run
    interrupted; `--resume` continues the same run and completes it."""
    lake_dir, out, argv = _tiny_online_train(tmp_path, steps=40, checkpoint_every=1)
    rc, err = term_when(argv, lake_dir, _stepped)
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err
    [first] = runs(lake_dir, "train")
    assert first["status"] == "interrupted"
    # A fast machine may have saved a few steps before the signal landed: resume to one more.
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    again = spo(*[a if a != "40" else str(last + 1) for a in argv], "--resume")
    assert again.returncode == 0, again.stderr
    [after] = runs(lake_dir, "train")
    assert after["run_id"] == first["run_id"] and after["status"] == "completed"


def test_ctrl_c_inside_a_step_finishes_it_and_saves(tmp_path):
    """Ctrl-C (SIGINT) at any moment after a step was logged saves a checkpoint of the steps
    done, never none: a signal inside a step's update, logging or checkpoint is deferred to the
    step's end (`spo_store.stopping.deferred_stop`). Checkpoints are otherwise never due
    (--checkpoint-every 1000), so the one found is the interrupt's."""
    lake_dir, out, argv = _tiny_online_train(tmp_path, steps=60, checkpoint_every=1000)
    rc, err = term_when(argv, lake_dir, _stepped, delay_s=0.7, sig=signal.SIGINT)
    assert rc == 130, err
    saved = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(saved) == 1 and "saved; --resume continues" in err, (saved, err[-1500:])
    [run] = runs(lake_dir, "train")
    assert run["status"] == "interrupted"
    steps = Lake.open(lake_dir).sql_arrow("SELECT max(step) FROM metrics").column(0)[0].as_py()
    assert saved == [f"checkpoint-{steps + 1:06d}"]  # the last logged step is in it


@needs_sandbox
def test_sigterm_demo_marks_interrupted(tmp_path):
    """SIGTERM while the demo estimates q0 (its first minutes): 143, and no run it started is
    left `running`."""
    lake_dir = tmp_path / "lake"
    argv = ["demo", "--lake", str(lake_dir), "--output", str(tmp_path / "demo")]

    def estimating(lk: Lake) -> bool:
        return lk.sql_arrow("SELECT 1 FROM runs WHERE kind = 'estimate-q0'").num_rows > 0

    rc, err = term_when(argv, lake_dir, estimating, delay_s=2)
    assert rc == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    statuses = {r["kind"]: r["status"] for r in runs(lake_dir)}
    assert statuses["estimate-q0"] == "interrupted" and "running" not in statuses.values()
