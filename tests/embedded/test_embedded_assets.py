"""The shipped embedded default: problems (Parquet), tokenizer and the tiny pi_0."""

from __future__ import annotations

import json
import random
import shutil

import pyarrow.parquet as pq
import pytest

from spo_store.errors import SpoError
from spo_train.embedded import build
from spo_train.embedded import generator as gen
from spo_train.lm.models import (
    default_model_path,
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)

ASSETS = build.ASSETS_DIR
PI0 = default_model_path()


def _split(split: str) -> list[dict]:
    return build.read_split(ASSETS / "problems" / f"{split}.parquet")


@pytest.fixture(scope="module")
def splits():
    return {s: _split(s) for s in build.SPLITS}


def test_assets_exist_and_are_small():
    for split in build.SPLITS:
        assert (ASSETS / "problems" / f"{split}.parquet").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (PI0 / name).is_file(), name
    assert (PI0 / "model.safetensors").stat().st_size < 20e6
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 15e6


def test_split_sizes_tests_and_schema(splits):
    assert (
        len(splits["train"]) >= 1000 and len(splits["test"]) >= 200 and len(splits["valid"]) >= 50
    )
    for split in build.SPLITS:
        schema = pq.read_schema(ASSETS / "problems" / f"{split}.parquet")
        assert schema.names == gen.CODE_CONTESTS_SCHEMA.names
        assert [f.type for f in schema] == [f.type for f in gen.CODE_CONTESTS_SCHEMA]
    for rows in splits.values():
        for r in rows:
            assert len(r["private_tests"]["input"]) >= 10
            assert len(r["solutions"]["solution"]) >= 3
            assert len(r["incorrect_solutions"]["solution"]) >= 2


def test_test_compositions_not_in_train(splits):
    train = {tuple(r["cf_tags"]) for r in splits["train"]}
    for split in ("valid", "test"):
        held = {tuple(r["cf_tags"]) for r in splits[split]}
        assert held and not held & train


def test_shipped_problems_are_the_seed_0_build(tmp_path, splits):
    """The shipped Parquet files are byte-identical to a fresh generation with seed 0."""
    sizes = {s: len(rows) for s, rows in splits.items()}
    fresh = gen.generate_problems(seed=0, sizes=sizes)
    for split, problems in fresh.items():
        path = gen.write_parquet(problems, tmp_path / f"{split}.parquet")
        assert path.read_bytes() == (ASSETS / "problems" / f"{split}.parquet").read_bytes(), split


def _run(src: str, tests) -> bool:
    code = compile(src, "<shipped>", "exec")
    return all(gen.outputs_equal(build._exec_program(code, i), o) for i, o in tests)


def test_random_subset_of_shipped_solutions(splits):
    rng = random.Random(1234)
    rows = rng.sample(splits["train"], 60) + rng.sample(splits["test"], 20)
    for r in rows:
        for src in r["solutions"]["solution"]:
            assert _run(src, r["tests"]), r["name"]
        for src in r["incorrect_solutions"]["solution"]:
            assert not _run(src, r["tests"]), r["name"]


def test_shipped_solutions_in_the_sandbox_judge(splits):
    judge = pytest.importorskip("spo_train.judge")
    rng = random.Random(7)
    rows = rng.sample(splits["test"], 3)
    jobs, want = [], []
    for r in rows:
        for key, ok in (("solutions", True), ("incorrect_solutions", False)):
            for src in r[key]["solution"]:
                jobs.append(
                    judge.JudgeJob(
                        source=src, tests=r["tests"], time_limit_s=2.0, memory_limit_mb=256
                    )
                )
                want.append(ok)
    try:
        verdicts = judge.judge_batch(jobs, workers=2)
    except SpoError as e:
        pytest.skip(f"sandbox cannot run here: {e}")
    if any(v.status == "sandbox_error" for v in verdicts):
        pytest.skip("sandbox cannot run here")
    assert [v.passed for v in verdicts] == want


def test_load_offline_with_plain_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(PI0))
    tok = AutoTokenizer.from_pretrained(str(PI0))
    assert type(model).__name__ == "LlamaForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert 1.0e6 < n_params < 3.0e6
    assert tok.bos_token and tok.eos_token and tok.pad_token
    assert model.config.vocab_size == len(tok)
    code = "n = int(input())\nprint(sum(map(int, input().split())))\n"
    assert tok.decode(tok(code, add_special_tokens=False)["input_ids"]) == code
    info = json.loads((PI0 / "spo_build.json").read_text())
    assert info["sft_steps"] == build.SFT_STEPS and info["seed"] == 0


def test_load_helpers_and_errors(tmp_path):
    model, tok = load_model_and_tokenizer(None)
    assert not model.training and tok.pad_token_id is not None
    assert resolve_model_path(None) == PI0
    with pytest.raises(SpoError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "missing")
    with pytest.raises(SpoError, match="does not exist"):
        resolve_model_path("meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(SpoError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpoError, match="no model_type"):
        load_model_and_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(SpoError, match="no weights"):
        load_model_and_tokenizer(tmp_path)
    # a checkpoint folder that lost its weights keeps trainer_state.pt: no weights either
    (tmp_path / "trainer_state.pt").write_bytes(b"x")
    (tmp_path / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(SpoError, match="no weights transformers loads"):
        load_model_and_tokenizer(tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SpoError, match="not a directory"):
        load_model_and_tokenizer(f)


def test_identities(tmp_path):
    a = model_identity(PI0)
    assert a == model_identity(None) and a.startswith("sha256:")
    copy = tmp_path / "copy"
    shutil.copytree(PI0, copy)
    assert model_identity(copy) == a
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(cfg))
    assert model_identity(copy) != a
    # the model id covers the tokenizer too (issue 20, item 5): same weights, another tokenizer
    retok = tmp_path / "retok"
    shutil.copytree(PI0, retok)
    doc = json.loads((retok / "tokenizer.json").read_text())
    doc["added_tokens"].append(
        {
            "id": max(t["id"] for t in doc["added_tokens"]) + 1,
            "content": "<extra>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    (retok / "tokenizer.json").write_text(json.dumps(doc))
    assert model_identity(retok) != a
    _, tok = load_model_and_tokenizer(None)
    t = tokenizer_identity(tok)
    assert t == tokenizer_identity(PI0) == tokenizer_identity(copy)
    tok.add_tokens(["<extra>"])
    assert tokenizer_identity(tok) != t


def test_shipped_model_writes_fenced_programs():
    from spo_train.lm.generation import TransformersGenerator
    from spo_train.lm.prompting import FENCE_CLOSE, build_prompt, extract_code

    model, tok = load_model_and_tokenizer(None)
    rows = _split("test")[:2]
    prompts = [build_prompt(r["description"], tok) for r in rows]
    out = TransformersGenerator(model, tok, batch_size=8).generate(
        prompts, n=4, temperature=0.4, top_p=0.95, max_new_tokens=256, seed=0
    )
    for group in out:
        for s in group:
            assert s.finish_reason == "stop"
            assert s.text.startswith("```python\n") and s.text.rstrip().endswith(
                FENCE_CLOSE.strip()
            )
            code = extract_code(s.text)
            assert "input()" in code or "sys.stdin" in code
