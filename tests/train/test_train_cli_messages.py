"""`spo eval` / `spo estimate-q0` messages through the CLI (issue 9 follow-up, findings 5-7):
the user's --where is checked alone and named; a --where that matches nothing is refused before
any run is recorded; --k names its format; estimate-q0 with nothing to do says why."""

from __future__ import annotations

import pytest

from spo_store.lake import Lake
from tests.train.test_train_cli import _one_line_error, _spo
from tests.train.test_train_q0_and_eval import _estimates


def _run_count(lake: Lake) -> int:
    return Lake.open(lake.uri, create=False).sql("SELECT count(*) AS n FROM runs")["n"][0]


@pytest.mark.parametrize("cmd", ["eval", "estimate-q0"])
def test_where_is_checked_alone_and_named(small_lake, tiny_model, tmp_path, cmd):  # noqa: F811
    before = _run_count(small_lake)
    base = [cmd, "--lake", small_lake.uri, "--model", str(tiny_model)]
    line = _one_line_error(_spo(*base, "--where", "nonsense ((", cwd=tmp_path))
    # checked as one boolean expression by DuckDB's parser (spo_store.predicates)
    assert line.startswith("error: --where: not one SQL boolean expression ("), line
    assert "GROUP" not in line
    line = _one_line_error(_spo(*base, "--where", "p.name = 'no such'", cwd=tmp_path))
    assert "no problem matches --where" in line and "splits present" in line, line
    assert _run_count(small_lake) == before  # no failed run left behind


def test_k_names_its_format(small_lake, tiny_model, tmp_path):  # noqa: F811
    r = _spo("eval", "--lake", small_lake.uri, "--k", "1,a", "--split", "test", cwd=tmp_path)
    line = _one_line_error(r)
    assert "--k" in line and "comma-separated integers" in line and "tuple" not in line, line


def test_estimate_q0_with_nothing_to_do_says_why(small_lake, tiny_model, tmp_path):  # noqa: F811
    _estimates(small_lake, tiny_model, successes_of=1)  # 4 samples each, max_new_tokens 8
    n_train = small_lake.sql("SELECT count(*) AS n FROM problems WHERE split = 'train'")["n"][0]
    r = _spo(
        *("estimate-q0", "--lake", small_lake.uri, "--model", str(tiny_model)),
        *("--split", "train", "--samples", "4", "--max-new-tokens", "8"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert f"{n_train} problems already have estimates" in err and "nothing to do" in err, err
    assert "mean S0" not in err
