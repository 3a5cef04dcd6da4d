"""`spo demo` stopped midway ends its own run (`interrupted`, with ended_at), never leaving it
`running` (issue 9 follow-up, finding 2)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from spo_store.ingest import ingest_human_solutions
from spo_store.lake import Lake
from tests.conftest import write_jsonl
from tests.test_pipeline import PROBLEMS, tiny_model  # noqa: F401 - fixture


class StopAt(io.StringIO):
    """Console output that raises KeyboardInterrupt (Ctrl-C) when `text` is printed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def write(self, s: str) -> int:
        if self.text in s:
            raise KeyboardInterrupt
        return super().write(s)


def test_demo_stopped_after_its_run_started_ends_it(tmp_path, tiny_model):  # noqa: F811
    from spo_train.demo import DemoConfig, run_demo

    lake = Lake.open(tmp_path / "lake")
    held_out = {
        "name": "triple",
        "statement": "Read n, print 3n.",
        "split": "test",
        "tests": [{"input": "2\n", "output": "6\n"}],
        "solutions": ["print(3*int(input()))"],
    }
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", [*PROBLEMS, held_out])])
    config = DemoConfig(
        lake=lake.uri,
        output=str(tmp_path / "demo"),
        model=str(tiny_model),
        q0_problems=2,
        q0_samples=1,
        eval_problems=1,
        eval_n=10,
        steps=1,
        batch_size=2,
        rollout_n=1,
        max_new_tokens=4,
    )
    # Stopped right after the pi_0 evaluation (the demo run exists by then).
    console = Console(file=StopAt("pi_0: pass@1"), force_terminal=False)
    with pytest.raises(KeyboardInterrupt):
        run_demo(config, console=console)
    runs = Lake.open(lake.uri, create=False).sql(
        "SELECT status, ended_at FROM runs WHERE kind = 'demo'"
    )
    assert runs.height == 1
    assert runs["status"][0] == "interrupted" and runs["ended_at"][0] is not None
