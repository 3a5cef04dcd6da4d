"""`spo demo` on real parts (a tiny random Llama, a real lake, the real sandbox): it trains SPO
and GRPO on a hard set and reports pass@k on it (`trained`, `offpolicy`: SPO, GRPO, SPO minus
GRPO) and on held-out test problems (`heldout`); a demo stopped midway ends its own run (issue 9
follow-up, finding 2) and a rerun reuses Q0 and pi_0's evaluation; the shipped hard list names
train problems of the embedded set, selected with another seed than the demo's (issue 22)."""

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

# the trajectories a training run's batches held
BATCH_ROWS = (
    "SELECT DISTINCT t.problem_id, t.source FROM (SELECT unnest(traj_ids) AS traj_id "
    "FROM batches WHERE run_id = '{run}') b JOIN trajectories t USING (traj_id)"
)


def demo_lake(tmp_path) -> Lake:
    """4 train, 1 valid and 2 test problems."""
    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "p.jsonl", [*PROBLEMS, *HELD_OUT])])
    return lake


def train_ids(lake: Lake) -> list[str]:
    return sorted(lake.sql("SELECT problem_id FROM problems WHERE split = 'train'")["problem_id"])


def hard_file(tmp_path, ids: list[str], seed: int = 1000) -> str:
    """A hard-set file as scripts/select_hard_problems.py writes it (selected on another pi_0)."""
    path = tmp_path / "hard.json"
    path.write_text(
        json.dumps(
            {
                "problem_ids": ids,
                "pi0_model_id": "another-pi0",
                "selection": {"seed": seed, "samples": 16},
                "per_problem": {i: {"samples": 16, "successes": 0} for i in ids},
            }
        )
    )
    return str(path)


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
def test_demo_reports_hard_set_offpolicy_and_heldout(tmp_path, tiny_model):  # noqa: F811
    from spo_train.experiment.demo import DemoConfig, run_demo

    lake = demo_lake(tmp_path)
    ids = train_ids(lake)
    # The hard file lists 3 train problems, an id the lake lacks and the valid problem; the
    # demo keeps train problems of the lake, the first `hard_problems` of them by id.
    valid = lake.sql("SELECT problem_id FROM problems WHERE split = 'valid'")["problem_id"][0]
    config = DemoConfig(
        lake=lake.uri,
        output=str(tmp_path / "demo"),
        model=str(tiny_model),
        hard_file=hard_file(tmp_path, [ids[3], ids[1], "em-missing", valid, ids[2]]),
        hard_problems=2,
        q0_samples=2,
        heldout_problems=10,
        eval_n=10,
        steps=2,
        batch_size=4,
        rollout_n=2,
        max_new_tokens=8,
    )
    hard = [ids[1], ids[2]]
    shown = io.StringIO()
    summary = run_demo(config, console=Console(file=shown, width=80))
    text = shown.getvalue()
    # the table shows both sets and the SPO - GRPO rows; the trainer's note on the evaluation
    # the demo turned off is not shown (the demo evaluates itself)
    assert "hard (train), 2" in text and "held-out (test), 2" in text
    assert "GRPO (after)" in text and "SPO - GRPO" in text
    assert "95% interval" in text and "--eval-problems 0" not in text
    assert "selected on another pi_0" in " ".join(text.split())
    # part of the listed set is not a train problem of the lake: said, then the demo goes on
    assert "holds 3 of the 5 problems" in " ".join(text.split())
    assert "(missing 2: 1 not in the lake, 1 in split valid; e.g. " in " ".join(text.split())
    assert summary["steps"] == 2 and summary["q0_problems"] == 2
    assert not {"before", "after", "change"} & set(summary)  # moved into the two sets

    with_q0 = set(lake.sql("SELECT DISTINCT problem_id FROM q0_estimates")["problem_id"])
    split_of = dict(lake.sql("SELECT problem_id, split FROM problems").iter_rows())
    trained, heldout, off = summary["trained"], summary["heldout"], summary["offpolicy"]
    assert with_q0 == set(hard)  # Q0 only for the problems the runs train on
    assert trained["problem_ids"] == hard and trained["problems"] == 2
    assert {split_of[p] for p in heldout["problem_ids"]} == {"test"} and heldout["problems"] == 2

    def check_change(before, after, change):
        for k in ("pass@1", "pass@10"):
            diff = change[k]["diff"]
            low, high = change[k]["ci95"]
            assert low <= diff <= high
            assert diff == pytest.approx(after[k] - before[k])

    for s in (trained, heldout, off["spo"], off["grpo"]):
        for when in ("before", "after"):
            assert 0 <= s[when]["pass@1"] <= s[when]["pass@10"] <= 1
        check_change(s["before"], s["after"], s["change"])
    assert off["spo"] == {k: trained[k] for k in ("before", "after", "change")}
    assert off["grpo"]["before"] == trained["before"] and off["problems"] == 2
    check_change(off["grpo"]["after"], off["spo"]["after"], off["spo_minus_grpo"])
    assert off["hard_set"]["selection_seed"] == 1000
    assert off["hard_set"]["selected_on_this_pi0"] is False

    # Both runs trained on the hard set only: every online rollout and every batch row is one
    # of its problems; SPO's offline half drew reference (human) solutions, never eval rows.
    for run in (summary["train_run_id"], summary["grpo_run_id"]):
        drawn = set(lake.sql(BATCH_ROWS.format(run=run))["problem_id"])
        assert drawn and drawn <= set(hard)
    sources = set(lake.sql(BATCH_ROWS.format(run=summary["train_run_id"]))["source"])
    assert sources <= {"online", "human"}
    algos = dict(
        lake.sql("SELECT run_id, kind FROM runs WHERE kind IN ('train', 'demo')").iter_rows()
    )
    assert algos[summary["train_run_id"]] == algos[summary["grpo_run_id"]] == "train"

    # The lake's evaluation rows of the demo run: pi_0 and SPO on both sets, GRPO on the hard
    # set, n each.
    rows = lake.sql(
        "SELECT model_id, problem_id, count(*) AS n FROM trajectories "
        f"WHERE source = 'eval' AND run_id = '{summary['demo_run_id']}' GROUP BY ALL"
    ).to_dicts()
    evaluated = {(r["model_id"], r["problem_id"]) for r in rows}
    spo, grpo = f"{summary['train_run_id']}@2", f"{summary['grpo_run_id']}@2"
    pi0 = {r["model_id"] for r in rows} - {spo, grpo}
    assert len(pi0) == 1
    both = trained["problem_ids"] + heldout["problem_ids"]
    assert evaluated == {
        *((m, p) for m in (*pi0, spo) for p in both),
        *((grpo, p) for p in hard),
    }
    assert {r["n"] for r in rows} == {10}

    out = tmp_path / "demo"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["trained"] == trained and saved["heldout"] == heldout
    assert saved["offpolicy"] == json.loads(json.dumps(off))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = lake.sql("SELECT kind, status FROM runs WHERE kind IN ('demo', 'train')").to_dicts()
    assert sorted(r["kind"] for r in runs) == ["demo", "train", "train"]
    assert {r["status"] for r in runs} == {"completed"}
    logged = lake.sql("SELECT DISTINCT name FROM metrics WHERE name LIKE 'demo/%'")["name"]
    assert {
        f"demo/{when}/{split}/pass@10"
        for when in ("before", "after")
        for split in ("train", "test")
    } | {"demo/after-grpo/train/pass@10"} <= set(logged)


def test_demo_stopped_after_its_run_started_ends_it(tmp_path, tiny_model):  # noqa: F811
    from spo_train.experiment.demo import DemoConfig, run_demo

    lake = demo_lake(tmp_path)
    config = DemoConfig(
        lake=lake.uri,
        output=str(tmp_path / "demo"),
        model=str(tiny_model),
        hard_file=hard_file(tmp_path, train_ids(lake)[:2]),
        q0_samples=1,
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
    # the demo marked its --output before the model loaded: the rerun below is let in
    assert (tmp_path / "demo" / "spo-demo.json").is_file()
    # The rerun the stop line suggests reuses the Q0 estimates and pi_0's finished evaluation
    # and says so (issue 20, item 7), then runs to the end.
    shown = io.StringIO()
    summary = run_demo(config, console=Console(file=shown, width=200))
    text = " ".join(shown.getvalue().split())
    assert "Q0: 2 problems (0 estimated now, 0 new samples, 2 estimated before (reused))" in text
    assert "pi_0: trained pass@1" in text and "reused from" in text and "pi0_eval.json" in text
    assert summary["q0_problems"] == 2
    assert "replacing the previous demo's spo training run" not in text  # stopped before it
    assert set(summary["offpolicy"]) >= {"spo", "grpo", "spo_minus_grpo"}


def test_shipped_hard_set_names_train_problems_selected_apart_from_the_demo():
    """The shipped list: ids of embedded train problems, selected on the shipped pi_0 with a
    seed that neither the demo's Q0 nor its evaluation uses, every listed problem unsolved in
    its selection samples."""
    import pyarrow.parquet as pq

    from spo_store.adapters import problem_id
    from spo_train.embedded.defaults import DEFAULT_PROBLEMS
    from spo_train.experiment.demo import HARD_PROBLEMS, DemoConfig, load_hard_set
    from spo_train.lm.models import model_identity, resolve_model_path

    doc = load_hard_set(None)
    names = pq.read_table(DEFAULT_PROBLEMS / "train.parquet", columns=["name"])["name"]
    train = {problem_id("embedded", n) for n in names.to_pylist()}
    assert len(doc["problem_ids"]) >= DemoConfig().hard_problems
    assert set(doc["problem_ids"]) <= train
    assert doc["problem_ids"] == sorted(set(doc["problem_ids"]))
    demo = DemoConfig()
    assert doc["selection"]["seed"] not in (demo.seed, demo.eval_seed)
    assert doc["pi0_model_id"] == model_identity(resolve_model_path(None))
    for pid in doc["problem_ids"]:
        assert doc["per_problem"][pid]["successes"] == 0
        assert doc["per_problem"][pid]["samples"] == doc["selection"]["samples"] >= 16
    assert HARD_PROBLEMS.is_relative_to(DEFAULT_PROBLEMS.parent)  # package data (assets/*)


def test_demo_refuses_a_seed_that_repeats_the_selection_and_a_bad_hard_file(tmp_path):
    from spo_store.errors import SpoError
    from spo_train.experiment.demo import DemoConfig

    good = hard_file(tmp_path, ["em-a"], seed=7)
    for seed in (7, 6):  # Q0 would use seed 7 / evaluation seed + 1 = 7
        with pytest.raises(SpoError, match="selected with seed 7"):
            DemoConfig(output=str(tmp_path / "d"), hard_file=good, seed=seed).validate()
    DemoConfig(output=str(tmp_path / "d"), hard_file=good, seed=8).validate()
    bad = tmp_path / "bad.json"
    for text in ("{", '{"problem_ids": []}', '{"problem_ids": ["a"], "selection": {}}'):
        bad.write_text(text)
        with pytest.raises(SpoError, match="hard problems file .*bad.json"):
            DemoConfig(output=str(tmp_path / "d"), hard_file=str(bad)).validate()
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_demo_output_is_empty_new_or_a_demos_own(tmp_path):
    """--output: a new or empty folder, one holding the demo's marker, or one an earlier demo
    wrote before the marker existed (pi0_eval.json and only the demo's names) is accepted;
    any other non-empty folder is refused (one line) by `validate`, before any work."""
    from spo_store.errors import SpoError
    from spo_train.experiment.demo import OUTPUT_MARKER, DemoConfig

    def check(folder, files=()):
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            (folder / name).write_text("{}")
        DemoConfig(output=str(folder)).validate()

    DemoConfig(output=str(tmp_path / "new")).validate()
    check(tmp_path / "empty")
    check(tmp_path / "marked", [OUTPUT_MARKER, "pi0_eval.json", "mine.txt"])
    check(tmp_path / "old", ["pi0_eval.json", "summary.json", "curves.png"])
    (tmp_path / "old" / "train").mkdir()
    check(tmp_path / "old")
    for name, files in (
        ("other", ["mine.txt"]),
        ("old-plus", ["pi0_eval.json", "mine.txt"]),
        ("no-eval", ["summary.json"]),  # not the demo's pi0_eval.json: not taken for a demo's
        ("hidden", [".git"]),
    ):
        with pytest.raises(SpoError, match=f"--output .*{name} holds other files .* no spo-demo"):
            check(tmp_path / name, files)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(files)


def test_demo_on_a_lake_without_the_hard_problems_is_one_line_before_any_work(tmp_path):
    """A lake of other problems (none of the shipped hard ids): refused after the problems are
    looked up, before a model loads, a run is recorded or the output is made."""
    from spo_store.errors import SpoError
    from spo_train.experiment.demo import DemoConfig, run_demo

    lake = demo_lake(tmp_path)
    before = lake.versions()
    config = DemoConfig(lake=lake.uri, output=str(tmp_path / "demo"), model="/nonexistent")
    with pytest.raises(SpoError, match=r"hard_problems.json: none of its 45 problems is a"):
        run_demo(config, console=Console(file=io.StringIO()))
    assert Lake.open(lake.uri, create=False).versions() == before
    assert not (tmp_path / "demo").exists()


def test_demo_on_part_of_the_shipped_hard_set_says_what_is_missing(tmp_path):
    """A lake holding 5 of the shipped 45 hard problems: fewer than the 32 the demo trains on
    is refused (one line: how many it holds, how many are missing and why, which), before a
    model loads, a run is recorded or the output is made; with enough of them for
    `hard_problems` the demo says the same in a note and goes on (here to the model)."""
    import pyarrow.parquet as pq

    from spo_store.adapters import problem_id
    from spo_store.errors import SpoError
    from spo_train.embedded.defaults import DEFAULT_PROBLEMS
    from spo_train.experiment.demo import DemoConfig, load_hard_set, run_demo

    hard_ids = load_hard_set(None)["problem_ids"]
    table = pq.read_table(DEFAULT_PROBLEMS / "train.parquet")
    names = table["name"].to_pylist()
    keep = [i for i, n in enumerate(names) if problem_id("embedded", n) in hard_ids[:5]]
    assert len(keep) == 5
    pq.write_table(table.take(keep), tmp_path / "train.parquet")
    lake = Lake.open(tmp_path / "lake")
    ingest_human_solutions(lake, [tmp_path / "train.parquet"], source_dataset="embedded")
    before = lake.versions()
    missing = f"missing 40: 40 not in the lake; e.g. {', '.join(hard_ids[5:8])}, ..."

    config = DemoConfig(lake=lake.uri, output=str(tmp_path / "demo"), model="/nonexistent")
    with pytest.raises(SpoError) as err:
        run_demo(config, console=Console(file=io.StringIO()))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("hard problems file ")
    assert (
        f"holds only 5 of the 45 problems as reliably judged train problems ({missing}), fewer "
        "than the 32 the demo trains on" in msg
    ), msg
    assert Lake.open(lake.uri, create=False).versions() == before
    assert not (tmp_path / "demo").exists()

    config.hard_problems = 4
    shown = io.StringIO()
    with pytest.raises(SpoError, match="nonexistent"):
        run_demo(config, console=Console(file=shown, width=400))
    text = " ".join(shown.getvalue().split())
    assert (
        "note: the lake holds 5 of the 45 problems of "
        f"{DEFAULT_PROBLEMS.parent / 'hard_problems.json'} as reliably judged train problems "
        f"({missing}); the demo trains on the first 4 it holds" in text
    ), text


def test_demo_hard_file_listing_an_id_twice_is_not_a_missing_problem(tmp_path):
    """Every listed problem held (one listed twice): no note about missing ones."""
    from spo_store.errors import SpoError
    from spo_train.experiment.demo import DemoConfig, run_demo

    lake = demo_lake(tmp_path)
    ids = train_ids(lake)
    config = DemoConfig(
        lake=lake.uri,
        output=str(tmp_path / "demo"),
        model="/nonexistent",
        hard_file=hard_file(tmp_path, [ids[0], ids[1], ids[0]]),
        hard_problems=2,
    )
    shown = io.StringIO()
    with pytest.raises(SpoError, match="nonexistent"):
        run_demo(config, console=Console(file=shown, width=400))
    assert "missing" not in shown.getvalue(), shown.getvalue()
