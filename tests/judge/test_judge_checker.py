"""Checkers (issue 9 item 2): problems with several valid answers."""

from __future__ import annotations

import pytest

from spo_train.judge import job_for_problem, judge, judge_job, verdict_reward
from tests.conftest import needs_sandbox
from tests.judge.test_judge_floats import sample_row

pytestmark = needs_sandbox

# 1256_C: greedy from the RIGHT bank (the mirror of the usual greedy): valid, but its arrays
# differ from the reference outputs on 21 of the 138 tests.
C1256 = r"""# Greedy from the right bank (the mirror of the usual left-to-right greedy): a valid answer
# that usually differs from the reference output.
n, m, d = map(int, input().split())
c = list(map(int, input().split()))[::-1]
suffix = [0] * (m + 1)
for i in range(m - 1, -1, -1):
    suffix[i] = suffix[i + 1] + c[i]
a = [0] * (n + 2)
pos = 0
for i in range(m):
    start = min(pos + d, n + 1 - suffix[i])
    for cell in range(start, start + c[i]):
        a[cell] = m - i
    pos = start + c[i] - 1
if pos + d < n + 1:
    print("NO")
else:
    print("YES")
    print(*a[1:n + 1][::-1])
"""

# A checker for 1256_C that accepts any valid answer (testlib order: INPUT OUTPUT ANSWER).
C1256_CHECKER = r"""# testlib order: checker INPUT OUTPUT ANSWER. Exit 0 accept, 1 reject, 3 the jury is wrong.
import sys

def reject(why):
    print(why)
    sys.exit(1)

n, m, d, *c = map(int, open(sys.argv[1]).read().split())
out = open(sys.argv[2]).read().split()
jury_yes = open(sys.argv[3]).read().split()[0] == "YES"
if not out or out[0] not in ("YES", "NO"):
    reject("first token must be YES or NO")
if out[0] == "NO":
    if jury_yes:
        reject("answer exists, participant says NO")
    sys.exit(0 if len(out) == 1 else 1)
if len(out) != n + 1:
    reject(f"expected {n} cells after YES, got {len(out) - 1}")
try:
    a = [int(x) for x in out[1:]]
except ValueError:
    reject("cells must be integers")
cells = [0] + a + [0]
last = 0
for p in range(1, m + 1):
    where = [i for i in range(1, n + 1) if cells[i] == p]
    if len(where) != c[p - 1] or where[-1] - where[0] + 1 != c[p - 1] or where[0] <= last:
        reject(f"platform {p} is not one segment of length {c[p - 1]} after platform {p - 1}")
    last = where[-1]
if any(not 0 <= x <= m for x in a):
    reject("cell value out of range")
stand = [0] + [i for i in range(1, n + 1) if cells[i]] + [n + 1]
if any(b - x > d for x, b in zip(stand, stand[1:])):
    reject("a jump longer than d")
if not jury_yes:
    print("participant found an answer the jury did not")
    sys.exit(3)
"""


def test_1256_C_valid_answer_that_differs_fails_without_checker():
    row = sample_row("1256_C. Platforms Jumping")
    v = judge_job(job_for_problem(row, C1256), stop_on_first_failure=False)
    assert v.status == "wrong_answer" and 0 < v.passed_tests < v.total_tests == 138


def test_1256_C_valid_answer_that_differs_passes_with_checker():
    row = sample_row("1256_C. Platforms Jumping", checker=C1256_CHECKER)
    v = judge_job(job_for_problem(row, C1256))
    assert (v.passed, v.passed_tests, v.judged, verdict_reward(v)) == (True, 138, True, 0.0)


def test_1256_C_invalid_answer_is_rejected_by_checker():
    # Claims YES where the last jump is too long: the checker rejects (exit 1).
    wrong = C1256.replace("if pos + d < n + 1:", "if pos + d < n:")
    row = sample_row("1256_C. Platforms Jumping", checker=C1256_CHECKER)
    v = judge_job(job_for_problem(row, wrong))
    assert (v.status, v.judged, verdict_reward(v)) == ("wrong_answer", True, -1.0)
    bad = v.tests[-1]
    assert not bad.passed and "jump longer than d" in bad.checker_message
    assert len(v.tests) == bad.index + 1  # stopped at the first rejected test


def test_checker_gets_testlib_argument_order_and_exit_codes():
    # The checker echoes what it got; accept iff OUTPUT's number equals ANSWER's + INPUT's.
    checker = """
import sys
inp, out, ans = (open(p).read().split() for p in sys.argv[1:4])
assert sys.argv[1:] == ["input.txt", "output.txt", "answer.txt"], sys.argv
code = {"ok": 0, "wa": 1, "pe": 2}[out[0]] if out[0] in ("ok", "wa", "pe") else None
if code is not None:
    sys.exit(code)
sys.exit(0 if int(out[0]) == int(ans[0]) + int(inp[0]) else 1)
"""
    tests = [("1", "10"), ("2", "20")]
    assert judge("print(1)", [], checker=checker).status == "no_tests"
    v = judge("x = int(input())\nprint(x + 10 * x)", tests, checker=checker)
    assert v.passed and v.passed_tests == 2
    for word, status in (("wa", "wrong_answer"), ("pe", "wrong_answer"), ("ok", "ok")):
        v = judge(f"print('{word}')", tests, checker=checker)
        assert v.status == status and v.judged


@pytest.mark.parametrize(
    "checker,why",
    [
        ("raise ValueError('checker bug')", "ValueError"),  # a crash is not a reject
        ("import sys\nsys.exit(3)", "exit 3"),  # testlib's _fail: the jury is wrong
        ("while True: pass", "time_limit"),
        ("def broken(:", "does not compile"),
    ],
)
def test_checker_failure_is_not_judged(checker, why, monkeypatch):
    from spo_train import judge as judge_mod

    monkeypatch.setattr(judge_mod, "CHECKER_TIME_LIMIT_S", 0.5)  # keep the looping case short
    v = judge("print(1)", [("", "1"), ("", "1")], checker=checker)
    assert (v.status, v.judged, v.passed, verdict_reward(v)) == (
        "checker_error",
        False,
        False,
        None,
    )
    assert why in v.detail


def test_program_never_sees_the_expected_answer():
    # The program looks for the answer everywhere it can; the checker runs in another sandbox.
    spy = """
import os
seen = []
for root, dirs, files in os.walk("/tmp"):
    seen += files
print("answer.txt" in seen or "output.txt" in seen, "SECRET-ANSWER" in open("/proc/self/cmdline").read())
"""
    checker = "import sys\nprint(open(sys.argv[3]).read())\nsys.exit(1)"
    v = judge(spy, [("", "SECRET-ANSWER")], checker=checker)
    assert v.status == "wrong_answer"
    assert v.tests[0].stdout.split() == ["False", "False"]
    assert "SECRET-ANSWER" in v.tests[0].checker_message  # the checker did see it


def test_runtime_error_is_reported_before_any_check():
    checker = "import sys\nsys.exit(0)"
    v = judge("import sys\nx = int(input())\nsys.exit(x)", [("0", ""), ("4", "")], checker=checker)
    assert v.status == "runtime_error" and v.passed_tests == 1 and v.judged
