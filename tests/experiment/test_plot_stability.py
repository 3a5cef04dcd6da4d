"""scripts/plot_stability.py over a real lake: the 'trained problems' panels read the trained
split's evaluations (not a held-out set's), and a panel with no values is a line, not a
table without columns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from spo_store.lake import Lake

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_stability.py"


def _script():
    spec = importlib.util.spec_from_file_location("plot_stability", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trained_panels_read_the_trained_split_and_empty_panels_are_a_line(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    for step in (0, 1):
        lake.log_metrics("r1", step, {"rollout/sampler_entropy": 0.5, "train/grad_norm": 1.0})
    # the held-out set first, so a lookup by suffix alone finds it
    lake.log_metrics("r1", 0, {"eval/valid/pass@1": 0.9, "eval/valid/pass@10": 0.95})
    lake.log_metrics("r1", 0, {"eval/train/pass@1": 0.25, "eval/train/pass@10": 0.5})
    exp = tmp_path / "exp"
    exp.mkdir()
    meta = {
        "name": "t",
        "lake": lake.uri,
        "arms": {"a": {"settings": {"eval_temperature": 1.0}, "runs": [{"run_id": "r1"}]}},
    }
    (exp / "experiment.json").write_text(json.dumps(meta))
    assert _script().main([str(exp), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "stability.md").read_text()
    pass1 = md.split("## pass@1, trained problems")[1].split("##")[0]
    assert "| a | 0.250 |" in pass1 and "0.900" not in pass1, pass1
    styles = md.split("## styles among correct programs")[1]
    assert "no values logged" in styles and "| --- |\n" not in styles, styles
    assert (tmp_path / "out" / "stability.png").stat().st_size > 0


def test_a_damaged_record_or_a_missing_lake_is_one_line(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    for text, needle in (
        ("{not json", "experiment.json: Expecting property name"),
        (json.dumps({"name": "t", "lake": str(tmp_path / "gone"), "arms": {}}), "no lake at"),
        (json.dumps({"name": "t"}), "missing key 'lake'"),
    ):
        (exp / "experiment.json").write_text(text)
        assert _script().main([str(exp), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out").exists()
