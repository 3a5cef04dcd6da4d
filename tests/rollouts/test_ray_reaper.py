"""Rollout-worker faults reproduced without Ray: the guard (`spo_train.rollouts.ray_reaper`) on real
processes (what it must kill is what Ray's agents look like after a command's kill -9: no mark
left in their environment, their parent gone), and a worker's weight loading on real files."""

from __future__ import annotations

import os
import subprocess
import sys
import time

CHILD = """
import os, subprocess, sys, time
env = {k: v for k, v in os.environ.items() if k != "SPO_RAY_SESSION"}  # an unmarked child
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env=env)
print(p.pid, flush=True)
time.sleep(float(sys.argv[1]))  # then this marked parent dies: the child is re-parented
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _guard(token: str) -> tuple[subprocess.Popen, int]:
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_train.rollouts.ray_reaper", token, str(read_fd)],
        pass_fds=(read_fd,),
        start_new_session=True,
    )
    os.close(read_fd)
    return proc, write_fd


def test_an_unmarked_orphan_of_the_session_is_killed_when_the_command_ends():
    token = os.urandom(8).hex()
    guard, write_fd = _guard(token)
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD, "2"],
        env={**os.environ, "SPO_RAY_SESSION": token},
        stdout=subprocess.PIPE,
        text=True,
    )
    orphan = int(parent.stdout.readline())
    parent.wait(timeout=30)  # the guard looked at the session while the parent lived
    assert _alive(orphan)
    try:
        os.close(write_fd)  # the command ends
        guard.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and _alive(orphan):
            time.sleep(0.1)
        assert not _alive(orphan), "the session's orphan outlived the command"
    finally:
        if _alive(orphan):
            os.kill(orphan, 9)


def test_a_process_outside_the_session_is_left_alone():
    token = os.urandom(8).hex()
    guard, write_fd = _guard(token)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        time.sleep(1.5)  # a few of the guard's looks
        os.close(write_fd)
        guard.wait(timeout=30)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_pruned_weights_file_is_skipped_for_the_newer_one_queued_behind_it(tmp_path):
    """Under load a worker reached set_weights(version 0) after the trainer had published two
    newer versions and pruned version 0's file: FileNotFoundError ended the run. The worker now
    keeps its weights and version; the newer set_weights queued behind it applies them."""
    import types

    import torch

    from spo_train.rollouts.workers import RolloutWorker

    worker = RolloutWorker.__new__(RolloutWorker)  # the weights path only: no model, no lake
    worker.decoding = types.SimpleNamespace(policy="current")
    worker.setup = types.SimpleNamespace(fixed=False, device="cpu")
    worker.model = torch.nn.Linear(2, 2)
    worker.version = 1
    assert worker.set_weights(str(tmp_path / "version-000000.pt"), 0) == 1
    newer = {k: torch.ones_like(v) for k, v in worker.model.state_dict().items()}
    torch.save(newer, tmp_path / "version-000002.pt")
    assert worker.set_weights(str(tmp_path / "version-000002.pt"), 2) == 2
    assert torch.equal(worker.model.weight, torch.ones(2, 2))


def test_run_by_hand_without_its_arguments_is_a_usage_line():
    """trial 3: `python -m spo_train.rollouts.ray_reaper --help` was an IndexError traceback."""
    for args in ([], ["--help"], ["tok", "x"]):
        r = subprocess.run(
            [sys.executable, "-m", "spo_train.rollouts.ray_reaper", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("usage: python -m spo_train.rollouts.ray_reaper TOKEN FD")
