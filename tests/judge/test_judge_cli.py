"""`spo judge FILE --problem NAME`: the training judge's judgement from the command line."""

from __future__ import annotations

import json

import pytest

from spo_store.lake import Lake
from tests.conftest import needs_sandbox
from tests.judge.test_judge_call_based import CODEWARS, LEETCODE
from tests.judge.test_judge_checker import C1256, C1256_CHECKER
from tests.judge.test_judge_floats import D1045, sample_row

pytestmark = needs_sandbox


def _spo(argv: list[str], capsys) -> tuple[int, str, str]:
    from spo_cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _tests(pairs) -> dict:
    return {
        "input": [json.dumps(a) for a, _ in pairs],
        "output": [json.dumps(o) for _, o in pairs],
    }


@pytest.fixture
def lake_dir(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    d1045 = sample_row("1045_D. Interstellar battle")  # no tolerance stored
    c1256 = sample_row("1256_C. Platforms Jumping", checker=C1256_CHECKER)
    rows = [
        {k: v for k, v in r.items() if k != "memory_limit_mb"} | {"source_dataset": "jsonl"}
        for r in (d1045, c1256)
    ]
    rows += [
        {
            "problem_id": "cw",
            "name": "persistence",
            "fn_name": "persistence",
            "private_tests": _tests([([39], 3), ([4], 0), ([999], 4)]),
        },
        {
            "problem_id": "lc",
            "name": "two-sum",
            "fn_name": "twoSum",
            "public_tests": _tests([([[2, 7, 11, 15], 9], [0, 1])]),
            "private_tests": _tests([([[3, 2, 4], 6], [1, 2])]),
        },
        {"problem_id": "empty", "name": "no-tests"},
    ]
    lake.insert_new("problems", rows)
    return tmp_path / "lake"


def _judge(tmp_path, capsys, lake_dir, source: str, *args: str) -> tuple[int, str, str]:
    prog = tmp_path / "prog.py"
    prog.write_text(source)
    return _spo(["judge", str(prog), "--lake", str(lake_dir), *args], capsys)


def test_call_based_problem_passes_with_one_line(tmp_path, capsys, lake_dir):
    code, out, _ = _judge(tmp_path, capsys, lake_dir, CODEWARS, "--problem", "persistence")
    assert code == 0
    assert out.strip().count("\n") == 0  # one summary line, no table
    assert out.startswith("PASSED 3/3 tests") and "calls persistence()" in out
    code, out, _ = _judge(tmp_path, capsys, lake_dir, LEETCODE, "--problem", "two-sum", "-v")
    assert code == 0 and "PASSED 2/2" in out and "returned" in out  # --verbose: the rows too


def test_call_based_failure_shows_rows_and_exits_1(tmp_path, capsys, lake_dir):
    wrong = CODEWARS.replace("steps += 1", "steps += 2")
    code, out, _ = _judge(tmp_path, capsys, lake_dir, wrong, "--problem", "persistence")
    assert code == 1 and "FAILED (wrong_answer) 1/3" in out and "wrong_answer" in out


def test_checker_problem(tmp_path, capsys, lake_dir):
    name = "1256_C. Platforms Jumping"
    code, out, _ = _judge(tmp_path, capsys, lake_dir, C1256, "--problem", name)
    assert code == 0 and "PASSED 138/138" in out and "checker" in out
    wrong = C1256.replace("if pos + d < n + 1:", "if pos + d < n:")
    code, out, _ = _judge(tmp_path, capsys, lake_dir, wrong, "--problem", name)
    assert code == 1 and "FAILED (wrong_answer)" in out and "jump longer" in out


def test_float_tolerance_flag_overrides_the_problem(tmp_path, capsys, lake_dir):
    name = "1045_D. Interstellar battle"
    code, out, _ = _judge(tmp_path, capsys, lake_dir, D1045, "--problem", name)
    assert code == 1 and "FAILED (wrong_answer) 0/71" in out  # the row stores no tolerance
    code, out, _ = _judge(
        tmp_path, capsys, lake_dir, D1045, "--problem", name, "--float-tolerance", "1e-4"
    )
    assert code == 0 and "PASSED 71/71" in out and "float tolerance 0.0001 (user)" in out


@pytest.mark.parametrize("value", ["-1e-6", "nan", "inf"])
def test_bad_float_tolerance_is_one_line_exit_2(tmp_path, capsys, lake_dir, value):
    code, out, err = _judge(
        tmp_path,
        capsys,
        lake_dir,
        CODEWARS,
        "--problem",
        "persistence",
        f"--float-tolerance={value}",
    )
    assert code == 2 and "--float-tolerance must be finite and >= 0" in err
    assert err.strip().count("\n") == 0


def test_problem_without_tests_is_one_line_exit_2(tmp_path, capsys, lake_dir):
    code, _, err = _judge(tmp_path, capsys, lake_dir, "print(1)", "--problem", "no-tests")
    assert code == 2 and "has no tests" in err and err.strip().count("\n") == 0


def test_tests_file_with_fn_name_and_checker(tmp_path, capsys):
    prog = tmp_path / "p.py"
    prog.write_text(CODEWARS)
    tests = tmp_path / "t.json"
    tests.write_text(
        json.dumps([{"input": "[39]", "output": "3"}, {"input": "[4]", "output": "0"}])
    )
    code, out, _ = _spo(["judge", str(prog), "--tests", str(tests)], capsys)
    assert code == 1  # a stdin program that prints nothing
    code, out, _ = _spo(
        ["judge", str(prog), "--tests", str(tests), "--fn-name", "persistence"], capsys
    )
    assert code == 0 and "PASSED 2/2" in out
    code, _, err = _spo(["judge", str(prog), "--tests", str(tests), "--fn-name", "a-b"], capsys)
    assert code == 2 and "not a Python identifier" in err

    # Any permutation of the expected tokens is accepted by this checker.
    checker = tmp_path / "checker.py"
    checker.write_text(
        "import sys\n"
        "out, ans = (sorted(open(p).read().split()) for p in sys.argv[2:4])\n"
        "sys.exit(0 if out == ans else 1)\n"
    )
    prog.write_text("print(*reversed(input().split()))\n")
    tests.write_text(json.dumps([{"input": "1 2 3", "output": "1 2 3"}]))
    code, out, _ = _spo(["judge", str(prog), "--tests", str(tests)], capsys)
    assert code == 1
    code, out, _ = _spo(
        ["judge", str(prog), "--tests", str(tests), "--checker", str(checker)], capsys
    )
    assert code == 0 and "PASSED 1/1" in out and "checker" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"input": "1", "output": "1\\ud800"}]', "item 0 'output': a lone surrogate \\ud800"),
        ('[{"input": "\\udfff", "output": "1"}]', "item 0 'input': a lone surrogate \\udfff"),
        ("[" * 50000 + "]" * 50000, "is not valid JSON (nested too deeply)"),
    ],
    ids=["surrogate output", "surrogate input", "deep nesting"],
)
def test_a_tests_file_that_is_no_text_is_one_line_exit_2(tmp_path, capsys, text, message):
    # Before: a lone surrogate in an expected output crashed printing the table ("internal
    # error"); deep nesting was a RecursionError.
    prog = tmp_path / "p.py"
    prog.write_text("print(input())\n")
    tests = tmp_path / "t.json"
    tests.write_text(text)
    code, _, err = _spo(["judge", str(prog), "--tests", str(tests)], capsys)
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
