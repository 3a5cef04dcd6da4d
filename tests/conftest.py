from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

_ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the checkout (CI) or inside it (a device machine's copy).
SHARED_DATA = next(
    (d / "shared" / "data" for d in (_ROOT, _ROOT.parent) if (d / "shared" / "data").is_dir()),
    _ROOT.parent / "shared" / "data",
)
CC_SAMPLE = SHARED_DATA / "code_contests_sample.parquet"


def _sandbox_unavailable() -> str | None:
    """Why the sandbox cannot run here (no bwrap, no user namespaces...), or None."""
    from spo_store.errors import SpoError
    from spo_train.judge.sandbox import ensure_sandbox

    try:
        ensure_sandbox()
    except SpoError as exc:
        return str(exc)
    return None


SANDBOX_UNAVAILABLE = _sandbox_unavailable()
needs_sandbox = pytest.mark.skipif(
    SANDBOX_UNAVAILABLE is not None, reason=f"sandbox unavailable: {SANDBOX_UNAVAILABLE}"
)


@pytest.fixture
def cc_sample() -> Path:
    if not CC_SAMPLE.exists():
        pytest.skip(
            f"shared data not found at {CC_SAMPLE} (CI clones the repo with shared/ beside it)"
        )
    return CC_SAMPLE


@pytest.fixture
def lake(tmp_path):
    from spo_store.lake import Lake

    return Lake.open(tmp_path / "lake")


def write_cc_parquet(path: Path, problems: list[dict]) -> Path:
    """A CodeContests-schema Parquet file (schema copied from the real sample when present)."""
    rows = []
    for p in problems:
        rows.append(
            {
                "name": p["name"],
                "description": p.get("description", f"Statement of {p['name']}"),
                "public_tests": {
                    "input": p.get("public_in", ["1\n"]),
                    "output": p.get("public_out", ["1\n"]),
                },
                "private_tests": {
                    "input": p.get("private_in", ["2\n"]),
                    "output": p.get("private_out", ["2\n"]),
                },
                "generated_tests": {
                    "input": p.get("gen_in", ["3\n"]),
                    "output": p.get("gen_out", ["3\n"]),
                },
                "source": 2,
                "difficulty": 7,
                "solutions": {
                    "language": [lang for lang, _ in p.get("solutions", [])],
                    "solution": [s for _, s in p.get("solutions", [])],
                },
                "incorrect_solutions": {
                    "language": [lang for lang, _ in p.get("incorrect", [])],
                    "solution": [s for _, s in p.get("incorrect", [])],
                },
                "time_limit": {"seconds": 1, "nanos": 500_000_000},
                "memory_limit_bytes": 64 * 1024 * 1024,
            }
        )
    if CC_SAMPLE.exists():
        schema = pq.read_schema(CC_SAMPLE)
        table = pa.Table.from_pylist(rows, schema=pa.schema([schema.field(n) for n in rows[0]]))
    else:
        table = pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# The pipeline tests' problems: four `add<k>` train problems with human solutions and one
# valid problem. `tiny_model`'s BPE vocabulary is trained on them.
PROBLEMS = [
    {
        "name": f"add{k}",
        "statement": f"Read an integer n and print n + {k}.",
        "split": "train",
        "tests": [{"input": f"{i}\n", "output": f"{i + k}\n"} for i in range(3)],
        "solutions": [f"print(int(input()) + {k})", f"n = int(input())\nprint(n + {k})"],
        "incorrect_solutions": [f"print(int(input()) - {k})"],
    }
    for k in range(1, 5)
] + [
    {
        "name": "double",
        "statement": "Read n, print 2n.",
        "split": "valid",
        "tests": [{"input": "2\n", "output": "4\n"}],
        "solutions": ["print(2*int(input()))"],
    },
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-model")
    texts = [p["statement"] for p in PROBLEMS] + [s for p in PROBLEMS for s in p["solutions"]] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(out)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture
def small_lake(tmp_path):
    """A fresh lake per test with PROBLEMS and their human solutions (tests write to it)."""
    from spo_store.ingest import ingest_human_solutions
    from spo_store.lake import Lake

    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", PROBLEMS)])
    return lake


def make_generator(model_dir: Path):
    """(generator, tokenizer, model id, tokenizer id, model) for a model folder."""
    from spo_train.lm.generation import TransformersGenerator
    from spo_train.lm.models import load_model_and_tokenizer, model_identity, tokenizer_identity

    model, tok = load_model_and_tokenizer(model_dir)
    return (
        TransformersGenerator(model, tok),
        tok,
        model_identity(model_dir),
        tokenizer_identity(tok),
        model,
    )


@pytest.fixture(scope="session")
def tiny_model_b(tiny_model, tmp_path_factory) -> Path:
    """Model B: A's tokenizer and config, other random weights."""
    import torch
    from transformers import LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model-b")
    for f in tiny_model.iterdir():
        if "token" in f.name or f.name.endswith(".txt"):
            shutil.copy(f, out / f.name)
    torch.manual_seed(1234)
    cfg = LlamaForCausalLM.from_pretrained(tiny_model).config
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out
