"""scripts/bench_algorithms.py measures what it says: one real step of SPO, PPO and GRPO each
(embedded pi_0, a real judged batch from the trainer's rollout producer) on a tiny batch.

The measuring function runs in this process (the script runs it in one fresh process per
algorithm: starting three interpreters would triple the test's time); the child's command
line is checked to carry the same settings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_sandbox

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_algorithms.py"
MIB = 1024 * 1024


def _script():
    spec = importlib.util.spec_from_file_location("bench_algorithms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@needs_sandbox
def test_one_step_each_reports_costs_and_the_value_model(tmp_path):
    from spo_train.lm.models import load_model_and_tokenizer

    bench = _script()
    args = bench.parse_args(
        "--batch-size 4 --rollout-n 2 --max-new-tokens 16 --steps 1 --rounds 1".split()
    )
    facts = bench.setup(args, tmp_path, lambda _m: None)
    assert facts["rows"] == 4 and facts["problems"] == 2 and facts["response_tokens"] > 0
    # SPO half online samples half the rollouts per step of PPO and GRPO
    per_step = {a: facts["rollouts"][a]["rollouts_per_step"] for a in bench.ALGOS}
    assert per_step == {"spo": 2, "ppo": 4, "grpo": 4}
    # what a child process would be told: the same settings
    child = bench.parse_args(bench.child_argv(args, "ppo", tmp_path)[2:])
    assert child.child == "ppo" and child.workdir == str(tmp_path)
    for name in ("batch_size", "rollout_n", "max_new_tokens", "steps", "minibatches", "model"):
        assert getattr(child, name) == getattr(args, name)

    results = [bench.measure(args, algo, tmp_path) for algo in bench.ALGOS]
    summary = bench.summarise(results)

    policy, _ = load_model_and_tokenizer(None)
    policy_params = sum(p.numel() for p in policy.parameters())
    # PPO's value model: pi_0's transformer (the causal LM without its head) plus a scalar head
    value_params = sum(p.numel() for p in policy.model.parameters()) + policy.config.hidden_size + 1
    for algo, row in summary.items():
        assert row["policy_params"] == policy_params
        assert row["extra_params"] == (value_params if algo == "ppo" else 0)
        assert row["rows"] == 4 and row["tokens"] == facts["response_tokens"]
        assert row["timed_steps"] == 1 and row["step_s_median"] > 0 and row["tokens_per_s"] > 0
        assert row["peak_rss_mib"] >= row["rss_ready_mib"] > 0
        # parameters, gradients and both AdamW moments in float32: at least 16 bytes each
        assert row["trained_state_mib"] * MIB >= 16 * (policy_params + row["extra_params"])
    # the value model and its optimizer show in PPO's memory and in no one else's
    ppo, spo = summary["ppo"], summary["spo"]
    assert ppo["value_state_mib"] * MIB >= 16 * value_params
    assert spo["value_state_mib"] == summary["grpo"]["value_state_mib"] == 0
    assert ppo["trained_state_mib"] == pytest.approx(
        spo["trained_state_mib"] + ppo["value_state_mib"]
    )
    assert ppo["ratio_trained_state_mib"] > 1.9 and spo["ratio_step_s_median"] == 1.0
    # one optimizer step for SPO, update_epochs (1) x minibatches (2) for PPO and GRPO
    assert [summary[a]["optimizer_steps_per_step"] for a in bench.ALGOS] == [1, 2, 2]


def test_bad_input_is_one_line():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "/nonexistent/model"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "/nonexistent/model" in lines[0]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--algos", "spo,dpo"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--algos spo,dpo" in proc.stderr
