"""Generation backends: sample ``n`` responses per prompt, with token ids and raw-policy log-probs.

One interface, :class:`Generator`, two implementations:

- :class:`TransformersGenerator`: our own batched decoding loop over a ``transformers`` causal
  LM with a KV cache. Each prompt is prefilled once and its cache shared by its ``n`` samples;
  prompts are left-padded; every sample has its own temperature (the SPO paper draws it from
  U(0.1, 0.8) per sample) and its own random stream, so results depend on the seed but not on
  the batch size (up to float rounding of batched matmuls).
- :class:`VLLMGenerator`: vLLM, imported lazily (``--backend vllm``).

Log-probs: two per token, from the same logits.

- ``Sample.logprobs[t]`` is ``log pi(a_t | prefix)`` under the *raw* model distribution
  (softmax of the logits at temperature 1, no top-p): the policy itself. SPO's
  ``log pi_theta - log pi_0``, PPO's ``pi_old`` and its KL reward need this one.
- ``Sample.behaviour_logprobs[t]`` is ``log mu(a_t | prefix)`` under the distribution that
  actually drew the token: ``softmax(logits / T)`` renormalised over the top-p kept set (the
  smallest prefix of the tokens sorted by tempered probability whose mass reaches ``top_p``,
  always at least the most likely token); 0.0 for a greedy sample (``T == 0``: the argmax is
  drawn with probability 1). Importance weights of stale rollouts are ``pi / mu``.

At ``T == 1`` and ``top_p == 1`` the two are the same distribution (equal up to float
rounding).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from spo_store.errors import SpoError

FinishReason = Literal["stop", "length"]


@dataclass
class Sample:
    """One sampled response.

    ``response_ids`` are the generated tokens, including the eos token or the token that
    completed a stop string (``finish_reason == "stop"``), excluding padding; ``text`` is their
    decoding without special tokens (so it ends with the stop string when one stopped it).
    ``logprobs[i]`` is the raw policy's (temperature 1, no top-p) log-prob of
    ``response_ids[i]``; ``behaviour_logprobs[i]`` its log-prob under the sampling distribution
    that drew it (tempered, top-p truncated and renormalised; 0.0 when greedy). Both are natural
    logs, one float per response token.
    """

    text: str
    response_ids: list[int]
    prompt_ids: list[int]
    logprobs: list[float]
    temperature: float
    top_p: float
    finish_reason: FinishReason
    behaviour_logprobs: list[float]
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float | Sequence[float],
        top_p: float,
        max_new_tokens: int,
        seed: int | None,
    ) -> list[list[Sample]]:
        """``n`` samples for each prompt: ``result[i][j]`` is sample ``j`` of ``prompts[i]``.

        ``temperature`` is one float for all samples, or one per sample in prompt-major order
        (``len(prompts) * n`` values: sample ``j`` of prompt ``i`` at index ``i * n + j``).
        Prompts are used verbatim (encoded without adding special tokens): build them with
        :func:`spo_train.lm.prompting.build_prompt`.
        """
        ...


def per_sample_temperatures(
    temperature: float | Sequence[float], n_prompts: int, n: int
) -> list[float]:
    total = n_prompts * n
    if isinstance(temperature, int | float):
        temps = [float(temperature)] * total
    else:
        temps = [float(t) for t in temperature]
        if len(temps) != total:
            raise SpoError(
                f"got {len(temps)} temperatures for {n_prompts} prompts x n={n} samples: "
                f"give one float or {total} values (prompt-major)"
            )
    if any(t < 0 or math.isnan(t) for t in temps):
        raise SpoError("temperatures must be >= 0 (0 means greedy)")
    return temps


def random_temperatures(
    count: int, low: float = 0.1, high: float = 0.8, seed: int = 0
) -> list[float]:
    """``count`` temperatures drawn from U(low, high), as the SPO paper does for online samples."""
    rng = random.Random(f"spo-temperatures:{seed}")
    return [rng.uniform(low, high) for _ in range(count)]


def _sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"spo-sample:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def _check_args(n: int, top_p: float, max_new_tokens: int) -> None:
    if n < 1:
        raise SpoError(f"n must be >= 1, got {n}")
    if not 0 < top_p <= 1:
        raise SpoError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise SpoError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


class TransformersGenerator:
    """Batched sampling with a KV cache over a ``transformers`` causal LM.

    ``batch_size`` is the number of *samples* decoded together; a batch holds whole groups of
    samples of consecutive prompts (a prompt with ``n > batch_size`` is split over batches).
    ``stop_strings``: ``None`` takes :func:`spo_train.lm.prompting.stop_strings_for` (the end of
    the fenced block for the plain prompt format, nothing for chat models); eos always stops.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 128,
        device: str | None = None,
        stop_strings: Sequence[str] | None = None,
        growable_cache: bool = True,
    ) -> None:
        import torch

        from spo_train.lm.prompting import stop_strings_for

        self.growable_cache = growable_cache
        self.model = model
        # transformers 5.x names the KV cache argument `cache` and warns on `past_key_values`
        # (on every forward: the warning broke progress bars); older releases know only the latter.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise SpoError(f"batch_size must be >= 1, got {batch_size}")
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        if device is not None:
            self.model.to(self.device)
        self.stop_strings = tuple(
            stop_strings_for(tokenizer) if stop_strings is None else stop_strings
        )
        eos: set[int] = set()
        for source in (
            tokenizer.eos_token_id,
            getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(source, int):
                eos.add(source)
            elif source is not None:
                eos.update(int(x) for x in source)
        self.eos_token_ids = frozenset(eos)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (min(eos) if eos else 0))
        # Longest stop string in tokens is at most its length in bytes; decode a window that long.
        self._stop_window = max((len(s.encode()) for s in self.stop_strings), default=0) + 2
        self._stop_context: list[list[int]] = []  # per prompt of a generate_ids call
        max_pos = getattr(model.config, "max_position_embeddings", None)
        self.max_positions = int(max_pos) if max_pos else None

    # -- public -------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        *,
        n: int = 1,
        temperature: float | Sequence[float] = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """See :meth:`Generator.generate`. ``seed=None`` draws a fresh seed."""
        enc = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        prompt_ids = [list(map(int, ids)) for ids in enc]
        return self.generate_ids(
            prompt_ids,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )

    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int = 1,
        temperature: float | Sequence[float] = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        seed: int | None = None,
        response_prefix_lengths: Sequence[int] | None = None,
    ) -> list[list[Sample]]:
        """:meth:`generate` from token ids: ``prompt_ids[i]`` is fed to the model as it is.

        Continuing a response prefix (pivotal token search) needs this: decoding a prefix and
        encoding the text again need not give the same ids. ``response_prefix_lengths[i]``
        (default 0) says how many of the last tokens of ``prompt_ids[i]`` are the start of the
        response: a stop string may begin in them and end in the new tokens (the stop check
        sees them; ``Sample.text`` and ``Sample.response_ids`` hold the new tokens only).
        """
        _check_args(n, top_p, max_new_tokens)
        temps = per_sample_temperatures(temperature, len(prompt_ids), n)
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 62)
        prompt_ids = [list(map(int, ids)) for ids in prompt_ids]
        if response_prefix_lengths is None:
            response_prefix_lengths = [0] * len(prompt_ids)
        if len(response_prefix_lengths) != len(prompt_ids):
            raise SpoError(
                f"{len(response_prefix_lengths)} response prefix lengths for "
                f"{len(prompt_ids)} prompts"
            )
        self._stop_context = [
            ids[len(ids) - int(m) :] if m > 0 else []
            for ids, m in zip(prompt_ids, response_prefix_lengths, strict=True)
        ]
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise SpoError(f"prompt {i} is empty")
            if self.max_positions is not None and len(ids) + 1 > self.max_positions:
                raise SpoError(
                    f"prompt {i} has {len(ids)} tokens, more than the model's context "
                    f"({self.max_positions})"
                )
        jobs = [(i, j) for i in range(len(prompt_ids)) for j in range(n)]
        out: list[list[Sample | None]] = [[None] * n for _ in prompt_ids]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            samples = self._generate_chunk(
                chunk, prompt_ids, [temps[i * n + j] for i, j in chunk], top_p, max_new_tokens, seed
            )
            for (i, j), s in zip(chunk, samples, strict=True):
                out[i][j] = s
        return out  # type: ignore[return-value]

    # -- internals ----------------------------------------------------------------------------
    def _generate_chunk(
        self, chunk, prompt_ids, temps, top_p, max_new_tokens, seed
    ) -> list[Sample]:
        import torch

        dev = self.device
        unique = sorted({i for i, _ in chunk})
        row_of_prompt = {p: r for r, p in enumerate(unique)}
        lens = [len(prompt_ids[p]) for p in unique]
        width = max(lens)
        limit = max_new_tokens
        if self.max_positions is not None:
            limit = min(limit, self.max_positions - width)
        ids = torch.full((len(unique), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(unique), width), dtype=torch.long)
        for r, p in enumerate(unique):
            ids[r, width - lens[r] :] = torch.tensor(prompt_ids[p], dtype=torch.long)
            mask[r, width - lens[r] :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)

        with torch.inference_mode():
            cache = _new_cache(self.model.config, growable=self.growable_cache)
            prefill = dict(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{self._cache_arg: cache},
            )
            try:  # only the last position's logits (a real vocabulary x a long prompt is big)
                outp = self.model(**prefill, logits_to_keep=1)
            except TypeError:  # transformers < 4.50
                outp = self.model(**prefill, num_logits_to_keep=1)
            cache = _cache_of(outp)
            rows = torch.tensor([row_of_prompt[i] for i, _ in chunk], device=dev)
            cache.batch_select_indices(rows)
            logits = outp.logits[:, -1, :].float().index_select(0, rows)
            mask = mask.index_select(0, rows)
            next_pos = torch.tensor([lens[row_of_prompt[i]] for i, _ in chunk], device=dev)

            B = len(chunk)
            temp_t = torch.tensor(temps, dtype=torch.float32, device=dev)
            uniforms = torch.empty((B, max(limit, 1)), dtype=torch.float64)
            for b, (i, j) in enumerate(chunk):
                g = torch.Generator().manual_seed(_sample_seed(seed, i, j))
                uniforms[b] = torch.rand(max(limit, 1), generator=g, dtype=torch.float64)
            uniforms = uniforms.to(dev)

            active = list(range(B))  # sample index of each live row
            resp: list[list[int]] = [[] for _ in range(B)]
            lps: list[list[float]] = [[] for _ in range(B)]
            blps: list[list[float]] = [[] for _ in range(B)]
            reason: list[FinishReason] = ["length"] * B
            finished = [False] * B
            for step in range(limit):
                act = torch.tensor(active, device=dev)
                tok, lp, blp = self._sample(
                    logits,
                    temp_t.index_select(0, act),
                    top_p,
                    uniforms.index_select(0, act)[:, step],
                )
                tok_l, lp_l, blp_l = tok.tolist(), lp.tolist(), blp.tolist()
                n_done = 0
                for r, b in enumerate(active):
                    if finished[b]:
                        n_done += 1
                        continue
                    resp[b].append(tok_l[r])
                    lps[b].append(lp_l[r])
                    blps[b].append(blp_l[r])
                    if tok_l[r] in self.eos_token_ids or self._hit_stop(resp[b], chunk[b][0]):
                        reason[b] = "stop"
                        finished[b] = True
                        n_done += 1
                if step == limit - 1 or n_done == len(active):
                    break
                # Finished rows ride along (their tokens are ignored) until a quarter of the
                # batch is done; then the batch is compacted (a copy of the whole KV cache).
                if n_done and n_done * 4 >= len(active):
                    keep = [r for r, b in enumerate(active) if not finished[b]]
                    keep_t = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(keep_t)
                    mask = mask.index_select(0, keep_t)
                    next_pos = next_pos.index_select(0, keep_t)
                    tok = tok.index_select(0, keep_t)
                    active = [active[r] for r in keep]
                mask = torch.cat(
                    [mask, torch.ones((len(active), 1), dtype=mask.dtype, device=dev)], 1
                )
                outp = self.model(
                    input_ids=tok[:, None],
                    attention_mask=mask,
                    position_ids=next_pos[:, None],
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
                cache = _cache_of(outp)
                logits = outp.logits[:, -1, :].float()
                next_pos = next_pos + 1

        samples = []
        for b, (i, _j) in enumerate(chunk):
            samples.append(
                Sample(
                    text=self.tokenizer.decode(resp[b], skip_special_tokens=True),
                    response_ids=resp[b],
                    prompt_ids=list(prompt_ids[i]),
                    logprobs=lps[b],
                    temperature=temps[b],
                    top_p=float(top_p),
                    finish_reason=reason[b],
                    behaviour_logprobs=blps[b],
                )
            )
        return samples

    @staticmethod
    def _sample(logits, temps, top_p: float, u):
        """Draw one token per row by inverse CDF over the tempered, top-p-truncated distribution.

        Args:
            logits: ``[B, V]`` float32 next-token logits.
            temps: ``[B]`` temperatures; ``<= 1e-6`` means greedy (argmax).
            top_p: nucleus mass in (0, 1].
            u: ``[B]`` float64 uniforms in [0, 1), one per row.

        Returns ``(tokens [B] long, raw [B], behaviour [B])``: ``raw`` is ``log pi(token)`` at
        temperature 1 without top-p; ``behaviour`` is ``log mu(token)`` under the distribution
        the token was drawn from: ``softmax(logits / T)`` restricted to the kept set (sorted by
        probability, a token is kept when the mass before it is ``< top_p``; the first always
        is) and renormalised; 0.0 for greedy rows.
        """
        import torch

        raw_logp = torch.log_softmax(logits, dim=-1)
        greedy = temps <= 1e-6
        t = torch.where(greedy, torch.ones_like(temps), temps)
        scaled = logits / t[:, None]
        probs = torch.softmax(scaled, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        keep = (cum - sorted_p) < top_p
        keep[:, 0] = True
        kept = torch.where(keep, sorted_p, torch.zeros_like(sorted_p)).double()
        kcum = kept.cumsum(-1)
        kept_mass = kcum[:, -1]
        target = (u * kept_mass).unsqueeze(1)
        idx = torch.searchsorted(kcum, target, right=True).clamp(max=kept.shape[1] - 1)
        n_kept = keep.sum(-1, keepdim=True) - 1
        idx = torch.minimum(idx, n_kept)
        tok = order.gather(1, idx).squeeze(1)
        tok = torch.where(greedy, logits.argmax(-1), tok)
        lp = raw_logp.gather(1, tok[:, None]).squeeze(1)
        # log mu = log p_T(token) - log(mass of the kept set); the sampled token is always kept.
        tempered_lp = scaled.gather(1, tok[:, None]).squeeze(1) - scaled.logsumexp(-1)
        blp = tempered_lp.double() - kept_mass.log()
        blp = torch.where(greedy, torch.zeros_like(blp), blp).to(lp.dtype)
        return tok, lp, blp

    def _hit_stop(self, ids: list[int], prompt: int | None = None) -> bool:
        if not self.stop_strings:
            return False
        context = self._stop_context[prompt] if prompt is not None else []
        if context and len(ids) < self._stop_window:
            # a stop string that began in the response prefix (prompt tail) and ends now
            before = context[-(self._stop_window - len(ids)) :]
            seen = self.tokenizer.decode(before, skip_special_tokens=True)
            tail = self.tokenizer.decode(before + ids, skip_special_tokens=True)
            return any(tail.find(s, max(0, len(seen) - len(s) + 1)) >= 0 for s in self.stop_strings)
        tail = self.tokenizer.decode(ids[-self._stop_window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop_strings)


def _cache_of(outp):
    """The KV cache a forward returned (`cache` in transformers 5.x, else `past_key_values`)."""
    cache = getattr(outp, "cache", None)
    return cache if cache is not None else outp.past_key_values


def _new_cache(config, growable: bool = True):
    """A KV cache for one batch: transformers' DynamicCache whose plain layers grow in place.

    DynamicCache appends by ``torch.cat`` (a full copy of the cache every step: memory traffic
    that dominates decoding for small models). Where this transformers version exposes cache
    layers, plain ``DynamicLayer`` s are swapped for :class:`_GrowingLayer` s (amortised
    in-place appends); anything else (sliding-window layers, older versions) stays as it is.
    """
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()
    if not growable:
        return cache
    layer_cls = _growing_layer_class()
    layers = getattr(cache, "layers", None)
    if layer_cls is None or not isinstance(layers, list):
        return cache
    base = layer_cls.__mro__[1]
    cache.layers = [layer_cls() if type(layer) is base else layer for layer in layers]
    return cache


_GROWING_LAYER = None


def _growing_layer_class():
    global _GROWING_LAYER
    if _GROWING_LAYER is not None:
        return _GROWING_LAYER
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None
    import torch

    class _GrowingLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are views of buffers with spare capacity."""

        block = 64

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            length = self.get_seq_length()
            buf_k = getattr(self, "_buf_k", None)
            if (
                buf_k is None
                or length + n > buf_k.shape[-2]
                or buf_k.shape[0] != key_states.shape[0]
            ):
                cap = max(length + n + self.block, 2 * length)
                shape_k = (*key_states.shape[:2], cap, key_states.shape[-1])
                shape_v = (*value_states.shape[:2], cap, value_states.shape[-1])
                new_k = key_states.new_empty(shape_k)
                new_v = value_states.new_empty(shape_v)
                if length:
                    new_k[:, :, :length] = self.keys
                    new_v[:, :, :length] = self.values
                self._buf_k, self._buf_v = new_k, new_v
            self._buf_k[:, :, length : length + n] = key_states
            self._buf_v[:, :, length : length + n] = value_states
            self.keys = self._buf_k[:, :, : length + n]
            self.values = self._buf_v[:, :, : length + n]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            length = self.get_seq_length()
            if length > 0:
                cap = min(self._buf_k.shape[-2], length + self.block)
                self._buf_k = self._buf_k[indices, :, :cap]
                self._buf_v = self._buf_v[indices, :, :cap]
                self.keys = self._buf_k[:, :, :length]
                self.values = self._buf_v[:, :, :length]

        def batch_repeat_interleave(self, repeats: int) -> None:
            length = self.get_seq_length()
            if length > 0:
                self._buf_k = self._buf_k.repeat_interleave(repeats, dim=0)
                self._buf_v = self._buf_v.repeat_interleave(repeats, dim=0)
                self.keys = self._buf_k[:, :, :length]
                self.values = self._buf_v[:, :, :length]

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._buf_k = self._buf_v = None  # views no longer match: next update reallocates

    del torch
    _GROWING_LAYER = _GrowingLayer
    return _GROWING_LAYER


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------

VLLM_MISSING = (
    "backend 'vllm' needs the vllm package, which is not installed; use --backend transformers"
)


VLLM_MIN_VERSION = (0, 10, 2)
"""The first vLLM release whose ``logprobs_mode="processed_logprobs"`` returns log-probs after
temperature and top-k/top-p (vLLM pull requests #21398 and #22387)."""

_VLLM_GREEDY_BELOW = 1e-5  # vLLM samples greedily below this temperature (its _SAMPLING_EPS)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class VLLMGenerator:
    """Sampling with vLLM (imported lazily; raises SpoError when vllm is not installed).

    Log-probs (the same two quantities as :class:`TransformersGenerator`):

    - ``behaviour_logprobs``: the engine runs with ``logprobs_mode="processed_logprobs"``, so
      the log-prob vLLM returns for the sampled token is ``log_softmax`` of the logits after
      temperature and top-k/top-p masking: the distribution that drew it (vLLM >= 0.10.2;
      older releases are refused). Greedy samples (temperature below vLLM's 1e-5) get 0.0.
    - ``logprobs`` (raw, temperature 1, no top-p): one engine has one ``logprobs_mode``, so
      these come from a second, prefill-only pass that scores ``prompt + response`` with
      ``prompt_logprobs=0`` at temperature 1 and top-p 1 (where processed and raw agree). Samples
      drawn at temperature 1 and top-p 1 skip it: their behaviour log-probs are the raw ones.

    vLLM keeps a token when the mass of the tokens *below* it exceeds ``1 - top_p``, which can
    differ from :class:`TransformersGenerator`'s rule on ties and rounding; the behaviour
    log-probs are vLLM's own, so they describe what vLLM drew. Each sample gets its own
    ``SamplingParams`` (temperature, seed), so per-sample temperatures work as in the paper.
    Not exercised in this project's tests (vLLM cannot be installed on its machines).
    """

    def __init__(
        self,
        model_path: str,
        *,
        stop_strings: Sequence[str] | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        **llm_kwargs,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise SpoError(VLLM_MISSING) from e
        found = _version_tuple(getattr(vllm, "__version__", "0"))
        if found and found < VLLM_MIN_VERSION:
            need = ".".join(map(str, VLLM_MIN_VERSION))
            raise SpoError(
                f"backend 'vllm' needs vllm >= {need} (processed log-probs of the sampling "
                f"distribution), found {vllm.__version__}; upgrade vllm or use --backend "
                "transformers"
            )
        if llm_kwargs.get("logprobs_mode", "processed_logprobs") != "processed_logprobs":
            raise SpoError("backend 'vllm' runs with logprobs_mode='processed_logprobs' only")
        llm_kwargs.pop("logprobs_mode", None)
        from spo_train.lm.models import check_model_dir, load_tokenizer
        from spo_train.lm.prompting import stop_strings_for

        path = str(check_model_dir(model_path))
        self._vllm = vllm
        self.tokenizer = load_tokenizer(path)
        self.stop_strings = tuple(
            stop_strings_for(self.tokenizer) if stop_strings is None else stop_strings
        )
        kwargs = dict(model=path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
        kwargs.update(llm_kwargs)
        self.llm = vllm.LLM(logprobs_mode="processed_logprobs", **kwargs)

    def generate(
        self,
        prompts: list[str],
        *,
        n: int = 1,
        temperature: float | Sequence[float] = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """See :meth:`Generator.generate` and the class docstring for the log-probs."""
        _check_args(n, top_p, max_new_tokens)
        temps = per_sample_temperatures(temperature, len(prompts), n)
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 62)
        prompt_ids = [
            list(map(int, ids))
            for ids in self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        ]
        from vllm import SamplingParams

        requests, params = [], []
        for i, ids in enumerate(prompt_ids):
            for j in range(n):
                requests.append({"prompt_token_ids": ids})
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=temps[i * n + j],
                        top_p=top_p,
                        max_tokens=max_new_tokens,
                        seed=_sample_seed(seed, i, j) % (1 << 31),
                        logprobs=0,
                        stop=list(self.stop_strings) or None,
                        include_stop_str_in_output=True,
                    )
                )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        drawn = []  # (prompt i, sample j, completion, token ids, behaviour log-probs)
        for k, o in enumerate(outputs):
            i, j = divmod(k, n)
            c = o.outputs[0]
            ids = [int(t) for t in c.token_ids]
            if temps[k] < _VLLM_GREEDY_BELOW:
                behaviour = [0.0] * len(ids)
            else:
                behaviour = [float(d[t].logprob) for t, d in zip(ids, c.logprobs, strict=True)]
            drawn.append((i, j, c, ids, behaviour))
        raw = self._raw_logprobs(prompt_ids, drawn, temps, top_p, n)
        result: list[list[Sample]] = [[] for _ in prompts]
        for (i, j, c, ids, behaviour), lps in zip(drawn, raw, strict=True):
            result[i].append(
                Sample(
                    text=c.text,
                    response_ids=ids,
                    prompt_ids=prompt_ids[i],
                    logprobs=lps,
                    temperature=temps[i * n + j],
                    top_p=float(top_p),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                    behaviour_logprobs=behaviour,
                )
            )
        return result

    def _raw_logprobs(self, prompt_ids, drawn, temps, top_p: float, n: int) -> list[list[float]]:
        """Temperature-1, no-top-p log-probs of every drawn response (see the class docstring)."""
        from vllm import SamplingParams

        out: list[list[float] | None] = []
        todo, requests = [], []
        for k, (i, _j, _c, ids, behaviour) in enumerate(drawn):
            if (temps[k] == 1.0 and top_p >= 1.0) or not ids:
                out.append(list(behaviour))  # sampled from pi itself: mu == pi
                continue
            out.append(None)
            todo.append(k)
            requests.append({"prompt_token_ids": prompt_ids[i] + ids})
        if requests:
            score = SamplingParams(
                n=1, temperature=1.0, top_p=1.0, max_tokens=1, prompt_logprobs=0, detokenize=False
            )
            scored = self.llm.generate(requests, [score] * len(requests), use_tqdm=False)
            for k, o in zip(todo, scored, strict=True):
                i, ids = drawn[k][0], drawn[k][3]
                p = len(prompt_ids[i])
                per_pos = o.prompt_logprobs[p : p + len(ids)]
                out[k] = [float(d[t].logprob) for t, d in zip(ids, per_pos, strict=True)]
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------

BACKENDS = ("transformers", "vllm")


def make_generator(
    backend: str = "transformers",
    model_path: str | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 128,
    dtype=None,
    **kwargs,
) -> Generator:
    """A generator for ``backend`` over the model at ``model_path`` (``None``: the shipped pi_0)."""
    if backend == "transformers":
        from spo_train.lm.models import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(model_path, device=device, dtype=dtype)
        return TransformersGenerator(model, tok, batch_size=batch_size, device=device, **kwargs)
    if backend == "vllm":
        from spo_train.lm.models import default_model_path

        return VLLMGenerator(str(model_path or default_model_path()), **kwargs)
    raise SpoError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
