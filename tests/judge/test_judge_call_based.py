"""TACO call-based problems (issue 9 item 6): call `fn_name` with JSON arguments."""

from __future__ import annotations

import json

import pytest

from spo_train.judge import call_results_match, judge, verdict_reward
from tests.conftest import needs_sandbox

pytestmark = needs_sandbox


def call_tests(*pairs) -> list[tuple[str, str]]:
    """TACO's shape: each input is the argument list, each output the return value (JSON)."""
    return [(json.dumps(args), json.dumps(out)) for args, out in pairs]


# Codewars style: a top-level function (TACO: `fn_name` = "persistence").
CODEWARS = """
def persistence(n):
    steps = 0
    while n >= 10:
        prod = 1
        for d in str(n):
            prod *= int(d)
        n = prod
        steps += 1
    return steps
"""
CODEWARS_TESTS = call_tests(([39], 3), ([4], 0), ([25], 2), ([999], 4))

# LeetCode style: a method of class Solution, type hints without importing typing (TACO and
# APPS prepend `from typing import List` and friends to call-based programs).
LEETCODE = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                print("found", i)  # prints are not the answer
                return (seen[target - x], i)  # a tuple: compared as a list, like TACO
            seen[x] = i
"""
LEETCODE_TESTS = call_tests(([[2, 7, 11, 15], 9], [0, 1]), ([[3, 2, 4], 6], [1, 2]))


def test_codewars_function_right_and_wrong():
    v = judge(CODEWARS, CODEWARS_TESTS, fn_name="persistence")
    assert (v.passed, v.passed_tests, verdict_reward(v)) == (True, 4, 0.0)
    assert v.tests[0].stdout == "3"
    wrong = CODEWARS.replace("steps += 1", "steps += 2")
    v = judge(wrong, CODEWARS_TESTS, fn_name="persistence", stop_on_first_failure=False)
    assert (v.status, v.passed_tests, verdict_reward(v)) == ("wrong_answer", 1, -1.0)


def test_leetcode_solution_method_right_and_wrong():
    v = judge(LEETCODE, LEETCODE_TESTS, fn_name="twoSum")
    assert v.passed and v.passed_tests == 2
    wrong = LEETCODE.replace("(seen[target - x], i)", "(i, seen[target - x])")
    v = judge(wrong, LEETCODE_TESTS, fn_name="twoSum")
    assert v.status == "wrong_answer" and v.judged


def test_exception_in_the_function_is_a_runtime_error():
    src = "def persistence(n):\n    return [n][n]  # IndexError\n"
    v = judge(src, CODEWARS_TESTS, fn_name="persistence", stop_on_first_failure=False)
    assert v.status == "runtime_error" and v.passed_tests == 0
    assert "IndexError" in v.tests[1].stderr and verdict_reward(v) == -1.0


def test_missing_function_is_a_runtime_error():
    v = judge("def other(n):\n    return n\n", CODEWARS_TESTS, fn_name="persistence")
    assert v.status == "runtime_error" and "persistence" in v.tests[0].stderr


def test_expected_wrapped_in_a_list_and_unjsonable_results():
    # TACO stores some outputs as [value]: result == expected[0] passes.
    assert judge("def f(x):\n    return x * 2\n", call_tests(([2], [4])), fn_name="f").passed
    # A set has no JSON form; TACO would compare set == list: never equal.
    v = judge("def f(x):\n    return {x}\n", call_tests(([2], [2])), fn_name="f")
    assert v.status == "wrong_answer"


def test_stdin_program_under_fn_name_does_not_pass_by_printing():
    # Printing the answer is not returning it.
    v = judge(
        "print(3)\ndef persistence(n):\n    return None\n",
        CODEWARS_TESTS[:1],
        fn_name="persistence",
    )
    assert v.status == "wrong_answer" and v.tests[0].stdout == "null"


@pytest.mark.parametrize(
    "got,want,ok",
    [
        ("[1, 2]", "[1, 2]", True),
        ("[1, 2]", "[[1, 2]]", True),  # expected wrapped in a list
        ("[[1, 2]]", "[[1, 2]]", True),
        ("[2, 1]", "[1, 2]", False),
        ("1", "[]", False),
        ("true", "true", True),
        ('{"1": 2}', '{"1": 2}', True),
        ("not json", "1", False),
    ],
)
def test_call_results_match_like_taco(got, want, ok):
    assert call_results_match(got, want) is ok
