"""Training mixtures by SQL: spec parsing, exact counts, reproducibility, sources, heavy fetch."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spo_store.errors import SpoError
from spo_store.mixture import (
    BUILTIN_SOURCES,
    MixtureSpec,
    fetch_by_ids,
    load_sources,
)
from spo_store.q0_estimates import estimate_row, sampler_key, write_estimates

KNOWN = list(BUILTIN_SOURCES)
REF = "model-A"
Q0_SETTINGS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 256}
KEY = sampler_key(**Q0_SETTINGS)


def MixtureSampler(lake, spec, **kw):  # noqa: N802 - the sampler of model A's q0 estimates
    from spo_store.mixture import MixtureSampler as Sampler

    kw.setdefault("ref_model_id", REF)
    kw.setdefault("q0_sampler_key", KEY)
    return Sampler(lake, spec, **kw)


def add_estimate(lake, problem_id, successes, samples=4, ref=REF, **settings):
    row = estimate_row(
        problem_id,
        ref,
        **{**Q0_SETTINGS, **settings},
        samples=samples,
        successes=successes,
        beta=0.1,
        run_id="q0run",
    )
    write_estimates(lake, [row])
    return row


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("online:0.5,offline:0.4", "sum to 0.9"),
        ("online:0.5,bogus:0.5", "unknown source 'bogus'"),
        ("online:-0.5,offline:1.5", "negative"),
        ("", "empty"),
        ("online", "not 'source:weight'"),
        ("online:abc,offline:1", "not a number"),
        ("online:0.5,online:0.5", "appears twice"),
        ("online:nan,offline:1", "not finite"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(SpoError, match=message):
        MixtureSpec.parse(spec, KNOWN)


@given(
    st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=4).filter(
        lambda w: sum(w) > 0
    ),
    st.integers(min_value=0, max_value=512),
)
def test_largest_remainder_counts_are_exact(raw, batch):
    names = KNOWN[: len(raw)]
    total = sum(raw)
    spec = MixtureSpec({n: r / total for n, r in zip(names, raw, strict=True)})
    counts = spec.counts(batch)
    assert sum(counts.values()) == batch
    for n in names:
        quota = spec.weights[n] * batch
        assert abs(counts[n] - quota) < 1 + 1e-9  # never off by a whole unit


def test_counts_examples():
    assert MixtureSpec({"online": 0.5, "offline": 0.5}).counts(7) == {"online": 4, "offline": 3}
    assert MixtureSpec({"online": 1 / 3, "offline": 1 / 3, "human": 1 / 3}).counts(128) == {
        "online": 43,
        "offline": 43,
        "human": 42,
    }


def seed_lake(lake, run_id="train-1"):
    lake.append(
        "problems",
        [
            {"problem_id": "p1", "name": "one", "split": "train"},
            {"problem_id": "p2", "name": "two", "split": "train"},
            {"problem_id": "p3", "name": "three", "split": "test"},
            {"problem_id": "p4", "name": "four", "split": "train"},
        ],
    )
    # q0 of model A for p1-p3; p4 has only model B's estimate and another sampler's of A.
    for pid, c in (("p1", 2), ("p2", 1), ("p3", 2)):
        add_estimate(lake, pid, c)
    add_estimate(lake, "p4", 2, ref="model-B")
    add_estimate(lake, "p4", 2, max_new_tokens=512)
    rows = []
    for i in range(30):  # human, correct; pairs share a response (duplicates)
        rows.append(
            {
                "traj_id": f"h{i}",
                "problem_id": "p1",
                "run_id": "ing",
                "source": "human",
                "language": "python3",
                "reward": 0.0,
                "content_hash": f"hh{i // 2}",
                "response": f"code {i // 2}",
                "response_ids": [1, 2, i],
            }
        )
    for i in range(20):  # pi0 samples, half failing
        rows.append(
            {
                "traj_id": f"z{i}",
                "problem_id": "p2",
                "run_id": "q0run",
                "source": "pi0",
                "language": "python3",
                "reward": 0.0 if i % 2 else -1.0,
                "content_hash": f"zz{i}",
            }
        )
    for v in range(5):  # online rollouts of this run at policy versions 0..4
        for i in range(4):
            rows.append(
                {
                    "traj_id": f"o{v}-{i}",
                    "problem_id": "p2",
                    "run_id": run_id,
                    "source": "online",
                    "language": "python3",
                    "policy_version": v,
                    "reward": -1.0,
                    "content_hash": f"oo{v}{i}",
                }
            )
    rows.append(
        {
            "traj_id": "test-split",
            "problem_id": "p3",
            "run_id": "ing",
            "source": "human",
            "language": "python3",
            "reward": 0.0,
            "content_hash": "t1",
        }
    )
    rows.append(
        {
            "traj_id": "no-q0",
            "problem_id": "p4",
            "run_id": "ing",
            "source": "human",
            "language": "python3",
            "reward": 0.0,
            "content_hash": "t2",
        }
    )
    rows.append(
        {
            "traj_id": "unjudged",
            "problem_id": "p1",
            "run_id": "ing",
            "source": "human",
            "language": "python3",
            "reward": None,
            "content_hash": "t3",
        }
    )
    lake.append("trajectories", rows)


def test_sources_select_what_they_say(lake):
    seed_lake(lake)
    sampler = MixtureSampler(lake, "online:0.5,offline:0.5", run_id="train-1", staleness=1)
    sampler.index.refresh()

    def ids(name: str, pv: int = 0) -> set[str]:
        rows = sampler.index.trajectories.take(sampler.candidates(name, pv))
        return set(rows.column("traj_id").to_pylist())

    # offline: correct, deduplicated by content hash, no online rows of this run, train split, has q0.
    offline = ids("offline")
    assert len(offline) == 15 + 10
    assert not {"test-split", "no-q0", "unjudged"} & offline
    assert all(not x.startswith("o") for x in offline)
    # online: this run's rollouts within the staleness bound of the current policy version.
    assert ids("online", 4) == {f"o{v}-{i}" for v in (3, 4) for i in range(4)}
    assert ids("online", 2) == {f"o{v}-{i}" for v in (1, 2) for i in range(4)}
    assert len(ids("pi0")) == 20  # failures too: SPO learns from them
    assert len(ids("human")) == 15


def test_sampling_is_exact_seeded_and_reproducible(lake):
    seed_lake(lake)
    a = MixtureSampler(lake, "online:0.25,offline:0.75", run_id="train-1", staleness=2, seed=7)
    b = MixtureSampler(lake, "online:0.25,offline:0.75", run_id="train-1", staleness=2, seed=7)
    batch = a.sample(16, step=3, policy_version=4)
    assert Counter(batch.sources) == {"online": 4, "offline": 12}
    assert batch.traj_ids == b.sample(16, step=3, policy_version=4).traj_ids
    assert batch.traj_ids != a.sample(16, step=4, policy_version=4).traj_ids
    # Heavy columns come with the batch, in batch order.
    assert batch.table.column_names[0] == "traj_id" and "response_ids" in batch.table.column_names
    # The logged (version, ids) reproduces the batch after the lake moved on.
    lake.append(
        "trajectories",
        [
            {
                "traj_id": "late",
                "problem_id": "p1",
                "run_id": "x",
                "source": "human",
                "language": "python3",
                "reward": 0.0,
                "content_hash": "late",
            }
        ],
    )
    again = fetch_by_ids(lake, batch.version, batch.traj_ids)
    assert again.column("traj_id").to_pylist() == batch.traj_ids
    assert (
        again.column("response_ids").to_pylist() == batch.table.column("response_ids").to_pylist()
    )


def test_index_refreshes_incrementally_and_sees_new_rows(lake):
    seed_lake(lake)
    sampler = MixtureSampler(lake, "online:1", run_id="train-1", staleness=0)
    assert set(sampler.sample(4, policy_version=4).traj_ids) <= {f"o4-{i}" for i in range(4)}
    lake.append(
        "trajectories",
        [
            {
                "traj_id": "o5-0",
                "problem_id": "p2",
                "run_id": "train-1",
                "source": "online",
                "policy_version": 5,
                "reward": 0.0,
                "content_hash": "n",
            }
        ],
    )
    assert sampler.sample(3, policy_version=5).traj_ids == ["o5-0"] * 3
    # The incrementally grown index equals a fresh one.
    fresh = MixtureSampler(lake, "online:1", run_id="train-1")
    fresh.index.refresh()
    assert sampler.index.trajectories.equals(fresh.index.trajectories)


def test_empty_source_and_bad_user_source(lake, tmp_path):
    seed_lake(lake)
    with pytest.raises(SpoError, match="'online' is empty"):
        MixtureSampler(lake, "online:1", run_id="other-run").sample(4)
    cfg = tmp_path / "sources.toml"
    cfg.write_text("[sources]\nshort = \"t.reward = 0 AND t.traj_id LIKE 'z%'\"\n")
    sources = load_sources(cfg)
    batch = MixtureSampler(lake, "short:1", sources=sources).sample(5)
    assert all(x.startswith("z") for x in batch.traj_ids)
    # A column that does not exist is refused when the file loads (bound against the lake's
    # schema), not by the run at its first batch: one line naming file, source and column.
    for pred in ("t.nope = 1", "p.nam = 'x'"):
        cfg.write_text(f'[sources]\nshort = "t.reward = 0"\nbroken = "{pred}"\n')
        with pytest.raises(SpoError) as err:
            load_sources(cfg)
        line = str(err.value)
        assert "\n" not in line and str(cfg) in line and "'broken'" in line, line
        assert pred.split()[0].split(".")[1] in line, line
    # Not a true/false condition, or a name --mix cannot read: refused as the file loads.
    cfg.write_text('[sources]\nbroken = "t.reward"\n')
    with pytest.raises(SpoError, match="'broken': not a true/false condition .* FLOAT"):
        load_sources(cfg)
    cfg.write_text('[sources]\n"mi:ne" = "t.reward = 0"\n')
    with pytest.raises(SpoError, match="source 'mi:ne': a source name starts with a letter and"):
        load_sources(cfg)
    with pytest.raises(SpoError, match="bad SQL predicate"):  # a source built in code
        MixtureSampler(lake, "broken:1", sources={"broken": "t.nope = 1"}).sample(2)
    cfg.write_text("not toml [")
    with pytest.raises(SpoError, match="invalid TOML"):
        load_sources(cfg)


def test_q0_is_the_run_models_estimate_and_user_predicates_see_it(lake, tmp_path):
    seed_lake(lake)
    # p4's human row is left out for model A (only B and another sampler have a q0 there)...
    a_ids = set(MixtureSampler(lake, "human:1").sample(64).traj_ids)
    assert "no-q0" not in a_ids and a_ids
    # ...and is in for model B, for which p1's rows are out (B has no q0 for p1).
    b = MixtureSampler(lake, "human:1", ref_model_id="model-B")
    assert set(b.sample(8).traj_ids) == {"no-q0"}
    # Without a reference model nothing has a q0: the source is empty, and says so.
    with pytest.raises(SpoError, match="'human' is empty"):
        MixtureSampler(lake, "human:1", ref_model_id=None).sample(2)
    # A user predicate over p.q0 sees model A's value (p2: S0 = 1/4 is the lower q0).
    cfg = tmp_path / "s.toml"
    cfg.write_text('[sources]\nhard = "t.reward IS NOT NULL AND p.q0 < -0.1"\n')
    hard = MixtureSampler(lake, "hard:1", sources=load_sources(cfg))
    assert set(hard.sample(32).table.column("problem_id").to_pylist()) == {"p2"}
    # At another beta p.q0 is recomputed from the counts (S0 = 1/2 at beta 1: log(0.5 + 0.5/e)).
    at_beta = MixtureSampler(lake, "human:1", beta=1.0)
    at_beta.index.refresh()
    q0 = dict(
        zip(
            at_beta.index.problems.column("problem_id").to_pylist(),
            at_beta.index.problems.column("q0").to_pylist(),
            strict=True,
        )
    )
    assert q0["p1"] == pytest.approx(__import__("math").log(0.5 + 0.5 * __import__("math").exp(-1)))
    assert q0["p4"] is None


def test_an_estimate_written_later_moves_the_candidates(lake):
    seed_lake(lake)
    sampler = MixtureSampler(lake, "human:1")
    sampler.index.refresh()
    before = set(
        sampler.index.trajectories.take(sampler.candidates("human")).column("traj_id").to_pylist()
    )
    assert "no-q0" not in before
    add_estimate(lake, "p4", 1)  # model A's estimate for p4 arrives; trajectories unchanged
    sampler.index.refresh()
    after = set(
        sampler.index.trajectories.take(sampler.candidates("human")).column("traj_id").to_pylist()
    )
    assert after == before | {"no-q0"}


def test_problems_with_a_judge_issue_are_left_out_by_default(lake):
    seed_lake(lake)
    lake.update_rows(
        "problems",
        "problem_id",
        [{"problem_id": "p1", "judge_issue": "multiple_answers: any order"}],
    )
    sampler = MixtureSampler(lake, "offline:1")
    sampler.index.refresh()
    kept = set(
        sampler.index.trajectories.take(sampler.candidates("offline"))
        .column("problem_id")
        .to_pylist()
    )
    assert kept == {"p2"}
    assert sampler.left_out() == {"multiple_answers": 1}
    loose = MixtureSampler(lake, "offline:1", include_unreliable=True)
    loose.index.refresh()
    kept = set(
        loose.index.trajectories.take(loose.candidates("offline")).column("problem_id").to_pylist()
    )
    assert kept == {"p1", "p2"} and loose.left_out() == {}


def test_a_duplicated_estimate_never_duplicates_candidates(lake):
    seed_lake(lake)
    sampler = MixtureSampler(lake, "human:1")
    sampler.index.refresh()
    before = sorted(sampler.candidates("human").tolist())
    # The same key stored twice (as a non-atomic writer could): the index still has one p1.
    row = add_estimate(lake, "p1", 3)
    lake.append("q0_estimates", [row])
    again = MixtureSampler(lake, "human:1")
    again.index.refresh()
    assert again.index.problems.num_rows == 4
    assert sorted(again.candidates("human").tolist()) == before
    rows = {r["problem_id"]: r for r in again.index.problems.to_pylist()}
    assert rows["p1"]["q0_successes"] == 3
