"""The explorer's reads without a browser: what each page is given, on a small real lake."""

from __future__ import annotations

import pytest

from spo_store.errors import SpoError
from spo_store.explorer.data import LakeReader, NotFound, ProblemFilter, heat_strip
from tests.helpers_explorer import HOSTILE, build_lake


def _guard(query: str) -> None:
    from spo_cli.lake_cmds import _check_read_only

    _check_read_only(query)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from spo_store.lake import Lake

    root = tmp_path_factory.mktemp("explorer-data") / "lake"
    ids = build_lake(root)
    return Lake.open(root, create=False), ids


def test_problem_filters_count_humans_and_models(built):
    lake, ids = built
    reader = LakeReader(lake, _guard)
    names = lambda page: sorted(r["name"] for r in page.rows)  # noqa: E731
    assert names(reader.problems(ProblemFilter(human="yes", model="no"))) == ["Hard sum"]
    assert names(reader.problems(ProblemFilter(model="yes"))) == ["A+B", f"Evil {HOSTILE}"]
    assert names(reader.problems(ProblemFilter(human="no"))) == ["Unsolved"]
    assert names(reader.problems(ProblemFilter(model="failed"))) == ["Hard sum"]
    assert names(reader.problems(ProblemFilter(human="failed"))) == ["Unsolved"]
    # A+B: 2 of 3 online rows pass; Hard sum 0 of 3; problems without model rows have no rate
    rates = {r["name"]: r["model_pass_rate"] for r in reader.problems(ProblemFilter()).rows}
    assert rates["A+B"] == pytest.approx(2 / 3) and rates["Hard sum"] == 0
    assert rates["Unsolved"] is None
    assert names(reader.problems(ProblemFilter(min_pass=0.5, max_pass=0.9))) == ["A+B"]
    assert names(reader.problems(ProblemFilter(split="test"))) == [f"Evil {HOSTILE}", "Unsolved"]
    assert reader.problems(ProblemFilter(name="a+")).total == 1


def test_a_problem_page_lists_every_solution_in_order(built):
    lake, ids = built
    reader = LakeReader(lake, _guard)
    data = reader.problem(ids["problems"]["A+B"])
    sources = [s["source"] for s in data["solutions"]]
    assert sources == ["human", "human", "online", "online", "online"]
    assert [s["policy_version"] for s in data["solutions"][2:]] == [0, 1, 2]
    assert [s["reward"] for s in data["solutions"][2:]] == [-1.0, 0.0, 0.0]
    assert data["q0"][0]["samples"] == 8 and len(data["problem"]["tests"]) == 2
    with pytest.raises(NotFound):
        reader.problem("no-such-problem")


def test_pages_follow_rows_appended_after_the_first_read(built, tmp_path):
    lake, ids = built
    reader = LakeReader(lake, _guard)
    pid = ids["problems"]["Unsolved"]
    assert reader.problems(ProblemFilter(model="yes")).total == 2
    before = len(reader.problem(pid)["solutions"])
    lake.append(
        "trajectories",
        [
            {
                "traj_id": "late-1",
                "problem_id": pid,
                "run_id": ids["train_run"],
                "source": "online",
                "policy_version": 3,
                "response": "print(2)\n",
                "reward": 0.0,
            }
        ],
    )
    assert len(reader.problem(pid)["solutions"]) == before + 1
    assert reader.problems(ProblemFilter(model="yes")).total == 3  # the stats moved too
    assert reader.trajectory("late-1")["row"]["response"] == "print(2)\n"
    page = reader.trajectories(run_id=ids["train_run"], policy_version=3)
    assert [r["traj_id"] for r in page.rows] == ["late-1"]


def test_trajectory_lists_filter_and_page(built):
    lake, ids = built
    reader = LakeReader(lake, _guard)
    page = reader.trajectories(run_id=ids["train_run"], policy_version=0)
    assert page.total == 3 and {r["policy_version"] for r in page.rows} == {0}
    page = reader.trajectories(problem_id=ids["problems"]["A+B"], source="human")
    assert page.total == 2 and all(r["source"] == "human" for r in page.rows)
    assert reader.trajectories(problem_id="nope").total == 0
    assert [r["traj_id"] for r in reader.trajectories(annotated=True).rows] == [ids["annotated"]]
    assert reader.trajectories(source="online", page=99).page == 1  # clamped to the last
    batch = reader.batch(ids["train_run"], 1)
    assert [r["traj_id"] for r in batch["rows"]] == [f"online-s1-p{k}" for k in range(3)]
    assert batch["missing"] == 0
    with pytest.raises(NotFound, match="logged no batch at step 7"):
        reader.batch(ids["train_run"], 7)


def test_heat_strip_marks_only_single_token_jumps():
    row = {"reward": 0.0, "tokenizer_id": "tok", "behaviour_logprobs": [-0.5] * 6}
    ann = {
        "positions": [-1, 0, 3],
        "s_t": [0.1, 0.2, 0.9],
        "samples": [10, 10, 10],
        "response_tokens": 6,
        "threshold": 0.3,
        "tokens": list("abcdef"),
        "tokenizer_id": "tok",
    }
    strip = heat_strip(ann, row)
    # 0.2 at t=0 -> 0.9 at t=3: a gap of 3 tokens, not pivotal; 0.9 -> 1 after the last: small
    assert strip["pivots"] == []
    assert [t["s"] for t in strip["tokens"]] == [0.2, 0.2, 0.2, 0.9, 0.9, 1.0]
    assert [t["estimated"] for t in strip["tokens"]] == [True, False, False, True, False, False]
    assert strip["tokens"][0]["behaviour"] == -0.5
    ann["positions"], ann["s_t"] = [-1, 0, 1], [0.1, 0.2, 0.9]
    assert [t["t"] for t in heat_strip(ann, row)["pivots"]] == [1]
    # a failing response: nothing is known after its last token
    failing = heat_strip({**ann, "positions": [3], "s_t": [0.2]}, {**row, "reward": -1.0})
    assert failing["pivots"] == [] and failing["tokens"][-1]["s"] == 0.2
    # the final S = 1 counts for a passing one: 0.2 at t=4 -> 1 at t=5 is pivotal
    passing = heat_strip({**ann, "positions": [4], "s_t": [0.2]}, row)
    assert [t["t"] for t in passing["pivots"]] == [5]
    # S from the counts, as spo pts counts pivots: 4/10 -> 2/10 is a jump of 0.2, not over a
    # 0.2 threshold (the float32 s_t say 0.2000000030)
    import numpy as np

    f32 = [float(np.float32(x)) for x in (0.4, 0.2)]
    counted = heat_strip(
        {
            **ann,
            "positions": [1, 2],
            "s_t": f32,
            "samples": [10, 10],
            "successes": [4, 2],
            "threshold": 0.2,
        },
        {**row, "reward": -1.0},
    )
    assert counted["pivots"] == [] and counted["tokens"][2]["s"] == 0.2
    assert heat_strip(
        {
            **ann,
            "positions": [1, 2],
            "s_t": f32,
            "samples": [10, 10],
            "successes": None,
            "threshold": 0.2,
        },
        {**row, "reward": -1.0},
    )["pivots"]
    # log-probs of another tokenizer are not put under these tokens
    other = heat_strip(ann, {**row, "tokenizer_id": "other"})
    assert other["tokens"][0]["behaviour"] is None


def test_sql_is_read_only_and_cut_to_its_head(built):
    lake, _ = built
    reader = LakeReader(lake, _guard)
    table, cut = reader.sql("SELECT * FROM range(1500)", 1000)
    assert table.num_rows == 1000 and cut
    table, cut = reader.sql("SELECT count(*) AS n FROM problems", 1000)
    assert table.column("n").to_pylist() == [4] and not cut
    for bad in ("DELETE FROM problems", "COPY problems TO 'x.csv'", "ATTACH 'x.db'", "  "):
        with pytest.raises(SpoError):
            reader.sql(bad, 1000)
    with pytest.raises(SpoError, match="SQL error"):
        reader.sql("SELECT nope FROM problems", 1000)
