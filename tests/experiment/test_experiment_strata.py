"""`[prepare]` q0_where / q0_stopping / q0_stop_successes and `[strata]` (issue 22 item 2):
an experiment whose arms train on problems chosen by pi_0's q0 estimates, per stratum. Real
parts: a real lake with the embedded problems, q0 rows written through spo_store, the stratum
predicates run by DuckDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.q0_estimates import estimate_row, write_estimates
from spo_store.q0_sequential import StoppingRule
from spo_train.embedded.defaults import ensure_problems
from spo_train.experiment.config import load_experiment, run_config, stratum_where
from spo_train.experiment.plan import plan_runs, q0_missing, q0_needs
from spo_train.lm.models import model_identity

BASE = """
[experiment]
name = "s"
seeds = [0]
reference_arm = "spo"
[prepare]
q0_problems = 6
q0_samples = 64
q0_where = "p.name >= 'spo_embedded_train_01990'"
[common]
steps = 1
max_new_tokens = 192
[strata.zero]
q0_successes = [0, 0]
[strata.low]
q0_successes = [1, 8]
description = "rarely solved"
[arms.spo]
loss = "terminal_ce"
[arms.grpo]
algo = "grpo"
"""


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "exp.toml"
    p.write_text(text)
    return p


BAD = [
    (BASE.replace("q0_samples = 64", "q0_samples = 64\nq0_stoping = 'fixed'"), "did you mean"),
    (BASE.replace("q0_samples = 64", "q0_samples = 64\nq0_stopping = 'adaptive'"), "q0_stopping"),
    (BASE.replace("q0_samples = 64", "q0_samples = 64\nq0_stop_successes = 1"), "at least 2"),
    (
        BASE.replace("q0_where = \"p.name >= 'spo_embedded_train_01990'\"", "q0_where = ''"),
        "q0_where",
    ),
    # q0_where is pasted into the pool's query: one self-contained expression, checked at load
    (
        BASE.replace("'spo_embedded_train_01990'\"", "'x') OR (p.split = 'test'\""),
        "[prepare]: q0_where: not one SQL boolean expression",
    ),
    (
        BASE.replace("'spo_embedded_train_01990'\"", "'x'; DROP TABLE problems\""),
        "[prepare]: q0_where: a predicate is one boolean expression",
    ),
    (BASE.replace(">= 'spo_embedded_train_01990'", ">="), "[prepare]: q0_where: not one SQL"),
    (BASE.replace("q0_successes = [0, 0]", "q0_successes = [2, 1]"), "[strata.zero]"),
    (BASE.replace("q0_successes = [1, 8]", "q0_successes = [1, 65]"), "<= q0_samples (64)"),
    (BASE.replace("q0_successes = [0, 0]", "q0_succeses = [0, 0]"), "did you mean"),
    (BASE.replace("q0_successes = [1, 8]", "q0_successes = [1, 12]"), "stops at"),
    (BASE.replace("steps = 1", "steps = 1\ntrain_where = 'TRUE'"), "[common]: train_where"),
    (BASE.replace('algo = "grpo"', 'algo = "grpo"\ntrain_where = "TRUE"'), "[arms.grpo]"),
    (BASE.replace('reference_arm = "spo"', 'reference_arm = "zero.spo"'), "not an arm"),
    # an unknown column or function, or a type mismatch: refused at load (bound against the
    # lake's schema), not when the run reaches the q0 step
    (
        BASE.replace("p.name >=", "p.nme >="),
        "[prepare]: q0_where: not valid SQL over problems (alias p): Binder Error: table p"
        ' does not have a column named "nme"',
    ),
    (BASE.replace("p.name >=", "lower(p.name, 2) >="), "[prepare]: q0_where: not valid SQL"),
    (BASE.replace("'spo_embedded_train_01990'", "5"), "[prepare]: q0_where: not valid SQL"),
    (
        BASE.split("[strata.zero]")[0] + "train_where = 'p.splt = 1'\n[arms.spo]\n",
        "[common]: train_where: not valid SQL over problems (alias p)",
    ),
    (  # checked as one expression before it is bound (the binding reads no file either)
        BASE.split("[strata.zero]")[0]
        + "train_where = \"p.name IN (SELECT * FROM read_text('/etc/hostname'))\"\n[arms.spo]\n",
        "[common]: train_where: reads with table function read_text()",
    ),
    (
        BASE.split("[strata.zero]")[0] + "[arms.spo]\ntrain_where = 'p.q0_sample > 1'\n",
        "[arms.spo]: train_where: not valid SQL over problems (alias p): Binder Error: "
        'table p does not have a column named "q0_sample"',
    ),
    (BASE.split("[prepare]")[0] + BASE.split("max_new_tokens = 192")[1], "add a [prepare]"),
]


@pytest.mark.parametrize(("text", "needle"), BAD, ids=[n for _, n in BAD])
def test_bad_prepare_and_strata_are_one_line(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(SpoError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and needle in msg, msg


def test_where_over_the_lake_columns_loads(tmp_path):
    """Predicates naming real columns (q0 ones, a subquery over q0_estimates) load."""
    text = BASE.split("[strata.zero]")[0] + (
        'train_where = "p.q0_samples IS NULL AND p.problem_id IN (SELECT problem_id FROM '
        'q0_estimates WHERE successes > 0)"\n[arms.spo]\n'
    )
    exp = load_experiment(_write(tmp_path, text))
    assert "q0_estimates" in exp.common["train_where"]


def test_strata_expand_the_arms(tmp_path):
    exp = load_experiment(_write(tmp_path, BASE))
    assert exp.name == "s"  # not a stratum's name
    assert list(exp.arms) == ["zero.spo", "zero.grpo", "low.spo", "low.grpo"]
    assert exp.reference_arm == "zero.spo"
    assert exp.strata == {"zero": (0, 0), "low": (1, 8)}
    assert exp.stratum_of["low.grpo"] == "low"
    assert (exp.q0_stopping, exp.q0_stop_successes) == ("sequential", 12)
    cfg = run_config(exp, "low.grpo", 0, tmp_path / "r", None, None, "w")
    ident = model_identity(None)
    assert f"ref_model_id = '{ident}'" in cfg.train_where
    assert "successes BETWEEN 1 AND 8" in cfg.train_where and "samples >= 64" in cfg.train_where


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lk = Lake.open(str(tmp_path_factory.mktemp("strata") / "lake"))
    ensure_problems(lk)
    return lk


def _pool_ids(lk: Lake) -> list[str]:
    rows = lk.sql_arrow(
        "SELECT problem_id FROM problems WHERE split = 'train' AND judge_issue IS NULL "
        "AND name >= 'spo_embedded_train_01990' ORDER BY problem_id LIMIT 6"
    ).to_pylist()
    return [r["problem_id"] for r in rows]


def test_prepare_estimates_the_pool_and_strata_select_by_successes(tmp_path, lake):
    exp = load_experiment(_write(tmp_path, BASE))
    out = tmp_path / "out"
    plans = plan_runs(exp, out, lake.uri, [(a, 0) for a in exp.arms])
    needs = q0_needs(exp, plans)
    assert len(needs) == 1  # GRPO runs need it too: their problems are chosen by q0
    need = needs[0]
    args = need.args(lake.uri)
    assert args[args.index("--stopping") + 1] == "sequential"
    assert args[args.index("--stop-successes") + 1] == "12"
    assert args[args.index("--n") + 1] == "64"
    pool = _pool_ids(lake)
    got = lake.sql_arrow(f"SELECT problem_id FROM problems p WHERE {need.where()}").to_pylist()
    assert sorted(r["problem_id"] for r in got) == sorted(pool)
    assert q0_missing(lake, need) == 6

    ident = model_identity(None)
    rule = StoppingRule("sequential", cap=64, successes=12)
    # (samples, successes): 0/64, 3/64, 8/64, 12 successes after 32 (stopped early), 0/32
    # (still being estimated), none
    counts = [(64, 0), (64, 3), (64, 8), (32, 12), (32, 0)]
    rows = [
        estimate_row(
            pid,
            ident,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=192,
            samples=n,
            successes=c,
            beta=0.0869,
            run_id="r",
            stopping=rule,
            checks=[32] + ([64] if n == 64 else []),
        )  # fmt: skip
        for pid, (n, c) in zip(pool, counts, strict=False)
    ]
    write_estimates(lake, rows)
    # done: the three at the cap and the one stopped at r; missing: 0/32 and the unestimated
    assert q0_missing(lake, need) == 2
    for stratum, expect in (("zero", [pool[0]]), ("low", [pool[1], pool[2]])):
        cfg = plan_runs(exp, out, lake.uri, [])[0].config
        where = stratum_where(exp, stratum, cfg, ident)
        got = lake.sql_arrow(f"SELECT problem_id FROM problems p WHERE {where}").to_pylist()
        assert sorted(r["problem_id"] for r in got) == sorted(expect), stratum
    # another pi_0's estimates select nothing
    cfg = plan_runs(exp, out, lake.uri, [])[0].config
    other = stratum_where(exp, "zero", cfg, "sha256:" + "0" * 64)
    assert lake.sql_arrow(f"SELECT count(*) AS n FROM problems p WHERE {other}").to_pylist() == [
        {"n": 0}
    ]


def test_fixed_rule_is_passed_and_counts_only_the_cap(tmp_path, lake):
    text = BASE.replace("q0_samples = 64", "q0_samples = 64\nq0_stopping = 'fixed'")
    exp = load_experiment(_write(tmp_path, text))
    plans = plan_runs(exp, tmp_path / "out", lake.uri, [("zero.spo", 0)])
    (need,) = q0_needs(exp, plans)
    assert "--stop-successes" not in need.args(lake.uri)
    assert need.done_sql() == "p.q0_samples >= 64"


def test_missing_pi0_is_one_line_at_planning(tmp_path, lake):
    text = BASE.replace("steps = 1", 'steps = 1\nmodel = "no-such-pi0"')
    exp = load_experiment(_write(tmp_path, text))  # validates without reading pi_0
    with pytest.raises(SpoError) as err:
        plan_runs(exp, tmp_path / "out", lake.uri, [("zero.spo", 0)])
    assert "no-such-pi0" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("p.name = 'no such problem'", "q0_where \"p.name = 'no such problem'\" matches no"),
        ("p.split = 'test'", "q0_where \"p.split = 'test'\" matches no reliably judged 'train'"),
        # a subquery over q0_estimates: bound at load, empty here
        ("p.problem_id IN (SELECT problem_id FROM q0_estimates WHERE samples > 1e9)", "matches"),
    ],
)
def test_a_q0_pool_matching_nothing_is_refused_before_any_run(tmp_path, lake, where, needle):
    """A q0_where that selects no problem of the lake: one line naming file, table and key,
    no q0 child and no run started (it used to skip the q0 step as 'done' and start runs that
    had nothing to train on)."""
    from spo_train.experiment import run_experiment

    text = BASE.replace("p.name >= 'spo_embedded_train_01990'", where.replace('"', '\\"'))
    path = _write(tmp_path, text)
    exp = load_experiment(path)
    out = tmp_path / "out"
    with pytest.raises(SpoError) as err:
        run_experiment(exp, output=out, lake=lake.uri, say=lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path} [prepare]: "), msg
    assert needle in msg and "the q0 pool is empty, so no run was started" in msg, msg
    assert "splits present: " in msg
    assert not list(out.glob("*/seed-0/run.json"))  # no spo train started
    assert not (out / "prepare").exists()  # no estimate-q0 started
