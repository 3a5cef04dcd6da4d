"""`spo demo` on real parts (a tiny random Llama, a real lake, the real sandbox): it reports
pass@k on the problems its run trained on (`trained`) and on held-out test problems
(`heldout`), and a demo stopped midway ends its own run (issue 9 follow-up, finding 2)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from tests.conftest import PROBLEMS, write_jsonl

HELD_OUT = [
    {
        "name": f"times{k}",
        "statement": f"Read n, print {k}n.",
        "split": "test",
        "tests": [{"input": "2\n", "output": f"{2 * k}\n"}],
        "solutions": [f"print({k}*int(input()))"],
    }
    for k in (3, 5)
]


def demo_lake(tmp_path) -> Lake:
    """4 train, 1 valid and 2 test problems."""
    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", [*PROBLEMS, *HELD_OUT])])
    return lake


class StopAt(io.StringIO):
    """Console output that raises KeyboardInterrupt (Ctrl-C) when `text` is printed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def write(self, s: str) -> int:
        if self.text in s:
            raise KeyboardInterrupt
        return super().write(s)


@pytest.mark.slow
def test_demo_reports_trained_and_heldout_sets(tmp_path, tiny_model):  # noqa: F811
    from spo_train.demo import DemoConfig, run_demo

    lake = demo_lake(tmp_path)
    config = DemoConfig(
        lake=lake.uri,
        output=str(tmp_path / "demo"),
        model=str(tiny_model),
        # Q0 on 3 of the 4 train problems: the 4th is not in the run's training set, so asking
        # for 10 trained-on problems must give exactly the 3 with q0.
        q0_problems=3,
        q0_samples=2,
        trained_problems=10,
        heldout_problems=10,
        eval_n=10,
        steps=2,
        batch_size=4,
        rollout_n=2,
        max_new_tokens=8,
    )
    shown = io.StringIO()
    summary = run_demo(config, console=Console(file=shown, width=80))
    text = shown.getvalue()
    # the table shows both sets; the trainer's note on the evaluation the demo turned off is not
    # shown (the demo evaluates itself)
    assert "trained-on (train), 3" in text and "held-out (test), 2" in text
    assert "95% interval" in text and "--eval-problems 0" not in text
    assert summary["steps"] == 2 and summary["q0_problems"] == 3
    assert not {"before", "after", "change"} & set(summary)  # moved into the two sets

    with_q0 = set(
        lake.sql(
            "SELECT DISTINCT q.problem_id FROM q0_estimates q JOIN problems p USING (problem_id) "
            "WHERE p.split = 'train'"
        )["problem_id"]
    )
    split_of = dict(lake.sql("SELECT problem_id, split FROM problems").iter_rows())
    assert len(with_q0) == 3
    trained, heldout = summary["trained"], summary["heldout"]
    assert set(trained["problem_ids"]) == with_q0 and trained["problems"] == 3
    assert {split_of[p] for p in heldout["problem_ids"]} == {"test"} and heldout["problems"] == 2
    for s in (trained, heldout):
        for when in ("before", "after"):
            assert 0 <= s[when]["pass@1"] <= s[when]["pass@10"] <= 1
        for k in ("pass@1", "pass@10"):
            diff = s["change"][k]["diff"]
            low, high = s["change"][k]["ci95"]
            assert low <= diff <= high
            assert diff == pytest.approx(s["after"][k] - s["before"][k])

    # The lake's evaluation rows of the demo run: each policy on exactly the two sets, n each.
    rows = lake.sql(
        "SELECT model_id, problem_id, count(*) AS n FROM trajectories "
        f"WHERE source = 'eval' AND run_id = '{summary['demo_run_id']}' GROUP BY ALL"
    ).to_dicts()
    evaluated = {(r["model_id"], r["problem_id"]) for r in rows}
    policies = {r["model_id"] for r in rows}
    assert f"{summary['train_run_id']}@2" in policies and len(policies) == 2
    assert evaluated == {
        (m, p) for m in policies for p in trained["problem_ids"] + heldout["problem_ids"]
    }
    assert {r["n"] for r in rows} == {10}

    out = tmp_path / "demo"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["trained"] == trained and saved["heldout"] == heldout
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = lake.sql("SELECT kind, status FROM runs WHERE kind IN ('demo', 'train')").to_dicts()
    assert sorted(runs, key=lambda r: r["kind"]) == [
        {"kind": "demo", "status": "completed"},
        {"kind": "train", "status": "completed"},
    ]
    logged = lake.sql("SELECT DISTINCT name FROM metrics WHERE name LIKE 'demo/%'")["name"]
    assert {
        f"demo/{when}/{split}/pass@10"
        for when in ("before", "after")
        for split in ("train", "test")
    } <= set(logged)


def test_demo_stopped_after_its_run_started_ends_it(tmp_path, tiny_model):  # noqa: F811
    from spo_train.demo import DemoConfig, run_demo

    lake = demo_lake(tmp_path)
    config = DemoConfig(
        lake=lake.uri,
        output=str(tmp_path / "demo"),
        model=str(tiny_model),
        q0_problems=2,
        q0_samples=1,
        trained_problems=1,
        heldout_problems=1,
        eval_n=10,
        steps=1,
        batch_size=2,
        rollout_n=1,
        max_new_tokens=4,
    )
    # Stopped right after the pi_0 evaluation (the demo run exists by then).
    console = Console(file=StopAt("pi_0: trained pass@1"), force_terminal=False)
    with pytest.raises(KeyboardInterrupt):
        run_demo(config, console=console)
    runs = Lake.open(lake.uri, create=False).sql(
        "SELECT status, ended_at FROM runs WHERE kind = 'demo'"
    )
    assert runs.height == 1
    assert runs["status"][0] == "interrupted" and runs["ended_at"][0] is not None
    # The rerun the stop line suggests reuses the Q0 estimates and pi_0's finished evaluation
    # and says so (issue 20, item 7), then runs to the end.
    shown = io.StringIO()
    summary = run_demo(config, console=Console(file=shown, width=200))
    text = " ".join(shown.getvalue().split())
    assert "Q0: 2 problems (0 estimated now, 0 new samples, 2 estimated before (reused))" in text
    assert "pi_0: trained pass@1" in text and "reused from" in text and "pi0_eval.json" in text
    assert summary["q0_problems"] == 2
