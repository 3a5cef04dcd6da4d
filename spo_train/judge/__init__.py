"""Judging: is a Python 3 program correct on a problem's tests, as a contest judge would say?

The isolation (bubblewrap sessions, rlimits, the in-sandbox driver) lives in
`spo_train.judge.sandbox`; this module decides correctness on top of it (see docs/judge.md):

- stdin/stdout problems: token comparison (`outputs_match`), with a float tolerance whose
  reach depends on where it comes from (`float_tolerance_source`);
- `checker` problems (several valid answers): a per-problem Python 3 checker run in its OWN
  sandbox session as ``checker INPUT OUTPUT ANSWER`` (testlib's order); exit 0 accepts, 1 or 2
  rejects, anything else is a checker failure (the program is then *not judged*);
- call-based problems (`fn_name`, TACO's Codewars/LeetCode part): the sandbox calls the
  function with each test's JSON argument list and reports the JSON of the return value, which
  is compared as TACO's evaluator compares (`call_results_match`);
- `input_file` / `output_file`: the program's working directory holds the test input under
  that name, and its answer is read from that file.

Expected outputs never enter the judged program's sandbox. A verdict says whether the program
was really judged (`Verdict.judged`); `verdict_reward` maps it to the lake's reward
(0 passed, -1 failed, None not judged).
"""

from __future__ import annotations

import dataclasses
import marshal
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from spo_store import jsontext
from spo_store.errors import SpoError
from spo_train.judge import sandbox as _sb
from spo_train.judge.sandbox import RUN_STATUSES, RunResult

PREVIEW_CHARS = 2000  # per-test stdout/stderr/expected kept in `TestResult` for display
NOT_JUDGED_STATUSES = ("sandbox_error", "checker_error", "no_tests")
VERDICT_STATUSES = (*RUN_STATUSES, "wrong_answer", "compile_error", "checker_error", "no_tests")
START_RETRIES = 1  # a sandbox that fails to START (loaded machine) is retried this many times
RETRY_PAUSE_S = 0.5
CHECKER_TIME_LIMIT_S = 10.0  # per test; a checker is trusted but must not hang the judge
CHECKER_MEMORY_LIMIT_MB = 1024
CHECKER_FAIL_STATUS = 3  # exit status of a checker that raised (testlib's _fail)
TOLERANCE_SOURCES = ("statement", "dataset", "default", "user")

# The problems columns `job_for_problem` reads (callers SELECT them).
JUDGE_PROBLEM_COLUMNS = (
    "problem_id",
    "name",
    "platform",
    "public_tests",
    "private_tests",
    "generated_tests",
    "time_limit_s",
    "memory_limit_mb",
    "float_tolerance",
    "float_tolerance_source",
    "checker",
    "fn_name",
    "input_file",
    "output_file",
)


def default_float_tolerance() -> float:
    """`spo_store.problem_rules.DEFAULT_FLOAT_TOLERANCE` (one definition for ingest and judge)."""
    from spo_store.problem_rules import DEFAULT_FLOAT_TOLERANCE

    return float(DEFAULT_FLOAT_TOLERANCE)


@dataclass(frozen=True)
class TestResult:
    """One test of a judged program, with short previews for display."""

    index: int
    status: str  # ok / wrong_answer / runtime_error / time_limit / ...
    passed: bool
    wall_s: float
    cpu_s: float
    exit_code: int | None
    stdout: str  # previews, at most PREVIEW_CHARS each
    stderr: str
    expected: str
    checker_message: str = ""  # the checker's stdout+stderr (checker problems only)


@dataclass(frozen=True)
class Verdict:
    """The judgement of one program against its tests.

    `judged` is False when the program was not really judged (the sandbox failed to start or
    died, the checker failed, there were no tests): such a verdict carries no reward.
    """

    passed: bool
    status: str  # one of VERDICT_STATUSES: "ok" when passed, else the first failure's status
    passed_tests: int
    total_tests: int
    tests: list[TestResult] = field(default_factory=list)
    detail: str = ""  # compile error text, sandbox failure, ... (one paragraph)
    wall_s: float = 0.0
    judged: bool = True


def verdict_reward(v: Verdict) -> float | None:
    """The lake's reward: 0.0 passed, -1.0 judged and failed, None not judged."""
    if not v.judged:
        return None
    return 0.0 if v.passed else -1.0


@dataclass(frozen=True)
class JudgeJob:
    """One program and everything its judgement needs (see `job_for_problem`).

    `tests`: (input, expected output) text pairs; for `fn_name` jobs the JSON text of the
    argument list and of the expected return value. `float_tolerance_source` is one of
    TOLERANCE_SOURCES (None: 'dataset' reach, every numeric token). `checker`: Python 3 source.
    `input_file` / `output_file`: bare file names in the program's working directory.
    """

    source: str
    tests: Sequence[tuple[str, str]]
    time_limit_s: float = 2.0
    memory_limit_mb: int = 256
    float_tolerance: float | None = None
    float_tolerance_source: str | None = None
    checker: str | None = None
    fn_name: str | None = None
    input_file: str | None = None
    output_file: str | None = None
    platform: str | None = None  # the problems row's: what its runtime gives a program


# ---------------------------------------------------------------------------------------------
# Output comparison

# A decimal number as contest outputs write it (no 'nan', 'inf', '1_000', hex: float() takes
# those, a contest checker does not).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _close(a: float, e: float, tol: float) -> bool:
    return math.isfinite(a) and math.isfinite(e) and abs(a - e) <= tol * max(1.0, abs(e))


def outputs_match(
    actual: str,
    expected: str,
    float_tolerance: float | None = None,
    float_tolerance_source: str | None = None,
) -> bool:
    """Token-by-token comparison (any whitespace separates tokens), as contest judges do.

    With `float_tolerance` (tol), a numeric token pair matches when |a - e| <= tol * max(1,|e|)
    (absolute or relative error, testlib's `doubleCompare`). Its reach depends on the source:
    'default' (our fallback, not the problem's word) applies it only where the expected token is
    a non-integer decimal (has '.' or an exponent), so integer answers stay exact; any other
    source ('statement', 'dataset', 'user', None) applies it to every numeric token pair.
    """
    got, want = actual.split(), expected.split()
    if got == want:
        return True
    if float_tolerance is None or len(got) != len(want):
        return False
    only_decimals = float_tolerance_source == "default"
    for a, e in zip(got, want, strict=True):
        if a == e:
            continue
        if not (_NUMBER.fullmatch(a) and _NUMBER.fullmatch(e)):
            return False
        if only_decimals and _INTEGER.fullmatch(e):
            return False
        if not _close(float(a), float(e), float_tolerance):
            return False
    return True


def _values_match(got: Any, want: Any, tol: float | None, only_decimals: bool) -> bool:
    if got == want:
        return True
    if tol is None:
        return False
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        if only_decimals and want.is_integer():
            return False
        return _close(float(got), want, tol)
    if isinstance(want, int) and not only_decimals and isinstance(got, float):
        return _close(got, float(want), tol)
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return all(_values_match(g, w, tol, only_decimals) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict) and got.keys() == want.keys():
        return all(_values_match(got[k], want[k], tol, only_decimals) for k in want)
    return False


def call_results_match(
    actual_json: str,
    expected_json: str,
    float_tolerance: float | None = None,
    float_tolerance_source: str | None = None,
) -> bool:
    """Compare a call-based return value with the expected one, as TACO's evaluator does.

    TACO (`testing_util.py`, call-based branch): tuples become lists (JSON does that here),
    then `result == expected`, or, when the expected value is a non-empty list,
    `result == expected[0]` (TACO stores some outputs wrapped in a list). With a float
    tolerance, numbers inside the values compare as in `outputs_match` (TACO has none: plain
    `==`, which already makes 1 == 1.0).
    """
    try:
        # jsontext: a program may return an int of any length (the judge lifts CPython's
        # int/str digit limit); it is compared by its digits, in linear time.
        got = jsontext.loads(actual_json)
        want = jsontext.loads(expected_json)
        only = float_tolerance_source == "default"
        if _values_match(got, want, float_tolerance, only):
            return True
        return (
            isinstance(want, list)
            and bool(want)
            and _values_match(got, want[0], float_tolerance, only)
        )
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python compares
        return False


# ---------------------------------------------------------------------------------------------
# Jobs from lake rows


def check_file_name(value: Any, what: str) -> str | None:
    """A bare file name in the program's working directory, or None; SpoError if it is not."""
    if value is None or value == "":
        return None
    name = str(value)
    if "/" in name or "\0" in name or name in (".", "..") or len(name) > 255:
        raise SpoError(f"{what} {name!r} must be a plain file name (no '/')")
    return name


def _check_tolerance(tol: Any, what: str) -> float | None:
    if tol is None:
        return None
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise SpoError(f"{what} must be a number, got {tol!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise SpoError(f"{what} must be finite and >= 0, got {tol!r}")
    return value


def job_for_problem(
    problem: Mapping[str, Any], source: str, *, float_tolerance_override: float | None = None
) -> JudgeJob:
    """The JudgeJob for `source` on a `problems` row (a dict with JUDGE_PROBLEM_COLUMNS).

    Tests come from `spo_store.lake.problem_tests` (public, private, generated); limits default
    to 2 s / 256 MiB where the row has none. `float_tolerance_override` (the user's, e.g.
    `spo judge --float-tolerance`) replaces the row's tolerance with source 'user'.
    Raises SpoError for an invalid tolerance or file name.
    """
    from spo_store.lake import problem_tests

    tests = [(t["input"], t["output"]) for t in problem_tests(problem)]
    tol = _check_tolerance(problem.get("float_tolerance"), "float_tolerance")
    tol_source = problem.get("float_tolerance_source") if tol is not None else None
    if float_tolerance_override is not None:
        tol = _check_tolerance(float_tolerance_override, "float tolerance override")
        tol_source = "user"
    return JudgeJob(
        source=source,
        tests=tests,
        time_limit_s=float(problem.get("time_limit_s") or 2.0),
        memory_limit_mb=int(problem.get("memory_limit_mb") or 256),
        float_tolerance=tol,
        float_tolerance_source=tol_source,
        checker=problem.get("checker") or None,
        fn_name=problem.get("fn_name") or None,
        input_file=check_file_name(problem.get("input_file"), "input_file"),
        output_file=check_file_name(problem.get("output_file"), "output_file"),
        platform=problem.get("platform") or None,
    )


# ---------------------------------------------------------------------------------------------
# Judging


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


def _session_with_retry(run: Callable[[], _sb._SessionOutcome]) -> _sb._SessionOutcome:
    """Run a sandbox session; retry once if the sandbox failed to START (not a judgement).

    On a loaded machine bwrap or the driver can miss the start deadline; that says nothing
    about the program, so one more try is cheap insurance before giving up (not judged).
    """
    out = run()
    for _ in range(START_RETRIES):
        if out.failure is None or out.started:
            break
        time.sleep(RETRY_PAUSE_S)
        out = run()
    return out


# What a platform's Python runtime gives a program before its first line (docs/judge.md,
# "What the platform gives a program", has the sources).
_TACO_CALL_PRELUDE = (
    # TACO's evaluator (metrics/testing_util.py, `synthesize_cb_code`) prepends these to every
    # call-based program (numpy aside: it is not installed here).
    "import sys, time, itertools, collections, functools, math, fractions, heapq, bisect\n"
    "import random, string\n"
    "from itertools import accumulate, product, permutations, combinations\n"
    "from collections import Counter, OrderedDict, deque, defaultdict, ChainMap\n"
    "from functools import lru_cache, reduce\n"
    "from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2\n"
    "from heapq import *\n"
    "from typing import List, Tuple, Dict, Set, Optional, Any\n"
)
_LEETCODE_PRELUDE = (
    # LeetCode's Python 3 runs a solution with most of the standard library imported and
    # `from typing import *` (its help: "most libraries are already imported automatically");
    # the list is LiveCodeBench's LeetCode harness (lcb_runner/evaluation/testing_util.py,
    # `import_string`), plus the ListNode / TreeNode classes LeetCode defines for its
    # linked-list and tree problems.
    "from string import *\nfrom re import *\nfrom datetime import *\n"
    "from collections import *\nfrom heapq import *\nfrom bisect import *\n"
    "from copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\n"
    "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\n"
    "from builtins import *\nfrom typing import *\n"
    "import string, re, datetime, collections, heapq, bisect, copy, math, random\n"
    "import statistics, itertools, functools, operator, io, sys, json\n"
    "sys.setrecursionlimit(50000)\n"
    "class ListNode:\n"
    "    def __init__(self, val=0, next=None):\n"
    "        self.val = val\n"
    "        self.next = next\n"
    "class TreeNode:\n"
    "    def __init__(self, val=0, left=None, right=None):\n"
    "        self.val = val\n"
    "        self.left = left\n"
    "        self.right = right\n"
)
_PRELUDE_MODULES = {  # imported once in the driver, so that each test's fork has them
    "taco": ("fractions", "functools", "json", "random", "string", "typing"),
    "leetcode": (
        "copy",
        "datetime",
        "functools",
        "io",
        "json",
        "operator",
        "random",
        "re",
        "statistics",
        "string",
        "typing",
    ),
}
# Contest judges ran CPython older than 3.11 (or PyPy): no int <-> str digit limit.
INT_MAX_STR_DIGITS = 0


def call_prelude(platform: str | None) -> str:
    """The code run before a call-based program of `platform` (LeetCode's or TACO's)."""
    return _LEETCODE_PRELUDE if platform == "leetcode" else _TACO_CALL_PRELUDE


def _program_config(
    fn_name: str | None,
    input_file: str | None,
    output_file: str | None,
    platform: str | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {"int_max_str_digits": INT_MAX_STR_DIGITS}
    if input_file:
        cfg["input_file"] = check_file_name(input_file, "input_file")
    if output_file:
        cfg["output_file"] = check_file_name(output_file, "output_file")
    if fn_name:
        if not str(fn_name).isidentifier():
            raise SpoError(f"fn_name {fn_name!r} is not a Python identifier")
        cfg["fn_name"] = str(fn_name)
        cfg["call_prelude"] = call_prelude(platform)
        cfg["preload"] = _PRELUDE_MODULES["leetcode" if platform == "leetcode" else "taco"]
    return cfg


def _as_checker(text: str) -> str:
    """The sandbox driver names every source solution.py; in checker messages it is the checker."""
    return text.replace('File "solution.py"', 'File "checker.py"')


def _run_checker(
    checker: str,
    tests: Sequence[tuple[str, str]],
    outputs: Sequence[str],
    sandbox: tuple[str, list[str]] | None,
    stop_on_first_failure: bool = True,
) -> tuple[list[tuple[bool | None, str]], str | None]:
    """Check each (input, answer) with the program's output in ONE checker sandbox session.

    Returns per checked test (accepted: True/False, None = checker failure; its message) and a
    session failure text (None when the session ran). Stops at a checker failure, and at the
    first reject when `stop_on_first_failure`.
    """
    frames = [
        marshal.dumps(
            (
                b"",
                {
                    "input.txt": _sb._encode_input(inp),
                    "output.txt": _sb._encode_input(out),
                    "answer.txt": _sb._encode_input(ans),
                },
            )
        )
        for (inp, ans), out in zip(tests, outputs, strict=False)
    ]
    checked: list[tuple[bool | None, str]] = []

    def keep_going(i: int, run: RunResult) -> bool:
        msg = _as_checker((run.stdout + run.stderr).strip())
        if run.status == "ok":
            checked.append((True, msg))
            return True
        if run.status == "runtime_error" and run.exit_code in (1, 2):
            checked.append((False, msg))
            return not stop_on_first_failure
        checked.append((None, f"{run.status} (exit {run.exit_code}): {msg}"))
        return False

    def session() -> _sb._SessionOutcome:
        checked.clear()
        return _sb._run_session(
            checker,
            frames,
            time_limit_s=CHECKER_TIME_LIMIT_S,
            memory_limit_mb=CHECKER_MEMORY_LIMIT_MB,
            sandbox=sandbox,
            keep_going=keep_going,
            config_extra={
                "file_frames": True,
                "argv": ["checker.py", "input.txt", "output.txt", "answer.txt"],
                "exc_status": CHECKER_FAIL_STATUS,
            },
        )

    out = _session_with_retry(session)
    if out.compile_error is not None:
        return checked, f"checker does not compile: {_as_checker(out.compile_error.strip())}"
    if out.failure is not None:
        return checked, f"checker sandbox: {out.failure}"
    for extra in out.results[len(checked) :]:  # a watchdog result skips keep_going
        keep_going(len(checked), extra)
    return checked, None


def _blame_output(
    checker: str,
    checked: list[tuple[bool | None, str]],
    tests: Sequence[tuple[str, str]],
    sandbox: tuple[str, list[str]] | None,
) -> list[tuple[bool | None, str]]:
    """A checker that failed on the program's output but accepts the reference answer there
    failed because of that output: the program's wrong answer, not "not judged".

    testlib makes a malformed output the program's verdict (reading `ouf` fails with WA/PE;
    only a failure on the input or the answer is `_fail`). A Python checker that crashes or
    hangs on garbage (`int(token)` of a word) would otherwise let a program turn every
    negative reward into NULL, which RL finds. The checker runs once more, on the failing
    test with the answer as the output: accepted -> wrong_answer; else it stays a checker
    failure (the checker is broken).
    """
    k = next((i for i, (accepted, _) in enumerate(checked) if accepted is None), None)
    if k is None:
        return checked
    inp, ans = tests[k]
    again, failure = _run_checker(checker, [(inp, ans)], [ans], sandbox)
    if failure is not None or not again or again[0][0] is not True:
        return checked
    why = checked[k][1]
    return [
        *checked[:k],
        (False, f"the checker failed on this output ({why}) and accepts the reference answer"),
    ]


def judge(
    source: str,
    tests: Sequence[tuple[str, str]],
    *,
    time_limit_s: float = 2.0,
    memory_limit_mb: int = 256,
    stop_on_first_failure: bool = True,
    float_tolerance: float | None = None,
    float_tolerance_source: str | None = None,
    checker: str | None = None,
    fn_name: str | None = None,
    input_file: str | None = None,
    output_file: str | None = None,
    platform: str | None = None,
    unsafe_no_sandbox: bool = False,
) -> Verdict:
    """Judge one program on `(input, expected_output)` tests; see the module doc and JudgeJob.

    The verdict's status is `ok` when every test passed, else the status of the first failing
    test (`wrong_answer`, `runtime_error`, `time_limit`, `memory_limit`, `output_limit`), or
    `compile_error`; not judged (`judged=False`): `sandbox_error` (the sandbox failed to start
    twice, or died), `checker_error` (the checker crashed, timed out or exited with another
    status), `no_tests`. Raises SpoError only for a missing bwrap or invalid limits/options.
    """
    tests = [(str(i), str(o)) for i, o in tests]
    started = time.monotonic()
    if not tests:
        return Verdict(False, "no_tests", 0, 0, [], "the problem has no tests", 0.0, judged=False)
    if float_tolerance is not None:
        _check_tolerance(float_tolerance, "float tolerance")
    program_cfg = _program_config(fn_name, input_file, output_file, platform)
    sandbox = _sb._sandbox_for(unsafe_no_sandbox)
    results: list[TestResult] = []
    outputs: list[str] = []  # full outputs of the runs that exited ok (checker problems)
    # With a checker, correctness is known only after the checker session: the program runs on
    # until a run itself fails, then one checker session checks all outputs.

    def compare(i: int, out_text: str) -> bool:
        expected = tests[i][1]
        if fn_name:
            return call_results_match(out_text, expected, float_tolerance, float_tolerance_source)
        return outputs_match(out_text, expected, float_tolerance, float_tolerance_source)

    def keep_going(i: int, run: RunResult) -> bool:
        if run.status == "ok" and checker is None:
            ok = compare(i, run.stdout)
            status = "ok" if ok else "wrong_answer"
        elif run.status == "ok":
            ok, status = True, "ok"  # provisional: the checker decides
            outputs.append(run.stdout)
        else:
            ok, status = False, run.status
        results.append(
            TestResult(
                index=i,
                status=status,
                passed=ok,
                wall_s=run.wall_s,
                cpu_s=run.cpu_s,
                exit_code=run.exit_code,
                stdout=_preview(run.stdout),
                stderr=_preview(run.stderr),
                expected=_preview(tests[i][1]),
            )
        )
        # A test that was not judged (the machine too busy, the driver's own failure) does not
        # stop the session: a later test may still fail as a judgement.
        return ok or not stop_on_first_failure or status in NOT_JUDGED_STATUSES

    def run_program() -> _sb._SessionOutcome:
        results.clear()
        outputs.clear()
        return _sb._run_session(
            source,
            [t[0] for t in tests],
            time_limit_s=time_limit_s,
            memory_limit_mb=memory_limit_mb,
            sandbox=sandbox,
            keep_going=keep_going,
            config_extra=program_cfg,
        )

    out = _session_with_retry(run_program)
    # A watchdog result (the driver never answered) does not go through keep_going.
    for extra in out.results[len(results) :]:
        keep_going(len(results), extra)
    if out.compile_error is not None:
        wall = time.monotonic() - started
        return Verdict(False, "compile_error", 0, len(tests), [], out.compile_error.strip(), wall)
    if out.failure is not None:
        wall = time.monotonic() - started
        passed_tests = sum(r.passed for r in results) if checker is None else 0
        return Verdict(
            False, "sandbox_error", passed_tests, len(tests), results, out.failure, wall, False
        )
    if checker is not None and outputs:
        ok_runs = [r for r in results if r.status == "ok"]
        checked, failure = _run_checker(
            checker, [tests[r.index] for r in ok_runs], outputs, sandbox, stop_on_first_failure
        )
        checked = _blame_output(checker, checked, [tests[r.index] for r in ok_runs], sandbox)
        for r, (accepted, msg) in zip(ok_runs, checked, strict=False):
            status = {True: "ok", False: "wrong_answer", None: "checker_error"}[accepted]
            results[r.index] = dataclasses.replace(
                r, status=status, passed=bool(accepted), checker_message=_preview(msg)
            )
        bad = next((m for a, m in checked if a is None), None)
        if failure is not None or bad is not None:
            wall = time.monotonic() - started
            return Verdict(
                False, "checker_error", 0, len(tests), results, failure or bad or "", wall, False
            )
        if len(checked) < len(ok_runs):  # stopped at a reject: the rest was never checked
            del results[ok_runs[len(checked)].index :]
    wall = time.monotonic() - started
    passed_tests = sum(r.passed for r in results)
    # The first failure that is a judgement decides; failing that, the first one that is not.
    first_bad = next(
        (r for r in results if not r.passed and r.status not in NOT_JUDGED_STATUSES),
        next((r for r in results if not r.passed), None),
    )
    if first_bad is None and len(results) == len(tests):
        return Verdict(True, "ok", passed_tests, len(tests), results, "", wall)
    if first_bad is None:
        return Verdict(
            False, "sandbox_error", passed_tests, len(tests), results, "tests missing", wall, False
        )
    if stop_on_first_failure:
        results = results[: first_bad.index + 1]
    judged = first_bad.status not in NOT_JUDGED_STATUSES
    detail = f"test {first_bad.index}: {first_bad.status}"
    if not judged and first_bad.stderr:
        detail += f" ({first_bad.stderr.strip()})"
    return Verdict(False, first_bad.status, passed_tests, len(tests), results, detail, wall, judged)


def judge_job(
    job: JudgeJob, *, stop_on_first_failure: bool = True, unsafe_no_sandbox: bool = False
) -> Verdict:
    """`judge` with the fields of `job`."""
    return judge(
        job.source,
        job.tests,
        time_limit_s=job.time_limit_s,
        memory_limit_mb=job.memory_limit_mb,
        stop_on_first_failure=stop_on_first_failure,
        float_tolerance=job.float_tolerance,
        float_tolerance_source=job.float_tolerance_source,
        checker=job.checker,
        fn_name=job.fn_name,
        input_file=job.input_file,
        output_file=job.output_file,
        platform=job.platform,
        unsafe_no_sandbox=unsafe_no_sandbox,
    )


def judge_batch(
    jobs: Sequence[JudgeJob],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    unsafe_no_sandbox: bool = False,
    stop_on_first_failure: bool = True,
) -> list[Verdict]:
    """Judge many programs in parallel (one sandbox each); verdicts in the order of `jobs`.

    `workers` defaults to `default_workers()` (the CPUs this process may run on).
    `progress(n)` is called from the calling thread
    with the number of jobs just finished (1 each time), e.g. `lambda n: bar.advance(task, n)`.
    A failure of one job (sandbox trouble, bad limits, no tests) becomes that job's not-judged
    verdict (`judged=False`, reward None); only a missing bwrap raises (SpoError), before
    anything runs. An interrupt (KeyboardInterrupt, SystemExit from a SIGTERM handler) cancels
    the jobs not yet started and propagates.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    _sb._sandbox_for(unsafe_no_sandbox)  # fail fast, and find the layout once before threads
    workers = max(1, workers or default_workers())

    def one(job: JudgeJob) -> Verdict:
        try:
            return judge_job(
                job,
                stop_on_first_failure=stop_on_first_failure,
                unsafe_no_sandbox=unsafe_no_sandbox,
            )
        except Exception as exc:  # noqa: BLE001 - one bad job must not kill the batch
            return Verdict(False, "sandbox_error", 0, len(job.tests), [], f"{exc}", judged=False)

    verdicts: list[Verdict | None] = [None] * len(jobs)
    pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)))
    try:
        futures = {pool.submit(one, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            verdicts[futures[fut]] = fut.result()
            if progress is not None:
                progress(1)
    except BaseException:
        # Ctrl-C / SIGTERM (or a failing progress callback): drop the queued jobs instead of
        # judging them all before the interrupt can propagate; running ones finish their test.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [v for v in verdicts if v is not None]


def default_workers() -> int:
    """Judge workers by default: the CPUs this process may run on (affinity, e.g. taskset or a
    container's cpuset), not the machine's count; falls back to `os.cpu_count()`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
