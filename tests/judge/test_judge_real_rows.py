"""The judge on real CodeContests rows: hand-written correct solutions pass every real test."""

from __future__ import annotations

import math

import pytest

from spo_train.judge import JudgeJob, judge, judge_batch
from tests.conftest import CC_SAMPLE, needs_sandbox

pytestmark = [
    needs_sandbox,
    pytest.mark.skipif(
        not CC_SAMPLE.exists(), reason=f"real CodeContests sample not found at {CC_SAMPLE}"
    ),
]

SOLUTIONS = {
    # Multisets of sizes: every size of `b` not matched in `a` costs one change.
    "1000_A. Codehorses T-shirts": """
import sys
from collections import Counter
data = sys.stdin.read().split()
n = int(data[0])
a = Counter(data[1:1 + n])
b = Counter(data[1 + n:1 + 2 * n])
print(sum((b - a).values()))
""",
    # Smallest permutation without leading zero, compared as a string (m may have zeros).
    "12_B. Correct Solution?": """
n = input().strip()
m = input().strip()
digits = sorted(n)
if digits[0] == "0":
    for i, d in enumerate(digits):
        if d != "0":
            digits[0], digits[i] = digits[i], digits[0]
            break
print("OK" if "".join(digits) == m else "WRONG_ANSWER")
""",
    # Periodic in a*b: prefix counts over one period.
    "1342_C. Yet Another Counting Problem": """
import sys
def main():
    data = sys.stdin.buffer.read().split()
    t = int(data[0]); pos = 1
    out = []
    for _ in range(t):
        a, b, q = int(data[pos]), int(data[pos + 1]), int(data[pos + 2]); pos += 3
        period = a * b
        pre = [0] * (period + 1)
        for x in range(period):
            pre[x + 1] = pre[x] + ((x % a) % b != (x % b) % a)
        def count(r):  # numbers in [0, r] with different residues
            return (r + 1) // period * pre[period] + pre[(r + 1) % period]
        res = []
        for _ in range(q):
            l, r = int(data[pos]), int(data[pos + 1]); pos += 2
            res.append(count(r) - count(l - 1))
        out.append(" ".join(map(str, res)))
    print("\\n".join(out))
main()
""",
    # Shoot the farthest distinct monster each time; survivors drift left by r per shot.
    "1238_B. Kill 'Em All": """
import sys
def main():
    data = sys.stdin.buffer.read().split()
    q = int(data[0]); pos = 1
    out = []
    for _ in range(q):
        n, r = int(data[pos]), int(data[pos + 1]); pos += 2
        xs = sorted(set(map(int, data[pos:pos + n])), reverse=True); pos += n
        shots = 0
        for x in xs:
            if x - shots * r > 0:
                shots += 1
            else:
                break
        out.append(shots)
    sys.stdout.write("\\n".join(map(str, out)) + "\\n")
main()
""",
}

# Plausible but wrong: counts distinct sizes instead of the multiset difference.
WRONG_CODEHORSES = """
import sys
data = sys.stdin.read().split()
n = int(data[0])
print(len(set(data[1 + n:]) - set(data[1:1 + n])))
"""


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(CC_SAMPLE).to_pylist()
    out = {}
    for row in rows:
        tests = []
        for kind in ("public_tests", "private_tests", "generated_tests"):
            block = row[kind] or {"input": [], "output": []}
            tests += list(zip(block["input"], block["output"], strict=True))
        tl = row["time_limit"]
        seconds = (tl["seconds"] + tl["nanos"] / 1e9) if tl else 0.0
        mem = row["memory_limit_bytes"] or 0
        out[row["name"]] = {
            "tests": tests,
            "time_limit_s": seconds or 2.0,
            "memory_limit_mb": math.ceil(mem / (1 << 20)) if mem else 256,
        }
    return out


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_correct_solution_passes_every_real_test(problems, name):
    p = problems[name]
    assert len(p["tests"]) >= 35
    v = judge(
        SOLUTIONS[name],
        p["tests"],
        time_limit_s=p["time_limit_s"],
        memory_limit_mb=p["memory_limit_mb"],
    )
    bad = next((t for t in v.tests if not t.passed), None)
    assert v.passed, f"{v.status} on test {bad and bad.index}: {bad}"
    assert v.passed_tests == v.total_tests == len(p["tests"])


def test_wrong_solution_fails(problems):
    p = problems["1000_A. Codehorses T-shirts"]
    v = judge(WRONG_CODEHORSES, p["tests"], stop_on_first_failure=False)
    assert not v.passed and v.status == "wrong_answer"
    assert 0 < v.passed_tests < v.total_tests  # right on some tests, wrong on others
    v_first = judge(WRONG_CODEHORSES, p["tests"])
    assert v_first.status == "wrong_answer" and len(v_first.tests) < len(p["tests"])


def test_batch_over_real_rows(problems):
    jobs = [
        JudgeJob(src, problems[name]["tests"], problems[name]["time_limit_s"])
        for name, src in sorted(SOLUTIONS.items())
    ]
    jobs.insert(1, JudgeJob(WRONG_CODEHORSES, problems["1000_A. Codehorses T-shirts"]["tests"]))
    verdicts = judge_batch(jobs)
    assert [v.passed for v in verdicts] == [True, False] + [True] * (len(jobs) - 2)
