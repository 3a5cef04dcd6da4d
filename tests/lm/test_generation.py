"""The transformers generation backend on a tiny random Llama (fast; no shipped assets needed)."""

from __future__ import annotations

import pytest
import torch

from spo_store.errors import SpoError
from spo_train.embedded import build
from spo_train.embedded import generator as gen
from spo_train.lm.generation import (
    VLLM_MISSING,
    Generator,
    Sample,
    TransformersGenerator,
    make_generator,
    per_sample_temperatures,
    random_temperatures,
)
from spo_train.lm.prompting import build_prompt, encode_prompt


@pytest.fixture(scope="module")
def tiny():
    problems = gen.generate_split("train", 30, seed=0)
    tok = build.train_tokenizer(build.tokenizer_corpus(problems), vocab_size=400)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    prompts = [build_prompt(p.statement, tok) for p in problems[:3]]
    prompts[1] = prompts[1][: len(prompts[1]) // 2]  # different lengths: left padding matters
    return model, tok, prompts


def _gen(model, tok, **kw):
    return TransformersGenerator(model, tok, stop_strings=kw.pop("stop_strings", ()), **kw)


def test_shapes_and_fields(tiny):
    model, tok, prompts = tiny
    g = _gen(model, tok, batch_size=5)
    assert isinstance(g, Generator)
    out = g.generate(prompts, n=4, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=1)
    assert len(out) == 3 and all(len(group) == 4 for group in out)
    for prompt, group in zip(prompts, out, strict=True):
        for s in group:
            assert isinstance(s, Sample)
            assert s.prompt_ids == encode_prompt(tok, prompt)
            assert 1 <= len(s.response_ids) <= 12
            assert len(s.logprobs) == len(s.behaviour_logprobs) == len(s.response_ids)
            assert all(lp <= 0 for lp in s.logprobs)
            assert all(lp <= 1e-6 for lp in s.behaviour_logprobs)
            assert s.text == tok.decode(s.response_ids, skip_special_tokens=True)
            assert s.temperature == 1.0 and s.top_p == 0.95
            if s.finish_reason == "length":
                assert len(s.response_ids) == 12
            else:
                assert s.response_ids[-1] == tok.eos_token_id


def test_deterministic_with_seed_and_independent_of_batch_size(tiny):
    model, tok, prompts = tiny

    def ids(batch_size, seed):
        out = _gen(model, tok, batch_size=batch_size).generate(
            prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=seed
        )
        return [s.response_ids for group in out for s in group]

    a = ids(4, seed=7)
    assert a == ids(4, seed=7)
    assert a == ids(16, seed=7)
    assert a == ids(1, seed=7)
    assert a != ids(4, seed=8)


def test_logprobs_are_raw_policy_logprobs_of_a_fresh_forward(tiny):
    model, tok, prompts = tiny
    temps = [0.3, 0.7, 1.3] * 2
    out = _gen(model, tok, batch_size=4).generate(
        prompts[:2], n=3, temperature=temps, top_p=0.8, max_new_tokens=9, seed=3
    )
    for group in out:
        for s in group:
            ids = torch.tensor([s.prompt_ids + s.response_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0].float()
            logp = torch.log_softmax(logits, -1)  # temperature 1, no top-p
            p = len(s.prompt_ids)
            fresh = [logp[p - 1 + t, tok_id].item() for t, tok_id in enumerate(s.response_ids)]
            assert s.logprobs == pytest.approx(fresh, abs=1e-4)


def test_per_sample_temperature_and_greedy(tiny):
    model, tok, prompts = tiny
    temps = [0.0, 2.0, 0.0, 2.0]
    out = _gen(model, tok, batch_size=8).generate(
        prompts[:2], n=2, temperature=temps, top_p=1.0, max_new_tokens=8, seed=0
    )
    flat = [s for group in out for s in group]
    assert [s.temperature for s in flat] == temps
    # Greedy samples follow the argmax path of a plain forward pass.
    for s in (flat[0], flat[2]):
        ids = list(s.prompt_ids)
        for t in s.response_ids:
            with torch.no_grad():
                nxt = model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
            assert nxt == t
            ids.append(t)
    # Greedy is seed-independent; hot samples are not.
    again = _gen(model, tok, batch_size=8).generate(
        prompts[:2], n=2, temperature=temps, top_p=1.0, max_new_tokens=8, seed=99
    )
    assert again[0][0].response_ids == flat[0].response_ids
    assert again[0][1].response_ids != flat[1].response_ids


def test_temperature_list_must_match(tiny):
    model, tok, prompts = tiny
    with pytest.raises(SpoError, match="temperatures"):
        _gen(model, tok).generate(
            prompts, n=2, temperature=[0.5] * 5, top_p=1.0, max_new_tokens=4, seed=0
        )
    assert per_sample_temperatures(0.4, 2, 3) == [0.4] * 6
    temps = random_temperatures(1000, seed=1)
    assert min(temps) >= 0.1 and max(temps) <= 0.8 and temps == random_temperatures(1000, seed=1)


def test_max_new_tokens_gives_length(tiny):
    model, tok, prompts = tiny
    out = _gen(model, tok).generate(
        prompts[:1], n=2, temperature=1.0, top_p=1.0, max_new_tokens=3, seed=0
    )
    for s in out[0]:
        assert len(s.response_ids) <= 3
        assert (s.finish_reason == "length") == (
            len(s.response_ids) == 3 and s.response_ids[-1] != tok.eos_token_id
        )


def test_eos_stops_a_sample(tiny):
    model, tok, prompts = tiny
    g = _gen(model, tok)
    first = g.generate(prompts[:1], n=1, temperature=0.0, top_p=1.0, max_new_tokens=5, seed=0)[0][0]
    g.eos_token_ids = frozenset({first.response_ids[1]})  # pretend the 2nd greedy token is eos
    s = g.generate(prompts[:1], n=1, temperature=0.0, top_p=1.0, max_new_tokens=5, seed=0)[0][0]
    assert s.response_ids == first.response_ids[:2] and s.finish_reason == "stop"


def test_stop_string_stops_right_after_it(tiny):
    model, tok, prompts = tiny
    free = _gen(model, tok).generate(
        prompts[:1], n=4, temperature=1.0, top_p=1.0, max_new_tokens=30, seed=5
    )[0]
    text = max((s.text for s in free), key=len)
    stop = next(ch for ch in text[3:] if ch.strip())  # a character sampled after a few tokens
    out = _gen(model, tok, stop_strings=(stop,)).generate(
        prompts[:1], n=4, temperature=1.0, top_p=1.0, max_new_tokens=30, seed=5
    )[0]
    hit = [s for s in out if s.finish_reason == "stop" and s.response_ids[-1] != tok.eos_token_id]
    assert hit
    for s in hit:
        assert stop in s.text
        assert stop not in tok.decode(s.response_ids[:-1], skip_special_tokens=True)


def test_growable_cache_matches_plain_dynamic_cache(tiny):
    model, tok, prompts = tiny
    kw = dict(n=3, temperature=0.8, top_p=0.95, max_new_tokens=20, seed=11)
    a = _gen(model, tok, batch_size=4, growable_cache=True).generate(prompts, **kw)
    b = _gen(model, tok, batch_size=4, growable_cache=False).generate(prompts, **kw)
    for ga, gb in zip(a, b, strict=True):
        for sa, sb in zip(ga, gb, strict=True):
            assert sa.response_ids == sb.response_ids
            assert sa.logprobs == pytest.approx(sb.logprobs, abs=1e-5)
            assert sa.behaviour_logprobs == pytest.approx(sb.behaviour_logprobs, abs=1e-5)


def test_backends():
    with pytest.raises(SpoError) as e:
        make_generator("vllm", None)
    assert str(e.value) == VLLM_MISSING
    with pytest.raises(SpoError, match="unknown backend"):
        make_generator("nope", None)
