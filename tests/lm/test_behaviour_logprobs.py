"""Behaviour log-probs are those of the distribution that actually drew each token (issue 11).

`Sample.behaviour_logprobs` (log mu: softmax(logits / T) renormalised over the top-p kept set;
0 when greedy) and `Sample.logprobs` (log pi at temperature 1, no top-p) are checked against an
independent computation from a full forward of the shipped pi_0 (the embedded tiny model), and
the trajectory rows `spo_train.rollouts.sampling` writes carry both, in the columns of schema 3.
"""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from spo_store.lake import Lake
from spo_train.lm.generation import TransformersGenerator
from spo_train.lm.models import default_model_path, load_model_and_tokenizer
from spo_train.lm.prompting import build_prompt
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def pi0():
    model, tok = load_model_and_tokenizer()
    table = pq.read_table(
        default_model_path().parent / "problems" / "train.parquet", columns=["description"]
    )
    prompts = [build_prompt(d, tok) for d in table.column(0).to_pylist()[:2]]
    return model, tok, prompts


def _position_logits(model, sample) -> torch.Tensor:
    """`[len(response), V]` float64 logits that predicted each response token (full forward)."""
    ids = torch.tensor([sample.prompt_ids + sample.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    p = len(sample.prompt_ids)
    return logits[p - 1 : p - 1 + len(sample.response_ids)]


def _mu_logprob(logits: torch.Tensor, token: int, temperature: float, top_p: float) -> float:
    """log mu(token): tempered softmax, sorted, kept while the mass before a token is < top_p
    (the first always), renormalised over the kept set."""
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    before = sorted_p.cumsum(0) - sorted_p
    keep = before < top_p
    keep[0] = True
    kept = order[keep]
    assert token in set(kept.tolist()), "a sampled token lies outside the top-p set"
    return math.log(probs[token].item() / probs[kept].sum().item())


def test_tempered_top_p_logprobs_match_an_independent_computation(pi0) -> None:
    model, tok, prompts = pi0
    temperature, top_p = 0.5, 0.9
    out = TransformersGenerator(model, tok, batch_size=3, stop_strings=()).generate(
        prompts, n=3, temperature=temperature, top_p=top_p, max_new_tokens=32, seed=5
    )
    checked = differ = 0
    for group in out:
        for s in group:
            assert len(s.behaviour_logprobs) == len(s.logprobs) == len(s.response_ids)
            logits = _position_logits(model, s)
            raw = torch.log_softmax(logits, -1)
            for t, token in enumerate(s.response_ids):
                assert s.logprobs[t] == pytest.approx(raw[t, token].item(), abs=1e-4)
                mu = _mu_logprob(logits[t], token, temperature, top_p)
                assert s.behaviour_logprobs[t] == pytest.approx(mu, abs=1e-4)
                assert s.behaviour_logprobs[t] <= 1e-6  # a log-probability
                differ += abs(s.behaviour_logprobs[t] - s.logprobs[t]) > 1e-3
                checked += 1
    assert checked >= 50
    # T = 0.5 sharpens the distribution and top-p cuts its tail: mu differs from pi where the
    # model is unsure (pi_0 is confident on most code tokens, where both are ~0).
    assert differ > 0


def test_temperature_one_without_top_p_is_the_policy_itself(pi0) -> None:
    model, tok, prompts = pi0
    out = TransformersGenerator(model, tok, batch_size=4, stop_strings=()).generate(
        prompts, n=2, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=2
    )
    for group in out:
        for s in group:
            assert s.behaviour_logprobs == pytest.approx(s.logprobs, abs=1e-5)


def test_greedy_behaviour_logprobs_are_zero(pi0) -> None:
    model, tok, prompts = pi0
    out = TransformersGenerator(model, tok, batch_size=4, stop_strings=()).generate(
        prompts, n=2, temperature=[0.0, 0.7, 0.0, 0.7], top_p=0.95, max_new_tokens=16, seed=1
    )
    for group in out:
        greedy, hot = group
        assert greedy.behaviour_logprobs == [0.0] * len(greedy.response_ids)
        logits = _position_logits(model, greedy)
        assert greedy.response_ids == logits.argmax(-1).tolist()
        raw = torch.log_softmax(logits, -1)
        expected = [raw[t, tok_id].item() for t, tok_id in enumerate(greedy.response_ids)]
        assert greedy.logprobs == pytest.approx(expected, abs=1e-4)
        assert any(lp < 0 for lp in hot.behaviour_logprobs)


def test_rollout_rows_store_behaviour_and_model_logprobs(pi0, tmp_path) -> None:
    from spo_store.ingest import ingest_human_solutions
    from spo_train.rollouts.sampling import SamplerSettings, load_problems, sample_and_judge

    model, tok, _ = pi0
    lake = Lake.open(tmp_path / "lake")
    problem = {
        "name": "inc",
        "statement": "Read an integer n and print n + 1.",
        "split": "train",
        "tests": [{"input": f"{i}\n", "output": f"{i + 1}\n"} for i in range(2)],
        "solutions": ["print(int(input()) + 1)"],
    }
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", [problem])])
    problems = load_problems(lake, "TRUE")
    settings = SamplerSettings(n=2, temperature=(0.1, 0.8), top_p=0.95, max_new_tokens=24)
    rows = sample_and_judge(
        TransformersGenerator(model, tok, stop_strings=()),
        tok,
        problems,
        settings,
        source="pi0",
        run_id="r",
        model_id="pi0",
        tokenizer_id="tok",
        ref_model_id="pi0",
        workers=1,
    )
    lake.append("trajectories", rows)
    got = lake.dataset("trajectories").to_table().to_pylist()
    sampled = [r for r in got if r["source"] == "pi0"]
    human = [r for r in got if r["source"] == "human"]
    assert len(sampled) == 2 and len(human) == 1
    for r in sampled:
        n = len(r["response_ids"])
        assert len(r["behaviour_logprobs"]) == len(r["model_logprobs"]) == n
        assert r["ref_logprobs"] == r["model_logprobs"]  # the sampler is the reference model
        assert 0.1 <= r["temperature"] <= 0.8
        # Recompute both from a forward of the stored tokens.
        ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        p = len(r["prompt_ids"])
        for t, token in enumerate(r["response_ids"]):
            row_logits = logits[p - 1 + t]
            assert r["model_logprobs"][t] == pytest.approx(
                torch.log_softmax(row_logits, -1)[token].item(), abs=1e-4
            )
            mu = _mu_logprob(row_logits, token, r["temperature"], r["top_p"])
            assert r["behaviour_logprobs"][t] == pytest.approx(mu, abs=1e-4)
    # Rows nobody sampled here (human solutions) have neither.
    assert human[0]["behaviour_logprobs"] is None and human[0]["model_logprobs"] is None
