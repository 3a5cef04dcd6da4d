"""Pivotal token search against exact success probabilities (issue 12, item 3).

pi_0 here is tabular: response tokens are drawn independently per position from a fixed table
over a 3-token vocabulary, responses have a fixed length, and the reward is a function of the
sequence, so `S` after any prefix is known in closed form. The search runs through the same
code path as `spo pts` (`spo_train.pts.annotate`: selection, `RolloutEstimator`, bisection,
rollouts and annotations in a real lake); only the generator and the judge are this tabular
world's (a generator and a judge whose exact S is known: no real model gives that).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from spo_store.annotations import parse_rollout_traj_id
from spo_store.lake import Lake
from spo_train.lm.generation import Sample
from spo_train.pts import Sampler, annotate, pivots_of

VOCAB = "abc"
TOKENIZER_ID = "tabular-v1"
MODEL_ID = "tabular-pi0"


class TabularPi0:
    """Tokens iid per response position j from `probs[j]` (`[T, 3]`), `T` tokens in all: a
    continuation of a prefix of length m draws positions m..T-1. Counts its calls."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.calls: list[int] = []  # prompts per generate_ids call

    def generate_ids(
        self,
        prompt_ids,
        *,
        n,
        temperature,
        top_p,
        max_new_tokens,
        seed,
        response_prefix_lengths,
    ):
        assert temperature == 1.0 and top_p == 1.0  # pi_0 itself
        self.calls.append(len(prompt_ids))
        total = self.probs.shape[0]
        cum = np.cumsum(self.probs, axis=1)
        out = []
        for i, m in enumerate(response_prefix_lengths):
            group = []
            for j in range(n):
                digest = hashlib.sha256(f"{seed}:{i}:{j}".encode()).digest()
                rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
                u = rng.random(total - m)
                toks = (u[:, None] >= cum[m:]).sum(1).clip(max=2).tolist()
                lps = np.log(self.probs[np.arange(m, total), toks]).tolist()
                group.append(
                    Sample(
                        text=decode(toks),
                        response_ids=toks,
                        prompt_ids=list(prompt_ids[i]),
                        logprobs=lps,
                        temperature=1.0,
                        top_p=1.0,
                        finish_reason="stop",
                        behaviour_logprobs=lps,
                    )
                )
            out.append(group)
        return out


def decode(ids) -> str:
    return "".join(VOCAB[i] for i in ids)


def judge_for(conditions: dict[int, str], calls: list[int] | None = None):
    """Success iff the response has token conditions[p] at every position p."""

    def judge(problems, texts):
        if calls is not None:
            calls.append(len(texts))
        return [
            {
                "reward": 0.0 if all(t[p] == x for p, x in conditions.items()) else -1.0,
                "judge_status": "ok",
                "passed_tests": 1,
                "total_tests": 1,
            }
            for t in texts
        ]

    return judge


def exact_s(prefix_len: int, probs: np.ndarray, conditions: dict[int, str]) -> float:
    """S after the first `prefix_len` tokens of a response that meets every condition."""
    return math.prod(probs[p, VOCAB.index(x)] for p, x in conditions.items() if p >= prefix_len)


def make_lake(tmp_path, name: str, responses: dict[str, str]) -> Lake:
    lake = Lake.open(tmp_path / name)
    lake.insert_new(
        "problems",
        [{"problem_id": "tabular", "name": "tabular", "split": "train", "statement": "x"}],
    )
    lake.append(
        "trajectories",
        [
            {
                "traj_id": traj_id,
                "problem_id": "tabular",
                "run_id": "test",
                "source": "human",
                "reward": 0.0,
                "language": "python3",
                "response": text,
                "content_hash": traj_id,
                "tokenizer_id": TOKENIZER_ID,
                "prompt_ids": [0],
                "response_ids": [VOCAB.index(ch) for ch in text],
                "num_response_tokens": len(text),
            }
            for traj_id, text in responses.items()
        ],
    )
    return lake


def run(lake, gen, judge, *, k, threshold, total, **kw):
    return annotate(
        lake,
        gen,
        None,
        where=None,
        samples=k,
        threshold=threshold,
        sampler=Sampler(max_new_tokens=total),
        model_id=MODEL_ID,
        tokenizer_id=TOKENIZER_ID,
        judge=judge,
        decode=decode,
        **kw,
    )


def estimates_of(a: dict) -> dict[int, tuple[int, int]]:
    """prefix length -> (n, c) of an annotations row (position t is prefix length t + 1)."""
    return {
        p + 1: (n, c) for p, n, c in zip(a["positions"], a["samples"], a["successes"], strict=True)
    }


def annotation(lake, traj_id: str) -> dict:
    rows = lake.sql(f"SELECT * FROM annotations WHERE traj_id = '{traj_id}'").to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_estimates_lie_within_sampling_error_and_both_pivots_are_found(tmp_path):
    total, k = 64, 400
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([2, 2, 2], size=total)
    conditions = {20: "c", 45: "b"}  # S: 0.3 * 0.5 until token 20, 0.5 until token 45, then 1
    probs[20] = [0.35, 0.35, 0.30]
    probs[45] = [0.25, 0.50, 0.25]
    star = "".join(conditions.get(j, "a") for j in range(total))
    lake = make_lake(tmp_path, "lake", {"star": star})
    gen = TabularPi0(probs)
    report = run(lake, gen, judge_for(conditions), k=k, threshold=0.1, total=total)

    a = annotation(lake, "star")
    assert a["response_tokens"] == total and a["rollouts_per_estimate"] == k
    assert a["ref_model_id"] == MODEL_ID and a["tokenizer_id"] == TOKENIZER_ID
    assert a["positions"] == sorted(a["positions"]) and a["positions"][0] == -1
    assert "".join(a["tokens"]) == star  # tokens[t] is the text of token t
    for pos, s_hat, n, c in zip(
        a["positions"], a["s_t"], a["samples"], a["successes"], strict=True
    ):
        truth = exact_s(pos + 1, probs, conditions)  # position t: after tokens 0..t
        assert n == k and s_hat == pytest.approx(c / n)
        assert abs(s_hat - truth) <= 4 * math.sqrt(truth * (1 - truth) / k) + 1e-9, (pos, s_hat)
    # The two pivotal tokens, and no other: S jumps at token 20 and at token 45.
    estimates = estimates_of(a)
    assert pivots_of(estimates, total, 0.1) == [20, 45]
    assert report.pivots == 2
    # O(log T) prefixes per pivot, not T.
    assert len(a["positions"]) <= 1 + 2 * math.ceil(math.log2(total)) < total
    # Every estimate's k rollouts are stored, continuing exactly its prefix.
    rollouts = lake.sql(
        "SELECT traj_id, response_ids, reward FROM trajectories WHERE source = 'pts'"
    ).to_dicts()
    assert len(rollouts) == len({r["traj_id"] for r in rollouts}) == k * len(a["positions"])
    for r in rollouts:
        key, pos, idx = parse_rollout_traj_id(r["traj_id"])
        assert key == a["rollout_key"] and pos in a["positions"] and 0 <= idx < k
        assert decode(r["response_ids"][: pos + 1]) == star[: pos + 1]
        assert len(r["response_ids"]) == total
    # One generate call per bisection round: the prefixes of a round share it.
    assert report.prefixes == len(a["positions"]) and max(gen.calls) >= 2
    assert len(gen.calls) < report.prefixes


@pytest.mark.parametrize("total", [16, 256, 4096])
def test_bisection_visits_log_t_prefixes_per_pivot(tmp_path, total):
    # S is 0 until the pivotal token and 1 from it on (pi_0 never draws it): deterministic,
    # so 2 rollouts per estimate suffice and the count of estimates is exact.
    pivot = total * 5 // 8 + 1
    probs = np.full((total, 3), 1 / 3)
    probs[pivot] = [0.5, 0.5, 0.0]
    star = "a" * pivot + "c" + "a" * (total - pivot - 1)
    lake = make_lake(tmp_path, f"lake{total}", {"star": star})
    report = run(lake, TabularPi0(probs), judge_for({pivot: "c"}), k=2, threshold=0.5, total=total)
    a = annotation(lake, "star")
    estimates = estimates_of(a)
    assert pivots_of(estimates, total, 0.5) == [pivot]
    # S(0) plus a binary search over T positions: ceil(log2 T) midpoints at most.
    assert report.prefixes == len(a["positions"]) <= 1 + math.ceil(math.log2(total))
    assert all(
        s == (1.0 if p >= pivot else 0.0) for p, s in zip(a["positions"], a["s_t"], strict=True)
    )


def test_trajectories_are_searched_together_one_generate_call_per_round(tmp_path):
    total = 64
    probs = np.full((total, 3), 1 / 3)
    probs[:, 2] = [0.0] * total  # 'c' never drawn: every 'c' in a response is a pivot
    probs[:, :2] = 0.5
    responses = {f"t{i}": "a" * q + "c" + "a" * (total - q - 1) for i, q in enumerate((5, 30, 50))}
    pivots = {"t0": 5, "t1": 30, "t2": 50}
    lake = make_lake(tmp_path, "lake", responses)
    gen = TabularPi0(probs)
    calls: list[int] = []

    def judge(problems, texts):  # success iff the response carries its trajectory's 'c'
        calls.append(len(texts))
        return [
            {
                "reward": 0.0 if "c" in t else -1.0,
                "judge_status": "ok",
                "passed_tests": 1,
                "total_tests": 1,
            }
            for t in texts
        ]

    report = run(lake, gen, judge, k=2, threshold=0.5, total=total)
    assert report.trajectories == 3 and report.pivots == 3
    for traj_id, q in pivots.items():
        a = annotation(lake, traj_id)
        est = estimates_of(a)
        assert pivots_of(est, total, 0.5) == [q]
    rounds = 1 + math.ceil(math.log2(total))
    assert len(gen.calls) <= rounds  # not rounds x trajectories
    assert max(gen.calls) == 3 and len(calls) == len(gen.calls)  # one judge batch per round


def test_a_killed_run_resumes_without_duplicates_and_ends_as_an_uninterrupted_one(tmp_path):
    total, k = 64, 50
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([2, 2, 2], size=total)
    conditions = {10: "a", 40: "b"}
    star = "".join(conditions.get(j, "c") for j in range(total))
    fresh = make_lake(tmp_path, "fresh", {"star": star})
    run(fresh, TabularPi0(probs), judge_for(conditions), k=k, threshold=0.1, total=total)
    want = annotation(fresh, "star")

    lake = make_lake(tmp_path, "killed", {"star": star})
    real = judge_for(conditions)
    seen: list[int] = []

    def dies_in_round_three(problems, texts):  # a kill mid-round (after sampling, before storing)
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(problems, texts)

    with pytest.raises(KeyboardInterrupt):
        run(lake, TabularPi0(probs), dies_in_round_three, k=k, threshold=0.1, total=total)
    assert lake.sql("SELECT count(*) AS n FROM annotations")["n"][0] == 0
    stored = lake.sql("SELECT count(*) AS n FROM trajectories WHERE source = 'pts'")["n"][0]
    assert stored == 2 * k  # the first two rounds' rollouts, one prefix each
    assert lake.sql("SELECT status FROM runs WHERE kind = 'pts'")["status"].to_list() == [
        "interrupted"
    ]

    report = run(lake, TabularPi0(probs), real, k=k, threshold=0.1, total=total)
    assert report.reused == stored
    got = annotation(lake, "star")
    for col in ("positions", "s_t", "samples", "successes", "annotation_id"):
        assert got[col] == want[col], col
    ids = lake.sql("SELECT traj_id FROM trajectories WHERE source = 'pts'")["traj_id"].to_list()
    assert len(ids) == len(set(ids)) == k * len(want["positions"])
    # Once annotated, a rerun has nothing to do.
    again = run(lake, TabularPi0(probs), real, k=k, threshold=0.1, total=total)
    assert (again.trajectories, again.already_done, again.rollouts) == (0, 1, 0)


def test_limit_is_the_same_first_trajectories_on_every_run(tmp_path):
    """--limit N: the first N selected trajectories by traj_id, annotated or not (issue 20,
    item 1): a rerun adds nothing, a larger N adds only the next one."""
    total, k = 16, 8
    probs = np.random.default_rng(2).dirichlet([2, 2, 2], size=total)
    conditions = {3: "a"}
    star = "".join(conditions.get(j, "c") for j in range(total))
    lake = make_lake(tmp_path, "lake", {"t1": star, "t2": star, "t3": star})
    judge = judge_for(conditions)
    first = run(lake, TabularPi0(probs), judge, k=k, threshold=0.1, total=total, limit=2)
    assert first.trajectories == 2
    done = lambda: sorted(lake.sql("SELECT traj_id FROM annotations")["traj_id"].to_list())  # noqa: E731
    assert done() == ["t1", "t2"]
    again = run(lake, TabularPi0(probs), judge, k=k, threshold=0.1, total=total, limit=2)
    assert (again.trajectories, again.already_done) == (0, 2)
    more = run(lake, TabularPi0(probs), judge, k=k, threshold=0.1, total=total, limit=3)
    assert (more.trajectories, more.already_done) == (1, 2) and done() == ["t1", "t2", "t3"]
