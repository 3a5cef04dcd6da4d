"""Styles withheld from training (issue 22 item 2): the DuckDB predicates over `t.response`
that select each of the embedded generator's styles agree with `embedded_style` on every
human solution of the embedded set in a real lake, and the shipped off-policy config's
`reference-2styles` source draws exactly the correct loop and functional ones."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

import pytest

from spo_store.lake import Lake
from spo_store.mixture import BUILTIN_SOURCES, MixtureSampler
from spo_train.diversity import EMBEDDED_STYLE_SQL, embedded_style
from spo_train.embedded.defaults import ensure_problems
from spo_train.embedded.generator import STYLES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedded_lake(tmp_path_factory) -> Lake:
    lake = Lake.open(tmp_path_factory.mktemp("embedded") / "lake")
    assert ensure_problems(lake)
    return lake


def test_style_predicates_agree_with_embedded_style_on_every_human_solution(embedded_lake):
    assert set(EMBEDDED_STYLE_SQL) == set(STYLES)
    cols = ", ".join(f"({sql}) AS {style}" for style, sql in EMBEDDED_STYLE_SQL.items())
    rows = embedded_lake.sql_arrow(
        f"SELECT t.reward, t.response, {cols}, t.response NOT LIKE '%sys.stdin%' AS no_stdin "
        "FROM trajectories t WHERE t.source = 'human'"
    ).to_pylist()
    seen: Counter[tuple[float, str | None]] = Counter()
    for r in rows:
        style = embedded_style(r["response"])
        seen[(r["reward"], style)] += 1
        assert [s for s in STYLES if r[s]] == [style], (style, r["response"])
        assert r["no_stdin"] == (style in ("loop", "functional")), r["response"]
    # every style, correct (reward 0) and incorrect, in numbers
    assert all(seen[(0.0, s)] > 1000 and seen[(-1.0, s)] > 500 for s in STYLES), seen
    assert sum(seen.values()) == len(rows) > 15000


def test_the_shipped_two_style_source_draws_loop_and_functional_only(embedded_lake):
    config = tomllib.loads((ROOT / "experiments" / "offpolicy.toml").read_text())
    source = config["sources"]["reference-2styles"]
    sampler = MixtureSampler(
        embedded_lake,
        "reference-2styles:1",
        sources={**BUILTIN_SOURCES, **config["sources"]},
        require_q0=False,  # the lake has no q0 estimates; the style filter is what is checked
    )
    sampler.check_sources()
    assert sampler.pinned["reference-2styles"].filter == source
    drawn = sampler.index.take(sampler.candidates("reference-2styles"), ["traj_id"])
    got = set(drawn.column(0).to_pylist())
    rows = embedded_lake.sql_arrow(
        "SELECT t.traj_id, t.problem_id, t.response FROM trajectories t "
        "JOIN problems p USING (problem_id) "
        "WHERE t.source = 'human' AND t.reward = 0 AND p.split = 'train'"
    ).to_pylist()
    kept = [r for r in rows if embedded_style(r["response"]) in ("loop", "functional")]
    assert got == {r["traj_id"] for r in kept}
    # each train problem keeps two of its 3-4 reference solutions
    per_problem = Counter(r["problem_id"] for r in kept)
    assert set(per_problem.values()) == {2}
    assert len(per_problem) == len({r["problem_id"] for r in rows}) == 2000
