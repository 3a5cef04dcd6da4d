"""What the sandbox gives a Python 3 program, as a contest judge does (issue 9 item 5).

See docs/judge.md ("Limits"): stack = memory limit (deep recursion with
sys.setrecursionlimit works, as on Codeforces), threads with threading.stack_size, CPython's
default recursion limit, UTF-8 stdio, only the standard library, and problems that read
`input.txt` / write `output.txt`.
"""

from __future__ import annotations

import pytest

from spo_train.judge import job_for_problem, judge, judge_job
from spo_train.judge.sandbox import run_program
from tests.conftest import needs_sandbox

pytestmark = needs_sandbox

# Recursion through a C function (lru_cache's wrapper) uses the C stack at every level: with a
# default 8 MiB stack it segfaults between depth 10k and 15k (measured with `ulimit -s 8192`);
# with stack = memory limit (256 MiB) 300k levels fit.
DEEP_MAIN = """
import sys, functools
sys.setrecursionlimit(10**6)
@functools.lru_cache(None)
def depth(n):
    return 0 if n == 0 else depth(n - 1) + 1
print(depth(int(input())))
"""

# The usual Codeforces idiom: a big thread stack and a thread for the recursion.
DEEP_THREAD = """
import sys, threading, functools
sys.setrecursionlimit(10**6)
threading.stack_size(1 << 27)
@functools.lru_cache(None)
def depth(n):
    return 0 if n == 0 else depth(n - 1) + 1
def main():
    print(depth(int(input())))
t = threading.Thread(target=main)
t.start()
t.join()
"""


def test_deep_recursion_in_the_main_thread_uses_the_memory_limit_as_stack():
    v = judge(DEEP_MAIN, [("300000", "300000")], time_limit_s=5, memory_limit_mb=256)
    assert v.passed, v.tests[0].stderr[-300:]


def test_deep_recursion_in_a_thread_with_a_big_stack():
    v = judge(DEEP_THREAD, [("100000", "100000")], time_limit_s=5, memory_limit_mb=256)
    assert v.passed, v.tests[0].stderr[-300:]


def test_interpreter_defaults_as_on_a_judge():
    src = """
import sys
print(sys.getrecursionlimit(), sys.stdout.encoding, sys.stdin.encoding)
print(sum(1 for p in sys.path if "site-packages" in p or "dist-packages" in p))
try:
    import numpy
    print("numpy")
except ImportError:
    print("no-numpy")
print("é€")
"""
    r = run_program(src, "")
    assert r.stdout.split() == ["1000", "utf-8", "utf-8", "0", "no-numpy", "é€"]


# ------------------------------------------------------------------ input_file / output_file

FILE_SUM = """
with open("input.txt") as f:
    a, b = map(int, f.read().split())
with open("output.txt", "w") as f:
    f.write(str(a + b) + "\\n")
"""
STDIO_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
TESTS = [("1 2", "3"), ("40 2\n", "42")]


def _file_problem(**io) -> dict:
    return {
        "problem_id": "files",
        "name": "files",
        "private_tests": {"input": [t[0] for t in TESTS], "output": [t[1] for t in TESTS]},
        **io,
    }


def test_program_reading_and_writing_files_passes():
    job = job_for_problem(_file_problem(input_file="input.txt", output_file="output.txt"), FILE_SUM)
    v = judge_job(job)
    assert v.passed and v.passed_tests == 2
    # Without the columns the same program has no input.txt: a runtime error.
    assert judge_job(job_for_problem(_file_problem(), FILE_SUM)).status == "runtime_error"


def test_file_problems_do_not_read_stdin_or_stdout():
    # As on a contest judge: the input is in the file only, the answer is the file.
    row = _file_problem(input_file="input.txt", output_file="output.txt")
    assert judge_job(job_for_problem(row, STDIO_SUM)).status == "runtime_error"  # EOF on stdin
    only_out = _file_problem(output_file="output.txt")
    v = judge_job(job_for_problem(only_out, STDIO_SUM))
    assert v.status == "wrong_answer" and v.tests[0].stdout == ""  # printed, wrote no file
    writes = "a, b = map(int, input().split())\nopen('output.txt', 'w').write(str(a + b))\n"
    assert judge_job(job_for_problem(only_out, writes)).passed
    only_in = _file_problem(input_file="input.txt")
    reads = "a, b = map(int, open('input.txt').read().split())\nprint(a + b)\n"
    assert judge_job(job_for_problem(only_in, reads)).passed


@pytest.mark.parametrize(
    "trick",
    [
        "import os\nos.symlink('/dev/zero', 'output.txt')",  # endless data
        "import os\nos.mkfifo('output.txt')",  # a reader would block forever
        "import os\nos.mkdir('output.txt')",
    ],
)
def test_output_file_tricks_do_not_hang_the_driver(trick):
    v = judge(trick, [("", "1")], output_file="output.txt", time_limit_s=1)
    assert v.status == "wrong_answer" and v.wall_s < 5
