"""Float answers (issue 9 item 1): the tolerance's reach depends on where it comes from."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from spo_store.errors import SpoError
from spo_train.judge import (
    JUDGE_PROBLEM_COLUMNS,
    call_results_match,
    default_float_tolerance,
    job_for_problem,
    judge_job,
    outputs_match,
    verdict_reward,
)
from tests.conftest import CC_SAMPLE, needs_sandbox

# 1045_D: expected number of components of a forest under point updates. Prints 10 decimals
# where the tests have 5 ("1.6804000000" vs "1.68040"); the statement allows 1e-4.
D1045 = r"""import sys
def main():
    data = sys.stdin.buffer.read().split()
    n = int(data[0]); pos = 1
    q = [1.0 - float(x) for x in data[pos:pos + n]]; pos += n
    adj = [[] for _ in range(n)]
    for _ in range(n - 1):
        u, v = int(data[pos]), int(data[pos + 1]); pos += 2
        adj[u].append(v); adj[v].append(u)
    parent = [-1] * n
    order = [0]; seen = [False] * n; seen[0] = True
    for u in order:
        for v in adj[u]:
            if not seen[v]:
                seen[v] = True; parent[v] = u; order.append(v)
    child_sum = [0.0] * n
    for v in range(1, n):
        child_sum[parent[v]] += q[v]
    nodes = sum(q)
    edges = sum(q[v] * q[parent[v]] for v in range(1, n))
    out = []
    m = int(data[pos]); pos += 1
    for _ in range(m):
        i = int(data[pos]); nq = 1.0 - float(data[pos + 1]); pos += 2
        dq = nq - q[i]
        nodes += dq
        edges += dq * (child_sum[i] + (q[parent[i]] if parent[i] >= 0 else 0.0))
        if parent[i] >= 0:
            child_sum[parent[i]] += dq
        q[i] = nq
        out.append("%.10f" % (nodes - edges))
    print("\n".join(out))
main()
"""


def sample_row(name: str, **fields) -> dict:
    """A `problems`-shaped dict for a problem of the real CodeContests sample."""
    if not CC_SAMPLE.exists():
        pytest.skip(f"real CodeContests sample not found at {CC_SAMPLE}")
    rows = pq.read_table(CC_SAMPLE, filters=[("name", "=", name)]).to_pylist()
    assert rows, name
    r = rows[0]
    return {
        "problem_id": name,
        "name": name,
        "public_tests": r["public_tests"],
        "private_tests": r["private_tests"],
        "generated_tests": r["generated_tests"],
        "time_limit_s": 2.0,
        "memory_limit_mb": 244,
        **fields,
    }


# ------------------------------------------------------------------ comparison rules


@pytest.mark.parametrize(
    "actual,expected,tol,source,ok",
    [
        ("1.6804000000", "1.68040", None, None, False),  # exact without a tolerance
        ("1.6804000000", "1.68040", 1e-4, "statement", True),
        ("1.6804000000", "1.68040", 1e-6, "default", True),  # both decimals
        ("1.68045", "1.68040", 1e-4, "statement", True),  # |err| 5e-5 <= 1e-4
        ("1.6806", "1.68040", 1e-4, "statement", False),
        ("1000000.5", "1000000.0", 1e-6, "dataset", True),  # relative error
        ("1e-9", "0.0", 1e-6, "default", True),  # absolute error near 0
        # 'default' is our guess, not the problem's word: integer answers stay exact.
        ("3.0000001", "3", 1e-6, "default", False),
        ("3.0", "3", 1e-6, "default", False),
        ("3.0000001", "3", 1e-6, "statement", True),  # the statement's tolerance: every number
        ("3.0", "3", 1e-6, "user", True),
        ("YES 0.5000001", "YES 0.5", 1e-6, "default", True),
        ("NO 0.5", "YES 0.5", 1e-6, "default", False),
        ("nan", "nan", None, None, True),  # identical tokens
        ("nan", "1.0", 1e-6, "statement", False),
        ("inf", "1e999", 1e-6, "statement", False),  # not contest numbers / not finite
        ("1_0.0", "10.0", 1e-6, "statement", False),  # float() takes '1_0.0', a judge does not
        ("0x10", "16", 1e-6, "statement", False),
        ("1.0 2.0", "1.0", 1e-6, "statement", False),
    ],
)
def test_outputs_match_tolerance_sources(actual, expected, tol, source, ok):
    assert outputs_match(actual, expected, tol, source) is ok


def test_call_results_compare_numbers_like_tokens():
    assert call_results_match("[0.1, 0.30000000000000004]", "[0.1, 0.3]", 1e-6, "default")
    assert not call_results_match("[0.1, 0.30000000000000004]", "[0.1, 0.3]")
    assert not call_results_match("3.0000001", "3", 1e-6, "default")
    assert call_results_match("3.0000001", "3", 1e-6, "statement")
    assert call_results_match("3.0", "3")  # TACO's ==: 3.0 == 3


# ------------------------------------------------------------------ job_for_problem


def test_default_tolerance_is_the_ingest_rules_one():
    from spo_store.problem_rules import DEFAULT_FLOAT_TOLERANCE

    assert default_float_tolerance() == DEFAULT_FLOAT_TOLERANCE


def test_job_for_problem_reads_every_judge_column():
    from spo_schemas import TABLES

    assert set(JUDGE_PROBLEM_COLUMNS) <= set(TABLES["problems"].names)
    row = {
        "problem_id": "p",
        "name": "p",
        "public_tests": {"input": ["1"], "output": ["2"]},
        "private_tests": {"input": ["3"], "output": ["4"]},
        "generated_tests": None,
        "time_limit_s": 1.5,
        "memory_limit_mb": 64,
        "float_tolerance": 1e-4,
        "float_tolerance_source": "statement",
        "checker": "import sys",
        "fn_name": "solve",
        "input_file": "input.txt",
        "output_file": "output.txt",
    }
    job = job_for_problem(row, "print(1)")
    assert job.tests == [("1", "2"), ("3", "4")]  # public first
    assert (job.time_limit_s, job.memory_limit_mb) == (1.5, 64)
    assert (job.float_tolerance, job.float_tolerance_source) == (1e-4, "statement")
    assert (job.checker, job.fn_name) == ("import sys", "solve")
    assert (job.input_file, job.output_file) == ("input.txt", "output.txt")
    over = job_for_problem(row, "print(1)", float_tolerance_override=0.5)
    assert (over.float_tolerance, over.float_tolerance_source) == (0.5, "user")
    bare = job_for_problem({"problem_id": "q", "name": "q"}, "print(1)")
    assert (bare.tests, bare.time_limit_s, bare.memory_limit_mb) == ([], 2.0, 256)
    assert bare.float_tolerance is None and bare.checker is None and bare.fn_name is None


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("float_tolerance", -1e-6, "finite and >= 0"),
        ("float_tolerance", float("nan"), "finite and >= 0"),
        ("input_file", "../etc/passwd", "plain file name"),
        ("output_file", "/tmp/out", "plain file name"),
    ],
)
def test_job_for_problem_rejects_bad_fields(field, value, message):
    with pytest.raises(SpoError, match=message):
        job_for_problem({"problem_id": "p", "name": "p", field: value}, "print(1)")
    with pytest.raises(SpoError, match="finite and >= 0"):
        job_for_problem({"problem_id": "p", "name": "p"}, "", float_tolerance_override=-1.0)


# ------------------------------------------------------------------ the example


@needs_sandbox
@pytest.mark.parametrize(
    "tol,source,passes",
    [
        (None, None, False),  # the bug: 0/71 with exact comparison
        (1e-4, "statement", True),  # the statement's "absolute or relative error 10^{-4}"
        ("default", "default", True),  # the default reaches it too: both tokens are decimals
    ],
)
def test_1045_D_ten_decimals_against_five(tol, source, passes):
    if tol == "default":
        tol = default_float_tolerance()
    row = sample_row(
        "1045_D. Interstellar battle", float_tolerance=tol, float_tolerance_source=source
    )
    job = job_for_problem(row, D1045)
    assert len(job.tests) == 71
    v = judge_job(job, stop_on_first_failure=False)
    assert v.judged
    assert v.tests[0].stdout.startswith("1.6804000000") and v.tests[0].expected.startswith(
        "1.68040"
    )
    if passes:
        assert (v.passed, v.passed_tests, verdict_reward(v)) == (True, 71, 0.0)
    else:
        assert (v.status, v.passed_tests, verdict_reward(v)) == ("wrong_answer", 0, -1.0)


@needs_sandbox
def test_1045_D_wrong_answer_still_fails_with_tolerance():
    wrong = D1045.replace('"%.10f" % (nodes - edges)', '"%.10f" % (nodes - edges + 0.001)')
    row = sample_row(
        "1045_D. Interstellar battle", float_tolerance=1e-4, float_tolerance_source="statement"
    )
    v = judge_job(job_for_problem(row, wrong))
    assert v.status == "wrong_answer" and verdict_reward(v) == -1.0
