"""Batched log-probs of response tokens under a causal LM (project issue #5, item 2).

`response_logprobs` is the only place where model outputs become the `[B, T]` log-prob tensors
that every loss in `spo_train.algorithms.losses` consumes. Contract (shared with the losses):

- row `i` is `prompt_ids[i] + response_ids[i]`; column `j` of the output is
  `log pi(response_ids[i][j] | prompt_ids[i] + response_ids[i][:j])`;
- the output is right-padded to `T = max_i len(response_ids[i])`; `mask[i, j]` is True exactly
  on real response tokens; padded entries hold `0.0` (never `-inf`, so sums stay finite);
- the log-softmax is taken in float32 whatever the model's dtype.

Memory: the model projects only the hidden states that predict a response token onto the
vocabulary, so no `[B, L, V]` tensor exists. On the fast path (`spo_train.lm.fast_step`, the
default) the projection and the float32 log-softmax run `logprob_chunk_size` tokens at a time,
each chunk recomputed in the backward, so not even `[N_response_tokens, V]` exists in float32
at once; the forward runs under bf16 autocast where the precision resolves to bf16 (CUDA by
default). The plain path (`StepOptions(precision="fp32", logprob_chunk_size=0)`) projects the
`N` rows through the model's own forward (`logits_to_keep`) and is the reference the tests
compare the fast path with. Micro-batches are formed from rows sorted by length (length
bucketing), so a micro-batch pads to the length of similar rows, not of the longest one.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spo_train.lm.fast_step import (
    StepOptions,
    autocast,
    chunked_token_logprobs,
    model_options,
)

__all__ = ["response_logprobs", "build_batch"]


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int | None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Right-pad `prompt + response` rows into model inputs.

    Returns a dict with
      - `input_ids` `[B, L]` long, right-padded with `pad_token_id`;
      - `attention_mask` `[B, L]` long, 1 on real tokens;
      - `position_ids` `[B, L]` long, `0..len-1` on real tokens (right padding needs no offset;
        padded slots keep counting, they are masked anyway);
      - `predict_mask` `[B, L]` bool, True at the positions whose next-token distribution
        scores a response token (position `P_i + j - 1` predicts response token `j`);
      - `targets` `[B, T]` long, response tokens right-padded with 0;
      - `mask` `[B, T]` bool, True on real response tokens.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if len(prompt_ids) == 0:
        raise ValueError("empty batch")
    for i, p in enumerate(prompt_ids):
        # The first response token needs a prefix to be predicted from (e.g. BOS).
        if len(p) == 0:
            raise ValueError(f"row {i}: empty prompt; prepend at least a BOS token")
    if pad_token_id is None:
        # Padded slots are masked out of attention and never scored: any valid id works.
        pad_token_id = 0
    batch = len(prompt_ids)
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    max_len = max(lengths)
    max_resp = max(len(r) for r in response_ids)

    input_ids = torch.full((batch, max_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, max_len), dtype=torch.long)
    predict_mask = torch.zeros((batch, max_len), dtype=torch.bool)
    targets = torch.zeros((batch, max_resp), dtype=torch.long)
    mask = torch.zeros((batch, max_resp), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        n_p, n_r = len(p), len(r)
        input_ids[i, : n_p + n_r] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, : n_p + n_r] = 1
        predict_mask[i, n_p - 1 : n_p + n_r - 1] = True
        if n_r:
            targets[i, :n_r] = torch.tensor(list(r), dtype=torch.long)
            mask[i, :n_r] = True
    position_ids = torch.arange(max_len, dtype=torch.long).unsqueeze(0).expand(batch, -1)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids.contiguous(),
        "predict_mask": predict_mask,
        "targets": targets,
        "mask": mask,
    }
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def _keep_kwarg(model: nn.Module) -> str | None:
    """Name of the forward argument that restricts the lm_head projection, if any."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return name
    return None


def _supports_bool_keep(model: nn.Module) -> bool:
    # transformers >= 5 slices hidden states with a 2-D bool `logits_to_keep` (per-row
    # positions, flattened output) through `slice_logits_to_keep`; older versions would
    # misinterpret a 2-D tensor, so only use it where that helper is in the model's module.
    module = sys.modules.get(type(model).__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")


def _response_logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Logits `[N, V]` at the `N = predict_mask.sum()` positions that predict response tokens,
    in row-major order (row by row, left to right), in the model's dtype."""
    predict_mask = batch["predict_mask"]
    kwargs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
        "use_cache": False,
    }
    keep = _keep_kwarg(model)
    if keep == "logits_to_keep" and _supports_bool_keep(model):
        logits = model(**kwargs, logits_to_keep=predict_mask).logits
        if logits.ndim == 2 and logits.shape[0] == int(predict_mask.sum()):
            return logits
        # Unexpected layout (a model that ignores the mask): fall through to the full path.
        if logits.ndim == 3 and logits.shape[1] == predict_mask.shape[1]:
            return logits[predict_mask]
    max_len = predict_mask.shape[1]
    if keep is not None:
        # Keep the last K positions: K covers every predicting position of every row.
        cols = predict_mask.any(dim=0).nonzero()
        first = int(cols[0]) if cols.numel() else max_len - 1
        n_keep = max_len - first
        logits = model(**kwargs, **{keep: n_keep}).logits
        return logits[predict_mask[:, first:]]
    logits = model(**kwargs).logits
    return logits[predict_mask]


def _response_hidden(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Final hidden states `[N, H]` at the positions that predict response tokens (row-major),
    from the model's base (decoder stack with its final norm), without the LM head."""
    out = model.base_model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return out.last_hidden_state[batch["predict_mask"]]


def _hidden_path_ok(model: nn.Module) -> bool:
    """Whether `lm_head(base_model(x))` reproduces the model's logits (checked once per model
    on a 6-token input, in float32 without gradients). Models that scale or soft-cap their
    logits after the head (e.g. Gemma 2's `final_logit_softcapping`) fail it and keep the
    plain path; so does a model without a linear output embedding."""
    cached = getattr(model, "_spo_hidden_path_ok", None)
    if cached is not None:
        return cached
    ok = False
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if isinstance(head, nn.Linear) and base is not None and base is not model:
        device = head.weight.device
        vocab = head.weight.shape[0]
        ids = [[1 % vocab, 5 % vocab, 9 % vocab], [3 % vocab, 7 % vocab, 2 % vocab]]
        batch = build_batch(ids[:1], ids[1:], pad_token_id=0, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                plain = _response_logits(model, batch).float()
                hidden = _response_hidden(model, batch)
                via_head = head(hidden).float()
            ok = plain.shape == via_head.shape and torch.allclose(
                plain, via_head, atol=1e-4, rtol=1e-4
            )
        except (TypeError, AttributeError, RuntimeError):
            ok = False
        finally:
            model.train(was_training)
    model._spo_hidden_path_ok = ok
    return ok


def response_logprobs(
    model: nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_token_id: int | None,
    micro_batch_size: int | None = None,
    requires_grad: bool = True,
    options: StepOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probs of the taken response tokens, batched and right-padded.

    Args:
        model: any transformers causal LM (`AutoModelForCausalLM`); called as
            `model(input_ids, attention_mask, position_ids, use_cache=False, logits_to_keep=...)`.
        prompt_ids: `B` token lists, each non-empty (the first response token is scored given
            the prompt; a prompt must hold at least a BOS).
        response_ids: `B` token lists (may be empty: that row is fully masked).
        pad_token_id: token used for padding; padded slots are masked out of attention (None,
            as some tokenizers report, means 0: the value does not matter).
        micro_batch_size: run the forward on chunks of this many rows (each chunk padded to its
            own length) and concatenate. With `requires_grad=True` the graphs of all chunks are
            kept, so this bounds the peak of the logits, not of the activations.
        requires_grad: False runs under `torch.no_grad()` (reference / behaviour log-probs).
        options: precision and log-prob chunking (`spo_train.lm.fast_step.StepOptions`); None:
            the options `configure_model` attached to `model`, else the defaults (bf16
            autocast on CUDA, fp32 on CPU; chunks of 256 tokens).

    Returns:
        `(logprobs, mask)`: `logprobs` float32 `[B, T]` with `T = max len(response_ids)`;
        `mask` bool `[B, T]`, True on real response tokens; `logprobs` is 0.0 where `mask` is
        False. Both on the model's device.
    """
    n = len(prompt_ids)
    if n != len(response_ids):
        raise ValueError(f"{n} prompts but {len(response_ids)} responses")
    if n == 0:
        raise ValueError("empty batch")
    step = n if micro_batch_size is None else int(micro_batch_size)
    if step <= 0:
        raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
    try:
        device = next(model.parameters()).device
    except StopIteration:  # parameter-less wrapper
        device = torch.device("cpu")

    opts = options or model_options(model)
    chunk_size = opts.logprob_chunk_size
    fast = chunk_size > 0 and _hidden_path_ok(model)
    t_max = max(len(r) for r in response_ids)
    # Length bucketing: micro-batches of rows of similar length pad less (results per row do
    # not depend on which rows share a micro-batch).
    order = list(range(n))
    if step < n:
        order.sort(key=lambda i: len(prompt_ids[i]) + len(response_ids[i]), reverse=True)
    out_mask = torch.zeros((n, t_max), dtype=torch.bool, device=device)
    chunks: list[Tensor] = []
    grad_ctx = torch.enable_grad() if requires_grad else torch.no_grad()
    with grad_ctx, autocast(opts, device):
        for start in range(0, n, step):
            rows = order[start : start + step]
            batch = build_batch(
                [prompt_ids[i] for i in rows],
                [response_ids[i] for i in rows],
                pad_token_id=pad_token_id,
                device=device,
            )
            mask = batch["mask"]
            if not bool(mask.any()):
                chunks.append(torch.zeros((len(rows), t_max), device=device))
                continue
            if fast:
                hidden = _response_hidden(model, batch)  # [N, H]
                token_logp = chunked_token_logprobs(
                    hidden, model.get_output_embeddings(), batch["targets"][mask], chunk_size
                )
                del hidden
            else:
                logits = _response_logits(model, batch)  # [N, V], model dtype
                # float32 log-softmax only on the N response rows (not [B, L, V]).
                logp = torch.log_softmax(logits.float(), dim=-1)
                del logits
                token_logp = logp.gather(-1, batch["targets"][mask].unsqueeze(-1)).squeeze(-1)
                del logp
            chunk = torch.zeros(mask.shape, dtype=torch.float32, device=device)
            chunk = chunk.masked_scatter(mask, token_logp.float())
            if chunk.shape[1] < t_max:
                chunk = torch.nn.functional.pad(chunk, (0, t_max - chunk.shape[1]))
            chunks.append(chunk)
            out_mask[rows, : mask.shape[1]] = mask
        out = torch.cat(chunks, dim=0) if len(chunks) > 1 else chunks[0]
        if order != list(range(n)):
            inverse = torch.empty(n, dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(n)
            out = out[inverse.to(device)]
    return out, out_mask
