"""SPO pipeline on real parts: a tiny random Llama saved to disk, a real lake, the real sandbox.

Covers Q0 estimation (resume and sample reuse), the reference log-prob cache (a second run
skips the reference forward; another tokenizer never reads stale ids), `spo eval --json`, and
`spo train` surviving `kill -9` with `--resume`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from spo_store.lake import Lake
from tests.conftest import make_generator


def test_estimate_q0_is_resumable_and_reuses_samples(small_lake, tiny_model):
    from spo_train.q0 import estimate_q0, q0_value
    from spo_train.rollouts.sampling import SamplerSettings, load_problems, sample_and_judge

    gen, tok, model_id, tok_id, _ = make_generator(tiny_model)
    settings = SamplerSettings(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)
    first = estimate_q0(
        small_lake,
        gen,
        tok,
        where="p.split = 'train'",
        settings=settings,
        model_id=model_id,
        tokenizer_id=tok_id,
        limit=2,
        chunk_problems=1,
    )
    assert first.problems == 2 and first.samples == 6
    done = small_lake.sql(
        "SELECT problem_id, run_id, ref_model_id, sampler_key FROM q0_estimates ORDER BY 1"
    ).to_dicts()
    assert len(done) == 2 and {d["run_id"] for d in done} == {first.run_id}
    assert {(d["ref_model_id"], d["sampler_key"]) for d in done} == {
        (model_id, "temperature=1,top_p=1,max_new_tokens=8")
    }
    # A run killed between its two commits: samples are in the lake, q0 is not. Simulate it.
    key = "temperature=1,top_p=1,max_new_tokens=8"
    third = load_problems(small_lake, "p.split = 'train' AND p.q0 IS NULL", q0_of=(model_id, key))[
        0
    ]
    rows = sample_and_judge(
        gen,
        tok,
        [third],
        settings,
        source="pi0",
        run_id="killed",
        model_id=model_id,
        tokenizer_id=tok_id,
        ref_model_id=model_id,
    )
    small_lake.append("trajectories", rows)
    second = estimate_q0(
        small_lake,
        gen,
        tok,
        where="p.split = 'train'",
        settings=settings,
        model_id=model_id,
        tokenizer_id=tok_id,
        chunk_problems=1,
    )
    assert (
        second.problems == 2 and second.reused == 3 and second.samples == 3
    )  # only the 4th is sampled
    got = small_lake.sql(
        "SELECT q.problem_id, q.q0, q.samples, q.successes, count(t.traj_id) AS n, "
        "count(t.traj_id) FILTER (WHERE t.reward = 0) AS c FROM q0_estimates q "
        "JOIN trajectories t ON t.problem_id = q.problem_id AND t.source = 'pi0' GROUP BY ALL"
    ).to_dicts()
    assert len(got) == 4
    for r in got:
        assert r["n"] == r["samples"] == 3 and r["c"] == r["successes"]
        assert r["q0"] == pytest.approx(
            q0_value(r["successes"], 3, 1 / __import__("math").log(1e5))
        )
    # Every sampled row records its sampler's length bound (q0 reuses samples only under it).
    assert small_lake.sql("SELECT DISTINCT max_new_tokens FROM trajectories WHERE source = 'pi0'")[
        "max_new_tokens"
    ].to_list() == [8]
    # pi_0 samples carry reference log-probs (the sampler is pi_0 at temperature 1).
    assert (
        small_lake.sql(
            "SELECT count(*) AS n FROM trajectories WHERE source = 'pi0' AND ref_logprobs IS NULL"
        )["n"][0]
        == 0
    )


def test_reference_cache_second_run_skips_forward(small_lake, tiny_model):
    import torch

    from spo_train.rollouts.sampling import load_problems
    from spo_train.train.batch import ReferenceCache

    _, tok, model_id, tok_id, model = make_generator(tiny_model)
    problems = {p["problem_id"]: p for p in load_problems(small_lake, "TRUE")}
    for p in problems.values():
        p["q0"] = -0.5
    rows = small_lake.dataset("trajectories").to_table(filter="source = 'human'")
    first = ReferenceCache(small_lake, tok, tok_id, model, model_id, "run-a")
    a = first.prepare(rows, problems)
    assert first.ref_forward_rows == rows.num_rows and a.cache_hits == 0
    second = ReferenceCache(small_lake, tok, tok_id, model, model_id, "run-b")
    b = second.prepare(rows, problems)
    assert second.ref_forward_rows == 0 and b.cache_hits == rows.num_rows
    assert b.response_ids == a.response_ids and b.ref_logprobs == a.ref_logprobs
    assert all(len(lp) == len(ids) for lp, ids in zip(b.ref_logprobs, b.response_ids, strict=True))
    # The cached log-probs are the reference model's own.
    from spo_train.lm.logprobs import response_logprobs

    with torch.no_grad():
        lp, mask = response_logprobs(
            model,
            a.prompt_ids[:2],
            a.response_ids[:2],
            pad_token_id=tok.pad_token_id,
            requires_grad=False,
        )
    assert lp[0][mask[0]].tolist() == pytest.approx(b.ref_logprobs[0], abs=1e-5)
    # Another tokenizer (or reference model) identity never reads these entries.
    other = ReferenceCache(small_lake, tok, "another-tokenizer", model, model_id, "run-c")
    other.prepare(rows, problems)
    assert other.ref_forward_rows == rows.num_rows


def _spo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["spo", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def _spo_in_background(args: list[str], cwd: Path) -> subprocess.Popen:
    """`spo ARGS` in its own process group, so a test can `kill -9` the whole of it."""
    return subprocess.Popen(
        ["spo", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_eval_json_last_line(small_lake, tiny_model, tmp_path):
    r = _spo(
        "eval",
        "--model",
        str(tiny_model),
        "--lake",
        small_lake.uri,
        "--split",
        "train",
        "--n",
        "3",
        "--k",
        "1,3",
        "--max-new-tokens",
        "8",
        "--json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) >= {"pass@1", "pass@3", "problems", "samples", "correct"}
    assert result["problems"] == 4 and result["samples"] == 12
    assert 0 <= result["pass@1"] <= result["pass@3"] <= 1
    stored = small_lake.sql("SELECT count(*) AS n FROM trajectories WHERE source = 'eval'")["n"][0]
    assert stored == 12
    assert (
        small_lake.sql("SELECT count(*) AS n FROM metrics WHERE name LIKE 'eval/%pass@3'")["n"][0]
        == 1
    )
    bad = _spo("eval", "--model", str(tmp_path / "nope"), "--lake", small_lake.uri, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_train_without_q0_names_estimate_q0(small_lake, tiny_model, tmp_path):
    r = _spo(
        "train",
        "--model",
        str(tiny_model),
        "--lake",
        small_lake.uri,
        "--steps",
        "1",
        "--max-new-tokens",
        "8",
        "--output",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    want = (
        f"spo estimate-q0 --model {tiny_model} --lake {small_lake.uri} --split train "
        "--max-new-tokens 8 --n 4 --limit 512"
    )
    err = " ".join(r.stderr.split())  # rich wraps long lines
    assert r.returncode == 2 and want in err and "Traceback" not in r.stderr, r.stderr
    # a small first step (the default 800 samples take about a day), topped up later
    assert "larger --n" in err
    assert r.stderr.startswith("error: ") and err.count("error: ") == 1


@pytest.mark.slow
def test_train_survives_kill9_and_resumes(small_lake, tiny_model, tmp_path):
    from spo_train.q0 import estimate_q0
    from spo_train.rollouts.sampling import SamplerSettings

    gen, tok, model_id, tok_id, _ = make_generator(tiny_model)
    estimate_q0(
        small_lake,
        gen,
        tok,
        where="p.split = 'train'",
        settings=SamplerSettings(2, 1.0, 1.0, 8, 0),
        model_id=model_id,
        tokenizer_id=tok_id,
    )
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        str(tiny_model),
        "--lake",
        small_lake.uri,
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--rollout-n",
        "2",
        "--max-new-tokens",
        "8",
        "--checkpoint-every",
        "2",
        "--output",
        str(out),
        "--eval-problems",
        "1",
        "--eval-n",
        "2",
        "--eval-k",
        "1,2",
    ]
    proc = _spo_in_background(args, cwd=tmp_path)

    def logged_after_checkpoint() -> bool:
        # Kill after a step past the first checkpoint was logged: the resume runs it again.
        if not (out / "latest").exists():
            return False
        sql = "SELECT count(*) AS n FROM metrics WHERE name = 'train/loss' AND step >= 2"
        return Lake.open(small_lake.uri, create=False).sql(sql)["n"][0] > 0

    deadline = time.time() + 300
    while time.time() < deadline and not logged_after_checkpoint():
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "latest").exists(), "no checkpoint before the deadline"
    killed_at = (out / "latest").read_text()
    assert killed_at != "checkpoint-000006", "the run finished before it could be killed"
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    r = _spo(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resumed run {run_id} from {killed_at}" in r.stderr.replace("\n", " ")
    assert (out / "latest").read_text() == "checkpoint-000006"
    steps = set(
        small_lake.sql(
            f"SELECT DISTINCT step FROM metrics WHERE run_id = '{run_id}' AND name = 'train/loss'"
        )["step"]
    )
    assert steps == set(range(6))
    # Steps logged after the last checkpoint and run again after the resume count once.
    for table, keys in (("metrics", "run_id, step, name"), ("batches", "run_id, step")):
        dup = small_lake.sql(
            f"SELECT {keys}, count(*) AS n FROM {table} GROUP BY {keys} HAVING count(*) > 1"
        )
        assert dup.height == 0, (table, dup)
    assert (
        small_lake.sql(f"SELECT status FROM runs WHERE run_id = '{run_id}'")["status"][0]
        == "completed"
    )
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # W&B (installed with the test extras) logged offline under --output, killed run included.
    wandb_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wandb_files and any(b"train/loss" in f.read_bytes() for f in wandb_files)
    # The same (seed, step) after resume draws the same offline ids as the killed run did.
    batches = small_lake.sql(
        f"SELECT step, traj_ids, sources FROM batches WHERE run_id = '{run_id}' ORDER BY created_at"
    ).to_dicts()
    by_step: dict[int, list] = {}
    for b in batches:
        offline = [t for t, s in zip(b["traj_ids"], b["sources"], strict=True) if s == "offline"]
        by_step.setdefault(b["step"], []).append(offline)
    assert sorted(by_step) == list(range(6))
    for repeats in by_step.values():
        assert all(x == repeats[0] for x in repeats)
    # Evaluated once at the start (the resume did not repeat step 0) and once at the end.
    evals = small_lake.sql(
        f"SELECT step, count(*) AS n FROM metrics WHERE run_id = '{run_id}' "
        "AND name = 'eval/valid/pass@2' GROUP BY step ORDER BY step"
    ).to_dicts()
    assert evals == [{"step": 0, "n": 1}, {"step": 6, "n": 1}]


@pytest.mark.slow
def test_estimate_q0_cli_survives_kill9_and_rerun_completes(small_lake, tiny_model, tmp_path):
    args = [
        "estimate-q0",
        "--model",
        str(tiny_model),
        "--lake",
        small_lake.uri,
        "--samples",
        "48",
        "--max-new-tokens",
        "48",
        "--chunk-problems",
        "1",
        # fixed n: a stored row is a finished problem (a sequential rule stores each round,
        # and its kill/resume is tested in test_q0_sequential_cli.py)
        "--stopping",
        "fixed",
    ]
    proc = _spo_in_background(args, cwd=tmp_path)

    def done() -> int:
        sql = "SELECT count(*) AS n FROM q0_estimates"
        return Lake.open(small_lake.uri, create=False).sql(sql)["n"][0]

    deadline = time.time() + 300
    while time.time() < deadline and done() < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = done()
    assert 1 <= killed_at < 4, f"{killed_at} problems done when killed (want a partial run)"
    r = _spo(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = (
        Lake.open(small_lake.uri, create=False)
        .sql(
            "SELECT p.problem_id, q.q0, q.samples, q.successes, q.run_id, "
            "count(t.traj_id) AS n FROM problems p JOIN q0_estimates q USING (problem_id) "
            "LEFT JOIN trajectories t ON t.problem_id = p.problem_id AND t.source = 'pi0' "
            "WHERE p.split = 'train' GROUP BY ALL"
        )
        .to_dicts()
    )
    # Every problem done exactly once: 48 samples each, none duplicated by the rerun.
    assert len(got) == 4 and all(g["n"] == g["samples"] == 48 for g in got), got
    assert len({g["run_id"] for g in got}) == 2  # the killed run's and the rerun's
    assert all(-1.0 <= g["q0"] <= 0.0 for g in got)
