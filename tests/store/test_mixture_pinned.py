"""Mixture sources over columns the sampler's index does not hold (issue 22 item 2): a filter on
`t.response` (or another lake table) is resolved once into pinned trajectory ids, on real Lance
and DuckDB; rows appended later do not join it, a restored pin is used as it is, and every
mistake is one line naming the source."""

from __future__ import annotations

import json

import pytest

from spo_store.errors import SpoError
from spo_store.ingest import ingest_human_solutions
from spo_store.mixture import BUILTIN_SOURCES, MixtureSampler
from spo_store.mixture_pins import PINS_FILE, load_pins, outside_index, save_pins
from tests.conftest import write_jsonl

TWO_LINE = "t.source = 'human' AND t.reward = 0 AND t.response LIKE 'n = %'"
LIVE = "t.source = 'human' AND t.reward = 0 AND t.response_chars > 20"


def _sources(**extra: str) -> dict[str, str]:
    return {**BUILTIN_SOURCES, "two": TWO_LINE, "live": LIVE, **extra}


def _sampler(lake, spec, sources=None, **kw):
    # TOPR's sampler (no q0 needed): the small lake has no estimates
    return MixtureSampler(lake, spec, sources=sources or _sources(), require_q0=False, **kw)


def _ids(sampler, name):
    pos = sampler.candidates(name)
    return sampler.index.take(pos, ["traj_id"]).column(0).to_pylist()


def _responses(lake, ids):
    quoted = ", ".join(f"'{i}'" for i in ids)
    rows = lake.sql(f"SELECT traj_id, response FROM trajectories WHERE traj_id IN ({quoted})")
    return dict(zip(rows["traj_id"], rows["response"], strict=True))


def _more_solutions(lake, tmp_path):
    """New train problems whose correct human solutions match TWO_LINE (and LIVE)."""
    problems = [
        {
            "name": f"triple{k}",
            "statement": f"Read n, print 3n + {k}.",
            "split": "train",
            "tests": [{"input": "1\n", "output": f"{3 + k}\n"}],
            "solutions": [f"n = int(input())\nprint(3 * n + {k})"],
        }
        for k in range(2)
    ]
    ingest_human_solutions(lake, [write_jsonl(tmp_path / "more.jsonl", problems)])


def test_what_the_index_cannot_evaluate():
    assert outside_index(TWO_LINE) == ["t.response"]
    assert outside_index(LIVE) == []
    assert outside_index("json_extract_string(p.extra, '$.cf_tags') = 'x'") == ["p.extra"]
    assert outside_index("t.problem_id IN (SELECT problem_id FROM q0_estimates)") == [
        "q0_estimates"
    ]
    # annotations' light columns are in the index; a CTE of the filter's own is no table
    assert outside_index("t.traj_id IN (SELECT a.traj_id FROM annotations a)") == []
    assert outside_index("t.problem_id IN (WITH c AS (SELECT 'x' AS i) SELECT i FROM c)") == []
    assert outside_index(BUILTIN_SOURCES["pts"].replace("{ref_model_id}", "'m'")) == []


def test_a_response_filter_draws_only_matching_rows_and_appends_do_not_join(small_lake, tmp_path):
    sampler = _sampler(small_lake, "two:0.5,live:0.5")
    sampler.check_sources()  # pins `two` (names t.response), not `live`
    assert set(sampler.pinned) == {"two"}
    pin = sampler.pinned["two"]
    expected = small_lake.sql(f"SELECT t.traj_id FROM trajectories t WHERE {TWO_LINE} ORDER BY 1")[
        "traj_id"
    ].to_list()
    assert list(pin.traj_ids) == expected and len(expected) == 4
    assert pin.trajectories_version == small_lake.dataset("trajectories").version
    before_live = set(_ids(sampler, "live"))
    for step in range(5):
        batch = sampler.sample(8, step=step)
        drawn = [i for i, s in zip(batch.traj_ids, batch.sources, strict=True) if s == "two"]
        assert len(drawn) == 4 and set(drawn) <= set(expected)
        assert all(r.startswith("n = ") for r in _responses(small_lake, drawn).values())
    # Rows appended after the pin match the filter but never join it; the live source grows.
    _more_solutions(small_lake, tmp_path)
    sampler.index.refresh()
    assert set(_ids(sampler, "two")) == set(expected)
    new_live = set(_ids(sampler, "live")) - before_live
    assert len(new_live) == 2
    # A fresh sampler (a new run) resolves the filter again and sees them.
    fresh = _sampler(small_lake, "two:1")
    fresh.check_sources()
    assert len(fresh.pinned["two"].traj_ids) == 6


def test_a_restored_pin_is_used_as_it_is(small_lake, tmp_path):
    first = _sampler(small_lake, "two:1")
    first.check_sources()
    save_pins(tmp_path, first.pinned)
    _more_solutions(small_lake, tmp_path)
    kept = load_pins(tmp_path)
    assert kept is not None and kept["two"] == first.pinned["two"]
    resumed = _sampler(small_lake, "two:1", pinned=kept)
    resumed.check_sources()
    assert resumed.pinned["two"] == first.pinned["two"]  # not resolved again
    assert set(_ids(resumed, "two")) == set(first.pinned["two"].traj_ids)
    assert [resumed.sample(4, step=s).traj_ids for s in range(3)] == [
        first.sample(4, step=s).traj_ids for s in range(3)
    ]
    # The filter changed since: its pinned ids no longer mean it.
    other = _sources(two=TWO_LINE + " AND t.response_chars > 0")
    with pytest.raises(SpoError, match=r"source 'two' is now .* but this run pinned its ids"):
        _sampler(small_lake, "two:1", sources=other, pinned=kept).check_sources()
    # A resume whose kept record lacks the source: refused, not resolved anew.
    with pytest.raises(SpoError, match="source 'two' has no pinned ids kept by this run"):
        _sampler(small_lake, "two:1", pinned={}).check_sources()


def test_bad_and_empty_filters_are_one_line_naming_the_source(small_lake):
    cases = {
        "typo": ("t.response LIKE 'n%' AND t.rewrd = 0", "source 'typo': bad SQL predicate"),
        "nothing": (
            "t.response = 'no such program'",
            "mixture source 'nothing' is empty at lake version",
        ),
        "window": (
            "t.response LIKE 'n%' AND t.run_id = {run_id}",
            "source 'window' names t.response, which the mixture's index does not hold",
        ),
    }
    for name, (pred, message) in cases.items():
        with pytest.raises(SpoError) as err:
            _sampler(small_lake, f"{name}:1", _sources(**{name: pred})).check_sources()
        line = str(err.value)
        assert "\n" not in line and message in line, line
        assert name in line
    # matching nothing says so, with the version it was resolved at
    with pytest.raises(SpoError, match="matches no trajectory"):
        _sampler(small_lake, "n:1", _sources(n="t.response = 'x'")).check_sources()


def test_a_pinned_source_matching_only_other_problems_names_the_count(small_lake):
    with pytest.raises(SpoError) as err:
        _sampler(
            small_lake, "u:1", _sources(u="t.response LIKE 'n = %'"), split="valid"
        ).check_sources()
    line = str(err.value)
    assert (
        "matches 4 trajectories, none of them a judged trajectory of the problems of split " in line
    )
    assert "'valid'" in line


def test_a_damaged_pins_file_is_one_line(small_lake, tmp_path):
    sampler = _sampler(small_lake, "two:1")
    sampler.check_sources()
    save_pins(tmp_path, sampler.pinned)
    body = json.loads((tmp_path / PINS_FILE).read_text())
    assert body["sources"]["two"]["rows"] == 4
    body["sources"]["two"]["traj_ids"][0] = "someone-else"
    (tmp_path / PINS_FILE).write_text(json.dumps(body))
    with pytest.raises(SpoError, match="do not match their count and hash"):
        load_pins(tmp_path)
    (tmp_path / PINS_FILE).write_text("{")
    with pytest.raises(SpoError, match="not a readable record of the run's pinned sources"):
        load_pins(tmp_path)
    save_pins(tmp_path, {})  # a run without pinned sources leaves no stale file
    assert not (tmp_path / PINS_FILE).exists() and load_pins(tmp_path) is None
