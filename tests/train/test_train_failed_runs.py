"""A `spo train` that is refused or fails never stays `running` and never claims its --output;
an interrupted one keeps its finished steps (issue 9 follow-up: findings 1, 4, 10)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from spo_store.lake import Lake
from spo_train.train.loop import train
from tests.train.test_train_cli import _one_line_error, _running, _spo
from tests.train.test_train_q0_and_eval import _config, _estimates


def _runs(lake: Lake) -> list[dict]:
    return (
        Lake.open(lake.uri, create=False)
        .sql("SELECT run_id, kind, status, ended_at FROM runs WHERE kind = 'train'")
        .to_dicts()
    )


def test_empty_mixture_source_is_one_line_before_the_run(small_lake, tiny_model, tmp_path):  # noqa: F811
    """An empty source is refused before start_run and before --output is written; the
    notes found while checking (problems without q0, --eval-problems 0) are not printed."""
    _estimates(small_lake, tiny_model, successes_of=1)
    (tmp_path / "src.toml").write_text('[sources]\nnothing = "FALSE"\n')
    base = ["train", "--lake", small_lake.uri, "--model", str(tiny_model), "--output", "o"]
    base += ["--steps", "1", "--batch-size", "2", "--max-new-tokens", "8"]
    base += ["--eval-problems", "0", "--no-tensorboard", "--wandb", "off"]
    r = _spo(*base, "--sources-file", "src.toml", "--mix", "nothing:1", cwd=tmp_path)
    line = _one_line_error(r)
    assert "--mix nothing:1" in line and "'nothing' is empty" in line, line
    assert _runs(small_lake) == [] and _running(small_lake) == 0
    assert not (tmp_path / "o" / "run.json").exists()
    assert not (tmp_path / "o" / "config.toml").exists()
    # Nothing was started, so --resume has nothing to continue (one line; issue 20, item 7),
    # and the corrected mixture starts into the same --output.
    r = _spo(*base, "--mix", "offline:1", "--resume", cwd=tmp_path)
    assert "nothing to continue" in _one_line_error(r)
    r = _spo(*base, "--sources-file", "src.toml", "--mix", "offline:1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in _runs(small_lake)] == ["completed"]
    # config.toml names the sources file absolute: `--config o/config.toml` from elsewhere
    saved = tomllib.loads((tmp_path / "o" / "config.toml").read_text())
    assert saved["sources_file"] == str((tmp_path / "src.toml").resolve())


def test_failed_run_is_ended_and_does_not_block_a_fresh_start(small_lake, tiny_model, tmp_path):  # noqa: F811
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg = _config(small_lake, tiny_model, tmp_path, steps=3, checkpoint_every=10)

    def boom(step: int, metrics: dict) -> None:
        raise RuntimeError("broken step")

    with pytest.raises(RuntimeError):
        train(cfg, on_step=boom)
    (run,) = _runs(small_lake)
    assert run["status"] == "failed" and run["ended_at"] is not None
    out = Path(cfg.output)
    assert not (out / "latest").exists()
    # Its --output held no checkpoint: a fresh start with other settings is not refused.
    r = _spo(
        "train",
        *("--lake", small_lake.uri, "--model", str(tiny_model), "--output", str(out)),
        *("--steps", "1", "--batch-size", "2", "--max-new-tokens", "8", "--mix", "offline:1"),
        *("--eval-problems", "0", "--no-tensorboard", "--wandb", "off"),
        "--lr",
        "0.0003",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    new = json.loads((out / "run.json").read_text())["run_id"]
    assert new != run["run_id"]
    statuses = {x["run_id"]: x["status"] for x in _runs(small_lake)}
    assert statuses == {run["run_id"]: "failed", new: "completed"}


def test_interrupt_before_first_checkpoint_saves_the_steps_done(small_lake, tiny_model, tmp_path):  # noqa: F811
    """Ctrl-C / SIGTERM (a KeyboardInterrupt in `spo`) after 2 finished steps, with
    checkpoint_every 10: checkpoint-2 is written and --resume continues the same run."""
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg = _config(small_lake, tiny_model, tmp_path, steps=4, checkpoint_every=10)

    def stop(step: int, metrics: dict) -> None:
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_step=stop)
    (run,) = _runs(small_lake)
    assert run["status"] == "interrupted" and run["ended_at"] is not None
    out = Path(cfg.output)
    assert (out / "latest").read_text() == "checkpoint-000002"
    cfg.resume = True
    result = train(cfg)
    assert result.run_id == run["run_id"] and result.steps_done == 4
    steps = small_lake.sql(
        f"SELECT step FROM metrics WHERE run_id = '{run['run_id']}' AND name = 'train/loss' "
        "ORDER BY 1"
    )["step"].to_list()
    assert steps == [0, 1, 2, 3]


def test_notes_are_not_printed_before_a_refusal(small_lake, tiny_model, tmp_path):  # noqa: F811
    """Problems without a q0 estimate are a note; a later refusal is the only output."""
    from spo_store.q0_estimates import estimate_row, write_estimates
    from spo_train.lm.models import model_identity

    pid = small_lake.sql("SELECT problem_id FROM problems WHERE split = 'train' LIMIT 1")
    row = estimate_row(
        pid["problem_id"][0],
        model_identity(tiny_model),
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=8,
        samples=4,
        successes=1,
        beta=0.5,
        run_id="fake-q0",
    )
    write_estimates(small_lake, [row])
    (tmp_path / "src.toml").write_text('[sources]\nnothing = "FALSE"\n')
    r = _spo(
        *("train", "--lake", small_lake.uri, "--model", str(tiny_model), "--output", "o"),
        *("--max-new-tokens", "8", "--sources-file", "src.toml", "--mix", "nothing:1"),
        cwd=tmp_path,
    )
    line = _one_line_error(r)
    assert "'nothing' is empty" in line and "no q0 estimate" not in r.stderr, r.stderr
    assert _runs(small_lake) == []
