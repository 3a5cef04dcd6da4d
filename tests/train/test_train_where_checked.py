"""`--train-where` is one self-contained SQL expression, checked before any run is recorded
(trial 3): `FALSE) OR (p.split = 'test'` closed the parenthesis spo puts around it, dropped the
split and reliability filters, and a GRPO run trained on the test split."""

from __future__ import annotations

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.config import TrainConfig
from tests.train.test_train_cli import _one_line_error, _spo

BAD = [
    ("FALSE) OR (p.split = 'test'", "not one SQL boolean expression"),
    ("1=1; DROP TABLE problems", "not several statements"),
    ("p.split = 'train' --", "not one"),
    ("", "--train-where is empty"),
    ("   ", "--train-where is empty"),
]


@pytest.mark.parametrize(("where", "needle"), BAD, ids=[w or "empty" for w, _ in BAD])
def test_a_train_where_that_is_not_one_expression_is_refused(tmp_path, where, needle):
    cfg = TrainConfig(train_where=where, output=str(tmp_path / "run"))
    with pytest.raises(SpoError) as err:
        cfg.validate()
    msg = str(err.value)
    assert "\n" not in msg and "--train-where" in msg and needle in msg, msg


@pytest.mark.parametrize(
    "where",
    [
        "p.name IN ('add1', 'add3')",
        "p.problem_id IN (SELECT problem_id FROM q0_estimates WHERE successes BETWEEN 1 AND 8)",
        "p.name = 'é中'",
    ],
)
def test_a_train_where_of_one_expression_passes(tmp_path, where):
    TrainConfig(train_where=where, output=str(tmp_path / "run")).validate()


def test_spo_train_refuses_an_escaping_train_where_before_any_run(small_lake, tmp_path):
    def runs() -> int:
        return Lake.open(small_lake.uri, create=False).sql("SELECT count(*) AS n FROM runs")["n"][0]

    before = runs()
    r = _spo(
        *("train", "--lake", small_lake.uri, "--algo", "grpo", "--steps", "1"),
        *("--batch-size", "4", "--eval-problems", "0", "--output", str(tmp_path / "out")),
        *("--train-where", "FALSE) OR (p.split = 'test'"),
        cwd=tmp_path,
    )
    line = _one_line_error(r)
    assert line.startswith("error: --train-where: not one SQL boolean expression"), line
    assert runs() == before and not (tmp_path / "out").exists()


def test_a_long_train_where_matching_nothing_is_a_short_line(small_lake):
    """trial 3: a 60,000-character predicate was echoed whole in the refusal."""
    from spo_store.selection import explain_empty

    where = " OR ".join(f"p.name = 'x{i}'" for i in range(3000))
    line = explain_empty(small_lake, where, flag="--train-where")
    assert line.startswith('no problem matches --train-where "p.name = ') and len(line) < 500
    assert f"({len(where)} chars)" in line
    short = explain_empty(small_lake, "p.name = 'x'", flag="--train-where")
    assert "no problem matches --train-where \"p.name = 'x'\"" in short, short
