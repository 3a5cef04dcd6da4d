"""Issue 20 repeated by a new user with models of their own (trial 20), through the CLI: a
weights file cut short is one line before work, a tokenizer class that adds a token names it,
`spo pts` leaves room for --max-new-tokens after every prefix, and no help screen cuts an
option's name at 80 columns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from spo_train.lm.models import default_model_path
from tests.conftest import needs_sandbox, write_jsonl

PI0 = default_model_path()


def spo(*args: str, columns: int = 80, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", "--threads", "1", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": str(columns)},
        timeout=600,
    )


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _runs(lake: str) -> int:
    return Lake.open(lake, create=False).sql_arrow("SELECT * FROM runs").num_rows


def test_weights_cut_short_are_one_line_before_any_run(tmp_path):
    """A model.safetensors cut short (a copy or download that stopped) or not safetensors at
    all was an "internal error ... a bug in spo" from inside transformers; now every command
    that takes --model names the file before it records a run."""
    lake = str(tmp_path / "lake")
    ingest_human_solutions(
        Lake.open(lake), [write_jsonl(tmp_path / "p.jsonl", [_PROBLEM])], split="train"
    )
    cut = tmp_path / "cut"
    shutil.copytree(PI0, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    junk = tmp_path / "junk"
    shutil.copytree(PI0, junk)
    (junk / "model.safetensors").write_bytes(b"\x00" * 64)
    before = _runs(lake)
    for model, args in [
        (cut, ["eval", "--n", "1", "--k", "1", "--split", "train"]),
        (cut, ["estimate-q0", "--samples", "1"]),
        (junk, ["pts", "--samples", "1"]),
        (junk, ["train", "--steps", "1", "--output", str(tmp_path / "run")]),
    ]:
        line = one_error_line(spo(*args, "--lake", lake, "--model", str(model)))
        assert f"'{model / 'model.safetensors'}' is not a readable safetensors file" in line
        assert "cut short or damaged" in line, line
    assert _runs(lake) == before
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_class_that_adds_tokens_is_named(tmp_path):
    """A random Qwen2 model saved with the embedded tokenizer (620 tokens): transformers loads
    it as Qwen2Tokenizer, which adds `<|endoftext|>` as token 620. The refusal names the class
    and the token, so "621 tokens" can be matched against a tokenizer.json of 620."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(PI0))
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    folder = tmp_path / "qwen2"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    lake = str(tmp_path / "lake")
    line = one_error_line(
        spo("eval", "--lake", lake, "--model", str(folder), "--n", "1", "--k", "1")
    )
    assert "(Qwen2Tokenizer) has 621 tokens, more than the model's vocabulary of 620" in line
    assert "past it: 620 '<|endoftext|>'" in line, line
    assert not Path(lake).exists()


_PROBLEM = {
    "name": "double",
    "statement": "Read an integer n and print 2n.",
    "tests": [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10\n"}],
    "solutions": ["print(2 * int(input()))\n"],
}


@needs_sandbox
def test_pts_leaves_room_for_max_new_tokens_after_every_prefix(tmp_path):
    """A rollout after the longest prefix was cut at the model's context while the annotation
    stored --max-new-tokens as its bound: such trajectories are now skipped, and the summary
    names --max-new-tokens; a value that fits annotates them, with rollouts that are not cut."""
    from spo_train.lm.models import load_tokenizer
    from spo_train.lm.prompting import encode_prompt, encode_response, problem_prompt

    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", [_PROBLEM])], split="train")
    [row] = lake.sql_arrow(
        "SELECT p.*, t.response FROM trajectories t JOIN problems p USING (problem_id)"
    ).to_pylist()
    tok = load_tokenizer(PI0)
    prompt = len(encode_prompt(tok, problem_prompt(row, tok)))
    response = len(encode_response(tok, row["response"], None))
    short = tmp_path / "short"
    shutil.copytree(PI0, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = prompt + response - 1 + 6  # room for 6 after a prefix
    (short / "config.json").write_text(json.dumps(config))
    base = ["pts", "--lake", lake.uri, "--model", str(short), "--samples", "1", "--json"]

    r = spo(*base, "--max-new-tokens", "7")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["skipped_too_long"] == 1 and summary["rollouts"] == 0, summary
    assert "leave no room for --max-new-tokens 7" in " ".join(r.stderr.split()), r.stderr

    r = spo(*base, "--max-new-tokens", "6")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["skipped_too_long"] == 0 and summary["trajectories"] == 1, summary
    rollouts = lake.sql_arrow(
        "SELECT max_new_tokens FROM trajectories WHERE source = 'pts'"
    ).to_pylist()
    assert rollouts and all(x["max_new_tokens"] == 6 for x in rollouts), rollouts


@needs_sandbox
def test_train_records_its_model_path_absolute(tmp_path):
    """`runs` of a train run given a relative --model held it as typed (`models/llama`), while
    eval and estimate-q0 record the folder absolute: read back from another folder it named
    another model or none. The lake now holds it absolute; config.toml keeps it as given."""
    shutil.copytree(PI0, tmp_path / "mine")
    lake = tmp_path / "lake"
    ingest_human_solutions(
        Lake.open(lake), [write_jsonl(tmp_path / "p.jsonl", [_PROBLEM])], split="train"
    )
    r = spo(
        "train", "--algo", "grpo", "--model", "mine", "--lake", "lake", "--output", "run",
        "--steps", "1", "--batch-size", "2", "--rollout-n", "2", "--minibatches", "1",
        "--max-new-tokens", "8",
        "--eval-problems", "0", "--no-tensorboard", "--wandb", "off", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    [row] = (
        Lake.open(lake, create=False)
        .sql_arrow("SELECT config FROM runs WHERE kind = 'train'")
        .to_pylist()
    )
    config = json.loads(row["config"])
    assert config["model"] == str(tmp_path / "mine") and config["lake"] == str(lake), config
    assert 'model = "mine"' in (tmp_path / "run" / "config.toml").read_text()


def _commands():
    from spo_cli import main as main_mod
    from typer.main import get_command

    main_mod._register_all()
    root = get_command(main_mod.app)

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(root, []))


def test_commands_are_registered_once_per_process():
    """`_register_all` called again (by `main()` run twice in one process, or by tests) listed
    every command twice, and each help page got slower with every call."""
    from spo_cli import main as main_mod

    _commands()
    counts = len(main_mod.app.registered_commands), len(main_mod.app.registered_groups)
    main_mod._register_all()
    assert (len(main_mod.app.registered_commands), len(main_mod.app.registered_groups)) == counts


def test_no_help_cuts_an_option_name_at_80_columns():
    """`spo train --help` at 80 columns printed `--checkpoint-every,--s…`,
    `--importance-weight…` and `--no-grpo-scale-re…`: names now wrap, whole, in one column
    (`--a, --b`, `--x / --no-x`), and the parser still takes every name."""
    from spo_cli import main as main_mod
    from typer.testing import CliRunner

    paths = _commands()
    assert len(paths) > 15
    for path in paths:
        r = CliRunner().invoke(main_mod.app, [*path, "--help"], env={"COLUMNS": "80"})
        assert r.exit_code == 0, (path, r.output)
        assert "…" not in r.output, (path, [x for x in r.output.splitlines() if "…" in x])
        assert max(len(x) for x in r.output.splitlines()) <= 80, path
    text = spo("train", "--help").stdout
    # the name column of every line, its wrapped pieces joined
    flat = " ".join(x.strip("│ ").split("  ")[0] for x in text.splitlines())
    for name in (
        "--checkpoint-every, --save-steps",
        "--keep-checkpoints, --save-total-limit",
        "--importance-weight-cap",
        "--value-learning-rate",
        "--grpo-scale-rewards / --no-grpo-scale-rewards",
        "--tensorboard / --no-tensorboard",
    ):
        assert name in flat, name
    # the names shown are display copies: the aliases and the --no- forms still parse
    r = spo("train", "--save-steps", "0", "--no-tensorboard", "--lake", "/nonexistent/lake")
    assert "--checkpoint-every/--save-steps 0: must be at least 1" in one_error_line(r)


def test_sql_schema_shows_every_comment_whole(tmp_path):
    """`spo sql --schema` is where an analyst reads what a column means; its comments were cut
    at the 60-character --max-width of every table cell (`... sampler_k…`)."""
    from spo_store.analyst import SCHEMA_QUERY

    lake = Lake.open(tmp_path / "lake")
    comments = [
        r["comment"]
        for r in lake.sql_arrow(SCHEMA_QUERY, analyst=True).to_pylist()
        if r.get("comment")
    ]
    longest = max(comments, key=len)
    assert len(longest) > 60
    r = spo("sql", "--schema", "--lake", lake.uri)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    column = " ".join(x.split("│")[4].strip() for x in r.stdout.splitlines() if x.count("│") == 5)
    assert longest in column, longest


@needs_sandbox
def test_a_stopped_eval_says_a_rerun_starts_again(tmp_path):
    """Ctrl-C of `spo eval` said "committed work is kept: rerun the same command to resume",
    but a rerun is a new run that samples every problem again: the line now says so, and the
    command it names works."""
    import shlex

    from tests.cli.test_second_hour import _stop_after

    lake = str(tmp_path / "lake")
    argv = ["eval", "--lake", lake, "--split", "test", "--limit", "40", "--n", "4", "--k", "1"]
    argv += ["--max-new-tokens", "8"]
    err = _stop_after(argv, tmp_path, "samples: ", env={"SPO_PROGRESS_INTERVAL": "0.2"})
    [line] = [x for x in err.splitlines() if x.startswith("interrupted")]
    assert "resume" not in line.split(": spo ")[0].replace("does not resume", ""), line
    assert "eval does not resume" in line and "evaluate from the start" in line, line
    again = shlex.split(line.split(": spo ", 1)[1])
    assert again == argv, again


def test_a_missing_lake_says_where_its_path_came_from(tmp_path):
    """`spo sql` with no lake said "no lake at /somewhere/spo-lake (run an ingest to create
    it)": nothing said the path came from a forgotten $SPO_LAKE or the default ./spo-lake of
    the current folder, and the advice was to create a lake at the typo."""
    typo = tmp_path / "lake-typo"
    env = {k: v for k, v in os.environ.items() if k != "SPO_LAKE"}
    cases = [
        ({"SPO_LAKE": str(typo)}, [], f"no lake at {typo} (from $SPO_LAKE): check the path"),
        ({}, ["--lake", str(typo)], f"no lake at {typo} (from --lake): check the path"),
        ({}, [], "(the default ./spo-lake: no --lake given, $SPO_LAKE not set)"),
        ({"SPO_LAKE": str(tmp_path / "p.jsonl")}, [], "(from $SPO_LAKE) exists and is not a"),
    ]
    (tmp_path / "p.jsonl").write_text("{}\n")
    for extra_env, args, says in cases:
        r = subprocess.run(
            [sys.executable, "-m", "spo_cli.main", "sql", "SELECT 1", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, **extra_env},
            timeout=120,
        )
        assert says in one_error_line(r), r.stderr
    assert not typo.exists() and not (tmp_path / "spo-lake").exists()


@needs_sandbox
def test_plain_progress_keeps_a_log_alive_while_nothing_completes(tmp_path):
    """Off a terminal, lines came only when a task moved: `spo experiment` (whose task, a run,
    takes minutes) printed nothing for 2-3 minutes. When nothing moved for an interval, a line
    per unfinished task now says it is still at work; here one slow solution under
    `ingest --verify`."""
    slow = {
        **_PROBLEM,
        "solutions": ["import time\ntime.sleep(2.5)\nprint(2 * int(input()))\n"],
        "time_limit_s": 10,
    }
    r = subprocess.run(
        [sys.executable, "-m", "spo_cli.main", "ingest", "human-solutions",
         str(write_jsonl(tmp_path / "p.jsonl", [slow])), "--lake", str(tmp_path / "lake"),
         "--verify"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "SPO_PROGRESS_INTERVAL": "0.5"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    waiting = [x for x in r.stderr.splitlines() if x.startswith("judging: 0/")]
    assert len(waiting) >= 2 and "elapsed" in waiting[-1], r.stderr


def test_weights_that_config_json_does_not_describe_are_refused(tmp_path):
    """A config.json written apart from its weights: without vocab_size (the architecture's
        default 32000 against 620 rows) it was "internal error ... a bug in spo"; with one layer
        more than the weights, transformers started that layer random and spo evaluated the partly
        random model. Both are now refused in one line naming the tensor (transformers' multi-line
    load report no longer printed before it), no run recorded."""
    lake = str(tmp_path / "lake")
    ingest_human_solutions(
        Lake.open(lake), [write_jsonl(tmp_path / "p.jsonl", [_PROBLEM])], split="train"
    )
    no_vocab = tmp_path / "no-vocab"
    shutil.copytree(PI0, no_vocab)
    config = json.loads((no_vocab / "config.json").read_text())
    del config["vocab_size"]
    (no_vocab / "config.json").write_text(json.dumps(config))
    deeper = tmp_path / "deeper"
    shutil.copytree(PI0, deeper)
    config = json.loads((deeper / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (deeper / "config.json").write_text(json.dumps(config))
    before = _runs(lake)
    for model, says in [
        (
            no_vocab,
            "do not match its config.json: model.embed_tokens.weight is [620, 192] in the "
            "weights but [32000, 192] by config.json",
        ),
        (deeper, "lacks 9 of the model's weights (model.layers.3."),
    ]:
        r = spo(
            "eval", "--lake", lake, "--model", str(model), "--n", "1", "--k", "1", "--split",
            "train",
        )  # fmt: skip
        assert r.returncode == 2, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and says in last and str(model) in last, last
        assert "LOAD REPORT" not in r.stderr, r.stderr  # transformers' report: one line only
    assert _runs(lake) == before
