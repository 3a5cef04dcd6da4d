"""A small real lake for the explorer's tests and screenshots (tests/test_explorer*.py).

Problems and human solutions come in through the real JSONL ingest; a training run, its
metrics, batches, an annotation (`spo pts`'s row builder) and a q0 estimate are written with
the lake's own API, the way `spo train` / `spo pts` / `spo estimate-q0` write them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
HOSTILE_RESPONSE = f"print('hello')  # {HOSTILE}\n"
TOKENIZER = "tok-test"
MODEL = "model-test"
PROBLEMS = [
    # name, statement, tests, correct solutions, incorrect solutions
    (
        "A+B",
        "Read two integers a and b; print a+b.",
        [("1 2\n", "3\n"), ("5 7\n", "12\n")],
        ["a, b = map(int, input().split())\nprint(a + b)\n"],
        ["print(0)\n"],
    ),
    (
        "Hard sum",
        "Print the sum of n numbers modulo 1000.",
        [("3\n1 2 3\n", "6\n")],
        ["n = int(input())\nprint(sum(map(int, input().split())) % 1000)\n"],
        [],
    ),
    ("Unsolved", "Nobody wrote a passing program.", [("1\n", "2\n")], [], ["print(1)\n"]),
    (f"Evil {HOSTILE}", f"Statement {HOSTILE}", [("1\n", "1\n")], ["print(input())\n"], []),
]


def _token_texts(response: str) -> list[str]:
    """A response cut into 'tokens' of up to 4 characters (a stand-in tokenizer's texts)."""
    return [response[i : i + 4] for i in range(0, len(response), 4)]


def build_lake(root: Path) -> dict[str, Any]:
    """Build the lake at `root`; returns the ids the tests look for."""
    from spo_store.annotations import annotation_row, rollout_key
    from spo_store.ingest import ingest_human_solutions
    from spo_store.lake import Lake, utc_now
    from spo_store.q0_estimates import estimate_row, sampler_key, write_estimates

    src = root.parent / "explorer-problems.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "name": name,
                    "statement": statement,
                    "tests": [{"input": i, "output": o} for i, o in tests],
                    "solutions": good,
                    "incorrect_solutions": bad,
                    "split": "train" if k < 2 else "test",
                }
            )
            + "\n"
            for k, (name, statement, tests, good, bad) in enumerate(PROBLEMS)
        )
    )
    lake = Lake.open(root)
    ingest_human_solutions(lake, [src], fmt="jsonl")
    problems = {r["name"]: r["problem_id"] for r in lake.sql("SELECT * FROM problems").to_dicts()}
    ids = {"problems": problems}

    now = utc_now()
    config = {"steps": 3, "beta": 0.1, "note": HOSTILE}
    with lake.run("train", config, model_id=MODEL, tokenizer_id=TOKENIZER) as run_id:
        rows, batches = [], []
        # A+B: wrong at step 0, right from step 1; Hard sum: wrong at every step; Evil: the
        # hostile response, passing.
        plan = [
            (problems["A+B"], "print(0)\n", [-1.0, 0.0, 0.0]),
            (problems["Hard sum"], "print(sum([1]))\n", [-1.0, -1.0, -1.0]),
            (problems[f"Evil {HOSTILE}"], HOSTILE_RESPONSE, [0.0, 0.0, 0.0]),
        ]
        for step in range(3):
            ids_step = []
            for k, (pid, wrong, rewards) in enumerate(plan):
                good = rewards[step] == 0
                response = wrong
                if good and pid == problems["A+B"]:
                    response = "a, b = map(int, input().split())\nprint(a + b)\n"
                toks = _token_texts(response)
                n = len(toks)
                traj_id = f"online-s{step}-p{k}"
                rows.append(
                    {
                        "traj_id": traj_id,
                        "problem_id": pid,
                        "run_id": run_id,
                        "source": "online",
                        "policy_version": step,
                        "model_id": MODEL,
                        "temperature": 1.0,
                        "top_p": 1.0,
                        "max_new_tokens": 64,
                        "language": "python3",
                        "response": response,
                        "response_chars": len(response),
                        "reward": rewards[step],
                        "reward_source": "judge",
                        "judge_status": "accepted" if good else "wrong_answer",
                        "passed_tests": 2 if good else 0,
                        "total_tests": 2,
                        "finish_reason": "stop",
                        "content_hash": f"h-{traj_id}",
                        "tokenizer_id": TOKENIZER,
                        "prompt_ids": [1, 2, 3],
                        "response_ids": list(range(10, 10 + n)),
                        "num_response_tokens": n,
                        "behaviour_logprobs": [-0.1 - 0.05 * math.sin(i) for i in range(n)],
                        "ref_logprobs": [-0.3 - 0.2 * math.cos(i) for i in range(n)],
                        "model_logprobs": [-0.2] * n,
                        "ref_model_id": MODEL,
                        "created_at": now,
                    }
                )
                ids_step.append(traj_id)
            batches.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "trajectories_version": None,
                    "traj_ids": ids_step,
                    "sources": ["online"] * len(ids_step),
                    "seed": step,
                }
            )
        version = lake.append("trajectories", rows)
        for b in batches:
            b["trajectories_version"] = version
        lake.append("batches", batches)
        for step in range(3):
            lake.log_metrics(
                run_id, step, {"train/loss": 1.0 / (step + 1), "train/reward": step / 2}
            )
        lake.log_metrics(run_id, 2, {"eval/pass@1": 0.5}, split="test")
    ids["train_run"] = run_id

    # spo pts on the step-2 A+B solution: S jumps from 0.2 to 0.9 at token 5.
    traj = "online-s2-p0"
    resp = "a, b = map(int, input().split())\nprint(a + b)\n"
    toks = _token_texts(resp)
    skey = sampler_key(1.0, 1.0, 32)
    with lake.run("pts", {"threshold": 0.3}) as pts_run:
        row = annotation_row(
            traj_id=traj,
            run_id=pts_run,
            ref_model_id=MODEL,
            tokenizer_id=TOKENIZER,
            sampler_key=skey,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=32,
            rollouts_per_estimate=10,
            threshold=0.3,
            response_tokens=len(toks),
            estimates={-1: (10, 2), 2: (10, 2), 4: (10, 2), 5: (10, 9), 8: (10, 9)},
            rollout_key_=rollout_key(traj, MODEL, TOKENIZER, skey),
            tokens=toks,
        )
        lake.insert_new("annotations", [row])
    ids["annotated"] = traj
    ids["pivot"] = 5
    ids["pivot_text"] = toks[5]
    with lake.run("estimate-q0", {}) as q0_run:
        write_estimates(
            lake,
            [
                estimate_row(
                    problems["A+B"],
                    MODEL,
                    temperature=1.0,
                    top_p=1.0,
                    max_new_tokens=64,
                    samples=8,
                    successes=3,
                    beta=0.1,
                    run_id=q0_run,
                )
            ],
        )
    ids["hostile_traj"] = "online-s0-p2"
    return ids
