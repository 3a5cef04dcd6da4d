"""Issue 20, "a new user's second hour", through the CLI: the same first N problems for every
--limit, which folders may become a lake, a user's own model checked before work (and a run
folder as --model), what runs record, plain progress lines off a terminal, stop hints that
work, help and tables at 80 columns."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from spo_store.lake import Lake
from spo_train.lm.models import default_model_path
from tests.conftest import needs_sandbox

PI0 = default_model_path()
TINY = ["--max-new-tokens", "8"]


def spo(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        timeout=timeout,
    )


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    return lines[0]


# ----------------------------------------------------------------------------- item 1
@needs_sandbox
def test_limit_is_the_same_first_problems_on_every_run(tmp_path):
    """estimate-q0 --limit N: the first N problems by id, done or not; a rerun adds nothing, a
    larger N adds only the new ones (and they are the next by id)."""
    lake = str(tmp_path / "lake")
    base = ["estimate-q0", "--lake", lake, "--samples", "1", *TINY]
    first = spo(*base, "--limit", "2")
    assert first.returncode == 0, first.stderr
    again = spo(*base, "--limit", "2")
    assert again.returncode == 0, again.stderr
    assert "2 problems already have estimates" in " ".join(again.stderr.split()), again.stderr
    more = spo(*base, "--limit", "3")
    assert more.returncode == 0, more.stderr
    assert "estimated for 1 problems" in " ".join(more.stderr.split()), more.stderr
    lk = Lake.open(lake, create=False)
    got = sorted(lk.sql_arrow("SELECT problem_id FROM q0_estimates").column(0).to_pylist())
    want = (
        lk.sql_arrow(
            "SELECT problem_id FROM problems WHERE split = 'train' AND judge_issue IS NULL "
            "ORDER BY problem_id LIMIT 3"
        )
        .column(0)
        .to_pylist()
    )
    assert got == sorted(want)


# ----------------------------------------------------------------------------- item 2
def test_only_new_empty_or_spo_folders_become_lakes(tmp_path):
    """A folder of the user's own files, one with a foreign `problems.lance` folder and one with
    a Lance table lacking spo's schema metadata are refused by every command, through --lake
    and $SPO_LAKE, with one line naming the folder; nothing is written into them."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    foreign = tmp_path / "foreign"
    (foreign / "problems.lance").mkdir(parents=True)
    (foreign / "problems.lance" / "data.csv").write_text("a,b\n")
    other = tmp_path / "other"
    lance.write_dataset(pa.table({"a": [1]}), str(other / "problems.lance"))
    commands = [
        ["eval", "--n", "1", "--k", "1", "--limit", "1"],
        ["estimate-q0", "--samples", "1", "--limit", "1"],
        ["sql", "SELECT 1"],
        ["lake", "runs"],
        ["lake", "audit"],
    ]
    # The rule lives in one place (Lake.open): every command meets it on one kind of folder,
    # the other kinds through two or three of them.
    for folder, says, cmds in (
        (own, "it holds notes.txt", commands),
        (foreign, "problems.lance is not a Lance table", commands[::2]),
        (other, "no spo schema version", commands[:3:2]),
    ):
        before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        for cmd in cmds:
            line = one_error_line(spo(*cmd, "--lake", str(folder)))
            assert str(folder) in line and says in line, line
        line = one_error_line(spo(*commands[0], env={"SPO_LAKE": str(folder)}))
        assert str(folder) in line and says in line
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    # a new folder and an empty one become lakes
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "new" / "lake"):
        Lake.open(folder)
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        r = spo("sql", "SELECT count(*) AS n FROM runs", "--lake", str(folder), "--format", "json")
        assert r.returncode == 0 and json.loads(r.stdout) == [{"n": 0}], r.stderr


# ----------------------------------------------------------------------------- items 3-5
def _model_copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(PI0, dst)
    return dst


def test_a_users_model_is_checked_before_work(tmp_path):
    """Each mistake in a model folder is one line naming it, before any run is recorded."""
    from spo_train.embedded.defaults import ensure_problems

    lake = str(tmp_path / "lake")
    ensure_problems(Lake.open(lake))
    no_tok = _model_copy(tmp_path, "no-tokenizer")
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    big_tok = _model_copy(tmp_path, "big-tokenizer")
    doc = json.loads((big_tok / "tokenizer.json").read_text())
    doc["added_tokens"].append(
        {
            "id": 620,
            "content": "<extra>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    (big_tok / "tokenizer.json").write_text(json.dumps(doc))
    short = _model_copy(tmp_path, "short-context")
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 200
    (short / "config.json").write_text(json.dumps(cfg))
    broken = _model_copy(tmp_path, "broken-config")
    (broken / "config.json").write_text('{"model_type": ')
    unknown = _model_copy(tmp_path, "unknown-type")
    (unknown / "config.json").write_text(json.dumps({**cfg, "model_type": "lama"}))
    cases = [
        (no_tok, "has no tokenizer files"),
        (big_tok, "has 621 tokens, more than the model's vocabulary of 620"),
        (short, "exceed the model's context of 200 tokens"),
        (broken, "config.json' is not valid JSON"),
        (unknown, "config.json' as a model config"),
    ]
    for model, says in cases:
        r = spo(
            "eval", "--lake", lake, "--model", str(model), "--n", "1", "--k", "1", "--split", "test"
        )
        line = one_error_line(r)
        assert says in line, line
        assert model is short or str(model) in line, line
    # the context line names the largest --max-new-tokens that fits, and that value works
    r = spo("eval", "--lake", lake, "--model", str(short), "--n", "1", "--k", "1", "--limit", "1")
    line = one_error_line(r)
    assert "give --max-new-tokens" in line
    lk = Lake.open(lake, create=False)
    assert lk.sql_arrow("SELECT * FROM runs WHERE kind = 'eval'").num_rows == 0


@needs_sandbox
def test_run_folder_as_model_and_what_runs_record(tmp_path):
    """--model RUN_DIR (a `spo train --output` folder) takes its latest checkpoint and says
    which; the eval run records the model path and its generation settings beside a model id
    that covers the tokenizer."""
    run_dir = tmp_path / "runs" / "spo1"
    run_dir.mkdir(parents=True)
    for step in (1, 2):
        ckpt = run_dir / f"checkpoint-{step:06d}"
        shutil.copytree(PI0, ckpt)
        (ckpt / "trainer_state.pt").write_bytes(b"")
    (run_dir / "latest").write_text("checkpoint-000002")
    lake = str(tmp_path / "lake")
    r = spo(
        "eval", "--lake", lake, "--model", str(run_dir), "--n", "1", "--k", "1", "--limit", "1",
        "--split", "test", *TINY,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"using its latest checkpoint {run_dir / 'checkpoint-000002'}" in r.stderr
    lk = Lake.open(lake, create=False)
    [run] = lk.sql_arrow("SELECT config, model_id FROM runs WHERE kind = 'eval'").to_pylist()
    config = json.loads(run["config"])
    assert config["model"] == str((run_dir / "checkpoint-000002").resolve())
    assert config["max_new_tokens"] == 8 and config["temperature"] == pytest.approx(0.4)
    assert config["top_p"] == pytest.approx(0.95) and config["backend"] == "transformers"
    # A run folder without a complete checkpoint is one line
    empty_run = tmp_path / "runs" / "spo2"
    (empty_run / "checkpoint-000001").mkdir(parents=True)
    line = one_error_line(spo("eval", "--lake", lake, "--model", str(empty_run)))
    assert "no complete checkpoint" in line


# ----------------------------------------------------------------------------- item 6
def test_plain_progress_lines_when_stderr_is_not_a_terminal():
    """Off a terminal the progress display prints `done/total (pct), rate, elapsed, ETA` lines
    every interval while work moves, and a last line when it stops."""
    from io import StringIO

    from rich.console import Console

    from spo_train.progress import PlainProgress, progress_display

    buf = StringIO()
    console = Console(file=buf, force_terminal=False, width=80)
    bar = progress_display(console)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0.2
    with bar:
        task = bar.add_task("samples", total=10, rate="")
        for _ in range(5):
            bar.advance(task, 1)
            time.sleep(0.15)
    lines = [x for x in buf.getvalue().splitlines() if x]
    assert len(lines) >= 2, lines
    assert lines[0].startswith("samples: ") and "/10 (" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("samples: 5/10 (50%)"), lines
    # a terminal gets rich's live bar
    assert not isinstance(
        progress_display(Console(file=StringIO(), force_terminal=True)), PlainProgress
    )


@needs_sandbox
def test_estimate_q0_prints_progress_lines_into_a_log(tmp_path):
    lake = str(tmp_path / "lake")
    r = spo(
        "estimate-q0", "--lake", lake, "--samples", "2", "--limit", "4", "--chunk-problems", "1",
        *TINY, env={"SPO_PROGRESS_INTERVAL": "0.5"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert any(x.startswith("samples: ") and "/8 (" in x for x in r.stderr.splitlines()), r.stderr


# ----------------------------------------------------------------------------- item 7
def _stop_after(argv: list[str], cwd: Path, wait_for: str, env: dict | None = None) -> str:
    """Start `spo argv`, SIGINT it once `wait_for` shows on stderr (or after 120 s), return
    its stderr."""
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_cli.main", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if wait_for in "".join(lines):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return "".join(lines)


def test_stop_hints_name_commands_that_work(tmp_path, monkeypatch):
    """The hint after a stop: `spo train --resume` only for train and only with a run; a command
    that recorded no run claims nothing kept; --resume of a folder with no run is refused."""
    from spo_cli.main import _register_all, _stop_detail

    import spo_store.lake as lake_mod

    _register_all()  # the command words are read from the app, as `spo` itself does

    monkeypatch.setattr(lake_mod, "PROCESS_RUNS", {})  # what this process started
    assert _stop_detail(["rollout", "--split", "train"]) == (
        "no run was started; run the same command again: spo rollout --split train"
    )
    lake_mod.PROCESS_RUNS["train-20261207T000000-abcd"] = "interrupted"
    hint = _stop_detail(["train", "--output", "runs/x"])
    assert hint.endswith("spo train --output runs/x --resume"), hint
    hint = _stop_detail(["rollout", "--split", "train"])
    assert "--resume" not in hint and "rerun the same command to resume" in hint
    hint = _stop_detail(["demo"])
    assert "reuses the Q0 estimates and pi_0's evaluation" in hint
    hint = _stop_detail(["ingest", "human-solutions", "x.jsonl", "--verify"])
    assert "committed work is kept" not in hint and "nothing of this run was stored" in hint
    line = one_error_line(spo("train", "--resume", "--output", str(tmp_path / "TYPO")))
    assert "--resume" in line and "does not exist" in line and "TYPO" in line
    (tmp_path / "mine").mkdir()
    line = one_error_line(spo("train", "--resume", "--output", str(tmp_path / "mine")))
    assert "holds no run of spo train" in line


@needs_sandbox
def test_rollout_stop_hint_reruns_and_resumes(tmp_path):
    """Ctrl-C of `spo rollout` names a command that works: running it finishes the run."""
    lake = str(tmp_path / "lake")
    argv = ["rollout", "--lake", lake, "--split", "test", "--limit", "4", "--n", "1",
            "--chunk-problems", "1", *TINY]  # fmt: skip
    err = _stop_after(argv, tmp_path, "rollout workers on a local Ray")
    assert "--resume" not in err and "Token authentication" not in err, err
    assert "lance is not fork-safe" not in err, err
    hint = err.strip().splitlines()[-1]
    assert "spo rollout" in hint, err
    again = shlex.split(hint.split(": ", 2)[-1])[1:]
    r = spo(*again, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Token authentication" not in r.stderr and "fork-safe" not in r.stderr


# ----------------------------------------------------------------------------- item 9
def test_help_reflows_and_train_options_are_grouped():
    from spo_cli import main as main_mod
    from spo_cli.options import reflow_help
    from typer.main import get_command

    from spo_train.config import TRAIN_HELP_PANELS, TrainConfig, field_map

    main_mod._register_all()
    root = get_command(main_mod.app)

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path, cmd in walk(root, ["spo"]):
        for para in (cmd.help or "").split("\n\n"):
            if para.startswith(("\b", "    ")):
                continue  # kept as written on purpose
            for line in para.split("\n")[1:]:
                # a line break inside a paragraph only before a list item
                assert line.startswith(("- ", "* ")) or line[:2].rstrip(".)").isdigit(), (
                    path,
                    para,
                )
    assert reflow_help("a\nb\n\n- x\n  y\n- z") == "a b\n\n- x y\n- z"
    grouped = [n for names in TRAIN_HELP_PANELS.values() for n in names]
    cli_fields = [f.name for f in field_map(TrainConfig).values() if f.metadata.get("cli", True)]
    assert sorted(grouped) == sorted(cli_fields)
    r = spo("train", "--help")
    assert r.returncode == 0
    for panel in TRAIN_HELP_PANELS:
        assert f"─ {panel} ─" in r.stdout, panel
    assert max(len(x) for x in r.stdout.splitlines()) <= 80


def test_sql_headers_are_never_broken(tmp_path):
    lake = str(tmp_path / "lake")
    Lake.open(lake)
    wide = "SELECT 1 AS run_identifier, 2 AS tokenizer_identity, 3 AS started_at_utc, " + ", ".join(
        f"{i} AS column_number_{i}" for i in range(5)
    )
    r = spo("sql", wide, "--lake", lake)
    assert r.returncode == 0, r.stderr
    for name in ("run_identifier", "tokenizer_identity", "column_number_4"):
        assert name in r.stdout, r.stdout
    narrow = spo("sql", "SELECT 1 AS model_identity, 2 AS tokenizer_id", "--lake", lake)
    assert "model_identity" in narrow.stdout and "tokenizer_id" in narrow.stdout
    assert max(len(x) for x in r.stdout.splitlines()) <= 80


def test_rollout_says_when_flagged_problems_are_left_out(tmp_path):
    """`spo rollout` names the problems it leaves out for a judge_issue, as eval and
    estimate-q0 do (issue 20, item 8); with nothing else selected that is its one error line,
    before Ray starts."""
    from tests.conftest import write_jsonl

    lake = str(tmp_path / "lake")
    data = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "name": "anyof",
                "statement": "Print two numbers. If there are multiple answers, print any of them.",
                "split": "train",
                "tests": [{"input": "1\n", "output": "1 2\n"}],
                "solutions": ["print(1, 2)"],
            }
        ],
    )
    r = spo("ingest", "human-solutions", str(data), "--lake", lake)
    assert r.returncode == 0, r.stderr
    line = one_error_line(spo("rollout", "--lake", lake, "--where", "p.name = 'anyof'", *TINY))
    assert "rollout: left out 1 problem" in line and "multiple_answers" in line, line
    assert "--include-unreliable keeps them" in line
