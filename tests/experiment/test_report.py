"""`spo report`: pass@k over seeds from a real lake on disk, to PNG, HTML, JSON and markdown."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.experiment.report import build_report
from spo_train.experiment.report_data import ReportRun, group_plain_runs
from spo_train.metrics import bootstrap_seeds_problems, mean_pass_at_k, pass_at_k

PROBLEMS = {"valid": [f"v{i}" for i in range(6)], "train": [f"t{i}" for i in range(4)]}
EVAL_N = 4
KS = (1, 2)
SPO_MIX = "online:0.5,offline:0.5"


def _spo(argv: list[str], capsys) -> tuple[int, str, str]:
    from spo_cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _successes(run_seed: int, group_shift: int, step: int, problem: str) -> int:
    """Deterministic successes out of EVAL_N: rise with the step, shifted per group."""
    rng = np.random.default_rng([run_seed, group_shift, step, sum(map(ord, problem))])
    base = int(rng.integers(0, 3))
    return int(min(EVAL_N, base + group_shift + step // 2))


class Written:
    """What the test wrote to the lake: per run, set, step, k the pass@k, per problem c."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, int, int], float] = {}
        self.counts: dict[tuple[str, str, int], dict[str, tuple[int, int]]] = {}


def _write_run(
    lake: Lake,
    written: Written,
    out: Path,
    run_id: str,
    *,
    algo: str | None,
    loss: str,
    mix: str | None,
    seed: int,
    shift: int,
    steps: list[int],
    eval_sets: tuple[str, ...] = ("valid", "train"),
) -> Path:
    """A train output dir (run.json) and its evaluations in the lake, as the trainer writes them."""
    out.mkdir(parents=True)
    config = {"lake": lake.uri, "loss": loss, "mix": mix, "seed": seed, "steps": max(steps)}
    if algo is not None:  # an old run.json has no algo: the report reads it as spo
        config["algo"] = algo
    (out / "run.json").write_text(json.dumps({"run_id": run_id, "config": config}))
    trajectories = []
    for step in steps:
        for eval_set in eval_sets:
            counts = {}
            for pid in PROBLEMS[eval_set]:
                c = _successes(seed, shift, step, pid)
                counts[pid] = (EVAL_N, c)
                for j in range(EVAL_N):
                    trajectories.append(
                        {
                            "traj_id": f"{run_id}-{step}-{pid}-{j}",
                            "problem_id": pid,
                            "run_id": run_id,
                            "source": "eval",
                            "policy_version": step,
                            "model_id": f"{run_id}@{step}",
                            "reward": 0.0 if j < c else -1.0,
                        }
                    )
            # One unjudged sample per set and step: it must count neither as pass nor as fail.
            trajectories.append(
                {
                    "traj_id": f"{run_id}-{step}-{eval_set}-unjudged",
                    "problem_id": PROBLEMS[eval_set][0],
                    "run_id": run_id,
                    "source": "eval",
                    "policy_version": step,
                    "reward": None,
                }
            )
            written.counts[(run_id, eval_set, step)] = counts
            values = {}
            for k in KS:
                v = mean_pass_at_k(counts.values(), k)
                written.values[(run_id, eval_set, step, k)] = v
                values[f"eval/{eval_set}/pass@{k}"] = v
            values[f"eval/{eval_set}/unjudged"] = 1.0
            lake.log_metrics(run_id, step, values, split=eval_set)
    # A training metric of the same run must not be read as an evaluation.
    lake.log_metrics(run_id, max(steps), {"train/loss": 0.5})
    lake.append("trajectories", trajectories)
    return out


@pytest.fixture
def runs(tmp_path):
    """Group spo (3 seeds, steps 0/2/4) and ppo (2 seeds; seed 1 stopped at step 2)."""
    lake = Lake.open(tmp_path / "lake")
    lake.append(
        "problems",
        [
            {"problem_id": pid, "name": pid, "split": split}
            for split, ids in PROBLEMS.items()
            for pid in ids
        ],
    )
    written = Written()
    dirs = {"spo": [], "ppo": []}
    for seed in range(3):
        dirs["spo"].append(
            _write_run(
                lake,
                written,
                tmp_path / "exp" / f"spo-s{seed}",
                f"spo-{seed}",
                algo=None,
                loss="terminal_sq",
                mix=SPO_MIX,
                seed=seed,
                shift=1,
                steps=[0, 2, 4],
            )
        )
    for seed, steps in ((0, [0, 2, 4]), (1, [0, 2])):
        dirs["ppo"].append(
            _write_run(
                lake,
                written,
                tmp_path / "exp" / f"ppo-s{seed}",
                f"ppo-{seed}",
                algo="ppo",
                loss="terminal_ce",
                mix=None,
                seed=seed,
                shift=0,
                steps=steps,
            )
        )
    return tmp_path, lake, written, dirs


def _rows(summary, eval_set, k):
    return {r["group"]: r for r in summary["tables"] if r["set"] == eval_set and r["k"] == k}


def _per_seed(written, run_ids, eval_set, step, k):
    """{run id: {problem: pass@k of that seed at `step`}} from what the fixture wrote."""
    return {
        rid: {
            pid: pass_at_k(*counts, k)
            for pid, counts in written.counts[(rid, eval_set, step)].items()
        }
        for rid in run_ids
    }


def _per_seed_change(written, run_ids, eval_set, last, k):
    """{run id: {problem: that seed's pass@k at `last` minus at step 0}}."""
    after = _per_seed(written, run_ids, eval_set, last, k)
    before = _per_seed(written, run_ids, eval_set, 0, k)
    return {rid: {p: after[rid][p] - before[rid][p] for p in before[rid]} for rid in run_ids}


def test_run_dirs_grouped_by_settings(runs):
    tmp_path, _lake, written, dirs = runs
    paths = dirs["spo"] + dirs["ppo"]
    summary = build_report(paths, output=tmp_path / "out")
    spo, ppo = f"spo terminal_sq {SPO_MIX}", "ppo"
    assert [g["label"] for g in summary["groups"]] == [spo, ppo]
    assert [g["seeds"] for g in summary["groups"]] == [3, 2]
    assert summary["sets"] == ["valid", "train"] and summary["ks"] == list(KS)
    for eval_set in ("valid", "train"):
        for k in KS:
            rows = _rows(summary, eval_set, k)
            # Table means and stds are those of the values written, seed by seed.
            for label, ids, last in (
                (spo, ["spo-0", "spo-1", "spo-2"], 4),
                (ppo, ["ppo-0", "ppo-1"], 2),
            ):
                row = rows[label]
                for where, step in (("first", 0), ("last", last)):
                    vals = [written.values[(rid, eval_set, step, k)] for rid in ids]
                    assert row[where]["mean"] == pytest.approx(np.mean(vals))
                    assert row[where]["std"] == pytest.approx(np.std(vals, ddof=1))
                    assert row[where]["n"] == len(ids)
                # Within-group change: each seed's change per problem, averaged over seeds and
                # problems, so it is the difference of the two columns beside it (issue 20),
                # with the interval over seeds and problems (issue 22).
                want = bootstrap_seeds_problems(_per_seed_change(written, ids, eval_set, last, k))
                got = row["change"]
                assert (got["diff"], *got["ci95"]) == (want.diff, want.low, want.high)
                assert got["diff"] == pytest.approx(row["last"]["mean"] - row["first"]["mean"])
                assert got["noise"] == ("inside" if want.low <= 0 <= want.high else "outside")
                assert got["problems"] == len(PROBLEMS[eval_set])
                assert got["seeds"] == [len(ids)] and got["interval"] == "seeds x problems"
                assert got["few_seeds"] == (len(ids) < 3)
                assert row["unjudged_last"] == len(ids)
            # ppo seed 1 stopped at step 2: its last common step is 2, and it says so.
            assert rows[ppo]["steps_differ"] and rows[ppo]["seed_last_steps"] == [4, 2]
            assert rows[ppo]["last_step"] == 2 and not rows[spo]["steps_differ"]
            # The band is min..max over the seeds at each step; n counts the seeds there.
            for label, ids in ((spo, ["spo-0", "spo-1", "spo-2"]), (ppo, ["ppo-0", "ppo-1"])):
                for pt in summary["curves"][label][eval_set][str(k)]:
                    vals = [
                        written.values[(rid, eval_set, pt["step"], k)]
                        for rid in ids
                        if (rid, eval_set, pt["step"], k) in written.values
                    ]
                    assert (pt["min"], pt["max"], pt["n"]) == (min(vals), max(vals), len(vals))
                    assert pt["mean"] == pytest.approx(np.mean(vals))
    # The curve of ppo goes on to step 4 with one seed.
    last_point = summary["curves"][ppo]["valid"]["1"][-1]
    assert (last_point["step"], last_point["n"]) == (4, 1)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "seeds stopped at 4, 2: last step all reached" in md
    assert summary["reference"] is None and "at last step [95% CI]" not in md


def test_experiment_with_reference_writes_static_html(runs):
    tmp_path, _lake, written, dirs = runs
    exp = tmp_path / "exp"
    (exp / "experiment.json").write_text(
        json.dumps(
            {
                "name": "fig1-mini",
                "description": "two arms",
                "lake": str(tmp_path / "lake"),
                "reference_arm": "ppo",
                "arms": {
                    arm: {
                        "settings": {},
                        "runs": [
                            {
                                "seed": i,
                                "output": str(d.relative_to(exp)),
                                "status": "interrupted" if arm == "ppo" and i == 1 else "completed",
                            }
                            for i, d in enumerate(dirs[arm])
                        ]
                        + ([{"seed": 9, "output": "never-run"}] if arm == "spo" else []),
                    }
                    for arm in ("spo", "ppo")
                },
            }
        )
    )
    messages: list[str] = []
    summary = build_report([exp], say=messages.append)
    out = exp / "report"
    assert summary["output"] == str(out) and summary["reference"] == "ppo"
    assert [g["label"] for g in summary["groups"]] == ["spo", "ppo"]
    assert any("never-run" in m and "left out" in m for m in messages)
    assert any("'ppo' seed 1: run status interrupted" in m for m in messages)
    row = _rows(summary, "valid", 1)["spo"]
    # Compared at the last step both arms' seeds all reached: 2 (ppo seed 1 stopped there).
    vs = row["vs_reference"]
    want = bootstrap_seeds_problems(
        _per_seed(written, ["spo-0", "spo-1", "spo-2"], "valid", 2, 1),
        _per_seed(written, ["ppo-0", "ppo-1"], "valid", 2, 1),
    )
    assert vs["step"] == 2 and (vs["diff"], *vs["ci95"]) == (want.diff, want.low, want.high)
    # ppo has 2 seeds: the interval is marked, and the files say why.
    assert vs["seeds"] == [3, 2] and vs["interval"] == "seeds x problems" and vs["few_seeds"]
    spo_means = [written.values[(r, "valid", 2, 1)] for r in ("spo-0", "spo-1", "spo-2")]
    ppo_means = [written.values[(r, "valid", 2, 1)] for r in ("ppo-0", "ppo-1")]
    assert vs["diff"] == pytest.approx(np.mean(spo_means) - np.mean(ppo_means))
    assert vs["noise"] in ("inside", "outside")
    assert _rows(summary, "valid", 1)["ppo"]["vs_reference"] == {"reference": True}

    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page), "the page must need no network"
    assert "<script" not in page.lower()
    png = (out / "pass_at_k.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded[1]) == png
    assert "min to max over the seeds" in page and "<table>" in page
    assert f"{row['last']['mean']:.3f}" in page
    doc = json.loads((out / "summary.json").read_text())
    assert doc["tables"] == json.loads(json.dumps(summary["tables"]))
    md = (out / "results.md").read_text()
    assert "| group |" in md and "vs ppo at last step" in md and "noise" in md
    assert "(6 problems, 3 vs 2 seeds) †" in md and "† from fewer than 3 seeds" in md
    assert "† from fewer than 3 seeds" in page

    # --only: one arm, its own title; the experiment's reference arm left out is no error
    only = build_report([exp], output=tmp_path / "only", only=["spo"], title="SPO alone")
    assert [g["label"] for g in only["groups"]] == ["spo"] and only["reference"] is None
    assert only["title"] == "SPO alone"
    assert _rows(only, "valid", 1)["spo"]["last"] == row["last"]
    with pytest.raises(SpoError, match="--only nope: not a group"):
        build_report([exp], output=tmp_path / "bad", only=["nope"])
    assert not (tmp_path / "bad").exists()


def test_cli_json_and_one_line_errors(runs, capsys):
    tmp_path, lake, written, dirs = runs
    # A run with no evaluation: left out with a warning while others remain.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "run.json").write_text(
        json.dumps({"run_id": "bare-0", "config": {"lake": lake.uri, "algo": "grpo", "seed": 0}})
    )
    # A seed of the same settings in another lake: each run's lake is opened.
    other = Lake.open(tmp_path / "lake2")
    other.append(
        "problems",
        [{"problem_id": p, "name": p, "split": s} for s, ids in PROBLEMS.items() for p in ids],
    )
    far = _write_run(
        other,
        written,
        tmp_path / "far",
        "spo-far",
        algo="spo",
        loss="terminal_sq",
        mix=SPO_MIX,
        seed=7,
        shift=1,
        steps=[0, 2],
    )
    out = tmp_path / "cli-out"
    code, stdout, stderr = _spo(
        ["report", str(dirs["spo"][0]), str(bare), str(far), "--output", str(out), "--json"],
        capsys,
    )
    assert code == 0, stderr
    doc = json.loads(stdout.strip().splitlines()[-1])
    assert [g["label"] for g in doc["groups"]] == [f"spo terminal_sq {SPO_MIX}"]
    row = next(r for r in doc["tables"] if r["set"] == "valid" and r["k"] == 1)
    assert row["seeds"] == 2 and row["last_step"] == 2 and row["seed_last_steps"] == [4, 2]
    vals = [written.values[(rid, "valid", 2, 1)] for rid in ("spo-0", "spo-far")]
    assert row["last"]["mean"] == pytest.approx(np.mean(vals))
    assert any(str(bare) in w for w in doc["warnings"]) and str(bare) in stderr
    assert Path(doc["files"]["html"]).is_file()

    missing = tmp_path / "nowhere"
    for argv, named in (
        (["report", str(missing)], str(missing)),
        (["report", str(tmp_path)], str(tmp_path)),  # a folder, but neither kind
        (["report", str(bare)], str(bare)),  # the only run has no evaluation
        (["report", str(dirs["spo"][0]), "--reference", "nope"], "'nope'"),
    ):
        code, stdout, stderr = _spo(argv + ["--output", str(tmp_path / "x")], capsys)
        assert code == 2, (argv, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], lines
    assert not (tmp_path / "x").exists(), "a refused report writes nothing"


def test_plain_runs_split_on_other_learning_settings():
    def run(run_id: str, **config) -> ReportRun:
        return ReportRun(Path(run_id), run_id, "/lake", "", config.get("seed"), config)

    runs = [
        run("a", loss="terminal_sq", mix="online:1", learning_rate=1e-4, seed=0, steps=4),
        run("b", loss="terminal_sq", mix="online:1", learning_rate=1e-4, seed=1, steps=8),
        run("c", loss="terminal_sq", mix="online:1", learning_rate=3e-4, seed=0, steps=4),
        run("d", algo="spo", loss="terminal_ce", mix="online:1", seed=0, extra_new_setting=1),
        run("e", algo="grpo", loss="terminal_ce", seed=0),
        run("f", algo="grpo", loss="terminal_sq", seed=1),  # loss is not a GRPO setting
    ]
    group_plain_runs(runs)
    assert [r.group for r in runs] == [
        "spo terminal_sq online:1 learning_rate=0.0001",
        "spo terminal_sq online:1 learning_rate=0.0001",
        "spo terminal_sq online:1 learning_rate=0.0003",
        "spo terminal_ce online:1",
        "grpo",
        "grpo",
    ]


def test_terminal_tables_cut_nothing_at_80_columns(runs):
    """At 80 columns the one-digit "first step" / "last step" columns under one-line headers
    took the width the intervals needed, and rich cut the reference row's "(reference)" to
    "(refere…" (issue 20, trial 20): the headers take two lines, no cell is cut."""
    import os
    import subprocess
    import sys

    tmp_path, _lake, _written, dirs = runs
    exp = tmp_path / "exp"
    (exp / "experiment.json").write_text(
        json.dumps(
            {
                "name": "narrow",
                "lake": str(tmp_path / "lake"),
                "reference_arm": "spo",
                "arms": {
                    arm: {
                        "settings": {},
                        "runs": [
                            {"seed": i, "output": str(d.relative_to(exp)), "status": "completed"}
                            for i, d in enumerate(dirs[arm])
                        ],
                    }
                    for arm in ("spo", "ppo")
                },
            }
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "spo_cli.main", "report", str(exp)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout, r.stdout
    tables = [x for x in r.stdout.splitlines() if x[:1] in "┏┃┡│└"]
    assert "(referen" in r.stdout and max(map(len, tables)) <= 80
    assert "┃ group ┃ seeds ┃ step" in r.stdout, r.stdout
    # ppo's 2 seeds: its interval is marked and the note under the tables says why (issue 22)
    assert "†" in "".join(tables) and "† from fewer than 3 seeds" in r.stdout, r.stdout
