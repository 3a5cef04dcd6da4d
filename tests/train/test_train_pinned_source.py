"""`spo train` with a mixture source over `t.response` (issue 22 item 2): the filter is resolved
once into pinned trajectory ids, every batch draws only from them, the run records them
(OUTPUT/pinned_sources.json, count and hash in its `runs` row) and `--resume` keeps the same
ids even after matching rows were appended; a bad filter is one line before the run."""

from __future__ import annotations

import json

import pytest

from spo_store.errors import SpoError
from spo_store.mixture_pins import PINS_FILE, load_pins
from spo_train.train.loop import train
from tests.store.test_mixture_pinned import _more_solutions
from tests.train.test_train_cli import _one_line_error, _running, _spo
from tests.train.test_train_q0_and_eval import _config, _estimates

TWO_LINE = "t.source = 'human' AND t.reward = 0 AND t.response LIKE 'n = %'"


def _batches(lake, run_id):
    return lake.sql(
        f"SELECT step, traj_ids, sources FROM batches WHERE run_id = '{run_id}' ORDER BY step"
    ).to_dicts()


def _matching(lake) -> set[str]:
    return set(lake.sql(f"SELECT t.traj_id FROM trajectories t WHERE {TWO_LINE}")["traj_id"])


def test_a_response_source_trains_on_matching_rows_and_resume_keeps_its_ids(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    _estimates(small_lake, tiny_model, successes_of=1)
    (tmp_path / "s.toml").write_text(f"[sources]\ntwo = {json.dumps(TWO_LINE)}\n")
    kw = dict(mix="two:1", sources_file=str(tmp_path / "s.toml"), batch_size=4)
    said: list[str] = []
    result = train(_config(small_lake, tiny_model, tmp_path, steps=2, **kw), on_event=said.append)
    out = tmp_path / "run"
    matching = _matching(small_lake)
    assert len(matching) == 4
    rows = _batches(small_lake, result.run_id)
    assert [r["step"] for r in rows] == [0, 1]
    assert all(set(r["traj_ids"]) <= matching and r["sources"] == ["two"] * 4 for r in rows)
    # The run keeps the ids, and its runs row names their count and hash.
    pins = load_pins(out)
    assert pins is not None and set(pins["two"].traj_ids) == matching
    recorded = json.loads(
        small_lake.sql(f"SELECT config FROM runs WHERE run_id = '{result.run_id}'")["config"][0]
    )
    assert recorded["pinned_sources"]["two"] == pins["two"].summary()
    assert recorded["pinned_sources"]["two"]["rows"] == 4
    assert any("source 'two': resolved once over trajectories version" in s for s in said)
    kept = (out / PINS_FILE).read_bytes()

    # New matching solutions (of new train problems with q0) appear before the resume.
    _more_solutions(small_lake, tmp_path)
    _estimates(small_lake, tiny_model, successes_of=1)
    added = _matching(small_lake) - matching
    assert len(added) == 2
    said.clear()
    resumed = train(
        _config(small_lake, tiny_model, tmp_path, steps=5, resume=True, **kw),
        on_event=said.append,
    )
    assert resumed.run_id == result.run_id
    rows = _batches(small_lake, result.run_id)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    drawn = {i for r in rows for i in r["traj_ids"]}
    assert drawn <= matching and not drawn & added
    assert (out / PINS_FILE).read_bytes() == kept  # the same ids, not resolved again
    assert any("source 'two': kept over trajectories version" in s for s in said)

    # A resume never resolves the filter again: a changed filter, or lost ids, is refused.
    (tmp_path / "s.toml").write_text(f"[sources]\ntwo = {json.dumps(TWO_LINE + ' ')}\n")
    with pytest.raises(SpoError, match=r"source 'two' is now .* but this run pinned its ids"):
        train(_config(small_lake, tiny_model, tmp_path, steps=6, resume=True, **kw))
    (tmp_path / "s.toml").write_text(f"[sources]\ntwo = {json.dumps(TWO_LINE)}\n")
    (out / PINS_FILE).unlink()
    with pytest.raises(SpoError, match="source 'two' has no pinned ids kept by this run"):
        train(_config(small_lake, tiny_model, tmp_path, steps=6, resume=True, **kw))
    assert len(_batches(small_lake, result.run_id)) == 5  # nothing more was trained


def test_a_bad_response_filter_is_one_line_before_the_run(small_lake, tiny_model, tmp_path):  # noqa: F811
    _estimates(small_lake, tiny_model, successes_of=1)
    base = ["train", "--lake", small_lake.uri, "--model", str(tiny_model), "--output", "o"]
    base += ["--steps", "1", "--batch-size", "2", "--max-new-tokens", "8"]
    base += ["--eval-problems", "0", "--no-tensorboard", "--wandb", "off"]
    cases = {  # a misspelt column is refused as the file loads; an empty filter by the mixture
        "t.response LIKE 'n%' AND t.rewrd = 0": (
            "error: src.toml: source 'bad': not valid SQL",
            'does not have a column named "rewrd"',
        ),
        "t.response = 'no such program'": (
            "error: --mix bad:1: ",
            "source 'bad' is empty at lake version",
        ),
    }
    for pred, (start, message) in cases.items():
        (tmp_path / "src.toml").write_text(f"[sources]\nbad = {json.dumps(pred)}\n")
        r = _spo(*base, "--sources-file", "src.toml", "--mix", "bad:1", cwd=tmp_path)
        line = _one_line_error(r)
        assert line.startswith(start) and message in line, line
        assert _running(small_lake) == 0
        assert small_lake.sql("SELECT count(*) AS n FROM runs WHERE kind = 'train'")["n"][0] == 0
        assert not (tmp_path / "o").exists()
