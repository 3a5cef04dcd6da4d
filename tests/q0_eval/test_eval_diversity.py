"""`spo eval --json` gains a `diversity` object (issue 22, item 3): distinct correct programs
after normalisation, the embedded generator's solution styles, the slope of log pass@k in
log k."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from spo_train.diversity import (
    STYLES,
    diversity,
    diversity_line,
    embedded_style,
    mean_curve_slope,
    normalise_program,
    pass_at_k_slope,
    slope_ks,
)
from spo_train.embedded.generator import DEFAULT_SIZES, generate_problems
from spo_train.metrics import pass_at_k
from tests.conftest import needs_sandbox

SUM = """\
import sys
data = sys.stdin.read().split()
n = int(data[0])
a = [int(v) for v in data[1:n + 1]]
print(sum(a))
"""

# SUM with other names, comments, a docstring, other quotes, layout and redundant parentheses
SUM_RENAMED = '''\
"""Sum the numbers."""
import sys

# read everything at once
tokens   =   sys.stdin.read().split()  # all tokens
count = int( tokens[0] )
values = [int(t) for t in tokens[1:(count + 1)]]
print(sum(values))
'''

# the same task by another algorithm: an explicit loop
SUM_LOOP = """\
import sys
data = sys.stdin.read().split()
n = int(data[0])
total = 0
for v in data[1:n + 1]:
    total += int(v)
print(total)
"""


# ----------------------------------------------------------------------------- normalisation
def test_renamed_commented_reformatted_programs_are_one_program():
    assert normalise_program(SUM) == normalise_program(SUM_RENAMED)
    assert normalise_program(SUM) != normalise_program(SUM_LOOP)


def test_names_the_program_does_not_bind_and_constants_are_kept():
    # builtins, modules, attributes and constants are the program's meaning, not its naming
    assert normalise_program(SUM) != normalise_program(SUM.replace("sum(a)", "max(a)"))
    assert normalise_program("a = [1]\na.sort()\n") != normalise_program("a = [1]\na.reverse()\n")
    assert normalise_program(SUM) != normalise_program(SUM.replace("n + 1", "n + 2"))
    # a function and its parameters are the program's own names
    f = "def main(xs):\n    return len(xs)\nprint(main([1]))\n"
    g = "def solve(items):\n    return len(items)  # n\nprint(solve([1]))\n"
    assert normalise_program(f) == normalise_program(g)
    # `global` names the same variables
    gf = "t = 0\ndef add(v):\n    global t\n    t += v\nadd(2)\nprint(t)\n"
    gg = "total = 0\ndef add(v):\n    global total\n    total += v\nadd(2)\nprint(total)\n"
    assert normalise_program(gf) == normalise_program(gg)
    # names are numbered by first use, so swapping two variables' roles is another program
    swap_a = "x = int(input())\ny = x * 2\nprint(y - x)\n"
    swap_b = "y = int(input())\nx = y * 2\nprint(x - y)\n"
    other = "x = int(input())\ny = x * 2\nprint(x - y)\n"
    assert normalise_program(swap_a) == normalise_program(swap_b) != normalise_program(other)


def test_names_a_match_pattern_captures_are_the_program_s_own():
    a = (
        "x = input().split()\nmatch x:\n    case [first, *rest]:\n        print(first, rest)\n"
        "    case {'k': val, **others}:\n        print(val, others)\n"
        "    case [_] as whole:\n        print(whole)\n"
    )
    b = a
    for old, new in (("first", "h"), ("rest", "t"), ("val", "v"), ("others", "o"), ("whole", "w")):
        b = b.replace(old, new)
    assert normalise_program(a) == normalise_program(b)
    assert "v4" in normalise_program(a) and "whole" not in normalise_program(a)
    assert normalise_program(a) != normalise_program(a.replace("print(val, others)", "print(val)"))


def test_code_that_does_not_parse_falls_back_to_its_whitespace_normalised_text():
    broken = "def f(:\n    return  1\n"
    key = normalise_program(broken)
    assert key == "unparsed:def f(: return 1"
    assert normalise_program("def f(:   return 1") == key
    assert normalise_program("def g(: return 1") != key
    # nesting beyond the parser's limits is handled the same way, without raising
    deep = "x = " + "(" * 5000 + "1" + ")" * 5000
    assert normalise_program(deep).startswith("unparsed:")
    assert normalise_program("") == normalise_program("# only a comment\n") == ""


def test_a_program_with_a_byte_order_mark_is_read_as_python_runs_it(tmp_path):
    # Python drops a leading BOM from a source file, so such a program passes the judge: it is
    # the same program as without the mark, in the same style (ast.parse of the text refuses
    # U+FEFF, which made it "unparsed" and unrecognised)
    code = "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a))\n"
    src = tmp_path / "bom.py"
    src.write_text("\ufeff" + code, encoding="utf-8")
    ran = subprocess.run(
        [sys.executable, str(src)], input="2\n3 4\n", capture_output=True, text=True
    )
    assert ran.stdout == "7\n"
    assert normalise_program("\ufeff" + code) == normalise_program(code)
    assert embedded_style("\ufeff" + code) == embedded_style(code) == "functional"


def test_a_program_that_warns_when_parsed_is_read_without_a_warning(recwarn):
    # an invalid escape: a DeprecationWarning (3.11) or SyntaxWarning (3.12+) from the parser
    code = 'import re\nprint(re.findall("\\d+", input()))\n'
    assert "\\d" in code
    assert not normalise_program(code).startswith("unparsed:")
    assert embedded_style(code) == "loop"
    with pytest.warns((DeprecationWarning, SyntaxWarning)):
        compile(code, "<sample>", "exec")  # the warning this test is about exists
    recwarn.clear()
    normalise_program(code), embedded_style(code)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning | SyntaxWarning)]


# ----------------------------------------------------------------------------- styles
def test_every_reference_solution_of_the_generator_is_recognised_as_its_style():
    """The shipped problems (seed 0; the first 500 of train, all of valid and test): 3-4 correct
    solutions per problem, each labelled with the style it was written in, and the incorrect
    ones (`bug/style`)."""
    seen = {s: 0 for s in STYLES}
    checked = 0
    sizes = {**DEFAULT_SIZES, "train": 500}  # the rest of train is the same templates
    for problems in generate_problems(0, sizes).values():
        for p in problems:
            for style, code in p.solutions:
                assert embedded_style(code) == style, (p.name, style, code)
                seen[style] += 1
            for label, code in p.incorrect_solutions:
                assert embedded_style(code) == label.rsplit("/", 1)[1], (p.name, label, code)
                checked += 1
    assert min(seen.values()) > 200 and checked > 1000, (seen, checked)


def test_the_shipped_problem_files_solutions_each_have_their_own_style():
    """The Parquet files `spo` loads (no style labels there): each problem's correct solutions
    are recognised as distinct styles, and its programs are distinct after normalisation."""
    from spo_train.embedded.defaults import ASSETS

    problems = 0
    for split in ("train", "valid", "test"):
        table = pq.read_table(ASSETS / "problems" / f"{split}.parquet", columns=["solutions"])
        for row in table.column("solutions").to_pylist():
            codes = row["solution"]
            styles = [embedded_style(code) for code in codes]
            assert None not in styles and len(set(styles)) == len(codes) >= 3, styles
            assert len({normalise_program(code) for code in codes}) == len(codes)
            problems += 1
    assert problems == sum(DEFAULT_SIZES.values())


def test_programs_outside_the_four_readings_have_no_style():
    assert embedded_style("print(42)\n") is None
    assert embedded_style("def f(:\n") is None
    assert embedded_style("a = list(map(int, open(0).read().split()))\nprint(sum(a))\n") is None
    # the reading decides: a loop reading with a functional body is labelled loop
    mixed = "n = int(input())\na = input().split()\nprint(sum(map(lambda v: int(v), a)))\n"
    assert embedded_style(mixed) == "loop"


# ----------------------------------------------------------------------------- slope
def test_slope_of_log_pass_at_k_on_hand_made_counts():
    assert slope_ks(20) == [1, 2, 4, 8, 16] and slope_ks(16) == [1, 2, 4, 8, 16]
    assert slope_ks(1) == [1] and slope_ks(0) == []
    # one correct in 8: pass@k = k/8 exactly, a straight line of slope 1 in log-log
    assert pass_at_k_slope(8, 1) == pytest.approx(1.0)
    # every sample correct: pass@k = 1 for every k, slope 0
    assert pass_at_k_slope(8, 8) == pytest.approx(0.0)
    # 2 of 4: pass@1 = 1/2, pass@2 = 1 - 1/6 = 5/6, pass@4 = 1; least squares by hand
    x = [0.0, math.log(2), math.log(4)]
    y = [math.log(0.5), math.log(5 / 6), 0.0]
    mx, my = sum(x) / 3, sum(y) / 3
    want = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x
    )
    assert pass_at_k_slope(4, 2) == pytest.approx(want)
    assert 0 < want < 1
    # the slope of the unbiased estimator on a real-looking count (20 samples, 3 correct)
    ks = [1, 2, 4, 8, 16]
    fit = np.polyfit(np.log(ks), np.log([pass_at_k(20, 3, k) for k in ks]), 1)[0]
    assert pass_at_k_slope(20, 3) == pytest.approx(fit)
    # no correct sample: log 0 is undefined; one sample: one k, no slope
    assert pass_at_k_slope(8, 0) is None and pass_at_k_slope(1, 1) is None


def test_slope_of_the_mean_pass_at_k_curve_counts_unsolved_problems():
    # one correct in 4 and an unsolved problem: mean pass@k = (k/4 + 0)/2 = k/8, slope 1
    assert mean_curve_slope([(4, 1), (4, 0)]) == (pytest.approx(1.0), 2)
    # one problem always solved, one never: mean pass@k = 1/2 for every k, slope 0
    assert mean_curve_slope([(4, 4), (4, 0)]) == (pytest.approx(0.0), 2)
    # a problem with fewer judged samples than the largest k is not in the curve
    slope, count = mean_curve_slope([(4, 2), (4, 0), (2, 2)])
    assert count == 2 and slope == pytest.approx(pass_at_k_slope(4, 2))
    assert mean_curve_slope([(4, 0), (4, 0)]) == (None, 2)
    assert mean_curve_slope([(1, 1)]) == (None, 1) and mean_curve_slope([]) == (None, 0)


# ----------------------------------------------------------------------------- the object
def test_diversity_aggregates_over_problems_with_a_correct_sample():
    loop = "n = int(input())\nrow = input().split()\nprint(len(row))\n"
    loop_renamed = "k = int(input())\nparts = input().split()  # all\nprint(len(parts))\n"
    problems = [
        {"problem_id": "a", "source_dataset": "embedded"},
        {"problem_id": "b", "source_dataset": "code_contests"},
        {"problem_id": "c", "source_dataset": "embedded"},
        {"problem_id": "d", "source_dataset": "embedded"},
    ]
    programs = {"a": [loop, loop_renamed, SUM], "b": [SUM], "d": ["print(1)\n"]}
    judged = {"a": 4, "b": 4, "c": 4, "d": 2}
    div = diversity(problems, programs, judged, temperature=1.0, top_p=1.0)
    assert div["problems"] == 3
    a, b, d = div["by_problem"]["a"], div["by_problem"]["b"], div["by_problem"]["d"]
    assert "c" not in div["by_problem"]
    assert (a["correct"], a["distinct_programs"], a["styles"]) == (3, 2, 2)
    assert a["style_counts"] == {"loop": 2, "comprehension": 1}
    assert b["styles"] is None and b["style_counts"] is None  # not the generator's problem
    assert d["styles"] == 0 and d["style_counts"] == {"unrecognised": 1}
    assert div["distinct_programs"] == pytest.approx((2 + 1 + 1) / 3)
    assert div["distinct_fraction"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert div["styles"] == pytest.approx((2 + 0) / 2) and div["style_problems"] == 2
    assert div["style_shares"] == pytest.approx(
        {"loop": 0.5, "comprehension": 0.25, "unrecognised": 0.25}
    )
    assert a["log_pass_at_k_slope"] == pytest.approx(pass_at_k_slope(4, 3))
    assert d["log_pass_at_k_slope"] == pytest.approx(pass_at_k_slope(2, 1))
    assert div["slope_problems"] == 3 and div["slope_k"] == [1, 2, 4]
    # the curve: a, b and the unsolved c (d has 2 judged samples, fewer than k = 4)
    assert div["curve_problems"] == 3
    assert div["log_mean_pass_at_k_slope"] == pytest.approx(
        mean_curve_slope([(4, 3), (4, 1), (4, 0)])[0]
    )
    assert div["log_pass_at_k_slope"] == pytest.approx(
        np.mean([pass_at_k_slope(4, 3), pass_at_k_slope(4, 1), pass_at_k_slope(2, 1)])
    )
    line = diversity_line(div)
    assert line.startswith("diversity (T=1, top-p 1, 3 solved problems): 1.33 distinct"), line
    assert "1.00 styles" in line and len(line) < 160

    # n = 1 (`spo eval --n 1`): one k, no slope; the line leaves it out
    one = diversity([{"problem_id": "a"}], {"a": [SUM]}, {"a": 1}, temperature=0.4, top_p=0.95)
    assert one["slope_k"] == [1] and one["slope_problems"] == 0
    assert one["log_pass_at_k_slope"] is None and one["log_mean_pass_at_k_slope"] is None
    assert one["styles"] is None and one["style_problems"] == 0  # no source_dataset
    assert diversity_line(one) == (
        "diversity (T=0.4, top-p 0.95, 1 solved problems): 1.00 distinct correct programs "
        "(1.00 of correct)"
    )

    empty = diversity(problems, {}, judged, temperature=(0.2, 1.0), top_p=0.95)
    assert empty["problems"] == 0 and empty["distinct_programs"] is None
    assert empty["styles"] is None and empty["style_shares"] is None
    assert empty["temperature"] == [0.2, 1.0]
    assert diversity_line(empty) == (
        "diversity (T=0.2-1, top-p 0.95): no problem has a correct sample"
    )


# ----------------------------------------------------------------------------- spo eval
@needs_sandbox
def test_spo_eval_json_has_the_diversity_object(tmp_path):
    """A real `spo eval --json` on the embedded default (its pi_0 and problems)."""
    easy = "p.split = 'train' AND p.difficulty::INT <= 2"  # at most one step before the final
    argv = ["spo", "eval", "--lake", str(tmp_path / "lake"), "--where", easy, "--limit", "4"]
    argv += ["--n", "8", "--k", "1,8", "--temperature", "1", "--top-p", "1", "--json"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("pass@1", "pass@8", "problems", "samples", "correct", "correct_by_problem"):
        assert key in out  # the keys that were there before are still there
    div = out["diversity"]
    assert (div["temperature"], div["top_p"]) == (1.0, 1.0)
    solved = {pid: c for pid, c in out["correct_by_problem"].items() if c}
    # pi_0 solves most of these easy problems at T=1 (the draw is seeded), in several styles
    assert len(solved) >= 2, out
    assert div["problems"] == len(solved) == len(div["by_problem"])
    assert div["slope_k"] == [1, 2, 4, 8] and div["slope_problems"] == len(solved)
    assert div["curve_problems"] == 4 and 0 <= div["log_mean_pass_at_k_slope"] <= 1 + 1e-9
    assert div["style_problems"] == len(solved)  # every embedded problem has styles
    for pid, row in div["by_problem"].items():
        assert row["correct"] == solved[pid]
        assert 1 <= row["distinct_programs"] <= row["correct"]
        assert 1 <= row["styles"] <= 4
        assert sum(row["style_counts"].values()) == row["correct"]
        assert 0 <= row["log_pass_at_k_slope"] <= 1 + 1e-9
    assert max(row["styles"] for row in div["by_problem"].values()) >= 2, div
    assert 0 < div["distinct_fraction"] <= 1
    assert sum(div["style_shares"].values()) == pytest.approx(1.0)
    err = " ".join(r.stderr.split())
    assert f"diversity (T=1, top-p 1, {len(solved)} solved problems): " in err
    # The scalars are metrics too (the stability curves plot them against step).
    from spo_store.lake import Lake

    logged = {
        r["name"]: r["value"]
        for r in Lake.open(tmp_path / "lake")
        .sql_arrow("SELECT name, value FROM metrics WHERE name LIKE 'eval%/diversity/%'")
        .to_pylist()
    }
    tag = next(iter(logged)).rsplit("/diversity/", 1)[0] if logged else "eval"
    for name in ("distinct_programs", "distinct_fraction", "styles", "log_pass_at_k_slope"):
        assert logged[f"{tag}/diversity/{name}"] == pytest.approx(div[name]), name
