"""Second new-user trial (issue 9): every finding through the CLI where it is a CLI one.

Bad values (negative --seed, an unusable --device, an empty --output, micro > batch, --split
with --where) are one line before any work; an --output under a file, a sources file that
redefines a built-in source, a --resume with fewer --steps than its checkpoint, a second
train on a held --output and a demo into a train run's directory are refused up front; the
saved config records the resolved lake and the absolute output; estimate-q0 and eval read
--config."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.config import TrainConfig, help_of, read_toml
from spo_train.train.loop import train
from spo_train.train.setup import lock_output
from tests.train.test_train_cli import _one_line_error, _running, _spo
from tests.train.test_train_q0_and_eval import _config, _estimates

BAD = [
    (["train", "--seed", "-1"], "--seed -1: must be between 0 and"),
    (["eval", "--seed", "-5"], "--seed -5: must be between 0 and"),
    (["estimate-q0", "--seed", "-5"], "--seed -5: must be between 0 and"),
    (["train", "--device", "bogus"], "--device 'bogus': not a torch device"),
    (["train", "--device", "cuda:99"], "--device cuda:99"),
    (["train", "--output", ""], "--output is empty"),
    (
        ["train", "--micro-batch-size", "64", "--batch-size", "4"],
        "--micro-batch-size 64 is larger than --batch-size 4",
    ),
    (["eval", "--split", "test", "--where", "1=1"], "--split test and --where given together"),
    (
        ["estimate-q0", "--split", "train", "--where", "1=1"],
        "--split train and --where given together",
    ),
]


@pytest.mark.parametrize(("args", "names"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_is_one_line_before_any_work(small_lake, tiny_model, tmp_path, args, names):  # noqa: F811
    before = small_lake.versions()
    present = set(tmp_path.iterdir())
    r = _spo(*args, "--lake", small_lake.uri, "--model", str(tiny_model), cwd=tmp_path)
    line = _one_line_error(r)
    assert r.returncode == 2 and names in line, line
    assert "internal error" not in line
    assert Lake.open(small_lake.uri, create=False).versions() == before  # no run recorded
    assert set(tmp_path.iterdir()) == present  # nothing written in the working directory


def test_output_under_a_file_is_refused_up_front(small_lake, tiny_model, tmp_path):  # noqa: F811
    (tmp_path / "afile").write_text("x")
    r = _spo(
        *("train", "--lake", small_lake.uri, "--model", str(tiny_model)),
        *("--output", "afile/sub"),
        cwd=tmp_path,
    )
    line = _one_line_error(r)
    assert "--output afile/sub" in line and "is a file" in line, line
    assert "NotADirectoryError" not in line and _running(small_lake) == 0


def test_sources_file_cannot_redefine_a_builtin_source(small_lake, tiny_model, tmp_path):  # noqa: F811
    (tmp_path / "s.toml").write_text('[sources]\nonline = "1=1"\nmine = "1=1"\n')
    r = _spo(
        *("train", "--lake", small_lake.uri, "--model", str(tiny_model)),
        *("--sources-file", "s.toml", "--mix", "online:1"),
        cwd=tmp_path,
    )
    line = _one_line_error(r)
    assert "s.toml: online is a built-in source name" in line and "mine" not in line, line


def _env(lake: Lake) -> dict[str, str]:
    return {**os.environ, "SPO_LAKE": lake.uri}


def test_saved_config_is_resolved_and_resume_below_its_step_is_refused(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    flags = [
        *("--model", str(tiny_model), "--mix", "offline:1", "--batch-size", "2"),
        *("--max-new-tokens", "8", "--eval-problems", "0", "--no-tensorboard"),
        *("--wandb", "off", "--checkpoint-every", "1"),
    ]
    # The lake from $SPO_LAKE, a relative --output: both saved resolved.
    r = subprocess.run(
        ["python", "-m", "spo_cli.main", "train", *flags, "--steps", "2", "--output", "rel"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=_env(small_lake),
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rel"
    saved = read_toml(TrainConfig, out / "config.toml")
    assert saved["lake"] == small_lake.uri and saved["output"] == str(out.resolve())
    assert json.loads((out / "run.json").read_text())["config"]["lake"] == small_lake.uri
    files = {n: (out / n).read_bytes() for n in ("config.toml", "run.json")}
    # A resume to fewer steps than the checkpoint: one line, nothing rewritten.
    r = subprocess.run(
        ["python", "-m", "spo_cli.main", "train", "--output", "rel", "--resume", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=_env(small_lake),
    )
    line = _one_line_error(r)
    assert "--steps 1 is below the step of the run in rel (checkpoint-000002)" in line, line
    assert {n: (out / n).read_bytes() for n in files} == files
    assert _running(small_lake) == 0


def test_second_train_on_a_held_output_is_refused(small_lake, tiny_model, tmp_path):  # noqa: F811
    out = tmp_path / "cc"
    out.mkdir()
    held = lock_output(out)  # what a running `spo train --output cc` holds
    try:
        r = _spo(
            *("train", "--lake", small_lake.uri, "--model", str(tiny_model)),
            *("--output", "cc"),
            cwd=tmp_path,
        )
    finally:
        held.close()
    line = _one_line_error(r)
    assert line == f"error: --output cc is in use by another spo train (pid {os.getpid()})", line
    assert _running(small_lake) == 0


def test_refused_train_leaves_no_output_directory(small_lake, tiny_model, tmp_path):  # noqa: F811
    # No q0 estimates: refused after the lock was taken; the --output it made is gone again.
    with pytest.raises(SpoError, match="--n 4 --limit 512"):
        train(_config(small_lake, tiny_model, tmp_path))
    assert not (tmp_path / "run").exists()


def test_demo_into_a_train_runs_output_is_refused_before_loading(small_lake, tmp_path):  # noqa: F811
    out = tmp_path / "trainrun"
    (out / "checkpoint-000002").mkdir(parents=True)
    (out / "latest").write_text("checkpoint-000002")
    r = _spo("demo", "--lake", small_lake.uri, "--output", str(out), cwd=tmp_path)
    line = _one_line_error(r)
    assert "holds a spo train run's checkpoints" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-000002", "latest"]


def test_demo_into_an_unrelated_folder_is_refused_before_any_work(small_lake, tmp_path):  # noqa: F811
    """A non-empty folder the demo did not write (no spo-demo.json): one line naming it, before
    the lake is touched; its files (a `train` folder the demo would replace) are left alone."""
    out = tmp_path / "project"
    (out / "train").mkdir(parents=True)
    (out / "train" / "data.csv").write_text("x\n")
    (out / "notes.txt").write_text("mine\n")
    before = small_lake.versions()
    r = _spo("demo", "--lake", small_lake.uri, "--output", str(out), cwd=tmp_path)
    line = _one_line_error(r)
    assert r.returncode != 0
    assert f"--output {out} holds other files (notes.txt, train) and no spo-demo.json" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train"]
    assert (out / "train" / "data.csv").read_text() == "x\n"
    assert Lake.open(small_lake.uri, create=False).versions() == before


@pytest.mark.parametrize(
    ("cmd", "toml", "names"),
    [("eval", "n = 0\n", "--n/--samples 0"), ("estimate-q0", "seed = -5\n", "--seed -5")],
)
def test_eval_and_estimate_q0_read_config(small_lake, tiny_model, tmp_path, cmd, toml, names):  # noqa: F811
    (tmp_path / "c.toml").write_text(toml)
    r = _spo(cmd, "--lake", small_lake.uri, "--config", "c.toml", cwd=tmp_path)
    line = _one_line_error(r)
    assert names in line and "No such option" not in line, line
    (tmp_path / "bad.toml").write_text("nope = 1\n")
    r = _spo(cmd, "--lake", small_lake.uri, "--config", "bad.toml", cwd=tmp_path)
    assert "'nope' is not a setting" in _one_line_error(r)


def test_help_names_flags():
    assert "--eval-n" in help_of(TrainConfig, "eval_k")
