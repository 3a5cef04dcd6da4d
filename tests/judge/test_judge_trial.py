"""New-user trial findings on `spo judge` and `judge_batch` (through the CLI where a CLI one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from spo_store.lake import Lake
from spo_train.judge import JudgeJob, judge_batch
from tests.conftest import needs_sandbox
from tests.judge.test_judge_call_based import CODEWARS

pytestmark = needs_sandbox


def _spo(argv: list[str], capsys) -> tuple[int, str, str]:
    from spo_cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _files(tmp_path, source: str, tests: list) -> tuple[str, str]:
    prog, tfile = tmp_path / "prog.py", tmp_path / "tests.json"
    prog.write_text(source)
    tfile.write_text(json.dumps(tests))
    return str(prog), str(tfile)


def test_tests_file_uses_the_default_tolerance_on_decimals(tmp_path, capsys):
    prog, tests = _files(tmp_path, "print(1.6804)", [{"input": "", "output": "1.68040\n"}])
    code, out, _ = _spo(["judge", prog, "--tests", tests], capsys)
    assert code == 0, out
    assert "PASSED 1/1" in out and "float tolerance 1e-05 (default: decimals only)" in out
    # The default reaches decimals only: an integer answer stays exact.
    prog, tests = _files(tmp_path, "print(100001)", [{"input": "", "output": "100000\n"}])
    code, out, _ = _spo(["judge", prog, "--tests", tests], capsys)
    assert code == 1 and "FAILED (wrong_answer)" in out
    # --float-tolerance is the user's, on every number.
    code, out, _ = _spo(["judge", prog, "--tests", tests, "--float-tolerance", "1e-4"], capsys)
    assert code == 0 and "float tolerance 0.0001 (user)" in out


def test_problem_summary_names_exact_comparison(tmp_path, capsys):
    lake = Lake.open(tmp_path / "lake")
    tests = {"input": [""], "output": ["1.5\n"]}
    lake.insert_new("problems", [{"problem_id": "p", "name": "half", "private_tests": tests}])
    prog, _ = _files(tmp_path, "print(1.5)", [])
    code, out, _ = _spo(
        ["judge", prog, "--problem", "half", "--lake", str(tmp_path / "lake")], capsys
    )
    assert code == 0 and "numbers compared exactly (no float tolerance)" in out


def _flagged_lake(tmp_path) -> str:
    lake = Lake.open(tmp_path / "lake")
    row = {
        "problem_id": "div",
        "name": "any divisor",
        "private_tests": {"input": ["6\n"], "output": ["2\n"]},
        "judge_issue": "multiple_answers: statement says 'print any of them'",
    }
    lake.insert_new("problems", [row])
    return str(tmp_path / "lake")


def test_flagged_problem_warns_before_the_summary(tmp_path, capsys):
    lake = _flagged_lake(tmp_path)
    prog, _ = _files(tmp_path, "print(3)", [])  # a correct, different answer
    code, out, _ = _spo(["judge", prog, "--problem", "any divisor", "--lake", lake], capsys)
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.strip()]
    warning = (
        "warning: this problem is flagged multiple_answers (statement says 'print any of them'): "
        "its tests check one answer; add a checker (--checker)"
    )
    assert lines[-2] == warning and lines[-1].startswith("FAILED (wrong_answer)")
    checker = tmp_path / "chk.py"
    checker.write_text(
        "import sys\nn = int(open(sys.argv[1]).read())\n"
        "d = int(open(sys.argv[2]).read())\nsys.exit(0 if 1 < d < n and n % d == 0 else 1)\n"
    )
    code, out, _ = _spo(
        ["judge", prog, "--problem", "any divisor", "--lake", lake, "--checker", str(checker)],
        capsys,
    )
    assert code == 0 and "warning" not in out


def test_tests_file_with_fn_name_accepts_json_values(tmp_path, capsys):
    prog, tests = _files(
        tmp_path, CODEWARS, [{"input": [39], "output": 3}, {"input": [4], "output": 0}]
    )
    code, out, _ = _spo(["judge", prog, "--tests", tests, "--fn-name", "persistence"], capsys)
    assert code == 0 and "PASSED 2/2" in out
    code, _, err = _spo(["judge", prog, "--tests", tests], capsys)  # no --fn-name: say so
    assert code == 2 and "JSON values need --fn-name" in err


def test_broken_checker_is_named_the_checker(tmp_path, capsys):
    prog, tests = _files(tmp_path, "print(1)", [{"input": "", "output": "1\n"}])
    checker = tmp_path / "chk.py"
    checker.write_text("def broken(:\n")
    code, out, _ = _spo(["judge", prog, "--tests", tests, "--checker", str(checker)], capsys)
    assert code == 1 and "NOT JUDGED" in out
    assert 'File "checker.py", line 1' in out and "solution.py" not in out


def test_judge_batch_interrupt_cancels_queued_jobs():
    jobs = [JudgeJob("import time\ntime.sleep(1)\nprint(1)", [("", "1")]) for _ in range(10)]

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        judge_batch(jobs, workers=1, progress=interrupt)
    # Without cancelling, the pool judges all 10 (> 10 s) before the interrupt propagates.
    assert time.monotonic() - start < 6


def test_default_workers_follow_cpu_affinity():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to tell affinity from cpu_count")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from spo_train.judge import default_workers; print(default_workers())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_real_1256_c_flagged_multiple_answers_warns(tmp_path, capsys):
    """The trial's example: 1256_C without its checker fails a valid different answer."""
    from tests.judge.test_judge_checker import C1256
    from tests.judge.test_judge_floats import sample_row

    row = sample_row(
        "1256_C. Platforms Jumping",
        judge_issue="multiple_answers: statement says 'If there are multiple answers, print any'",
        source_dataset="jsonl",
    )
    Lake.open(tmp_path / "lake").insert_new("problems", [row])
    prog, _ = _files(tmp_path, C1256, [])
    code, out, _ = _spo(
        ["judge", prog, "--problem", "1256_C. Platforms Jumping", "--lake", str(tmp_path / "lake")],
        capsys,
    )
    assert code == 1
    assert "warning: this problem is flagged multiple_answers" in out
    assert "its tests check one answer; add a checker (--checker)" in out
