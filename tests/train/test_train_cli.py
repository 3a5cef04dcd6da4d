"""`spo train` / `estimate-q0` / `eval` / `demo` on real parts (issue 10, items 4, 8, 10, 11, 12):
bad options are one line before any work, a run's output is its own, `--resume` never changes
the experiment, a resume logs each step once, the saved config.toml reproduces a run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from spo_store.lake import Lake
from spo_train.config import TrainConfig, read_toml
from spo_train.train.loop import train
from tests.train.test_train_q0_and_eval import _config, _estimates


def _spo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python", "-m", "spo_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def _running(lake: Lake) -> int:
    return Lake.open(lake.uri, create=False).sql(
        "SELECT count(*) AS n FROM runs WHERE status = 'running'"
    )["n"][0]


# Each example of the issue (item 8), through the CLI: one line, non-zero exit, no run row.
_PNG = str(Path(__file__).parents[2] / "docs" / "pts_s_t.png")  # not UTF-8 text
BAD = [
    (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--workers", "-2"], "--workers -2"),
    (["train", "--staleness", "-1"], "--staleness -1"),
    (["train", "--eval-n", "2"], "--eval-k 1,10"),
    (["train", "--micro-batch-size", "0"], "--micro-batch-size 0"),
    (["train", "--rollout-temperature", "0.9,0.1"], "--rollout-temperature 0.9,0.1"),
    (["train", "--rollout-top-p", "1.5"], "--rollout-top-p 1.5"),
    (["train", "--eval-temperature", "0"], "--eval-temperature 0.0"),
    (["train", "--beta", "-1"], "--beta -1.0"),
    (["train", "--lr", "0"], "--learning-rate/--lr 0.0"),
    (["train", "--eval-k", "x"], "--eval-k"),
    (["train", "--loss", "mc"], "--loss mc"),
    (["train", "--keep-checkpoints", "0"], "--keep-checkpoints"),
    (["train", "--train-split", "tran"], "--train-split 'tran' is not a split"),
    (["estimate-q0", "--beta", "-1"], "--beta -1.0"),
    (["estimate-q0", "--workers", "-1"], "--workers -1"),
    (["estimate-q0", "--samples", "0"], "--n/--samples 0"),
    (["estimate-q0", "--top-p", "0"], "--top-p 0.0"),
    (["estimate-q0", "--split", "tran"], "--split 'tran' is not a split"),
    (["eval", "--n", "2", "--k", "1,10"], "--k 1,10: pass@k needs 1 <= k <= --n (2)"),
    (["eval", "--workers", "0"], "--workers 0"),
    (["eval", "--temperature", "-1"], "--temperature -1.0"),
    (["eval", "--where", " "], "--where is empty"),
    (["train", "--mix", "onlin:1"], "--mix: mixture spec 'onlin:1': unknown source 'onlin'"),
    (["train", "--sources-file", "nope.toml"], "nope.toml: no such sources file"),
    (["train", "--sources-file", "."], ".: the sources file is not a file"),
    (["train", "--sources-file", _PNG], "pts_s_t.png: not valid UTF-8"),
    (["train", "--model", "nope"], "model path"),
    (["eval", "--model", "nope"], "model path"),
    (["estimate-q0", "--model", "nope"], "model path"),
    (["train", "--config", "nope.toml"], "--config nope.toml: no such file"),
    (["demo", "--steps", "0"], "--steps/--max-steps 0"),
    # the demo's evaluation (seed + 1) would repeat the shipped hard set's selection seed
    (["demo", "--seed", "999"], "--seed 999: the hard set was selected with seed 1000"),
]


@pytest.mark.parametrize(("args", "names"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_is_one_line_before_any_work(small_lake, tiny_model, tmp_path, args, names):  # noqa: F811
    before = small_lake.versions()
    model = [] if "--model" in args or args[0] == "demo" else ["--model", str(tiny_model)]
    r = _spo(*args, "--lake", small_lake.uri, *model, cwd=tmp_path)
    line = _one_line_error(r)
    assert r.returncode == 2 and names in line, line
    assert _running(small_lake) == 0
    assert Lake.open(small_lake.uri, create=False).versions() == before  # nothing written
    assert not (tmp_path / "runs").exists()


def test_train_output_onto_a_file(small_lake, tmp_path):  # noqa: F811
    (tmp_path / "taken").write_text("x")
    r = _spo("train", "--lake", small_lake.uri, "--output", "taken", cwd=tmp_path)
    assert "--output taken is a file" in _one_line_error(r)
    assert (tmp_path / "taken").read_text() == "x" and _running(small_lake) == 0


def _first_run(lake, model, tmp_path, **kw) -> tuple[Path, str]:
    _estimates(lake, model, successes_of=1)
    cfg = _config(lake, model, tmp_path, steps=2, **kw)
    result = train(cfg)
    return Path(cfg.output), result.run_id


def test_output_of_another_run_and_resume_with_other_flags_are_refused(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    out, run_id = _first_run(small_lake, tiny_model, tmp_path)
    saved = {n: (out / n).read_bytes() for n in ("config.toml", "run.json")}
    base = ["train", "--lake", small_lake.uri, "--model", str(tiny_model), "--output", str(out)]
    # Another run into the same output without --resume: refused (checkpoints would mix).
    r = _spo(*base, "--mix", "offline:1", cwd=tmp_path)
    line = _one_line_error(r)
    assert f"already holds run {run_id}" in line and "--resume" in line
    # --resume with a flag that changes the experiment: refused, naming each setting.
    r = _spo(*base, "--resume", "--lr", "0.002", "--batch-size", "3", cwd=tmp_path)
    line = _one_line_error(r)
    assert "--learning-rate 0.002 (run: 0.0001)" in line and "--batch-size 3 (run: 2)" in line
    assert f"--config {out / 'config.toml'} --resume" in line
    # Nothing was overwritten, nothing started.
    assert {n: (out / n).read_bytes() for n in saved} == saved
    assert _running(small_lake) == 0
    # The Python API refuses the same way.
    with pytest.raises(Exception, match="--learning-rate 0.002"):
        train(_config(small_lake, tiny_model, tmp_path, steps=2, resume=True, learning_rate=2e-3))
    # Resuming with the stored config (and raising --steps) continues the same run.
    r = _spo(
        "train", "--config", str(out / "config.toml"), "--resume", "--steps", "3", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert f"resumed run {run_id}" in err and "continues to step 3 (started with 2)" in err
    assert read_toml(TrainConfig, out / "config.toml")["steps"] == 3
    # The same paths written another way are the same run (nothing to refuse).
    rel = [
        "--output",
        os.path.relpath(out, tmp_path),
        "--lake",
        os.path.relpath(small_lake.uri, tmp_path),
    ]
    r = _spo("train", *rel, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "trained 3 steps" in " ".join(r.stderr.split()), r.stderr


def test_saved_config_reproduces_the_run(small_lake, tiny_model, tmp_path):  # noqa: F811
    out, _ = _first_run(
        small_lake, tiny_model, tmp_path, learning_rate=3e-4, rollout_temperature=(0.3, 0.5)
    )
    first = read_toml(TrainConfig, out / "config.toml")
    assert first["learning_rate"] == 3e-4 and first["rollout_temperature"] == (0.3, 0.5)
    again = tmp_path / "again"
    r = _spo("train", "--config", str(out / "config.toml"), "--output", str(again), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    second = read_toml(TrainConfig, again / "config.toml")
    assert {**second, "output": None} == {**first, "output": None}
    run_id = json.loads((again / "run.json").read_text())["run_id"]
    stored = json.loads(
        small_lake.sql(f"SELECT config FROM runs WHERE run_id = '{run_id}'")["config"][0]
    )
    assert stored["learning_rate"] == 3e-4


def test_keep_checkpoints(small_lake, tiny_model, tmp_path):  # noqa: F811
    out, _ = _first_run(small_lake, tiny_model, tmp_path, keep_checkpoints=1)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000002"]


def test_resume_logs_each_step_once(small_lake, tiny_model, tmp_path):  # noqa: F811
    """A crash after step 3 was logged but before its checkpoint, then --resume from step 2:
    each (run, step, name) holds one value, each (run, step) one batch, and TensorBoard
    purges the killed run's steps >= 2."""
    _estimates(small_lake, tiny_model, successes_of=1)
    cfg = _config(small_lake, tiny_model, tmp_path, steps=4, checkpoint_every=2, tensorboard=True)
    run_id = train(cfg).run_id
    out = Path(cfg.output)
    # The state a kill -9 between logging step 3 and writing checkpoint 4 leaves behind.
    import shutil

    shutil.rmtree(out / "checkpoint-000004")
    (out / "latest").write_text("checkpoint-000002")
    cfg.resume = True
    train(cfg)
    dup = small_lake.sql(
        "SELECT run_id, step, name, count(*) AS n FROM metrics GROUP BY run_id, step, name "
        "HAVING count(*) > 1"
    )
    assert dup.height == 0, dup
    dup = small_lake.sql(
        "SELECT run_id, step, count(*) AS n FROM batches GROUP BY run_id, step HAVING count(*) > 1"
    )
    assert dup.height == 0, dup
    steps = small_lake.sql(
        f"SELECT step FROM metrics WHERE run_id = '{run_id}' AND name = 'train/loss' ORDER BY 1"
    )["step"].to_list()
    assert steps == [0, 1, 2, 3]
    # The resumed TensorBoard file starts with a purge at step 2 (events >= 2 of the killed
    # run are discarded by TensorBoard).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted((out / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2
    purges = [e.step for e in EventFileLoader(str(files[-1])).Load() if e.file_version]
    assert 2 in purges
