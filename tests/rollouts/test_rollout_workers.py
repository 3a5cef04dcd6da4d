"""Rollout workers as Ray actors (issue 13): `spo train --rollout-workers N`, `spo rollout`,
weight sync, reading online data only through the lake, and faults (kill -9 of a worker, of
the trainer, SIGTERM), on real parts: a tiny Llama on disk, a real lake, the real sandbox, a
real local Ray.

In-process tests share one local Ray per module (`ray_local`); the subprocess tests start the
command's own Ray, as a user's command does, and check that none of its processes survive.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from spo_store.lake import Lake
from spo_store.reproduce import reproduce_batch
from spo_train.train.loop import train
from tests.conftest import needs_sandbox
from tests.train.test_train_q0_and_eval import _config, _estimates

pytestmark = [needs_sandbox, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _worker_pids() -> list[int]:
    """Our Ray's RolloutWorker actor processes (descendants of this test process)."""
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::RolloutWorker"):
            pids.append(pid)
    return sorted(pids)


def _marked(mark: str) -> list[str]:
    """Processes (name) still carrying the test's environment marker."""
    needle = f"SPO_TEST_MARK={mark}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                out.append(f"{entry.name} {(entry / 'comm').read_text().strip()}")
        except OSError:
            continue
    return out


def _assert_no_leftovers(mark: str, wait_s: float = 20.0) -> None:
    deadline = time.time() + wait_s
    while time.time() < deadline and _marked(mark):
        time.sleep(0.2)
    assert _marked(mark) == [], "processes outlived the command"


def _worker_rows(lake: Lake, run_id: str):
    return lake.sql(
        "SELECT traj_id, worker_id, source, policy_version, reward, ref_model_id, "
        f"temperature, top_p FROM trajectories WHERE run_id LIKE '{run_id}' "
        "AND worker_id IS NOT NULL"
    ).to_dicts()


def _seqs(rows) -> dict[str, list[int]]:
    by_worker: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        # '<prefix>-<hex>-w<worker>-b<seq>-...': the hex may itself start with "b"
        by_worker[r["worker_id"]].add(int(re.search(r"-w\d+-b(\d+)-", r["traj_id"])[1]))
    return {w: sorted(s) for w, s in by_worker.items()}


def _check_weight_versions(lake: Lake, run: str, output: Path, pi0: Path) -> None:
    """A row's policy_version names the weights that drew it: its stored model log-probs are
    those of the trainer's checkpoint of that step (version 0: pi_0), and not pi_0's."""
    import torch

    from spo_train.lm.logprobs import response_logprobs
    from spo_train.lm.models import load_model_and_tokenizer

    drawn = lake.sql(
        "SELECT policy_version, prompt_ids, response_ids, model_logprobs FROM trajectories "
        f"WHERE run_id = '{run}' AND worker_id IS NOT NULL AND num_response_tokens > 0"
    ).to_dicts()
    versions = sorted({r["policy_version"] for r in drawn})
    assert max(versions) >= 2, versions  # the workers took published weights

    def matches(path: Path, rows: list[dict]) -> list[bool]:
        model, tok = load_model_and_tokenizer(path)
        lp, mask = response_logprobs(
            model,
            [r["prompt_ids"] for r in rows],
            [r["response_ids"] for r in rows],
            pad_token_id=tok.pad_token_id,
            requires_grad=False,
        )
        stored = [torch.tensor(r["model_logprobs"]) for r in rows]
        return [torch.allclose(lp[i][mask[i]], x, atol=2e-3) for i, x in enumerate(stored)]

    for v in versions:
        rows = [r for r in drawn if r["policy_version"] == v][:4]
        path = pi0 if v == 0 else output / f"checkpoint-{v:06d}"
        assert all(matches(path, rows)), v
        if v > 0:  # and not pi_0's: the check tells the weights apart
            assert not any(matches(pi0, rows)), v


def test_spo_with_two_workers_reads_online_only_through_the_lake(
    ray_local,
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg = _config(
        small_lake,
        tiny_model,
        tmp_path,
        mix="online:0.5,offline:0.5",
        steps=4,
        batch_size=4,
        rollout_n=2,
        model_update_interval=2,
        staleness=2,
        rollout_workers=2,
        rollout_worker_decoding="current:0.2-0.6:0.9;reference:1:1",
    )

    def both_committed(step: int, _m: dict) -> None:
        # hold the trainer at step 0 until both workers committed a batch (one may start later)
        deadline = time.time() + 120
        while step == 0 and time.time() < deadline:
            got = small_lake.sql(
                "SELECT count(DISTINCT worker_id) AS n FROM trajectories WHERE worker_id IS NOT NULL"
            )["n"][0]
            if got == 2:
                break
            time.sleep(0.2)

    result = train(cfg, on_step=both_committed)
    run = result.run_id
    rows = _worker_rows(small_lake, run)
    by_worker = defaultdict(list)
    for r in rows:
        by_worker[r["worker_id"]].append(r)
    assert set(by_worker) == {f"{run}/w0", f"{run}/w1"}
    current, reference = by_worker[f"{run}/w0"], by_worker[f"{run}/w1"]
    # Worker 0 samples the current policy with its own sampler; worker 1 pi_0 at T=1, top-p 1.
    assert {r["source"] for r in current} == {"online"}
    assert all(0.2 <= r["temperature"] <= 0.6 and abs(r["top_p"] - 0.9) < 1e-6 for r in current)
    assert {r["source"] for r in reference} == {"pi0"}
    assert all(r["policy_version"] == 0 and r["ref_model_id"] for r in reference)
    assert all(r["temperature"] == 1.0 and r["top_p"] == 1.0 for r in reference)
    # Batches: online rows come from the workers' commits, within the staleness bound of the
    # version the trainer had published (0 at steps 0-1, 2 at steps 2-3), and every batch is
    # reproducible from its (lake version, ids).
    versions = {r["traj_id"]: r["policy_version"] for r in current}
    batches = small_lake.sql(
        f"SELECT step, trajectories_version, traj_ids, sources FROM batches "
        f"WHERE run_id = '{run}' ORDER BY step"
    ).to_dicts()
    assert [b["step"] for b in batches] == [0, 1, 2, 3]
    for b in batches:
        published = 2 * (b["step"] // 2)
        online = [t for t, s in zip(b["traj_ids"], b["sources"], strict=True) if s == "online"]
        assert online and all(t in versions for t in online)
        assert all(published - 2 <= versions[t] <= published for t in online)
        again = reproduce_batch(small_lake, run, b["step"], ["traj_id"]).table
        assert again.column("traj_id").to_pylist() == b["traj_ids"]
    # One commit per batch, numbered without gaps; no trajectory twice.
    assert all(s == list(range(len(s))) for s in _seqs(rows).values())
    n = small_lake.sql("SELECT count(*) AS n, count(DISTINCT traj_id) AS d FROM trajectories")
    assert n["n"][0] == n["d"][0]
    metrics = result.metrics[-1]
    assert "rollout/idle_s" in metrics and metrics["rollout/worker_restarts"] == 0
    # a step with no rows committed since the last one logs no rate (NaN): look at every step
    tallied = [m for m in result.metrics if "rollout/sampler_entropy" in m]
    assert tallied and all("rollout/compile_error_rate" in m for m in tallied)


def test_grpo_with_workers_trains_whole_groups_once(
    ray_local,
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    cfg = _config(
        small_lake,
        tiny_model,
        tmp_path,
        algo="grpo",
        mix=None,
        steps=4,
        batch_size=4,
        rollout_n=2,
        minibatches=1,
        staleness=1,
        rollout_workers=2,
        weight_sync="checkpoint",
    )
    result = train(cfg)
    run = result.run_id
    rows = {r["traj_id"]: r for r in _worker_rows(small_lake, run)}
    batches = small_lake.sql(
        f"SELECT step, traj_ids FROM batches WHERE run_id = '{run}' ORDER BY step"
    ).to_dicts()
    seen: list[str] = []
    for b in batches:
        ids = b["traj_ids"]
        assert all(i in rows for i in ids)  # this run's worker rows, read from the lake
        groups = defaultdict(list)
        for i in ids:
            groups[i.rsplit("-", 1)[0]].append(i)
        assert len(groups) == 2  # batch_size / rollout_n whole groups
        for members in groups.values():  # a group: one problem, one policy version
            assert len({rows[i]["policy_version"] for i in members}) == 1
            assert all(b["step"] - 1 <= rows[i]["policy_version"] <= b["step"] for i in members)
        seen += ids
    assert len(seen) == len(set(seen)), "a rollout was trained on twice"
    assert (Path(cfg.output) / "weights").is_dir()  # weights went through files
    for b in batches:  # read through the lake: reproducible from (lake version, ids)
        again = reproduce_batch(small_lake, run, b["step"], ["traj_id"]).table
        assert again.column("traj_id").to_pylist() == b["traj_ids"]


def test_worker_kill9_loses_at_most_its_batch_and_the_run_continues(
    ray_local,
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from spo_train.rollouts.workers import WorkerPool

    _estimates(small_lake, tiny_model, successes_of=1)
    killed: list[int] = []
    # The run's own pool, to ask its actors their pids: a scan of /proc for Ray's process
    # titles may also meet an earlier test's actor on its way out (ray.kill is asynchronous).
    pools: list[WorkerPool] = []
    pool_init = WorkerPool.__init__

    def remember(self, *args, **kwargs):
        pool_init(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(WorkerPool, "__init__", remember)

    def batches_per_worker() -> dict[str, int]:
        return {w: len(s) for w, s in _seqs(_worker_rows(small_lake, "%")).items()}

    def hold_until(cond) -> None:  # the test holds the trainer, the workers run on
        deadline = time.time() + 120
        while time.time() < deadline and not cond():
            time.sleep(0.2)

    def on_step(step: int, _m: dict) -> None:
        if step == 1 and not killed:
            hold_until(lambda: len(batches_per_worker()) == 2)  # both committed once
            pids = ray_local.get([a.pid.remote() for a in pools[0].actors], timeout=60)
            assert len(set(pids)) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        elif step == 4:
            # Ray tells the pool of the death ~2 s after the kill: on a fast machine the run
            # could finish before it (CI: 0 restarts). Hold until the pool counted it, then
            # until both workers (one in its new life) committed again.
            hold_until(lambda: sum(pools[0].restarts) >= 1)
            at_restart = batches_per_worker()
            hold_until(lambda: all(batches_per_worker()[w] > n for w, n in at_restart.items()))

    cfg = _config(
        small_lake,
        tiny_model,
        tmp_path,
        mix="online:1",
        steps=8,
        batch_size=4,
        rollout_n=2,
        model_update_interval=2,
        staleness=20,
        rollout_workers=2,
        learning_rate=1e-2,  # weights move visibly per step: versions can be told apart
        warmup_steps=0,
    )
    result = train(cfg, on_step=on_step)
    assert killed and result.steps_done == 8
    # one kill, one restart: counted from the failed calls, not again from the new life
    assert result.metrics[-1]["rollout/worker_restarts"] == 1
    assert killed[0] not in _worker_pids()  # the restarted actor is another process
    rows = _worker_rows(small_lake, result.run_id)
    # Each worker's batches are numbered without gap or repeat: the killed worker's
    # uncommitted batch was redone under the same number, nothing committed was lost.
    seqs = _seqs(rows)
    assert len(seqs) == 2 and all(s == list(range(len(s))) for s in seqs.values())
    ids = [r["traj_id"] for r in rows]
    assert len(ids) == len(set(ids))
    # The restarted worker got the trainer's weights again (never sampled without a version),
    # and every version names the weights that drew the row.
    assert all(r["policy_version"] is not None for r in rows)
    _check_weight_versions(small_lake, result.run_id, Path(cfg.output), tiny_model)


class _Life:
    """A Ray actor that names its incarnation in each answer, like `RolloutWorker`."""

    def __init__(self) -> None:
        self.life = uuid.uuid4().hex

    def pid(self) -> int:
        return os.getpid()

    def answer(self) -> dict:
        return {"incarnation": self.life}


def test_a_crash_no_pending_call_saw_is_counted_once(ray_local):
    """Ray restarts an actor killed while nothing was queued on it, transparently: the next
    call just succeeds. The pool still counts that restart (from the new incarnation), once."""
    from spo_train.rollouts.workers import WorkerPool

    actor = ray_local.remote(max_restarts=-1, max_task_retries=0)(_Life).remote()
    calls = iter([("answer", ())] * 1 + [None] * 1000)
    answers: list[dict] = []
    pool = WorkerPool(
        [actor], next_call=lambda i: next(calls), on_result=lambda i, r: answers.append(r)
    )
    while not answers:
        pool.pump(1.0)
    pid = ray_local.get(actor.pid.remote())
    os.kill(pid, signal.SIGKILL)  # nothing pending on it now
    deadline = time.time() + 60
    while time.time() < deadline:  # until Ray has restarted it (calls fail meanwhile)
        try:
            if ray_local.get(actor.pid.remote(), timeout=10) != pid:
                break
        except Exception:  # noqa: BLE001 - restarting
            time.sleep(0.5)
    pool.call(0, "answer")
    while len(answers) < 2:
        pool.pump(1.0)
    assert answers[0]["incarnation"] != answers[1]["incarnation"]
    assert pool.restarts == [1]
    pool.call(0, "answer")  # the same life again: no new restart
    while len(answers) < 3:
        pool.pump(1.0)
    assert pool.restarts == [1]
    pool.close()


def test_rollout_job_resumes_after_an_interrupt_without_duplicates(
    ray_local,
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
):
    from spo_train.rollouts.job import RolloutConfig, run_rollout

    cfg = RolloutConfig(
        model=str(tiny_model),
        lake=small_lake.uri,
        n=2,
        max_new_tokens=8,
        temperature=(0.5, 1.0),
        rollout_workers=2,
        chunk_problems=1,
    )
    cfg.validate()
    where = "p.split = 'train'"
    calls = []

    def stop_after_first(_n: int) -> None:
        calls.append(_n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_rollout(cfg, small_lake, where, on_rows=stop_after_first)
    first = small_lake.sql("SELECT run_id, status FROM runs WHERE kind = 'rollout'").to_dicts()
    assert [r["status"] for r in first] == ["interrupted"]
    report = run_rollout(cfg, small_lake, where)
    assert report.resumed and report.run_id == first[0]["run_id"]
    assert 1 <= report.already_done < 4
    rows = small_lake.sql(
        "SELECT traj_id, problem_id, worker_id, policy_version, source, temperature "
        f"FROM trajectories WHERE run_id = '{report.run_id}'"
    ).to_dicts()
    assert len(rows) == 4 * 2 == len({r["traj_id"] for r in rows})
    per_problem = defaultdict(int)
    for r in rows:
        per_problem[r["problem_id"]] += 1
        assert r["source"] == "rollout" and r["policy_version"] is None
        assert r["worker_id"].startswith(report.run_id + "/w") and 0.5 <= r["temperature"] <= 1
    assert set(per_problem.values()) == {2}
    status = small_lake.sql(f"SELECT status FROM runs WHERE run_id = '{report.run_id}'")
    assert status["status"][0] == "completed"


# ---------------------------------------------------------------------------- subprocesses
def _spo_env(mark: str) -> dict[str, str]:
    return {**os.environ, "SPO_TEST_MARK": mark, "SPO_THREADS": "1"}


def _train_args(lake: Lake, model: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "spo_cli.main", "train", "--model", str(model), "--lake",
        lake.uri, "--output", str(out), "--mix", "online:1", "--steps", str(steps),
        "--batch-size", "4", "--rollout-n", "2", "--max-new-tokens", "8",
        "--checkpoint-every", "1", "--eval-problems", "0", "--wandb", "off",
        "--no-tensorboard", "--rollout-workers", "2", "--model-update-interval", "2",
        "--staleness", "20", "--json",
    ]  # fmt: skip


def _wait_for(cond, timeout_s: float = 240.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and not cond():
        time.sleep(0.2)
    assert cond(), "timed out"


def test_trainer_kill9_then_resume_keeps_worker_data_and_leaves_no_process(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    out = tmp_path / "run"
    mark = uuid.uuid4().hex
    args = _train_args(small_lake, tiny_model, out, steps=30)
    proc = subprocess.Popen(
        args,
        env=_spo_env(mark),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    lake = Lake.open(small_lake.uri, create=False)

    def past_first_checkpoint() -> bool:
        return (out / "latest").exists() and (out / "checkpoint-000002").exists()

    _wait_for(past_first_checkpoint)
    # the command's own Ray (not this test module's): its raylet and workers carry the mark
    names = " ".join(_marked(mark))
    assert "raylet" in names and "ray::RolloutWor" in names, names  # (comm: 15 characters)
    os.kill(proc.pid, signal.SIGKILL)  # the trainer only: its workers are left to the guard
    proc.wait()
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    _assert_no_leftovers(mark)
    before = {r["traj_id"] for r in _worker_rows(lake, run_id)}
    assert before and (out / "latest").read_text() != "checkpoint-000030"

    resume = [*args[: args.index("--steps") + 1], "6", *args[args.index("--steps") + 2 :]]
    mark2 = uuid.uuid4().hex
    r = subprocess.run(
        [*resume, "--resume"], env=_spo_env(mark2), capture_output=True, text=True, timeout=600
    )
    if "below the step" in r.stderr:  # the killed run got past step 6: resume to its step
        step = int((out / "latest").read_text().removeprefix("checkpoint-"))
        resume[resume.index("--steps") + 1] = str(step + 2)
        r = subprocess.run(
            [*resume, "--resume"], env=_spo_env(mark2), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["run_id"] == run_id
    _assert_no_leftovers(mark2)
    rows = _worker_rows(lake, run_id)
    after = {r["traj_id"] for r in rows}
    assert before <= after and len(after) == len(rows)  # kept, and nothing twice
    assert all(s == list(range(len(s))) for s in _seqs(rows).values())
    steps = lake.sql(
        f"SELECT step, count(*) AS n FROM batches WHERE run_id = '{run_id}' GROUP BY 1"
    ).to_dicts()
    assert sorted(s["step"] for s in steps) == list(range(summary["steps"]))
    assert all(s["n"] == 1 for s in steps)


def test_sigterm_and_normal_exit_leave_no_ray_or_sandbox_process(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    out = tmp_path / "run"
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        _train_args(small_lake, tiny_model, out, steps=200),
        env=_spo_env(mark),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (out / "checkpoint-000001").exists())
    names = " ".join(_marked(mark))
    assert "raylet" in names and "ray::RolloutWor" in names, names
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    _assert_no_leftovers(mark)
    status = small_lake.sql("SELECT status FROM runs WHERE kind = 'train'")["status"].to_list()
    assert status == ["interrupted"]

    # spo rollout, run to the end: --json summary as the last line, nothing left running.
    mark2 = uuid.uuid4().hex
    r = subprocess.run(
        [sys.executable, "-m", "spo_cli.main", "rollout", "--model", str(tiny_model),
         "--lake", small_lake.uri, "--split", "train", "--n", "2", "--max-new-tokens", "8",
         "--rollout-workers", "2", "--json"],
        env=_spo_env(mark2), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["rows"] == summary["inserted"] == 4 * 2 and summary["workers"] == 2
    _assert_no_leftovers(mark2)
