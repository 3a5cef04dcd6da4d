"""The fast training step (spo_train.lm.fast_step, issue 14) agrees with the plain fp32 path.

Tolerances (docs/gpu.md, "Tolerances"):
- chunked vs one-chunk log-probs, both float32: the same arithmetic row by row up to the
  blocking of the matrix product, so equal to float32 rounding: 2e-6 absolute on log-probs of
  magnitude ~6 (4 ulps; float32's ulp there is 4.8e-7); gradients are sums over chunks in
  another order: max |difference| <= 1e-6 x max |gradient| per tensor (measured 3e-7).
- activation checkpointing recomputes the same ops: the same bound.
- bf16 autocast vs fp32: bf16 keeps 8 bits of mantissa (unit roundoff 2^-8 = 0.004, ~2-3
  significant digits), so logits of magnitude ~10 carry an absolute error of a few 0.01 after
  the bf16 products; measured on the embedded model over 3 seeds: per-token |delta log p| max
  0.054, mean 0.01; SPO loss 1.2-2.3% relative; gradient cosine > 0.9999, norm within 0.4%.
  Bounds, about twice that: per token 0.1, SPO loss 5%, gradient cosine 0.99 and norm 5%.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from spo_train.algorithms.losses import spo_loss
from spo_train.lm.fast_step import (
    StepOptions,
    chunked_token_logprobs,
    configure_model,
    model_options,
    resolve_precision,
)
from spo_train.lm.logprobs import response_logprobs
from spo_train.lm.models import load_model_and_tokenizer

PLAIN = StepOptions(precision="fp32", logprob_chunk_size=0)


def _pi0():
    model, tok = load_model_and_tokenizer(None)
    return model, tok


def _rows(seed: int = 0, n: int = 5, vocab: int = 620):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(n):
        p = int(torch.randint(2, 12, (1,), generator=g))
        r = int(torch.randint(1, 40, (1,), generator=g)) if i != 2 else 0  # one empty row
        ids = torch.randint(3, vocab, (p + r,), generator=g).tolist()
        prompts.append([1, *ids[:p]])
        responses.append(ids[p:])
    return prompts, responses


def _assert_grads_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, g in expected.items():
        err = float((got[name] - g).abs().max())
        assert err <= 1e-6 * float(g.abs().max()), (name, err)


def _lp_and_grads(model, prompts, responses, options, micro=None):
    model.zero_grad(set_to_none=True)
    lp, mask = response_logprobs(
        model, prompts, responses, pad_token_id=0, options=options, micro_batch_size=micro
    )
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(lp.shape, generator=g)
    (lp * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), mask, grads


def test_chunked_logprobs_equal_one_chunk_with_gradients():
    model, _ = _pi0()
    prompts, responses = _rows()
    # chunks of 7 tokens: many chunk boundaries fall inside rows
    lp_c, mask_c, g_c = _lp_and_grads(model, prompts, responses, StepOptions("fp32", 7))
    lp_p, mask_p, g_p = _lp_and_grads(model, prompts, responses, PLAIN)
    assert torch.equal(mask_c, mask_p)
    assert mask_c.sum() > 50
    torch.testing.assert_close(lp_c, lp_p, atol=2e-6, rtol=0)
    assert lp_c[2].abs().sum() == 0  # the empty response scores nothing
    _assert_grads_close(g_c, g_p)


def test_chunk_recomputation_keeps_no_vocab_sized_activation():
    """With chunks, autograd saves no [tokens, vocab] float32 tensor: the backward recomputes
    each chunk's logits from the saved hidden states."""
    model, _ = _pi0()
    head = model.get_output_embeddings()
    hidden = torch.randn(64, head.weight.shape[1], requires_grad=True)
    targets = torch.randint(0, head.weight.shape[0], (64,))
    vocab = head.weight.shape[0]
    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_token_logprobs(hidden, head, targets, 16).sum().backward()
    assert not any(len(s) == 2 and s[-1] == vocab and s[0] > 1 for s in saved), saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = torch.log_softmax(head(hidden).float(), dim=-1)
        logp.gather(-1, targets[:, None]).sum().backward()
    # the same computation without the chunks' checkpointing saves [64, vocab]: the hook sees it
    assert any(len(s) == 2 and s == (64, vocab) for s in saved)


def test_activation_checkpointing_gives_equal_gradients():
    model, _ = _pi0()
    prompts, responses = _rows(seed=3)
    lp0, _, g0 = _lp_and_grads(model, prompts, responses, PLAIN)
    opts = StepOptions("fp32", 0, activation_checkpointing=True)
    configure_model(model, opts)
    assert model_options(model) == opts
    lp1, _, g1 = _lp_and_grads(model, prompts, responses, None)  # the attached options
    torch.testing.assert_close(lp1, lp0, atol=0, rtol=0)
    _assert_grads_close(g1, g0)


def test_checkpointing_recomputes_layers_in_backward():
    """The wrapped decoder layers run again during backward (that is what saves memory)."""
    model, _ = _pi0()
    configure_model(model, StepOptions("fp32", 0, activation_checkpointing=True))
    layer = model.model.layers[0]
    calls = []
    # a pre-hook: checkpoint's recomputation stops early, once the saved tensors it needs exist
    layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    prompts, responses = _rows(seed=4, n=2)
    lp, _ = response_logprobs(model, prompts, responses, pad_token_id=0)
    assert len(calls) == 1
    lp.sum().backward()
    assert len(calls) == 2  # recomputed once in backward


def test_bf16_fast_path_agrees_with_fp32_within_stated_tolerance():
    model, _ = _pi0()
    prompts, responses = _rows(seed=5, n=6)
    fast = StepOptions("bf16", 16)
    lp_f, mask, g_f = _lp_and_grads(model, prompts, responses, fast)
    lp_p, _, g_p = _lp_and_grads(model, prompts, responses, PLAIN)
    diff = (lp_f - lp_p)[mask].abs()
    assert diff.max() <= 0.1, float(diff.max())
    assert diff.max() > 0  # bf16 really ran (fp32 would agree to ~1e-6)
    flat_f = torch.cat([g.flatten() for g in g_f.values()])
    flat_p = torch.cat([g_p[n].flatten() for n in g_f])
    cos = torch.nn.functional.cosine_similarity(flat_f, flat_p, dim=0)
    assert cos >= 0.99, float(cos)
    assert abs(flat_f.norm() / flat_p.norm() - 1) <= 0.05


def test_bf16_spo_loss_and_its_gradient_agree_with_fp32():
    torch.manual_seed(0)
    model, _ = _pi0()
    prompts, responses = _rows(seed=6, n=6)
    ref, mask = response_logprobs(
        model, prompts, responses, pad_token_id=0, options=PLAIN, requires_grad=False
    )
    ref = ref - 0.1 * mask  # pi_0 a little off the policy: a non-zero log-ratio
    reward = torch.tensor([0.0, -1.0, 0.0, -1.0, -1.0, 0.0])
    q0 = torch.full((6,), -0.4)

    def loss_and_grads(options):
        model.zero_grad(set_to_none=True)
        lp, m = response_logprobs(model, prompts, responses, pad_token_id=0, options=options)
        loss = spo_loss(lp, ref, q0, reward, m, 0.0869, "terminal_ce")
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss_f, g_f = loss_and_grads(StepOptions("bf16", 16))
    loss_p, g_p = loss_and_grads(PLAIN)
    assert abs(loss_f - loss_p) <= 0.05 * abs(loss_p), (loss_f, loss_p)
    assert torch.nn.functional.cosine_similarity(g_f, g_p, dim=0) >= 0.99
    assert abs(g_f.norm() / g_p.norm() - 1) <= 0.05


def test_length_bucketing_keeps_row_order():
    model, _ = _pi0()
    prompts, responses = _rows(seed=7, n=7)
    full, mask = response_logprobs(model, prompts, responses, pad_token_id=0, options=PLAIN)
    mb, mask_mb = response_logprobs(
        model, prompts, responses, pad_token_id=0, options=PLAIN, micro_batch_size=2
    )
    assert torch.equal(mask, mask_mb)
    torch.testing.assert_close(mb, full, atol=1e-5, rtol=0)


def test_a_model_that_softcaps_its_logits_keeps_the_plain_path():
    """Gemma 2 soft-caps logits after the head: lm_head(hidden) is not its logits, so the
    chunked path must not be used; results still equal the plain path."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from spo_train.lm.logprobs import _hidden_path_ok

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=2.0,
    )
    model = Gemma2ForCausalLM(cfg).eval()
    assert not _hidden_path_ok(model)
    prompts, responses = _rows(seed=8, n=3, vocab=300)
    a, _ = response_logprobs(model, prompts, responses, pad_token_id=0, options=StepOptions())
    b, _ = response_logprobs(model, prompts, responses, pad_token_id=0, options=PLAIN)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_precision_resolution_and_errors():
    assert resolve_precision("auto", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_ppo_value_model_runs_under_bf16_and_returns_float32(tmp_path):
    from spo_train.algorithms.ppo import ValueModel
    from spo_train.lm.models import default_model_path

    prompts, responses = _rows(seed=9, n=3)
    vm = ValueModel(
        default_model_path(), options=StepOptions("bf16", 256, activation_checkpointing=True)
    )
    torch.nn.init.normal_(vm.head.weight)
    v = vm(prompts, responses, 0)
    assert v.dtype == torch.float32
    v.sum().backward()
    assert vm.head.weight.grad is not None and vm.head.weight.grad.abs().sum() > 0
    plain = ValueModel(default_model_path())
    plain.head.load_state_dict(vm.head.state_dict())
    with torch.no_grad():
        v_plain = plain(prompts, responses, 0)
    assert (v.detach() - v_plain).abs().max() < 0.05 * v_plain.abs().max()


def test_spo_bench_step_json_on_cpu():
    """`spo bench step --json` runs one step of each algorithm on the embedded model and
    prints the fields the docs promise (real CLI, real models, real optimizer steps)."""
    cmd = [
        sys.executable,
        "-m",
        "spo_cli.main",
        "bench",
        "step",
        "--json",
        "--batch-size",
        "4",
        "--group-size",
        "2",
        "--seq-len",
        "40",
        "--prompt-len",
        "8",
        "--steps",
        "1",
        "--modes",
        "fast,plain",
        "--activation-checkpointing",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    results = doc["results"]
    assert {(r["algo"], r["mode"]) for r in results} == {
        (a, m) for a in ("spo", "ppo", "grpo") for m in ("fast", "plain")
    }
    for r in results:
        assert r["tokens"] == 4 * 40
        assert r["step_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"])
        assert r["mfu"] is None  # no known peak for a CPU
        assert r["peak_memory_bytes"] > 0
        assert r["model_flops_per_step"] > 0
    by = {(r["algo"], r["mode"]): r for r in results}
    assert by[("ppo", "fast")]["extra_params"] > 0 and by[("spo", "fast")]["extra_params"] == 0
    # PPO trains a second model of the policy's size: more model FLOPs than SPO
    assert by[("ppo", "fast")]["model_flops_per_step"] > by[("spo", "fast")]["model_flops_per_step"]
    assert by[("spo", "fast")]["activation_checkpointing"] is True
    assert by[("spo", "plain")]["logprob_chunk_size"] == 0
    assert "spo_over_ppo_fast" in doc["ratios"] and "fast_over_plain_spo" in doc["ratios"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algos", "dpo"], "--algos dpo"),
        (["--prompt-len", "300"], "--prompt-len 300"),
        (["--random-llama", "7b"], "--random-llama 7b"),
        (["--precision", "fp16"], "precision"),
    ],
)
def test_spo_bench_step_bad_input_is_one_line(args, message):
    cmd = [sys.executable, "-m", "spo_cli.main", "bench", "step", "--steps", "1", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_compiled_model_gives_the_same_logprobs_and_gradients():
    """`compile` (inductor on a CPU: about 1-2 minutes of compiling) changes no result: the
    decoder the chunked path calls is compiled too, and agrees with eager to float32 rounding
    (inductor fuses and reorders float32 sums: 1e-5 on log-probs, 1e-5 x max on gradients)."""
    model, _ = _pi0()
    prompts, responses = _rows(seed=10, n=4)
    opts = StepOptions("fp32", 64)
    lp0, _, g0 = _lp_and_grads(model, prompts, responses, opts)
    configure_model(model, StepOptions("fp32", 64, compile=True))
    assert getattr(model.base_model, "_compiled_call_impl", None) is not None
    lp1, _, g1 = _lp_and_grads(model, prompts, responses, None)
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    for name, g in g0.items():
        err = float((g1[name] - g).abs().max())
        assert err <= 1e-5 * float(g.abs().max()), (name, err)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("Tesla T4", None),
    ],
)
def test_mfu_peak_by_gpu_name(name, peak):
    from spo_train.train.bench_step import peak_flops_of

    assert peak_flops_of(name) == peak


def test_bench_random_llama_preset_builds_loads_and_steps():
    """The GPU script's path on a CPU: a random Llama preset is built, saved with a tokenizer,
    loaded the way the trainer loads models, and trained one step; its FLOPs count is PaLM's
    6N per token plus attention (N without the input embedding, with the untied LM head)."""
    from spo_train.train.bench_step import BenchSpec, run

    doc = run(
        BenchSpec(
            algos=("spo",),
            random_llama="30m",
            batch_size=2,
            group_size=1,
            seq_len=24,
            prompt_len=8,
            steps=1,
        )
    )
    (r,) = doc["results"]
    assert r["policy_params"] == 35_197_824  # 6 layers of d_model 384, 32k vocabulary, untied
    embed = 32000 * 384
    body = r["policy_params"] - 2 * embed
    expected = 2 * (6 * body * 24 + 6 * embed * 16 + 12 * 6 * 384 * 24 * 24)
    assert r["model_flops_per_step"] == expected
    assert r["step_s"] > 0 and r["tokens"] == 48


@pytest.mark.parametrize("algo", ["spo", "ppo", "grpo", "topr"])
def test_an_algorithm_step_under_bf16_matches_fp32(algo, tmp_path):
    """The run's settings reach the policy through `Algorithm.update` (no trainer change), and
    one whole step (loss, clipped gradient) under bf16 agrees with the float32 step within
    the bf16 bounds above."""
    from spo_train.algorithms import make_algorithm
    from spo_train.lm.models import default_model_path
    from spo_train.train.bench_step import BenchSpec, _config, synthetic_batch
    from spo_train.train.learner import PolicyLearner

    spec = BenchSpec(batch_size=4, group_size=2, seq_len=48, prompt_len=8)
    metrics = {}
    for mode, precision in (("fast", "bf16"), ("plain", "fp32")):
        spec.precision = precision
        config = _config(spec, algo, mode, default_model_path(), tmp_path)
        torch.manual_seed(0)
        policy, tok = load_model_and_tokenizer(None)
        batch = synthetic_batch(spec, 620, policy)
        learner = PolicyLearner(policy, config, tok.pad_token_id)
        out = make_algorithm(config, pi0_path=default_model_path()).update(batch, learner)
        assert model_options(policy).precision == precision
        metrics[mode] = out
    # TOPR's loss is a difference of large terms (+-0.5 log pi(tau) of successes and failures,
    # ~170 each here), and each failure's taper min(pi/mu, 1) sums bf16 rounding over the whole
    # response (mu = pi_0 in fp32 here: taper 0.965 under bf16, 1 under fp32; loss -5.6 vs
    # -8.7): its taper is what must agree
    loss_key = {"spo": "train/loss", "topr": "train/negative_taper_mean"}.get(
        algo, "train/policy_loss"
    )
    fast, plain = metrics["fast"], metrics["plain"]
    assert abs(fast[loss_key] - plain[loss_key]) <= 0.05 * abs(plain[loss_key]) + 1e-3
    assert fast["train/grad_norm"] == pytest.approx(plain["train/grad_norm"], rel=0.05)
    assert fast[loss_key] != plain[loss_key]  # bf16 really ran (measured: 0.5-2% apart)
