"""Q0 belongs to the reference model and sampler that estimated it (issue 9, item 8).

Real parts: two tiny random Llamas on disk (A and B: same tokenizer, different weights), a real
lake, the real sandbox judge. `spo estimate-q0 --model B` on problems with A's estimates samples
B, reusing only B's own samples under the same sampler settings; a rerun adds nothing; a larger
`--samples` tops the estimate up; samples the judge could not judge are not counted.
"""

from __future__ import annotations

import subprocess

import pytest

from spo_store.lake import Lake
from spo_store.q0_estimates import estimate_id, sampler_key
from spo_train.q0 import estimate_q0, q0_value
from spo_train.rollouts.sampling import SamplerSettings
from tests.conftest import make_generator

BETA = 1 / __import__("math").log(1e5)


def _estimate(lake, model_dir, n=2, max_new_tokens=8, **kw):
    gen, tok, model_id, tok_id, _ = make_generator(model_dir)
    report = estimate_q0(
        lake,
        gen,
        tok,
        where="p.split = 'train'",
        settings=SamplerSettings(n, 1.0, 1.0, max_new_tokens, 0),
        model_id=model_id,
        tokenizer_id=tok_id,
        **kw,
    )
    return report, model_id


def _counts(lake: Lake) -> tuple[int, int]:
    n_traj = lake.sql("SELECT count(*) AS n FROM trajectories WHERE source = 'pi0'")["n"][0]
    n_est = lake.sql("SELECT count(*) AS n FROM q0_estimates")["n"][0]
    return int(n_traj), int(n_est)


def test_model_b_gets_its_own_estimates_from_its_own_samples(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tiny_model_b,
):
    a, model_a = _estimate(small_lake, tiny_model)
    assert a.problems == 4 and a.samples == 8 and a.inserted == 4
    b, model_b = _estimate(small_lake, tiny_model_b)
    assert model_a != model_b
    # B is sampled on every problem although A's estimates exist; nothing of A is reused.
    assert b.problems == 4 and b.samples == 8 and b.reused == 0 and b.inserted == 4
    rows = small_lake.sql(
        "SELECT q.problem_id, q.ref_model_id, q.samples, q.successes, count(t.traj_id) AS n, "
        "count(t.traj_id) FILTER (WHERE t.reward = 0) AS c FROM q0_estimates q "
        "JOIN trajectories t ON t.problem_id = q.problem_id AND t.source = 'pi0' "
        "AND t.model_id = q.ref_model_id GROUP BY ALL"
    ).to_dicts()
    assert sorted({r["ref_model_id"] for r in rows}) == sorted({model_a, model_b})
    assert len(rows) == 8
    assert all(r["samples"] == r["n"] == 2 and r["successes"] == r["c"] for r in rows)
    # A rerun with the same settings adds nothing: no sample, no estimate row, no update.
    before = _counts(small_lake)
    again, _ = _estimate(small_lake, tiny_model_b)
    assert (again.problems, again.samples, again.inserted, again.updated) == (0, 0, 0, 0)
    assert _counts(small_lake) == before


def test_more_samples_top_up_the_same_estimate(small_lake, tiny_model):  # noqa: F811
    first, model_id = _estimate(small_lake, tiny_model, n=2)
    ids = {
        r["problem_id"]: r["estimate_id"]
        for r in small_lake.sql("SELECT problem_id, estimate_id FROM q0_estimates").to_dicts()
    }
    more, _ = _estimate(small_lake, tiny_model, n=5)
    # 3 more per problem (the 2 already there are reused), one update per estimate, same keys.
    assert more.samples == 12 and more.reused == 8 and more.updated == 4 and more.inserted == 0
    rows = small_lake.sql(
        "SELECT estimate_id, problem_id, samples, successes, q0, run_id FROM q0_estimates"
    ).to_dicts()
    assert len(rows) == 4 and {r["problem_id"]: r["estimate_id"] for r in rows} == ids
    key = sampler_key(1.0, 1.0, 8)
    for r in rows:
        assert r["estimate_id"] == estimate_id(r["problem_id"], model_id, key)
        assert r["samples"] == 5 and r["run_id"] == more.run_id
        assert r["q0"] == pytest.approx(q0_value(r["successes"], 5, BETA))
    # The top-up drew new responses (its seed moves with the samples already there): no
    # response of the first run is drawn again.
    dup = small_lake.sql(
        "SELECT count(*) - count(DISTINCT content_hash) AS n FROM trajectories WHERE source = 'pi0'"
    )["n"][0]
    assert dup == 0


def test_another_sampler_gets_its_own_estimate_and_samples(small_lake, tiny_model):  # noqa: F811
    _estimate(small_lake, tiny_model, max_new_tokens=8)
    other, _ = _estimate(small_lake, tiny_model, max_new_tokens=6)
    assert other.problems == 4 and other.reused == 0 and other.samples == 8
    keys = small_lake.sql("SELECT DISTINCT sampler_key FROM q0_estimates ORDER BY 1")
    assert keys["sampler_key"].to_list() == [sampler_key(1, 1, 6), sampler_key(1, 1, 8)]
    # Each estimate counts only the samples of its own sampler.
    rows = small_lake.sql(
        "SELECT q.problem_id, q.max_new_tokens, q.samples, count(t.traj_id) AS n "
        "FROM q0_estimates q "
        "JOIN trajectories t ON t.problem_id = q.problem_id AND t.source = 'pi0' "
        "AND t.max_new_tokens = q.max_new_tokens GROUP BY ALL"
    ).to_dicts()
    assert all(r["samples"] == r["n"] == 2 for r in rows) and len(rows) == 8


def test_unjudged_samples_are_not_counted_and_give_no_q0(small_lake, tiny_model):  # noqa: F811
    # A problem without tests: the judge cannot judge it, so its samples have reward NULL
    # (the old code stored them as failures and gave it q0 = -1).
    small_lake.append(
        "problems",
        [{"problem_id": "no-tests", "name": "no-tests", "split": "train", "statement": "Print 1."}],
    )
    report, _ = _estimate(small_lake, tiny_model, include_unreliable=True)
    assert report.unjudged == 2 and report.no_estimate == ["no-tests"] and report.inserted == 4
    assert (
        small_lake.sql("SELECT count(*) AS n FROM q0_estimates WHERE problem_id = 'no-tests'")["n"][
            0
        ]
        == 0
    )
    rewards = small_lake.sql(
        "SELECT reward FROM trajectories WHERE problem_id = 'no-tests' AND source = 'pi0'"
    )["reward"].to_list()
    assert rewards == [None, None]


def test_problems_with_a_judge_issue_are_left_out_unless_asked(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    first = small_lake.sql("SELECT problem_id FROM problems WHERE name = 'add1'")["problem_id"][0]
    small_lake.update_rows(
        "problems",
        "problem_id",
        [{"problem_id": first, "judge_issue": "multiple_answers: any valid answer is accepted"}],
    )
    args = ["--model", str(tiny_model), "--lake", small_lake.uri, "--samples", "1"]
    r = subprocess.run(
        ["spo", "estimate-q0", *args, "--max-new-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "left out 1 problem the judge cannot handle reliably (1 multiple_answers)" in err
    assert "estimated for 3 problems" in err
    assert (
        small_lake.sql(f"SELECT count(*) AS n FROM q0_estimates WHERE problem_id = '{first}'")["n"][
            0
        ]
        == 0
    )
    report, _ = _estimate(small_lake, tiny_model, n=1, include_unreliable=True)
    assert report.problems == 1 and report.left_out == {}
