"""Tests of `spo_train.lm.logprobs.response_logprobs` on a tiny random Llama (no downloads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import spo_train.lm.logprobs as logprobs_mod
from spo_train.algorithms.losses import cumulative_q, spo_loss
from spo_train.lm.logprobs import build_batch, response_logprobs

VOCAB = 61

PROMPTS = [[1, 5, 9], [1], [1, 2, 3, 4, 5, 6, 7, 8], [1, 40], [1, 3, 3]]
RESPONSES = [[7, 8, 9, 10, 11], [12, 13], [14], [], [60, 0, 59, 2, 2, 2, 2, 2, 31]]


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama()


def reference_logprobs(model: nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Unbatched, unpadded: full logits of prompt+response, log-softmax, pick response tokens."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    n_p = len(prompt)
    return (
        torch.stack([logp[n_p + j - 1, tok] for j, tok in enumerate(response)])
        if response
        else torch.zeros(0)
    )


def test_batched_equals_unbatched_reference(model: LlamaForCausalLM) -> None:
    lp, mask = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    t_max = max(len(r) for r in RESPONSES)
    assert lp.shape == (len(PROMPTS), t_max) and mask.shape == lp.shape
    assert lp.dtype == torch.float32 and mask.dtype == torch.bool
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        assert mask[i].tolist() == [j < len(r) for j in range(t_max)]
        ref = reference_logprobs(model, p, r)
        torch.testing.assert_close(lp[i, : len(r)], ref, atol=1e-5, rtol=0)
        assert torch.equal(lp[i, len(r) :], torch.zeros(t_max - len(r)))  # padding holds 0


@pytest.mark.parametrize("micro_batch_size", [1, 2, 4, 100])
def test_micro_batching_and_pad_token_do_not_matter(
    model: LlamaForCausalLM, micro_batch_size: int
) -> None:
    full, mask = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    mb, mask_mb = response_logprobs(
        model,
        PROMPTS,
        RESPONSES,
        pad_token_id=17 if micro_batch_size != 100 else None,
        micro_batch_size=micro_batch_size,
        requires_grad=False,
    )
    assert torch.equal(mask, mask_mb)
    torch.testing.assert_close(mb, full, atol=1e-5, rtol=0)


def test_prompt_tokens_do_not_count(model: LlamaForCausalLM) -> None:
    """The output scores exactly the response tokens: its sum is log p(prompt+response) minus
    log p(prompt) (both scored from the first token on), whatever the prompt length."""
    lp, mask = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        full = reference_logprobs(model, p[:1], p[1:] + r).sum()
        prompt_only = reference_logprobs(model, p[:1], p[1:]).sum()
        assert float(lp[i].sum()) == pytest.approx(float(full - prompt_only), abs=1e-4)
    # a longer prompt does not add columns
    lp2, _ = response_logprobs(
        model, [p + [3, 4, 5] for p in PROMPTS], RESPONSES, pad_token_id=0, requires_grad=False
    )
    assert lp2.shape == lp.shape


def test_gradient_flows_only_through_response_positions(model: LlamaForCausalLM) -> None:
    model.zero_grad()
    lp, mask = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0)
    assert lp.requires_grad
    (lp * mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # gradient w.r.t. the padded entries of the output is irrelevant: they are constants
    emb = model.get_input_embeddings().weight.grad
    # no row of the embedding of a token absent from every row gets gradient
    used = {t for p, r in zip(PROMPTS, RESPONSES, strict=True) for t in p + r}
    unused = [t for t in range(VOCAB) if t not in used and t != 0]
    assert torch.equal(emb[unused], torch.zeros_like(emb[unused]))
    model.zero_grad()


def test_requires_grad_false_builds_no_graph(model: LlamaForCausalLM) -> None:
    lp, _ = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    assert not lp.requires_grad and lp.grad_fn is None


def test_fallback_paths_agree(model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older transformers (int `logits_to_keep`) and models without it give the same result."""
    expected, _ = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    monkeypatch.setattr(logprobs_mod, "_supports_bool_keep", lambda m: False)
    got, _ = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)

    class NoKeep(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )

    got2, _ = response_logprobs(
        NoKeep(model), PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False
    )
    torch.testing.assert_close(got2, expected, atol=1e-6, rtol=0)


def test_bf16_model_logsoftmax_in_float32() -> None:
    m = tiny_llama(seed=1, dtype=torch.bfloat16)
    lp, mask = response_logprobs(m, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    assert lp.dtype == torch.float32
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ref = reference_logprobs(m, p, r)  # logits upcast before the log-softmax, unbatched
        torch.testing.assert_close(lp[i, : len(r)], ref, atol=0.05, rtol=0)


def test_same_policy_and_reference_give_zero_advantage(model: LlamaForCausalLM) -> None:
    """Integration: pi_theta = pi_0 (same weights) => A = 0 and Q_t = Q_hat_0 exactly."""
    ref = tiny_llama()  # same seed -> same weights
    lp, mask = response_logprobs(model, PROMPTS, RESPONSES, pad_token_id=0)
    lp0, mask0 = response_logprobs(ref, PROMPTS, RESPONSES, pad_token_id=0, requires_grad=False)
    assert torch.equal(mask, mask0)
    q0 = torch.tensor([-0.2, -1.0, 0.0, -0.5, -0.7])
    reward = torch.tensor([0.0, -1.0, 0.0, -1.0, 0.0])
    q = cumulative_q(lp, lp0, q0, mask, 0.1)
    assert torch.equal(q.detach(), q0.unsqueeze(-1).expand_as(q))
    loss = spo_loss(lp, lp0, q0, reward, mask, 0.1, "terminal_ce")
    loss.backward()  # end to end: gradient reaches the policy
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_build_batch_layout_and_errors() -> None:
    b = build_batch([[1, 2], [3]], [[4], [5, 6, 7]], pad_token_id=9)
    assert b["input_ids"].tolist() == [[1, 2, 4, 9], [3, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert b["predict_mask"].tolist() == [[False, True, False, False], [True, True, True, False]]
    assert b["targets"].tolist() == [[4, 0, 0], [5, 6, 7]]
    assert b["mask"].tolist() == [[True, False, False], [True, True, True]]
    with pytest.raises(ValueError):
        build_batch([[]], [[1]], pad_token_id=0)
    with pytest.raises(ValueError):
        build_batch([[1]], [[1], [2]], pad_token_id=0)


def test_all_empty_responses(model: LlamaForCausalLM) -> None:
    lp, mask = response_logprobs(model, [[1], [2, 3]], [[], []], pad_token_id=0)
    assert lp.shape == (2, 0) and mask.shape == (2, 0)
