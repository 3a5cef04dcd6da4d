"""The fast training step's switches (project issue 14, point 1): precision, log-prob chunking,
activation checkpointing and `torch.compile`, and the pieces that apply them.

- **Precision.** `bf16` runs the forward (and so the backward) under
  `torch.autocast(device, dtype=torch.bfloat16)` while the parameters, their gradients and
  AdamW's moments stay float32 ("fp32 master weights": autocast casts weights to bf16 per op,
  the optimizer updates the float32 originals). `auto` is bf16 on a CUDA device that supports
  it and fp32 elsewhere (on a CPU bf16 matrix products are not faster than fp32 on most
  machines, and the CPU is where the tests pin results). Source: PyTorch AMP docs,
  https://pytorch.org/docs/stable/amp.html.
- **Chunked log-probs.** The vocabulary projection and the float32 log-softmax run
  `logprob_chunk_size` response tokens at a time, each chunk under non-reentrant
  `torch.utils.checkpoint`, so the backward recomputes a chunk's logits instead of keeping them:
  no `[N, V]` float32 tensor (let alone `[B, L, V]`) is ever alive beyond one chunk.
- **Activation checkpointing.** Every decoder layer (transformers' `GradientCheckpointingLayer`
  instances) runs under non-reentrant `torch.utils.checkpoint` whenever autograd records. This
  is done here rather than with `model.gradient_checkpointing_enable()` because transformers
  only checkpoints in training mode, and the policy's loss forward runs in eval mode (dropout
  off, see `spo_train.train.learner.policy_logprobs`).
- **Compile.** `nn.Module.compile(dynamic=True)` in place, of the model and of its decoder
  (`base_model`, which the chunked path calls directly); state-dict keys unchanged, so
  checkpoints stay loadable; dynamic shapes because every batch has its own length.

`StepOptions` carries the switches; `step_options(config)` builds them from a `TrainConfig`;
`configure_model(model, options)` applies them to a model once (idempotent) and attaches them,
so `spo_train.lm.logprobs.response_logprobs` finds them on the model. A model without attached
options gets `StepOptions()` (the defaults: auto precision, chunks of `DEFAULT_CHUNK` tokens).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from spo_store.errors import SpoError

__all__ = [
    "DEFAULT_CHUNK",
    "PRECISIONS",
    "StepOptions",
    "autocast",
    "chunked_token_logprobs",
    "configure_model",
    "model_options",
    "resolve_precision",
    "step_options",
]

PRECISIONS = ("auto", "bf16", "fp32")
DEFAULT_CHUNK = 256
_ATTR = "_spo_step_options"


@dataclass(frozen=True)
class StepOptions:
    """How a training forward runs (module docstring). `logprob_chunk_size` 0: one chunk."""

    precision: str = "auto"
    logprob_chunk_size: int = DEFAULT_CHUNK
    activation_checkpointing: bool = False
    compile: bool = False


def step_options(config: Any) -> StepOptions:
    """`StepOptions` from a `TrainConfig` (or anything with the same attributes)."""
    return StepOptions(
        precision=getattr(config, "precision", "auto"),
        logprob_chunk_size=int(getattr(config, "logprob_chunk_size", DEFAULT_CHUNK) or 0),
        activation_checkpointing=bool(getattr(config, "activation_checkpointing", False)),
        compile=bool(getattr(config, "compile", False)),
    )


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype of `precision` on `device`: bfloat16 or float32.

    Raises ValueError for an unknown precision, or `bf16` asked on a CUDA device without bf16
    (pre-Ampere GPUs)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    cuda_bf16 = dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if precision == "bf16":
        if dev.type == "cuda" and not cuda_bf16:
            raise ValueError(f"--precision bf16: device {dev} has no bfloat16 support")
        return torch.bfloat16
    return torch.float32


def autocast(options: StepOptions, device: torch.device | str) -> contextlib.AbstractContextManager:
    """`torch.autocast` to bf16 when `options` resolve to bf16 on `device`, else a no-op."""
    dev = torch.device(device)
    if resolve_precision(options.precision, dev) == torch.bfloat16:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_options(model: nn.Module) -> StepOptions:
    """The options attached by `configure_model`, else the defaults."""
    return getattr(model, _ATTR, None) or StepOptions()


def _checkpointed(forward, *args, **kwargs):
    # Only when autograd records and the layer has something to differentiate; a no_grad
    # reference forward runs the layer as is.
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52: no common base class for decoder layers
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Wrap every decoder layer's forward in non-reentrant checkpointing (idempotent); returns
    how many layers are wrapped. Raises ValueError when the model has no recognisable layers."""
    layers = _decoder_layers(model)
    if not layers:
        raise ValueError(
            f"activation checkpointing: {type(model).__name__} has no transformers "
            "GradientCheckpointingLayer modules (transformers >= 4.52 decoder layers)"
        )
    for layer in layers:
        if not getattr(layer, "_spo_checkpointed", False):
            layer.forward = functools.partial(_checkpointed, layer.forward)
            layer._spo_checkpointed = True
    return len(layers)


def configure_model(model: nn.Module, options: StepOptions) -> nn.Module:
    """Apply `options` to `model` in place (checkpointing, compile) and attach them for
    `response_logprobs`; applying the same options twice does nothing. Returns `model`."""
    current = getattr(model, _ATTR, None)
    if current == options:
        return model
    resolve_precision(options.precision, next(model.parameters()).device)  # fail early
    if options.logprob_chunk_size < 0:
        raise ValueError(f"logprob_chunk_size must be >= 0, got {options.logprob_chunk_size}")
    if options.activation_checkpointing:
        enable_activation_checkpointing(model)
    if options.compile and not getattr(model, "_spo_compiled", False):
        # the chunked path calls the decoder (`base_model`) directly, the plain path the
        # whole model: compile both (a compiled module inside a compiled one is inlined)
        base = getattr(model, "base_model", None)
        if isinstance(base, nn.Module) and base is not model:
            base.compile(dynamic=True)
        model.compile(dynamic=True)
        model._spo_compiled = True
    setattr(model, _ATTR, options)
    return model


def _chunk_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    """log softmax(hidden @ weight.T + bias)[targets] in float32, `[C]` from `[C, H]`."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def chunked_token_logprobs(
    hidden: Tensor, lm_head: nn.Linear, targets: Tensor, chunk_size: int
) -> Tensor:
    """`[N]` float32 log-probs of `targets` `[N]` from final hidden states `hidden` `[N, H]`.

    The projection runs `chunk_size` rows at a time (0: all at once); with autograd on, each
    chunk is checkpointed, so only `hidden` is saved and the backward recomputes one chunk's
    `[chunk, V]` logits at a time. The projection runs in the ambient autocast dtype, the
    log-softmax in float32."""
    n = hidden.shape[0]
    if chunk_size <= 0 or chunk_size >= n:
        chunk_size = max(n, 1)
    parts = []
    for start in range(0, n, chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and hidden.requires_grad:
            parts.append(
                checkpoint(_chunk_logprobs, h, lm_head.weight, lm_head.bias, t, use_reentrant=False)
            )
        else:
            parts.append(_chunk_logprobs(h, lm_head.weight, lm_head.bias, t))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def check_device(device: str) -> None:
    """Refuse (one SpoError line) a --device torch cannot parse or this machine lacks (CUDA
    not built in or no such GPU, MPS absent), before any model loads."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SpoError(
            f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpoError(
                f"--device {device}: CUDA is not available to this torch ({torch.__version__}); "
                "use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpoError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SpoError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise SpoError(f"--device {device}: spo trains on cpu, cuda or mps")
