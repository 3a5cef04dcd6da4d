"""`spo experiment` (issue 11, item 4) on real parts: the embedded model and problems, a real
lake, real `spo train` children. A bad config is one line and writes nothing; --dry-run lists
the runs; a 2-arm smoke run completes (a third, broken arm fails without stopping the others)
and records experiment.json; a rerun skips completed runs; a run directory with other settings
is refused; raised steps continue a completed run, SIGTERM stops it resumably, a rerun finishes
it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.config import TrainConfig, read_toml
from spo_train.experiment.config import FORBIDDEN, load_experiment
from tests.conftest import needs_sandbox

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "experiments" / "smoke.toml"
SHIPPED = sorted((ROOT / "experiments").glob("*.toml"))


def _spo(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spo_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _config(tmp: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


BASE = """
[experiment]
name = "t"
seeds = [0]
[common]
steps = 1
[arms.a]
loss = "terminal_ce"
"""


def _with(old: str, new: str, base: str = BASE) -> str:
    assert old in base
    return base.replace(old, new, 1)


# (config text, what the one line must name)
BAD = [
    (_with("steps = 1", "stepz = 1"), ["[common]", "'stepz'", "did you mean 'steps'"]),
    (_with("steps = 1", "steps = 'many'"), ["[common] steps", "expected int"]),
    (_with("steps = 1", "steps = 0"), ["[common]", "steps = 0", "at least 1"]),
    (_with('loss = "terminal_ce"', 'loss = "mc"'), ["[arms.a]", "loss = mc", "choose one of"]),
    (_with('loss = "terminal_ce"', "learning_rate = -1.0"), ["[arms.a]", "learning_rate"]),
    (_with("steps = 1", "seed = 3"), ["[common]", "'seed' cannot be set here", "seeds"]),
    (_with('loss = "terminal_ce"', 'output = "x"'), ["[arms.a]", "'output' cannot be set"]),
    (_with("steps = 1", 'lake = "x"'), ["[common]", "'lake' cannot be set"]),
    (_with("steps = 1", 'sources_file = "s.toml"'), ["'sources_file' cannot be set"]),
    (_with("steps = 1", "resume = true"), ["'resume' cannot be set"]),
    (BASE.split("[arms.a]")[0], ["no arms"]),
    (BASE + '[arms.a]\nloss = "terminal_sq"\n', ["not valid TOML"]),  # an arm twice
    (BASE + '[arms.A]\nloss = "terminal_sq"\n', ["[arms.A]", "only in case"]),
    (BASE + '[arms.lake]\nloss = "terminal_sq"\n', ["[arms.lake]", "arm name 'lake'"]),
    (_with("seeds = [0]", "seeds = [0, 0]"), ["[experiment]", "seed 0 is listed twice"]),
    (_with("seeds = [0]", "seeds = []"), ["[experiment]", "seeds"]),
    (_with('name = "t"', 'name = "a/b"'), ["[experiment]", "name = 'a/b'"]),
    (_with('name = "t"', 'name = "t"\nreference_arm = "b"'), ["reference_arm = 'b' is not an arm"]),
    (_with('name = "t"', 'name = "t"\nseed = 1'), ["[experiment]", "'seed' is not"]),
    (BASE + "[prepar]\nq0_problems = 1\n", ["'prepar'", "did you mean 'prepare'"]),
    (BASE + "[prepare]\nq0_problems = 0\n", ["[prepare]", "q0_problems = 0"]),
    (BASE + '[sources]\nonline = "TRUE"\n', ["[sources]", "'online' is a built-in source"]),
    # a source's predicate is checked at load as --sources-file's is, not when each run fails
    (
        BASE + "[sources]\nmine = \"(SELECT count(*) FROM read_csv('/etc/hostname')) > 0\"\n",
        ["[sources]: mine", "reads with table function read_csv()"],
    ),
    (BASE + '[sources]\nmine = "TRUE; DROP TABLE problems"\n', ["[sources]: mine", "the ';'"]),
    (BASE + '[sources]\nmine = "t.run_id = {run}"\n', ["[sources]: mine", "placeholder {run}"]),
    (BASE + "[sources]\nmine = \"t.sorce = 'human'\"\n", ["[sources]: mine", '"sorce"']),
    (BASE + '[sources]\n"mi:ne" = "TRUE"\n', ["[sources]: 'mi:ne'", "starts with a letter"]),
    (
        _with('loss = "terminal_ce"', 'mix = "online:0.5,fixed:0.5"'),
        ["[arms.a]", "mix:", "'fixed'"],
    ),
    (_with("steps = 1", "eval_n = 2"), ["[arms.a]", "--eval-k 1,10"]),  # a cross-field check
]


@pytest.mark.parametrize(("text", "names"), BAD, ids=[", ".join(n) for _, n in BAD])
def test_bad_config_is_one_line_naming_file_table_key(tmp_path, text, names):
    path = _config(tmp_path, text)
    with pytest.raises(SpoError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)), msg
    for name in names:
        assert name in msg, msg


def test_forbidden_are_settings_the_runner_sets():
    fields = {f for f in TrainConfig.__dataclass_fields__}
    assert set(FORBIDDEN) <= fields


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_validate(path):
    exp = load_experiment(path)
    assert exp.arms and exp.seeds
    assert exp.reference_arm in exp.arms
    text = path.read_text()
    assert f"spo experiment experiments/{path.name}" in text  # the command that runs it


def test_bad_config_cli_writes_nothing(tmp_path):
    path = _config(tmp_path, _with("steps = 1", "stepz = 1"))
    r = _spo("experiment", str(path), "--output", "out", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'stepz' is not a spo train setting" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
    r = _spo("experiment", str(SMOKE), "--output", "out", "--only", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "--only nope: not an arm of smoke" in r.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_runs_and_writes_nothing(tmp_path):
    path = _config(
        tmp_path, _with("seeds = [0]", "seeds = [0, 1]") + '[arms.b]\nloss = "terminal_sq"\n'
    )
    r = _spo("experiment", str(path), "--output", "out", "--dry-run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x["arm"], x["seed"], x["action"], x["status"]) for x in plan["runs"]] == [
        ("a", 0, "train", "pending"),
        ("a", 1, "train", "pending"),
        ("b", 0, "train", "pending"),
        ("b", 1, "train", "pending"),
    ]
    out = (tmp_path / "out").resolve()
    assert plan["runs"][0]["command"] == (
        f"spo --threads 1 train --config {out / 'a' / 'seed-0.toml'}"
        + (" --json" if "--json" in plan["runs"][0]["command"] else "")
    )
    assert plan["lake"] == str(out / "lake")
    assert plan["prepare"] == []  # no [prepare] table: the lake must hold the estimates
    assert not out.exists()
    r = _spo("experiment", str(path), "--output", "out", "--dry-run", "--seeds", "1", cwd=tmp_path)
    assert r.returncode == 0 and "seed-1.toml" in r.stdout and "seed-0.toml" not in r.stdout


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The shipped smoke config plus an arm that fails (a model directory that does not
    exist), run once with 2 jobs: (work dir, config path, output dir, summary, result)."""
    work = tmp_path_factory.mktemp("experiment")
    text = SMOKE.read_text() + '\n[arms.broken]\nalgo = "grpo"\nmodel = "no-such-model-dir"\n'
    config = _config(work, text, "smoke.toml")
    t0 = time.monotonic()
    r = _spo("experiment", str(config), "--output", "out", "--jobs", "2", "--json", cwd=work)
    took = time.monotonic() - t0
    return work, config, work / "out", json.loads(r.stdout.strip().splitlines()[-1]), r, took


def _train_runs(lake_uri: str) -> list[dict]:
    lake = Lake.open(lake_uri, create=False)
    return lake.sql_arrow(
        "SELECT run_id, status FROM runs WHERE kind = 'train' ORDER BY run_id"
    ).to_pylist()


@needs_sandbox
def test_smoke_run_completes_and_records_experiment_json(smoke):
    work, config, out, summary, r, _ = smoke
    assert r.returncode == 1, r.stderr  # the broken arm failed
    assert f"report: spo report {out.resolve()}" in r.stderr
    runs = {x["arm"]: x for x in summary["runs"]}
    assert summary["failed"] == 1 and runs["broken"]["status"] == "failed"
    assert "no-such-model-dir" in runs["broken"]["error"]
    for arm in ("spo", "grpo"):
        assert runs[arm]["status"] == "completed", runs[arm]
        assert set(runs[arm]["eval"]) == {
            "eval/valid/pass@1",
            "eval/valid/pass@2",
            "eval/train/pass@1",
            "eval/train/pass@2",
        }
    record = json.loads((out / "experiment.json").read_text())
    assert set(record) == {"name", "description", "lake", "reference_arm", "config_file", "arms"}
    assert record["name"] == "smoke" and record["reference_arm"] == "spo"
    assert record["config_file"] == str(config.resolve())
    assert list(record["arms"]) == ["spo", "grpo", "broken"]
    spo = record["arms"]["spo"]
    assert spo["settings"]["loss"] == "terminal_ce" and spo["settings"]["steps"] == 1
    assert spo["settings"]["eval_k"] == [1, 2]
    assert spo["runs"] == [
        {"seed": 0, "output": "spo/seed-0", "status": "completed", "run_id": runs["spo"]["run_id"]}
    ]
    # the lake agrees, and each run's settings file reloads into the run it was
    statuses = {x["run_id"]: x["status"] for x in _train_runs(record["lake"])}
    assert statuses[runs["spo"]["run_id"]] == statuses[runs["grpo"]["run_id"]] == "completed"
    for arm in ("spo", "grpo"):
        settings = read_toml(TrainConfig, out / arm / "seed-0.toml")
        assert settings["seed"] == 0 and settings["lake"] == record["lake"]
        assert settings["output"] == str((out / arm / "seed-0").resolve())
        stored = tomllib.loads((out / arm / "seed-0" / "config.toml").read_text())
        assert stored["algo"] == arm and stored["steps"] == 1
        assert (out / arm / "seed-0.log").read_text().count("train --config") == 1
    # the q0 step estimated the fixed subset once, at the runs' sampler
    q0 = (
        Lake.open(record["lake"], create=False)
        .sql_arrow("SELECT count(*) AS n, min(sampler_key) AS key FROM q0_estimates")
        .to_pylist()[0]
    )
    assert q0 == {"n": 8, "key": "temperature=1,top_p=1,max_new_tokens=32"}


@needs_sandbox
def test_rerun_skips_completed_runs(smoke):
    work, config, out, summary, _, first_took = smoke
    before = _train_runs(summary["lake"])
    logs = {a: (out / a / "seed-0.log").read_text() for a in ("spo", "grpo")}
    t0 = time.monotonic()
    r = _spo("experiment", str(config), "--output", "out", "--only", "spo,grpo", "--json", cwd=work)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x["arm"], x["action"], x["status"]) for x in again["runs"]] == [
        ("spo", "skip", "completed"),
        ("grpo", "skip", "completed"),
    ]
    assert "2 run(s) already completed" in r.stderr
    assert _train_runs(summary["lake"]) == before  # no run started
    assert {a: (out / a / "seed-0.log").read_text() for a in logs} == logs
    assert took < first_took / 2, (took, first_took)


@needs_sandbox
def test_changed_settings_are_refused_before_anything_runs(smoke):
    work, config, out, summary, _, _ = smoke
    changed = _config(
        work, config.read_text().replace("steps = 1", "steps = 1\nlearning_rate = 2e-4"), "lr.toml"
    )
    before = _train_runs(summary["lake"])
    r = _spo("experiment", str(changed), "--output", "out", "--only", "spo", cwd=work)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "learning_rate = 0.0002 (run: 0.0001)" in line, r.stderr
    assert str((out / "spo" / "seed-0").resolve()) in line
    assert _train_runs(summary["lake"]) == before


@needs_sandbox
def test_raised_steps_continue_the_run_and_sigterm_stops_it_resumably(smoke):
    work, config, out, summary, _, _ = smoke
    spo_run = next(x for x in summary["runs"] if x["arm"] == "spo")["run_id"]
    longer = _config(work, config.read_text().replace("steps = 1", "steps = 3"), "longer.toml")
    args = [sys.executable, "-m", "spo_cli.main", "experiment", str(longer), "--output", "out"]
    log = out / "spo" / "seed-0.log"
    with open(work / "stop.err", "w+") as err:
        proc = subprocess.Popen(
            [*args, "--only", "spo"], cwd=work, stdout=subprocess.DEVNULL, stderr=err
        )
        # Inside the resumed run: the lake marks it running before this line is written.
        deadline = time.monotonic() + 120
        while "the run continues to step 3" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=300)
        err.seek(0)
        stderr = err.read()
    assert rc == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: terminated (SIGTERM)") and "rerun the same command" in last
    assert f"spo experiment {longer} --output out --only spo" in last
    record = json.loads((out / "experiment.json").read_text())
    assert record["arms"]["spo"]["runs"][0]["status"] == "interrupted"
    assert {x["run_id"]: x["status"] for x in _train_runs(summary["lake"])}[
        spo_run
    ] == "interrupted"
    assert "terminated (SIGTERM)" in log.read_text().splitlines()[-1]

    r = subprocess.run(
        [*args, "--only", "spo", "--json"], cwd=work, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.strip().splitlines()[-1])["runs"][0]
    assert done["action"] in ("resume", "extend") and done["status"] == "completed"
    assert done["run_id"] == spo_run  # the same run, continued
    lake = Lake.open(summary["lake"], create=False)
    steps = lake.sql_arrow(
        f"SELECT max(step) AS s FROM metrics WHERE run_id = '{spo_run}' AND name LIKE 'eval/%'"
    ).to_pylist()[0]["s"]
    assert steps == 3
    assert (out / "spo" / "seed-0" / "latest").read_text().strip() == "checkpoint-000003"


def test_plot_stability_draws_an_experiments_runs(smoke, tmp_path):
    """scripts/plot_stability.py (docs/experiments.md) on a real experiment: a figure and the
    per-step numbers of every arm that ran; a folder that is no experiment is one line."""
    _, _, out, _, _, _ = smoke
    script = ROOT / "scripts" / "plot_stability.py"
    r = subprocess.run(
        [sys.executable, str(script), str(out), "--out", str(tmp_path / "fig")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fig" / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "fig" / "stability.md").read_text()
    section = md.split("## rollout reward")[1].split("##")[0]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")}
    assert {"spo", "grpo"} <= rows  # the broken arm never started: no row
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "experiment.json" in r.stderr
