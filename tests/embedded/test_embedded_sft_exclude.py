"""`python -m spo_train.embedded.build --sft-exclude`: a pi_0 whose SFT leaves problems out."""

from __future__ import annotations

import json

import pytest

from spo_store.adapters import problem_id
from spo_train.embedded import build
from spo_train.embedded import generator as gen


@pytest.fixture(scope="module")
def train():
    return gen.generate_split("train", 30, seed=0)


def test_last_n_leaves_out_the_last_problems_by_index(train):
    out = build.sft_exclusion("last:4", train)
    assert out == {f"spo_embedded_train_{i:05d}" for i in range(26, 30)}
    assert build.sft_exclusion("last:0", train) == frozenset()


def test_file_takes_names_ids_comments(tmp_path, train):
    f = tmp_path / "hard.txt"
    f.write_text(
        f"# hard set\n{train[3].name}\n\n{problem_id('embedded', train[7].name)}  # by id\n"
    )
    assert build.sft_exclusion(str(f), train) == {train[3].name, train[7].name}


@pytest.mark.parametrize(
    ("spec", "text", "message"),
    [
        ("last:31", None, "0 <= N <= 30"),
        ("last:-1", None, "0 <= N <= 30"),
        ("last:x", None, "expected last:N"),
        ("missing.txt", None, "no such file"),
        ("f.txt", "spo_embedded_train_00001\nnot_a_problem\n", "line 2: 'not_a_problem'"),
        ("f.txt", "spo_embedded_valid_00001\n", "is not a train problem"),
    ],
)
def test_bad_specs_are_one_line(tmp_path, train, spec, text, message):
    if text is not None:
        (tmp_path / spec).write_text(text)
        spec = str(tmp_path / spec)
    with pytest.raises(build.BuildError, match=message):
        build.sft_exclusion(spec, train)


def test_sft_examples_leave_the_excluded_solutions_out(train):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build.ASSETS_DIR / "pi0")
    everything = build.sft_examples(train, tok, 0)
    left_out = build.sft_exclusion("last:10", train)
    kept = build.sft_examples(train, tok, 0, left_out)
    n_left = sum(len(p.solutions) for p in train if p.name in left_out)
    assert n_left > 0 and len(kept) == len(everything) - n_left
    from spo_train.lm.prompting import build_prompt, encode_prompt

    prompts = {tuple(encode_prompt(tok, build_prompt(p.statement, tok))) for p in train[20:]}
    assert not any(tuple(pr) in prompts for pr, _ in kept)


def test_build_writes_the_left_out_names(tmp_path):
    rc = build.main(
        ["--train", "12", "--valid", "0", "--test", "0", "--steps", "1"]
        + ["--out", str(tmp_path), "--sft-exclude", "last:3"]
    )
    assert rc == 0
    names = (tmp_path / "pi0" / "sft_excluded.txt").read_text().split()
    assert names == [f"spo_embedded_train_{i:05d}" for i in (9, 10, 11)]
    info = json.loads((tmp_path / "pi0" / "spo_build.json").read_text())
    assert info["sft_excluded_problems"] == 3


def test_refused_without_out_and_with_eval_only(capsys):
    with pytest.raises(SystemExit):
        build.main(["--sft-exclude", "last:3"])
    assert "give --out DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--sft-exclude", "last:3", "--eval-only", "--out", "x"])
    assert "not with --eval-only" in capsys.readouterr().err
