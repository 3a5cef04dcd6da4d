"""Re-encoding a response cut at max_new_tokens appends no eos it never generated (issue 9,
item 10b), with the embedded pi_0's real tokenizer, through `encode_response` and the
training batch path (`ReferenceCache.prepare`, which re-encodes rows of another tokenizer)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from spo_train.lm.models import load_model_and_tokenizer
from spo_train.lm.prompting import build_prompt, encode_prompt, encode_response


@pytest.fixture(scope="module")
def pi0():
    return load_model_and_tokenizer(None)


def test_a_sample_cut_at_length_reencodes_to_its_own_tokens(pi0):
    from spo_train.lm.generation import TransformersGenerator

    model, tok = pi0
    prompt = build_prompt("Read n and print n + 1.", tok)
    (group,) = TransformersGenerator(model, tok).generate(
        [prompt], n=4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3
    )
    cut = [s for s in group if s.finish_reason == "length"]
    assert cut, "no sample reached max_new_tokens"
    for s in cut:
        assert tok.eos_token_id not in s.response_ids
        assert encode_response(tok, s.text, "length") == list(s.response_ids)
        # The old behaviour (no finish_reason) adds an eos the model never sampled.
        assert encode_response(tok, s.text)[-1] == tok.eos_token_id


def test_finished_and_human_text_still_end_as_generated(pi0):
    _, tok = pi0
    text = "```python\nprint(int(input()) + 1)"  # no closing fence: eos ended it
    assert encode_response(tok, text, "stop")[-1] == tok.eos_token_id
    ids = encode_response(tok, text, "length")
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    # Bare sampled text is not wrapped in a fence the model never wrote; human code is.
    bare = "print(1)"
    assert encode_response(tok, bare, "length") == tok(bare, add_special_tokens=False)["input_ids"]
    assert len(encode_response(tok, bare)) > len(encode_response(tok, bare, "length"))


def test_training_batch_reencodes_a_cut_row_without_eos(tmp_path, pi0):
    from spo_store.lake import Lake
    from spo_train.train.batch import ReferenceCache

    model, tok = pi0
    lake = Lake.open(tmp_path / "lake")
    statement = "Read n and print n + 1."
    text = "```python\nn = int(input())\nprint(n +"
    rows = pa.table(
        {
            "traj_id": ["cut", "done"],
            "problem_id": ["p", "p"],
            "response": [text, text + " 1)\n```"],
            "finish_reason": ["length", "stop"],
            # sampled under another tokenizer: the batch must re-encode the text
            "tokenizer_id": ["other", "other"],
            "reward": [-1.0, 0.0],
        }
    )
    problems = {"p": {"statement": statement, "q0": -0.5}}
    prepared = ReferenceCache(lake, tok, "embedded", model, "pi0", "run").prepare(rows, problems)
    assert prepared.response_ids[0] == tok(text, add_special_tokens=False)["input_ids"]
    assert prepared.response_ids[0][-1] != tok.eos_token_id
    assert prepared.prompt_ids[0] == encode_prompt(tok, build_prompt(statement, tok))
    assert len(prepared.ref_logprobs[0]) == len(prepared.response_ids[0])
