"""Loading models and tokenizers from local Hugging Face directories, and their identities.

Nothing here reaches the network: every load passes ``local_files_only=True`` (the semantics of
``HF_HUB_OFFLINE=1``), so a hub name that is not a local directory fails with a clear
:class:`~spo_store.errors.SpoError` instead of a download attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from spo_store.errors import SpoError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
)


def _dtype_kwarg() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` since transformers 4.56, else ``torch_dtype``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def default_model_path() -> Path:
    """The shipped tiny ``pi_0`` (model + tokenizer) of the embedded default."""
    return Path(str(resources.files("spo_train.embedded") / "assets" / "pi0"))


def latest_checkpoint(output: Path) -> Path | None:
    """The checkpoint a `spo train --output` folder's `latest` marker names, if it is complete
    (has `trainer_state.pt`, written last); None otherwise."""
    marker = output / "latest"
    if not marker.is_file():
        return None
    path = output / marker.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None


def run_dir_checkpoint(path: Path) -> Path | None:
    """For a `spo train --output` folder (no config.json of its own, checkpoints inside): its
    latest complete checkpoint, else None. Raises SpoError for a run folder with no complete
    checkpoint (a run stopped before its first save)."""
    if (path / "config.json").exists() or not path.is_dir():
        return None
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        return ckpt
    if (path / "latest").exists() or any(path.glob("checkpoint-*")):
        raise SpoError(
            f"'{path}' is a spo train output folder with no complete checkpoint yet: give "
            "a checkpoint-NNNNNN folder, or resume the run (spo train --resume)"
        )
    return None


def _resolve(path: str | os.PathLike | None) -> Path:
    """The model directory of a --model value: the embedded pi_0 for None, the latest
    checkpoint of a `spo train --output` folder, else the path itself."""
    if path is None:
        return default_model_path()
    p = Path(path).expanduser()
    return run_dir_checkpoint(p) or p


def check_model_dir(path: str | os.PathLike | None) -> Path:
    """The model directory of ``path`` (see `_resolve`) if it holds a readable config.json,
    weights and tokenizer files, else a SpoError naming what is missing or broken. Reads no
    weights; `load_model_and_tokenizer` checks what needs the model (vocabulary size)."""
    p = _resolve(path)
    if not p.exists():
        raise SpoError(
            f"model path '{p}' does not exist (models are loaded from local directories only; "
            "nothing is downloaded): point --model at a Hugging Face model directory"
        )
    if not p.is_dir():
        raise SpoError(f"model path '{p}' is not a directory: give a Hugging Face model directory")
    if not (p / "config.json").is_file():
        raise SpoError(f"'{p}' is not a Hugging Face model directory: it has no config.json")
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpoError(f"'{p / 'config.json'}' is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise SpoError(
            f"'{p / 'config.json'}' is not a Hugging Face model config: it has no model_type"
        )
    if not _loadable_weight_files(p):
        # trainer_state.pt or a stray .bin is no model weight file: transformers would fail
        # later with a message that names none of these
        raise SpoError(
            f"'{p}' has a config.json but no weights transformers loads (model.safetensors, "
            "pytorch_model.bin, or a sharded index with its shards)"
        )
    for f in _weight_files(p):
        if f.suffix == ".safetensors":
            _check_safetensors(f)
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise SpoError(
            f"'{p}' has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, "
            "...): save the model's tokenizer into it (tokenizer.save_pretrained)"
        )
    return p


def check_model(path: str | os.PathLike | None) -> Path:
    """`check_model_dir`, then the tokenizer against the model's vocabulary (config.json
    `vocab_size`): what a command checks before it opens the lake. Loads the tokenizer, no
    weights. Returns the model directory; raises SpoError (one line naming the folder)."""
    p = check_model_dir(path)
    config = load_config(p)  # first: the tokenizer reads config.json too, and would be blamed
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int):
        check_vocabulary(p, load_tokenizer(p), vocab)
    return p


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """The model directory for a ``--model`` value (``None``: the shipped pi_0), checked."""
    return check_model_dir(model)


def load_tokenizer(path: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    p = _resolve(path)
    if not p.is_dir():
        raise SpoError(f"tokenizer path '{p}' is not a local directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise SpoError(f"cannot load a tokenizer from '{p}': {str(e).splitlines()[0]}") from e
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(
    path: str | os.PathLike | None = None, device: str = "cpu", dtype=None
):
    """Load ``(model, tokenizer)`` from a local HF directory (``None``: the shipped pi_0).

    The model is in eval mode on ``device``; ``dtype`` defaults to float32 (log-probs for
    off-policy losses want full precision; training computes in bf16 through autocast, see
    ``spo_train.lm.fast_step``), pass e.g. ``torch.bfloat16`` to save memory. Attention is
    PyTorch's ``scaled_dot_product_attention`` (``attn_implementation="sdpa"``) where the
    architecture has it, else the model's own.
    A tokenizer without a pad token gets its eos token as pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    config = load_config(p)
    tok = load_tokenizer(p)
    kwargs = {
        "local_files_only": True,
        "config": config,
        "output_loading_info": True,
        # A tensor whose shape is not the config's is reported back (below, as one line)
        # instead of transformers raising after its multi-line load report.
        "ignore_mismatched_sizes": True,
        _dtype_kwarg(): dtype or torch.float32,
    }
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: what it says is checked right below
    try:
        try:
            # PyTorch's fused attention (flash / memory-efficient kernels where they apply)
            model, info = AutoModelForCausalLM.from_pretrained(
                str(p), attn_implementation="sdpa", **kwargs
            )
        except ValueError as e:
            if "sdpa" not in str(e).lower():
                raise
            # an architecture without an SDPA implementation: its own (eager) attention
            model, info = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise SpoError(f"cannot load a causal LM from '{p}': {str(e).splitlines()[0]}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: str(m[0]))
    if mismatched:
        # a config.json edited or written apart from its weights, e.g. one without vocab_size
        # gets the architecture's default of 32000: those tensors would start random
        name, saved, wanted = mismatched[0][:3]
        raise SpoError(
            f"the weights in '{p}' do not match its config.json: {name} is "
            f"{list(saved)} in the weights but {list(wanted)} by config.json"
            f"{f' ({len(mismatched) - 1} more tensors differ)' if len(mismatched) > 1 else ''}"
            ": save config and weights together (save_pretrained)"
        )
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        # transformers starts them random and only warns: samples of a partly random model
        # would read as the model's (e.g. config.json's num_hidden_layers above the weights')
        raise SpoError(
            f"'{p}' lacks {len(missing)} of the model's weights ({', '.join(missing[:2])}"
            f"{', ...' if len(missing) > 2 else ''}): they would start random; config.json "
            "does not describe these weights (save config and weights together: save_pretrained)"
        )
    check_vocabulary(p, tok, model.get_input_embeddings().num_embeddings)
    model.to(device)
    model.eval()
    configure_threads(model)
    return model, tok


def load_config(path: Path):
    """The model's ``transformers`` config, or a SpoError naming config.json (a config that
    transformers cannot read is the config's fault, not the tokenizer's)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpoError(
            f"cannot read '{path / 'config.json'}' as a model config: {str(e).splitlines()[0]}"
        ) from e


def check_vocabulary(path: Path, tokenizer, embeddings: int) -> None:
    """Refuse a tokenizer with more tokens than the model has embedding rows: its ids past the
    end would index outside the embedding. Raises SpoError naming both sizes, the tokenizer
    class transformers chose and the first tokens past the end (a class can add tokens the
    folder's files do not hold: Qwen2Tokenizer adds `<|endoftext|>`)."""
    if len(tokenizer) > embeddings:
        extra = range(embeddings, min(len(tokenizer), embeddings + 3))
        past = ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)!r}" for i in extra)
        more = ", ..." if len(tokenizer) > embeddings + 3 else ""
        raise SpoError(
            f"the tokenizer in '{path}' ({type(tokenizer).__name__}) has {len(tokenizer)} "
            f"tokens, more than the model's vocabulary of {embeddings} (config.json "
            f"vocab_size); past it: {past}{more}: use the tokenizer the model was trained "
            "with, or resize the model's embeddings (model.resize_token_embeddings)"
        )


def context_length(config) -> int | None:
    """Positions the model can attend over (``max_position_embeddings``; GPT-2's
    ``n_positions`` through its alias), or None when the config does not say."""
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if n else None


SMALL_MODEL_PARAMS = 100_000_000
"""Below this many parameters one torch thread is the default: a tiny model's matrix products
gain little from a second thread (the 1.4M-parameter embedded pi_0 generates 1.4x faster with 2
threads on an idle 2-core machine) and lose a lot when anything else wants a core (7-10x slower
while the judge or another job runs: OpenMP threads wait on each other); `spo eval` on 2 busy
cores took a median 17 s with 1 thread, 31-48 s with 2 (BENCHMARKS.md, "Threads")."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm or Docker cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_threads(num_params: int | None) -> tuple[int, str]:
    """(torch intra-op threads, why) for a generating command, chosen in one place.

    `$SPO_THREADS` (`spo --threads N`) wins, then `$OMP_NUM_THREADS` (torch reads it too);
    otherwise 1 for a model under `SMALL_MODEL_PARAMS` (threads only add synchronisation to
    tiny matrix products and fight the judge's processes for the cores), else every available
    core. Raises SpoError for a value that is not a positive integer.
    """
    for var in ("SPO_THREADS", "OMP_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if raw:
            try:
                n = int(raw)
            except ValueError:
                n = 0
            if n < 1:
                raise SpoError(f"${var}={raw!r}: expected a positive number of threads")
            return n, var
    if num_params is not None and num_params < SMALL_MODEL_PARAMS:
        return 1, f"model under {SMALL_MODEL_PARAMS // 1_000_000}M parameters"
    return available_cores(), "available cores"


def configure_threads(model=None) -> int:
    """Set torch's intra-op threads for `model` (see `choose_threads`); returns the count.

    Called by `load_model_and_tokenizer`, so every generating command (estimate-q0, eval,
    train, demo) gets the same choice; with several models loaded the largest decides.
    """
    import torch

    params = None
    if model is not None:
        params = sum(p.numel() for p in model.parameters())
        global _largest_params
        _largest_params = max(_largest_params, params)
        params = _largest_params
    n, _why = choose_threads(params)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_largest_params = 0


def _loadable_weight_files(p: Path) -> list[Path]:
    """The files `from_pretrained` takes weights from: model.safetensors, pytorch_model.bin,
    or an index (model.safetensors.index.json, ...) with shards beside it."""
    files = [p / n for n in ("model.safetensors", "pytorch_model.bin") if (p / n).is_file()]
    for index in WEIGHT_INDEXES:
        stem = index.split(".")[0]  # model-00001-of-00002.safetensors
        shards = [f for f in p.glob(f"{stem}-*") if f.suffix in (".safetensors", ".bin")]
        if (p / index).is_file() and shards:
            files += [p / index, *sorted(shards)]
    return files


def _weight_files(p: Path) -> list[Path]:
    """Every file that may hold weights (what the model identity hashes: kept as it was, so
    ids in existing lakes stay valid)."""
    files = [f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
    files += [p / name for name in WEIGHT_INDEXES if (p / name).is_file()]
    return sorted(files, key=lambda f: f.name)


def _check_safetensors(f: Path) -> None:
    """Read the header of a safetensors file (no tensors): a file cut short (a copy or download
    that stopped) or not safetensors at all is a SpoError naming it, before any work."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="numpy"):
            pass
    except (SafetensorError, OSError) as exc:
        raise SpoError(
            f"'{f}' is not a readable safetensors file ({str(exc).splitlines()[0]}): it is cut "
            "short or damaged; save or copy the model again"
        ) from None


def _file_digest(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_IDENTITY_CACHE: dict[tuple, str] = {}


def model_identity(path: str | os.PathLike | None = None) -> str:
    """A stable hash of everything in a model directory that changes its samples: the contents
    of ``config.json``, ``generation_config.json`` (eos ids) and the weight files, and the
    tokenizer (its `tokenizer_identity`: vocabulary, merges, special tokens, chat template,
    whatever files hold them).

    The key of q0 estimates, pi_0 samples and reference log-probs in the lake: two directories
    holding the same model and tokenizer get the same identity; a change of config, weights or
    tokenizer changes it. Returned as ``"sha256:<64 hex>"``. Version 2 (issue 20): version 1
    hashed config and weights only, so a lake written before keeps its rows under the v1 ids
    (docs/lake.md, "Model identity"). Hashing reads every weight file once per process
    (memoised by path, size and mtime).
    """
    p = check_model_dir(path)
    files = [p / "config.json", *_weight_files(p)]
    if (p / "generation_config.json").is_file():
        files.append(p / "generation_config.json")
    tokenizer_files = [p / n for n in TOKENIZER_FILES if (p / n).is_file()]
    key = tuple(
        (str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
        for f in [*files, *tokenizer_files]
    )
    if key not in _IDENTITY_CACHE:
        h = hashlib.sha256(b"spo-model-identity-v2\n")
        for f in files:
            h.update(f"{f.name}\t{_file_digest(f)}\n".encode())
        h.update(f"tokenizer\t{tokenizer_identity(p)}\n".encode())
        _IDENTITY_CACHE[key] = "sha256:" + h.hexdigest()
    return _IDENTITY_CACHE[key]


def tokenizer_identity(tokenizer_or_path) -> str:
    """A stable hash of a tokenizer (vocabulary, merges, normalisation, special tokens, template).

    Accepts a tokenizer object or a directory; both give the same value for the same tokenizer,
    because a directory is loaded and hashed as an object. Fast tokenizers are hashed through
    their canonical ``tokenizers`` JSON; others through their sorted vocabulary. Returned as
    ``"sha256:<64 hex>"``; the cache key of token ids in the lake.
    """
    tok = tokenizer_or_path
    if isinstance(tok, str | os.PathLike):
        tok = load_tokenizer(tok)
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        core = json.loads(backend.to_str())
        core.pop("truncation", None)  # runtime settings, not the tokenizer itself
        core.pop("padding", None)
    else:
        core = {"vocab": sorted(tok.get_vocab().items(), key=lambda kv: kv[1])}
    special = {name: getattr(tok, name, None) for name in ("bos_token", "eos_token", "unk_token")}
    doc = {
        "core": core,
        "special": special,
        "chat_template": getattr(tok, "chat_template", None),
    }
    blob = json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode()
    return "sha256:" + hashlib.sha256(b"spo-tokenizer-identity-v1\n" + blob).hexdigest()
