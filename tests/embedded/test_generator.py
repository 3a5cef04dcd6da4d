"""The embedded problem generator: determinism, schema, held-out compositions, solutions."""

from __future__ import annotations

import io
import random

import pyarrow.parquet as pq
import pytest

from spo_train.embedded import generator as gen
from spo_train.embedded.build import verify_local
from tests.conftest import CC_SAMPLE


@pytest.fixture(scope="module")
def small():
    return gen.generate_problems(seed=3, sizes={"train": 120, "valid": 10, "test": 30})


def _parquet_bytes(problems) -> bytes:
    buf = io.BytesIO()
    pq.write_table(gen.problems_table(problems), buf, compression="zstd", compression_level=9)
    return buf.getvalue()


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    again = gen.generate_problems(seed=3, sizes={"train": 120, "valid": 10, "test": 30})
    for split in small:
        a = gen.write_parquet(small[split], tmp_path / f"a-{split}.parquet").read_bytes()
        b = gen.write_parquet(again[split], tmp_path / f"b-{split}.parquet").read_bytes()
        assert a == b
    other = gen.generate_split("train", 120, seed=4)
    assert [p.statement for p in other] != [p.statement for p in small["train"]]


@pytest.mark.skipif(not CC_SAMPLE.exists(), reason="shared CodeContests sample not available")
def test_schema_equals_real_code_contests_sample(small, tmp_path):
    real = pq.read_schema(CC_SAMPLE)
    path = gen.write_parquet(small["test"], tmp_path / "t.parquet")
    ours = pq.read_schema(path)
    shared = [n for n in real.names if n in ours.names]
    assert shared == real.names  # every real column is present, in the same order
    for name in shared:
        assert ours.field(name).type == real.field(name).type, name
    assert gen.CODE_CONTESTS_SCHEMA.names == real.names


def test_rows_look_like_code_contests(small):
    rows = gen.problems_table(small["train"]).to_pylist()
    for r in rows:
        assert r["solutions"]["language"] == [gen.LANGUAGE_PYTHON3] * len(
            r["solutions"]["solution"]
        )
        assert len(r["solutions"]["solution"]) >= 3
        assert len(set(r["solutions"]["solution"])) == len(r["solutions"]["solution"])
        assert 2 <= len(r["incorrect_solutions"]["solution"]) <= 3
        assert 1 <= len(r["public_tests"]["input"]) <= 2
        assert len(r["private_tests"]["input"]) >= 10
        assert r["time_limit"] == {"seconds": gen.TIME_LIMIT_S, "nanos": 0}
        assert r["memory_limit_bytes"] == gen.MEMORY_LIMIT_BYTES
        d = r["description"]
        assert "\nInput\n" in d and "\nOutput\n" in d and "\nExample\n" in d
        assert r["public_tests"]["input"][0] in d and r["public_tests"]["output"][0] in d
        assert r["difficulty"] == len(r["cf_tags"])  # depth + 1
    assert len({r["name"] for r in rows}) == len(rows)


def test_hidden_tests_cover_edge_cases(small):
    for p in small["train"] + small["test"]:
        inputs = [gen.parse_input(i) for i, _ in p.private_tests]
        assert [] in inputs  # the empty list
        assert any(len(xs) == 1 for xs in inputs)
        assert any(len(xs) >= 30 for xs in inputs)
        assert len({o for _, o in p.public_tests + p.private_tests}) >= gen.MIN_DISTINCT_OUTPUTS


def test_held_out_compositions_disjoint_from_train(small):
    pools = gen.composition_pools(seed=3)
    assert not set(pools["train"]) & set(pools["test"])
    assert not set(pools["train"]) & set(pools["valid"])
    assert not set(pools["valid"]) & set(pools["test"])
    train = {p.composition for p in small["train"]}
    for split in ("valid", "test"):
        for p in small[split]:
            assert p.composition not in train and p.composition in pools[split]
            assert 2 <= p.depth <= 3
    # Constants come from the same small sets everywhere.
    for p in small["test"]:
        for op in (*p.transforms, p.final):
            if op.arg is not None:
                assert op.arg in gen.CONSTANTS[op.kind]
    assert {p.depth for p in small["train"]} == {0, 1, 2, 3}


def test_every_solution_verified_by_running_it(small):
    rng = random.Random(0)
    subset = rng.sample(small["train"], 40) + small["test"][:10]
    assert verify_local(subset, workers=1) == []


def test_broken_solution_is_caught(small):
    p = small["train"][0]
    broken = gen.Problem(**{**p.__dict__})
    broken.solutions = [("loop", p.incorrect_solutions[0][1])]
    errors = verify_local([broken], workers=1)
    assert errors and "fails test" in errors[0]
    lucky = gen.Problem(**{**p.__dict__})
    lucky.incorrect_solutions = [("fake-bug", p.solutions[0][1])]
    lucky.bugs = [gen.Bug("skip_first")]
    assert verify_local([lucky], workers=1)


def test_every_bug_changes_some_output(small):
    for p in small["train"]:
        for bug in p.bugs:
            outs = [
                gen.evaluate(p.transforms, p.final, gen.parse_input(i), bug)
                for i, _ in p.public_tests + p.private_tests
            ]
            expected = [o for _, o in p.public_tests + p.private_tests]
            assert any(not gen.outputs_equal(a, b) for a, b in zip(outs, expected, strict=True))


def test_solution_styles_are_distinct(small):
    styles = {s for p in small["train"] for s, _ in p.solutions}
    assert {"loop", "comprehension", "functional", "pipeline"} <= styles
    p = next(p for p in small["train"] if p.depth == 3 and p.final.kind == "sum")
    code = dict(p.solutions)
    assert "for x in a:" in code["loop"] and "sum(a)" in code["comprehension"]
    assert "reduce" in code["functional"]
