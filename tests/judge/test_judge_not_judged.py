"""What was not judged is not a reward (issue 9 item 3)."""

from __future__ import annotations

from spo_train import judge as judge_mod
from spo_train.judge import JudgeJob, Verdict, judge, judge_batch, sandbox, verdict_reward
from tests.conftest import needs_sandbox

pytestmark = needs_sandbox


def test_verdict_reward_mapping():
    assert verdict_reward(Verdict(True, "ok", 1, 1)) == 0.0
    for status in ("wrong_answer", "runtime_error", "time_limit", "memory_limit", "compile_error"):
        assert verdict_reward(Verdict(False, status, 0, 1)) == -1.0
    assert verdict_reward(Verdict(False, "sandbox_error", 0, 1, judged=False)) is None


def _start_deadline_spy(monkeypatch, failing_starts: int) -> list[float]:
    """Make the first `failing_starts` sandbox starts miss their deadline, as on a loaded machine.

    The real start path runs; only its deadline (START_TIMEOUT_S) is shrunk to nothing, so
    the driver's READY arrives too late and the session reports a start failure.
    """
    calls: list[float] = []
    real = sandbox._run_session

    def run(*args, **kwargs):
        calls.append(1.0)
        sandbox.close_warm_sandboxes()  # every session starts a sandbox (no warm one idle)
        timeout = 1e-9 if len(calls) <= failing_starts else 20.0
        monkeypatch.setattr(sandbox, "START_TIMEOUT_S", timeout)
        return real(*args, **kwargs)

    monkeypatch.setattr(sandbox, "_run_session", run)
    monkeypatch.setattr(judge_mod, "RETRY_PAUSE_S", 0.0)
    return calls


def test_sandbox_that_never_starts_is_not_judged(monkeypatch):
    calls = _start_deadline_spy(monkeypatch, failing_starts=10)
    v = judge("print(1)", [("", "1")])
    assert (v.status, v.judged, v.passed, verdict_reward(v)) == (
        "sandbox_error",
        False,
        False,
        None,
    )
    assert "did not start" in v.detail
    assert len(calls) == 2  # tried once more before giving up
    # In a batch too: no crash, no reward, every job reported.
    (b,) = judge_batch([JudgeJob("print(1)", [("", "1")])])
    assert not b.judged and verdict_reward(b) is None


def test_sandbox_start_failure_is_retried_once(monkeypatch):
    calls = _start_deadline_spy(monkeypatch, failing_starts=1)
    v = judge("print(1)", [("", "1")])
    assert v.passed and v.judged and len(calls) == 2


def test_program_failures_are_not_retried(monkeypatch):
    calls = _start_deadline_spy(monkeypatch, failing_starts=0)
    v = judge("raise SystemExit(3)", [("", "1")])
    assert v.status == "runtime_error" and verdict_reward(v) == -1.0 and len(calls) == 1


def test_batch_mixes_judged_and_not_judged():
    jobs = [
        JudgeJob("print(1)", [("", "1")]),
        JudgeJob("print(1)", []),  # no tests
        JudgeJob("print(1)", [("", "1")], memory_limit_mb=0),  # limits the sandbox refuses
        JudgeJob("print(1)", [("", "1")], checker="raise RuntimeError"),  # checker crashes
        JudgeJob("print(2)", [("", "1")]),
    ]
    verdicts = judge_batch(jobs, workers=2)
    assert [v.status for v in verdicts] == [
        "ok",
        "no_tests",
        "sandbox_error",
        "checker_error",
        "wrong_answer",
    ]
    assert [verdict_reward(v) for v in verdicts] == [0.0, None, None, None, -1.0]
