"""Generation emits no deprecation warning (one per forward broke every progress bar)."""

from __future__ import annotations

import logging
import warnings

import torch

from spo_train.embedded import build
from spo_train.embedded import generator as gen
from spo_train.lm.generation import TransformersGenerator
from spo_train.lm.prompting import build_prompt


def test_sampling_warns_nothing(caplog) -> None:
    problems = gen.generate_split("train", 10, seed=0)
    tok = build.train_tokenizer(build.tokenizer_corpus(problems), vocab_size=300)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    generator = TransformersGenerator(model, tok, stop_strings=())
    prompts = [build_prompt(p.statement, tok) for p in problems[:2]]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        out = generator.generate(prompts, n=2, temperature=1.0, max_new_tokens=6, seed=0)
    assert len(out) == 2 and all(len(g) == 2 for g in out)
    assert [str(w.message) for w in caught] == []
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
