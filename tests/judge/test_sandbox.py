"""The judge's contract: statuses, token comparison, limits, batching, missing bwrap."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from spo_store.errors import SpoError
from spo_train.judge import JudgeJob, judge, judge_batch, outputs_match, sandbox, verdict_reward
from spo_train.judge.sandbox import run_program
from tests.conftest import needs_sandbox

ECHO_SUM = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"


# ------------------------------------------------------------------ run_program: statuses


@needs_sandbox
def test_ok_with_stdin_and_stdout():
    r = run_program("name = input()\nprint(f'hello {name}')\n", "world\n")
    assert r.status == "ok"
    assert r.stdout == "hello world\n"
    assert r.exit_code == 0
    assert 0 < r.wall_s < 2


@needs_sandbox
def test_stdin_without_trailing_newline_and_unicode():
    r = run_program("s = input()\nprint(len(s), s[::-1])\n", "héllo ✓")
    assert r.status == "ok"
    assert r.stdout == "7 ✓ olléh\n"


@needs_sandbox
def test_large_stdin_is_passed_whole():
    data = "\n".join(str(i) for i in range(600_000)) + "\n"  # about 4 MB
    r = run_program(ECHO_SUM, data, time_limit_s=5)
    assert r.status == "ok", r.stderr
    assert int(r.stdout) == sum(range(600_000))


@needs_sandbox
def test_runtime_error_keeps_traceback_and_exit_code():
    r = run_program("def f(x):\n    return 1 // x\nprint('before')\nf(0)\n", "")
    assert r.status == "runtime_error"
    assert r.exit_code == 1
    assert r.stdout == "before\n"
    assert "ZeroDivisionError" in r.stderr and 'File "solution.py", line 2' in r.stderr
    assert "sandbox_driver" not in r.stderr and "_child" not in r.stderr


@needs_sandbox
def test_sys_exit_semantics():
    assert run_program("import sys\nsys.exit(0)", "").status == "ok"
    assert run_program("exit()", "").status == "ok"  # the site builtin many solutions use
    r = run_program("import sys\nsys.exit(3)", "")
    assert (r.status, r.exit_code) == ("runtime_error", 3)
    r = run_program("import sys\nsys.exit('bye')", "")
    assert (r.status, r.exit_code, r.stderr) == ("runtime_error", 1, "bye\n")


@needs_sandbox
def test_syntax_error_is_a_runtime_error_for_run_program():
    r = run_program("def f(:\n    pass\n", "")
    assert r.status == "runtime_error"
    assert "SyntaxError" in r.stderr


@needs_sandbox
def test_busy_loop_is_time_limit_at_cpu_limit():
    t0 = time.monotonic()
    r = run_program("while True:\n    pass\n", "", time_limit_s=0.5)
    assert r.status == "time_limit"
    assert r.cpu_s >= 0.45
    assert time.monotonic() - t0 < 5


@needs_sandbox
def test_sleep_is_time_limit_by_wall_clock():
    t0 = time.monotonic()
    r = run_program("import time\ntime.sleep(60)\n", "", time_limit_s=0.5)
    assert r.status == "time_limit"
    assert r.cpu_s < 0.5
    assert 1.0 < time.monotonic() - t0 < 6  # wall limit = 1.5 x 0.5 + 1 s


@needs_sandbox
def test_cpu_over_limit_but_finished_is_still_time_limit():
    # Finishes in about 0.4 s of CPU, above a 0.2 s limit; RLIMIT_CPU alone (whole seconds)
    # would let it pass.
    src = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4:\n    pass\n"
    assert run_program(src, "", time_limit_s=0.2).status == "time_limit"


@needs_sandbox
def test_memory_limit():
    r = run_program("x = bytearray(512 * 1024 * 1024)\nprint(len(x))\n", "", memory_limit_mb=128)
    assert r.status == "memory_limit"
    assert r.stdout == ""


@needs_sandbox
def test_memory_below_limit_is_fine():
    r = run_program("x = bytearray(100 * 1024 * 1024)\nprint(len(x))\n", "", memory_limit_mb=128)
    assert r.status == "ok", r.stderr
    assert r.stdout.strip() == str(100 * 1024 * 1024)


@needs_sandbox
def test_output_limit():
    src = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    t0 = time.monotonic()
    r = run_program(src, "", output_limit_bytes=1 << 20)
    assert r.status == "output_limit"
    assert time.monotonic() - t0 < 5


@needs_sandbox
def test_non_daemon_threads_are_waited_for_like_cpython():
    src = (
        "import sys, threading\n"
        "threading.stack_size(64 * 1024 * 1024)\n"
        "sys.setrecursionlimit(10 ** 6)\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "threading.Thread(target=lambda: print(depth(50000))).start()\n"
    )
    r = run_program(src, "", memory_limit_mb=256)
    assert r.status == "ok", r.stderr
    assert r.stdout == "50000\n"


@needs_sandbox
def test_program_runs_as_nobody_in_an_empty_fresh_directory_with_clear_env():
    src = "import os\nprint(os.getuid(), os.getgid(), os.getcwd(), os.listdir('.'))\n"
    r = run_program(src, "")
    assert r.stdout.split() == ["65534", "65534", "/tmp/work", "[]"]


def test_invalid_limits_raise():
    with pytest.raises(SpoError):
        run_program("print(1)", "", time_limit_s=0)
    with pytest.raises(SpoError):
        judge("print(1)", [("", "1")], time_limit_s=0)
    with pytest.raises(SpoError):
        judge("print(1)", [("", "1")], float_tolerance=-1e-6)


def test_no_tests_is_not_judged_and_has_no_reward():
    v = judge("print(1)", [])
    assert (v.status, v.judged, v.passed, verdict_reward(v)) == ("no_tests", False, False, None)


# ------------------------------------------------------------------ comparison


@pytest.mark.parametrize(
    "actual,expected,ok",
    [
        ("1 2 3\n", "1 2 3", True),
        ("1\n2\n3\n", "1 2 3\n", True),  # line breaks vs spaces, as in real CodeContests tests
        ("  1   2\t3  \r\n", "1 2 3", True),
        ("1 2 3 4", "1 2 3", False),
        ("1 2", "1 2 3", False),
        ("12 3", "1 23", False),
        ("YES", "yes", False),
        ("", "", True),
        ("", "0", False),
    ],
)
def test_outputs_match_tokens(actual, expected, ok):
    assert outputs_match(actual, expected) is ok


def test_outputs_match_float_tolerance():
    assert not outputs_match("0.3333333", "0.333333333")
    assert outputs_match("0.3333333", "0.333333333", 1e-6)
    assert outputs_match("1000000.5", "1000000.0", 1e-6)  # relative
    assert not outputs_match("1000002.5", "1000000.0", 1e-6)
    assert outputs_match("1e-9", "0", 1e-6)  # absolute
    assert not outputs_match("abc 1.0", "abd 1.0", 1e-6)
    assert not outputs_match("nan", "1.0", 1e-6)
    assert not outputs_match("1.0 2.0", "1.0", 1e-6)


# ------------------------------------------------------------------ judge


@needs_sandbox
def test_judge_passes_with_whitespace_differences():
    tests = [("1 2\n", "3\n"), ("5\n6\n7\n", "18"), ("0", " 0 \n\n")]
    v = judge(ECHO_SUM, tests)
    assert v.passed and v.status == "ok"
    assert (v.passed_tests, v.total_tests) == (3, 3)
    assert [t.status for t in v.tests] == ["ok", "ok", "ok"]


@needs_sandbox
def test_judge_line_breaks_versus_spaces():
    src = "n = int(input())\nprint(*range(n), sep='\\n')\n"
    assert judge(src, [("4\n", "0 1 2 3\n")]).passed


@needs_sandbox
def test_judge_stops_at_first_failure():
    src = "n = int(input())\nprint(n * 2 if n != 2 else 0)\n"
    tests = [(str(i), str(2 * i)) for i in range(1, 6)]
    v = judge(src, tests)
    assert not v.passed and v.status == "wrong_answer"
    assert v.passed_tests == 1 and v.total_tests == 5
    assert [t.index for t in v.tests] == [0, 1]
    assert v.tests[1].stdout.strip() == "0" and v.tests[1].expected == "4"

    v = judge(src, tests, stop_on_first_failure=False)
    assert v.passed_tests == 4 and len(v.tests) == 5
    assert [t.passed for t in v.tests] == [True, False, True, True, True]


@needs_sandbox
def test_judge_first_failure_status_is_reported():
    src = "n = int(input())\nif n == 3:\n    raise ValueError(n)\nprint(n)\n"
    v = judge(src, [("1", "1"), ("3", "3"), ("4", "5")], stop_on_first_failure=False)
    assert v.status == "runtime_error"
    assert [t.status for t in v.tests] == ["ok", "runtime_error", "wrong_answer"]
    assert "ValueError" in v.tests[1].stderr


@needs_sandbox
def test_judge_float_tolerance():
    src = "print(1 / 3)\n"
    assert not judge(src, [("", "0.333333")]).passed
    assert judge(src, [("", "0.333333")], float_tolerance=1e-6).passed


@needs_sandbox
def test_judge_compile_error():
    v = judge("print('unclosed\n", [("", "x")] * 3)
    assert not v.passed and v.status == "compile_error"
    assert v.passed_tests == 0 and v.total_tests == 3 and v.tests == []
    assert "SyntaxError" in v.detail


@needs_sandbox
def test_judge_time_limit_status():
    v = judge("while True: pass\n", [("", "1")], time_limit_s=0.3)
    assert v.status == "time_limit" and not v.passed


@needs_sandbox
def test_each_test_starts_with_an_empty_tmp():
    src = (
        "import os\n"
        "print(sorted(os.listdir('.')))\n"
        "open('state.txt', 'w').write('x')\n"
        "os.mkdir('d')\n"
        "os.chmod('d', 0)\n"
    )
    v = judge(src, [("", "[]")] * 3)
    assert v.passed, [t.stdout for t in v.tests]


# ------------------------------------------------------------------ judge_batch


@needs_sandbox
def test_judge_batch_preserves_order_and_reports_progress():
    jobs = []
    for i in range(8):
        # Early jobs are slower, so completion order differs from submission order.
        src = f"import time\ntime.sleep({0.05 * (8 - i)})\nprint(int(input()) + {i})\n"
        jobs.append(JudgeJob(src, [("10", str(10 + i))], time_limit_s=2))
    jobs.append(JudgeJob("print(0)", [("", "1")]))
    seen = []
    verdicts = judge_batch(jobs, workers=3, progress=seen.append)
    assert [v.passed for v in verdicts] == [True] * 8 + [False]
    assert verdicts[-1].status == "wrong_answer"
    assert seen == [1] * len(jobs)


@needs_sandbox
def test_judge_batch_one_bad_job_does_not_kill_the_batch():
    jobs = [
        JudgeJob("print(1)", [("", "1")]),
        JudgeJob("print(1)", [("", "1")], time_limit_s=0),  # invalid: raises inside judge
        JudgeJob("print(1)", []),  # no tests
        JudgeJob("while True: pass", [("", "1")], time_limit_s=0.2),
        JudgeJob("print(1)", [("", "1")]),
    ]
    verdicts = judge_batch(jobs, workers=2)
    assert [v.status for v in verdicts] == [
        "ok",
        "sandbox_error",
        "no_tests",
        "time_limit",
        "ok",
    ]
    assert "limit" in verdicts[1].detail
    # Bad limits and no tests are not judgements: no reward; a real TLE is one.
    assert [verdict_reward(v) for v in verdicts] == [0.0, None, None, -1.0, 0.0]
    assert [v.judged for v in verdicts] == [True, False, False, True, True]


@needs_sandbox
def test_judge_batch_empty_and_stop_flag():
    assert judge_batch([]) == []
    job = JudgeJob("print(0)", [("", "1"), ("", "0")])
    (v,) = judge_batch([job], stop_on_first_failure=False)
    assert v.passed_tests == 1 and len(v.tests) == 2


# ------------------------------------------------------------------ missing bwrap, unsafe mode


def test_missing_bwrap_raises_clear_error(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(
        sandbox.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name)
    )
    for call in (
        lambda: run_program("print(1)", ""),
        lambda: judge("print(1)", [("", "1")]),
        lambda: judge_batch([JudgeJob("print(1)", [("", "1")])]),
    ):
        with pytest.raises(SpoError) as info:
            call()
        msg = str(info.value)
        assert "bubblewrap" in msg and "--unsafe-no-sandbox" in msg and "\n" not in msg
    # The escape hatch still works without bwrap.
    assert judge("print(1)", [("", "1")], unsafe_no_sandbox=True).passed


def test_unsafe_mode_keeps_rlimits_and_wall_clock():
    assert run_program(ECHO_SUM, "1 2", unsafe_no_sandbox=True).stdout == "3\n"
    r = run_program("while True: pass", "", time_limit_s=0.3, unsafe_no_sandbox=True)
    assert r.status == "time_limit"
    r = run_program("import time\ntime.sleep(30)", "", time_limit_s=0.3, unsafe_no_sandbox=True)
    assert r.status == "time_limit"
    r = run_program("x = bytearray(1 << 30)", "", memory_limit_mb=64, unsafe_no_sandbox=True)
    assert r.status == "memory_limit"
    v = judge_batch([JudgeJob(ECHO_SUM, [("1 2", "3"), ("4", "5")])], unsafe_no_sandbox=True)
    assert v[0].status == "wrong_answer" and v[0].passed_tests == 1


# ------------------------------------------------------------------ `spo judge`


def _spo(argv: list[str], capsys) -> tuple[int, str, str]:
    from spo_cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@needs_sandbox
def test_cli_judge_with_tests_file(tmp_path, capsys):
    prog = tmp_path / "add.py"
    prog.write_text("a, b = map(int, input().split())\nprint(a + b)\n")
    tests = tmp_path / "tests.json"
    tests.write_text('[{"input": "1 2", "output": "3"}, {"input": "5 5\\n", "output": "10\\n"}]')
    code, out, _ = _spo(["judge", str(prog), "--tests", str(tests)], capsys)
    assert code == 0 and "PASSED 2/2" in out

    tests.write_text(
        '[{"input": "2 2", "output": "5"}, {"input": "1 1", "output": "2"}, '
        '{"input": "x", "output": "1"}]'
    )
    code, out, _ = _spo(["judge", str(prog), "--tests", str(tests), "--time-limit", "1"], capsys)
    assert code == 1
    assert "FAILED (wrong_answer) 1/3" in out  # every test ran: no stop at the first failure
    assert "wrong_answer" in out and "runtime_error" in out and "ValueError" in out


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: ([str(d / "missing.py"), "--tests", str(d / "t.json")]), "not found"),
        (lambda d: ([str(d / "bin.py"), "--tests", str(d / "t.json")]), "not valid UTF-8"),
        (lambda d: ([str(d / "add.py")]), "exactly one of --tests"),
        (lambda d: ([str(d / "add.py"), "--tests", str(d / "bad.json")]), "not valid JSON"),
        (lambda d: ([str(d / "add.py"), "--tests", str(d / "shape.json")]), "item 0"),
    ],
)
def test_cli_judge_bad_input_is_one_line_exit_2(tmp_path, capsys, setup, message):
    (tmp_path / "add.py").write_text("print(1)\n")
    (tmp_path / "bin.py").write_bytes(b"print(1)\n\xff\xfe\n")
    (tmp_path / "t.json").write_text('[{"input": "", "output": "1"}]')
    (tmp_path / "bad.json").write_text("[{")
    (tmp_path / "shape.json").write_text('[{"input": 1, "output": "1"}]')
    code, _, err = _spo(["judge", *setup(tmp_path)], capsys)
    assert code == 2
    assert message in err and err.strip().count("\n") == 0


@needs_sandbox
def test_the_driver_starts_from_its_source_when_it_cannot_be_compiled_ahead(monkeypatch):
    """The driver's code goes to the sandbox's stdin (a few-line `-c` bootstrap reads it):
    marshalled bytecode, or its source where compiling it ahead with the sandbox's Python fails
    (a fault the real interpreter does not produce, hence the stand-in)."""
    real = subprocess.run

    def no_ahead_compile(argv, *args, **kwargs):
        if "marshal" in " ".join(map(str, argv)):
            raise subprocess.SubprocessError("compile refused")
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", no_ahead_compile)
    monkeypatch.setattr(sandbox, "_driver_cache", {})
    monkeypatch.setenv("SPO_JUDGE_WARM", "0")  # a new sandbox, started with the new bootstrap
    boot, code = sandbox._driver_boot(sandbox.PYTHON)
    assert code == sandbox._DRIVER_SOURCE.encode() and "compile(b" in boot and len(boot) < 400
    assert run_program("print(input() * 2)", "ab\n").stdout == "abab\n"
    assert run_program("print(input() * 2)", "ab\n", unsafe_no_sandbox=True).stdout == "abab\n"
