"""The SPO loss forward runs with dropout off while gradients flow (issue 9, item 10c).

log pi_theta and log pi_0 are compared token by token; with dropout on, the policy's log-probs
are a random perturbation of the network's and A_t = beta (log pi_theta - log pi_0) is not 0
even at initialisation. Tested on real transformers models whose configs have dropout.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from spo_train.lm.logprobs import response_logprobs
from spo_train.train.learner import policy_logprobs

PROMPTS = [[1, 5, 9], [1, 2, 3, 4]]
RESPONSES = [[7, 8, 9, 10, 11, 12], [13, 14, 15]]


def gpt2_with_dropout() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


def llama_with_dropout() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("make", [gpt2_with_dropout, llama_with_dropout])
def test_loss_forward_is_deterministic_and_differentiable(make):
    model = make()
    model.train()  # as a freshly loaded or previously trained model may be
    # The config really has dropout: two train-mode forwards disagree.
    a, _ = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0)
    b, _ = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0)
    assert not torch.allclose(a, b)
    # The trainer's forward: equal on every call and equal to the no-dropout reference...
    x, mask = policy_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0)
    y, _ = policy_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0)
    assert torch.equal(x[mask], y[mask])
    with torch.no_grad():
        ref, _ = response_logprobs(model.eval(), PROMPTS, RESPONSES, pad_token_id=0)
    assert torch.allclose(x[mask], ref[mask], atol=1e-6)
    # ...so A_t = beta (log pi_theta - log pi_0) is exactly 0 when pi_theta = pi_0...
    assert float((x - ref).detach()[mask].abs().max()) < 1e-6
    # ...and gradients still flow to every trainable weight the log-probs depend on.
    x[mask].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
