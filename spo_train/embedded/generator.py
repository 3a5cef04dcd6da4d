"""Procedural stdin/stdout problems for the embedded default, in the CodeContests Parquet schema.

Every problem reads a list of integers and composes a small vocabulary of operations:
0-3 *transforms* (filters, element-wise maps, one optional reordering) followed by one *final*
step (an aggregate or an output format). Everything is a pure function of a seed:

- the statement (English, with Input / Output / Example sections),
- public tests (the example) and at least 10 hidden tests (edge cases: empty list, single
  element, values on the filters' thresholds, everything filtered out, all negative, long lists),
- several distinct correct Python 3 solutions (``loop``, ``comprehension``, ``functional`` and,
  where the composition allows it, a fused single-pass ``pipeline``),
- 2-3 incorrect solutions with plausible bugs (off-by-one comparison, flipped comparison,
  a forgotten step, an off-by-one read, a missing empty-list guard, a forgotten modulus,
  a wrong output format).

Expected outputs come from a reference interpreter (:func:`evaluate`), and each incorrect
solution's *intended* output comes from the same interpreter with the bug applied, so that
every bug provably changes the output of at least one test (a test that exposes it is added
when the random ones do not). ``spo_train.embedded.build`` then runs every solution's code on
every test to check that the code does what the interpreter says.

Held-out-ness: a problem's *composition* is the sequence of operation kinds without constants
(``("keep_gt", "mul", "sum")``). Compositions of depth 2-3 are assigned to the train, valid or
test pool by a seeded hash, so valid and test compositions never occur in train. Constants are
drawn from the same small sets in every split (new constants are a copying problem, not a
reasoning one, and RL cannot fix them).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------------------------
# The vocabulary
# ---------------------------------------------------------------------------------------------

THRESHOLDS = (-5, 0, 1, 3, 5, 10)  # keep_gt / keep_lt
ADDENDS = (1, 2, 3, 5, 10)  # add
FACTORS = (2, 3, 4, 5, 10)  # mul
DIVISORS = (3, 4, 5, 7, 10)  # keep_div / mod
PRODUCT_MODULI = (7, 11, 100, 1000)  # prod_mod

FILTERS = ("keep_even", "keep_odd", "keep_gt", "keep_lt", "keep_div")
MAPS = ("add", "mul", "square", "abs", "negate", "mod")
ORDERS = ("sort_asc", "sort_desc", "reverse")
AGGREGATES = ("sum", "max", "min", "count", "prod_mod")
LIST_OUTPUTS = ("list_space", "list_lines", "count_list")
FINALS = AGGREGATES + LIST_OUTPUTS
TRANSFORMS = FILTERS + MAPS + ORDERS
MAX_DEPTH = 3

CONSTANTS: dict[str, tuple[int, ...]] = {
    "keep_gt": THRESHOLDS,
    "keep_lt": THRESHOLDS,
    "keep_div": DIVISORS,
    "add": ADDENDS,
    "mul": FACTORS,
    "mod": DIVISORS,
    "prod_mod": PRODUCT_MODULI,
}

STYLES = ("loop", "comprehension", "functional", "pipeline")

N_MAX = 100
VALUE_MAX = 100
TIME_LIMIT_S = 2
MEMORY_LIMIT_BYTES = 256_000_000
LANGUAGE_PYTHON3 = 3  # CodeContests' language code for Python 3
SOURCE_UNKNOWN = 0  # CodeContests' source enum: 0 = UNKNOWN_SOURCE
DEFAULT_SIZES = {"train": 2000, "valid": 100, "test": 200}
# Share of the depth-2/3 compositions held out for each split (the rest may appear in train).
HELD_OUT_SHARE = {"test": 0.10, "valid": 0.05}
TRAIN_DEPTH_WEIGHTS = (0.08, 0.22, 0.35, 0.35)  # depths 0, 1, 2, 3
HELD_OUT_DEPTH_WEIGHTS = (0.0, 0.0, 0.4, 0.6)


@dataclass(frozen=True)
class Op:
    """One step: ``kind`` from the vocabulary (or an internal buggy kind), ``arg`` its constant."""

    kind: str
    arg: int | None = None


@dataclass(frozen=True)
class Bug:
    """A plausible mistake: ``kind`` names it, ``index`` the transform it touches (if any)."""

    kind: str
    index: int | None = None

    def label(self) -> str:
        return self.kind if self.index is None else f"{self.kind}@{self.index}"


@dataclass
class Problem:
    name: str
    split: str
    statement: str
    transforms: tuple[Op, ...]
    final: Op
    public_tests: list[tuple[str, str]]
    private_tests: list[tuple[str, str]]
    solutions: list[tuple[str, str]] = field(default_factory=list)  # (style, code)
    incorrect_solutions: list[tuple[str, str]] = field(default_factory=list)  # (bug label, code)
    bugs: list[Bug] = field(default_factory=list)  # the bug of each incorrect solution

    @property
    def composition(self) -> tuple[str, ...]:
        return composition_of(self.transforms, self.final)

    @property
    def depth(self) -> int:
        return len(self.transforms)


def composition_of(transforms: Sequence[Op], final: Op) -> tuple[str, ...]:
    return tuple(op.kind for op in transforms) + (final.kind,)


# ---------------------------------------------------------------------------------------------
# Compositions and the held-out split
# ---------------------------------------------------------------------------------------------


def _valid_composition(kinds: tuple[str, ...]) -> bool:
    *transforms, final = kinds
    orders = [k for k in transforms if k in ORDERS]
    if orders and final not in LIST_OUTPUTS:
        return False  # reordering before an order-free aggregate is meaningless
    if len(orders) > 1:
        return False
    if any(a == b for a, b in itertools.pairwise(transforms)):
        return False
    if "keep_even" in transforms and "keep_odd" in transforms:
        return False
    return True


def all_compositions(max_depth: int = MAX_DEPTH) -> list[tuple[str, ...]]:
    """Every valid composition (transform kinds + final kind), sorted by depth then name."""
    out = []
    for depth in range(max_depth + 1):
        for transforms in itertools.product(TRANSFORMS, repeat=depth):
            for final in FINALS:
                kinds = (*transforms, final)
                if _valid_composition(kinds):
                    out.append(kinds)
    return out


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def composition_pools(seed: int) -> dict[str, list[tuple[str, ...]]]:
    """Partition the compositions into train / valid / test pools (valid, test: depth 2-3 only)."""
    pools: dict[str, list[tuple[str, ...]]] = {"train": [], "valid": [], "test": []}
    test_cut = HELD_OUT_SHARE["test"]
    valid_cut = test_cut + HELD_OUT_SHARE["valid"]
    for kinds in all_compositions():
        u = _unit_hash("composition-pool", seed, "|".join(kinds))
        if len(kinds) - 1 >= 2 and u < test_cut:
            pools["test"].append(kinds)
        elif len(kinds) - 1 >= 2 and u < valid_cut:
            pools["valid"].append(kinds)
        else:
            pools["train"].append(kinds)
    return pools


# ---------------------------------------------------------------------------------------------
# Reference semantics (also of the bugs)
# ---------------------------------------------------------------------------------------------


def _apply_transform(op: Op, xs: list[int]) -> list[int]:
    k, a = op.kind, op.arg
    if k == "keep_even":
        return [x for x in xs if x % 2 == 0]
    if k == "keep_odd":
        return [x for x in xs if x % 2 == 1]
    if k == "keep_gt":
        return [x for x in xs if x > a]
    if k == "keep_lt":
        return [x for x in xs if x < a]
    if k == "keep_ge":  # bug: off-by-one of keep_gt
        return [x for x in xs if x >= a]
    if k == "keep_le":  # bug: off-by-one of keep_lt
        return [x for x in xs if x <= a]
    if k == "keep_div":
        return [x for x in xs if x % a == 0]
    if k == "keep_notdiv":  # bug: flipped keep_div
        return [x for x in xs if x % a != 0]
    if k == "add":
        return [x + a for x in xs]
    if k == "mul":
        return [x * a for x in xs]
    if k == "square":
        return [x * x for x in xs]
    if k == "double":  # bug: x * 2 instead of x ** 2
        return [x * 2 for x in xs]
    if k == "abs":
        return [abs(x) for x in xs]
    if k == "negate":
        return [-x for x in xs]
    if k == "mod":
        return [x % a for x in xs]
    if k == "sort_asc":
        return sorted(xs)
    if k == "sort_desc":
        return sorted(xs, reverse=True)
    if k == "reverse":
        return xs[::-1]
    raise ValueError(f"unknown transform {k!r}")


def _join(xs: Iterable[int], sep: str = " ") -> str:
    return sep.join(str(x) for x in xs)


def _apply_final(op: Op, xs: list[int], bug: Bug | None) -> str | None:
    """The program's stdout (``None``: the program crashes)."""
    kind, m = op.kind, op.arg
    bug_kind = bug.kind if bug is not None else None
    if kind == "sum":
        return f"{sum(xs)}\n"
    if kind == "count":
        return f"{len(xs)}\n"
    if kind in ("max", "min"):
        pick = max if kind == "max" else min
        if bug_kind == "init_zero":  # best = 0 instead of the first element
            best = 0
            for x in xs:
                best = pick(best, x)
            return f"{best}\n"
        if not xs:
            return None if bug_kind == "no_empty_guard" else "EMPTY\n"
        return f"{pick(xs)}\n"
    if kind == "prod_mod":
        p = 1
        for x in xs:
            p *= x
        return f"{p}\n" if bug_kind == "no_mod" else f"{p % m}\n"
    if bug_kind == "print_repr":
        return f"{xs!r}\n"
    if kind == "list_space":
        return _join(xs) + "\n"
    if kind == "list_lines":
        return "".join(f"{x}\n" for x in xs)
    if kind == "count_list":
        if bug_kind == "no_count":
            return _join(xs) + "\n"
        return f"{len(xs)}\n" + _join(xs) + "\n"
    raise ValueError(f"unknown final {kind!r}")


_OFF_BY_ONE = {"keep_gt": "keep_ge", "keep_lt": "keep_le"}
_FLIPPED = {
    "keep_gt": "keep_lt",
    "keep_lt": "keep_gt",
    "keep_even": "keep_odd",
    "keep_odd": "keep_even",
    "keep_div": "keep_notdiv",
}


def buggy_spec(transforms: Sequence[Op], bug: Bug | None) -> tuple[Op, ...]:
    """The transforms a buggy program actually applies."""
    ops = list(transforms)
    if bug is None or bug.index is None:
        return tuple(ops)
    op = ops[bug.index]
    if bug.kind == "off_by_one":
        ops[bug.index] = Op(_OFF_BY_ONE[op.kind], op.arg)
    elif bug.kind == "flipped":
        ops[bug.index] = Op(_FLIPPED[op.kind], op.arg)
    elif bug.kind == "square_as_double":
        ops[bug.index] = Op("double")
    elif bug.kind == "drop_step":
        del ops[bug.index]
    elif bug.kind == "wrong_sort_order":
        ops[bug.index] = Op("sort_desc" if op.kind == "sort_asc" else "sort_asc")
    else:
        raise ValueError(f"unknown transform bug {bug.kind!r}")
    return tuple(ops)


def evaluate(transforms: Sequence[Op], final: Op, xs: Sequence[int], bug: Bug | None = None):
    """Reference output of the composition on ``xs`` (``None`` if the buggy program crashes)."""
    xs = list(xs)
    if bug is not None and bug.kind == "skip_first":
        xs = xs[1:]
    elif bug is not None and bug.kind == "skip_last":
        xs = xs[:-1]
    for op in buggy_spec(transforms, bug):
        xs = _apply_transform(op, xs)
    return _apply_final(final, xs, bug)


def format_input(xs: Sequence[int]) -> str:
    return f"{len(xs)}\n{_join(xs)}\n"


def parse_input(text: str) -> list[int]:
    tokens = text.split()
    n = int(tokens[0])
    return [int(t) for t in tokens[1 : n + 1]]


def outputs_equal(a: str | None, b: str | None) -> bool:
    """Token-wise comparison (whitespace-insensitive), as contest judges do."""
    if a is None or b is None:
        return a is b
    return a.split() == b.split()


def applicable_bugs(transforms: Sequence[Op], final: Op) -> list[Bug]:
    bugs = [Bug("skip_first"), Bug("skip_last")]
    for i, op in enumerate(transforms):
        if op.kind in _OFF_BY_ONE:
            bugs.append(Bug("off_by_one", i))
        if op.kind in _FLIPPED:
            bugs.append(Bug("flipped", i))
        if op.kind == "square":
            bugs.append(Bug("square_as_double", i))
        if op.kind in ("sort_asc", "sort_desc"):
            bugs.append(Bug("wrong_sort_order", i))
        bugs.append(Bug("drop_step", i))
    if final.kind in ("max", "min"):
        bugs += [Bug("init_zero"), Bug("no_empty_guard")]
    if final.kind == "prod_mod":
        bugs.append(Bug("no_mod"))
    if final.kind in LIST_OUTPUTS:
        bugs.append(Bug("print_repr"))
    if final.kind == "count_list":
        bugs.append(Bug("no_count"))
    return bugs


# Which styles can express a bug naturally.
_BUG_STYLES = {
    "init_zero": ("loop", "pipeline"),
    "no_empty_guard": ("comprehension", "functional"),
    "skip_first": ("loop", "comprehension", "functional"),
    "skip_last": ("loop", "comprehension", "functional"),
}


# ---------------------------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------------------------


def _transform_sentence(op: Op) -> str:
    k, a = op.kind, op.arg
    if k == "mod":
        return (
            f"Replace every number x by x mod {a} (the remainder of x divided by {a}, "
            f"between 0 and {a - 1})."
        )
    return {
        "keep_even": "Keep only the even numbers.",
        "keep_odd": "Keep only the odd numbers.",
        "keep_gt": f"Keep only the numbers greater than {a}.",
        "keep_lt": f"Keep only the numbers less than {a}.",
        "keep_div": f"Keep only the numbers divisible by {a}.",
        "add": f"Add {a} to every number.",
        "mul": f"Multiply every number by {a}.",
        "square": "Replace every number by its square.",
        "abs": "Replace every number by its absolute value.",
        "negate": "Replace every number x by -x.",
        "sort_asc": "Sort the numbers in non-decreasing order.",
        "sort_desc": "Sort the numbers in non-increasing order.",
        "reverse": "Reverse the order of the numbers.",
    }[k]


def _final_sentence(op: Op) -> str:
    k, m = op.kind, op.arg
    if k == "prod_mod":
        return (
            f"Print the product of the numbers modulo {m} (between 0 and {m - 1}; "
            "the product of no numbers is 1)."
        )
    return {
        "sum": "Print the sum of the numbers (0 if there are none).",
        "max": "Print the largest number, or EMPTY if there are no numbers.",
        "min": "Print the smallest number, or EMPTY if there are no numbers.",
        "count": "Print how many numbers there are.",
        "list_space": (
            "Print the numbers on one line, separated by spaces (an empty line if there are none)."
        ),
        "list_lines": "Print the numbers, one per line (nothing if there are none).",
        "count_list": (
            "Print how many numbers there are on the first line, and the numbers separated "
            "by spaces on the second line."
        ),
    }[k]


def render_statement(transforms: Sequence[Op], final: Op, example: tuple[str, str]) -> str:
    parts = ["You are given a list of n integers."]
    if transforms:
        parts[0] += " Apply the following steps to it, in order:"
        parts += [f"{i}. {_transform_sentence(op)}" for i, op in enumerate(transforms, 1)]
    head = "\n".join(parts)
    after = "After the steps, p" if transforms else "P"
    output_rule = after + _final_sentence(final)[1:]
    example_in, example_out = example
    return (
        f"{head}\n\n"
        "Input\n"
        f"The first line contains an integer n (0 <= n <= {N_MAX}). The second line contains "
        f"n integers a_1, a_2, ..., a_n (-{VALUE_MAX} <= a_i <= {VALUE_MAX}), separated by "
        "spaces.\n\n"
        "Output\n"
        f"{output_rule}\n\n"
        "Example\n"
        "Input\n"
        f"{example_in}"
        "Output\n"
        f"{example_out}"
    )


# ---------------------------------------------------------------------------------------------
# Solutions: four styles, bugs rendered in place
# ---------------------------------------------------------------------------------------------


def _cond(op: Op, v: str, style: str) -> str:
    k, a = op.kind, op.arg
    if k == "keep_even":
        return f"{v} % 2 == 0"
    if k == "keep_odd":
        return f"{v} % 2 != 0" if style == "functional" else f"{v} % 2 == 1"
    return {
        "keep_gt": f"{v} > {a}",
        "keep_lt": f"{v} < {a}",
        "keep_ge": f"{v} >= {a}",
        "keep_le": f"{v} <= {a}",
        "keep_div": f"{v} % {a} == 0",
        "keep_notdiv": f"{v} % {a} != 0",
    }[k]


def _negated_cond(op: Op, v: str) -> str:
    """The condition under which the pipeline style skips an element."""
    k, a = op.kind, op.arg
    return {
        "keep_even": f"{v} % 2 != 0",
        "keep_odd": f"{v} % 2 == 0",
        "keep_gt": f"{v} <= {a}",
        "keep_lt": f"{v} >= {a}",
        "keep_ge": f"{v} < {a}",
        "keep_le": f"{v} > {a}",
        "keep_div": f"{v} % {a} != 0",
        "keep_notdiv": f"{v} % {a} == 0",
    }[k]


def _expr(op: Op, v: str, style: str) -> str:
    k, a = op.kind, op.arg
    if k == "square":
        return f"{v} ** 2" if style in ("functional", "pipeline") else f"{v} * {v}"
    if k == "abs":
        return f"{v} if {v} >= 0 else -{v}" if style == "loop" else f"abs({v})"
    return {
        "add": f"{v} + {a}",
        "mul": f"{v} * {a}",
        "double": f"{v} * 2",
        "negate": f"-{v}",
        "mod": f"{v} % {a}",
    }[k]


def _is_filter(kind: str) -> bool:
    return kind.startswith("keep_")


def _indent(lines: list[str], prefix: str = "    ") -> list[str]:
    return [prefix + line if line else line for line in lines]


class _Code:
    def __init__(self) -> None:
        self.imports: list[str] = []
        self.lines: list[str] = []

    def need(self, line: str) -> None:
        if line not in self.imports:
            self.imports.append(line)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def text(self) -> str:
        head = self.imports + ([""] if self.imports else [])
        return "\n".join(head + self.lines) + "\n"


def _read_lines(style: str, bug: Bug | None, code: _Code) -> None:
    bk = bug.kind if bug is not None else None
    if style == "loop":
        start, stop = ("1", "n") if bk == "skip_first" else ("0", "n")
        stop = "n - 1" if bk == "skip_last" else stop
        rng = f"range({stop})" if start == "0" else f"range({start}, {stop})"
        code.add(
            "n = int(input())",
            "row = input().split()",
            "a = []",
            f"for i in {rng}:",
            "    a.append(int(row[i]))",
        )
    elif style == "comprehension":
        code.need("import sys")
        lo = "2" if bk == "skip_first" else "1"
        hi = "n" if bk == "skip_last" else "n + 1"
        code.add(
            "data = sys.stdin.read().split()",
            "n = int(data[0])",
            f"a = [int(v) for v in data[{lo}:{hi}]]",
        )
    elif style == "functional":
        cut = {"skip_first": "[1:]", "skip_last": "[:-1]"}.get(bk or "", "")
        code.add("input()", f"a = list(map(int, input().split())){cut}")
    else:
        raise ValueError(style)


def _transform_lines(op: Op, style: str, code: _Code) -> None:
    k = op.kind
    if style == "loop":
        if _is_filter(k):
            code.add(
                "b = []",
                "for x in a:",
                f"    if {_cond(op, 'x', style)}:",
                "        b.append(x)",
                "a = b",
            )
        elif k in ("sort_asc", "sort_desc", "reverse"):
            code.add(
                {"sort_asc": "a.sort()", "sort_desc": "a.sort(reverse=True)"}.get(k, "a.reverse()")
            )
        else:
            code.add("for i in range(len(a)):", f"    a[i] = {_expr(op, 'a[i]', style)}")
    elif style == "comprehension":
        if _is_filter(k):
            code.add(f"a = [x for x in a if {_cond(op, 'x', style)}]")
        elif k == "sort_asc":
            code.add("a = sorted(a)")
        elif k == "sort_desc":
            code.add("a = sorted(a, reverse=True)")
        elif k == "reverse":
            code.add("a = a[::-1]")
        else:
            code.add(f"a = [{_expr(op, 'x', style)} for x in a]")
    elif style == "functional":
        if _is_filter(k):
            code.add(f"a = list(filter(lambda x: {_cond(op, 'x', style)}, a))")
        elif k == "sort_asc":
            code.add("a.sort()")
        elif k == "sort_desc":
            code.add("a = sorted(a)[::-1]")
        elif k == "reverse":
            code.add("a = list(reversed(a))")
        else:
            code.add(f"a = list(map(lambda x: {_expr(op, 'x', style)}, a))")
    else:
        raise ValueError(style)


def _final_lines(op: Op, style: str, bug: Bug | None, code: _Code) -> None:
    k, m = op.kind, op.arg
    bk = bug.kind if bug is not None else None
    if k in LIST_OUTPUTS and bk == "print_repr":
        code.add("print(a)")
        return
    if style == "loop":
        if k == "sum":
            code.add("total = 0", "for x in a:", "    total += x", "print(total)")
        elif k == "count":
            code.add("count = 0", "for x in a:", "    count += 1", "print(count)")
        elif k in ("max", "min"):
            cmp = ">" if k == "max" else "<"
            if bk == "init_zero":
                code.add("best = 0", "for x in a:", f"    if x {cmp} best:", "        best = x")
                code.add("print(best)")
            else:
                code.add(
                    "best = None",
                    "for x in a:",
                    f"    if best is None or x {cmp} best:",
                    "        best = x",
                    'print("EMPTY" if best is None else best)',
                )
        elif k == "prod_mod":
            step = "p = p * x" if bk == "no_mod" else f"p = p * x % {m}"
            code.add("p = 1", "for x in a:", f"    {step}", "print(p)")
        elif k == "list_space":
            code.add(
                "parts = []", "for x in a:", "    parts.append(str(x))", 'print(" ".join(parts))'
            )
        elif k == "list_lines":
            code.add("for x in a:", "    print(x)")
        elif k == "count_list":
            if bk != "no_count":
                code.add("print(len(a))")
            code.add("line = ''", "for x in a:", "    line += str(x) + ' '", "print(line.strip())")
    elif style == "comprehension":
        if k == "sum":
            code.add("print(sum(a))")
        elif k == "count":
            code.add("print(len(a))")
        elif k in ("max", "min"):
            if bk == "no_empty_guard":
                code.add(f"print({k}(a))")
            else:
                code.add(f'print({k}(a) if a else "EMPTY")')
        elif k == "prod_mod":
            code.need("import math")
            code.add("print(math.prod(a))" if bk == "no_mod" else f"print(math.prod(a) % {m})")
        elif k == "list_space":
            code.add('print(" ".join([str(x) for x in a]))')
        elif k == "list_lines":
            code.add('print("\\n".join([str(x) for x in a]))')
        elif k == "count_list":
            if bk != "no_count":
                code.add("print(len(a))")
            code.add('print(" ".join([str(x) for x in a]))')
    elif style == "functional":
        if k == "sum":
            code.need("from functools import reduce")
            code.add("print(reduce(lambda s, x: s + x, a, 0))")
        elif k == "count":
            code.need("from functools import reduce")
            code.add("print(reduce(lambda c, x: c + 1, a, 0))")
        elif k in ("max", "min"):
            code.need("from functools import reduce")
            if bk == "no_empty_guard":
                code.add(f"print(reduce({k}, a))")
            else:
                code.add("if a:", f"    print(reduce({k}, a))", "else:", '    print("EMPTY")')
        elif k == "prod_mod":
            code.need("from functools import reduce")
            body = "p * x" if bk == "no_mod" else f"p * x % {m}"
            code.add(f"print(reduce(lambda p, x: {body}, a, 1))")
        elif k == "list_space":
            code.add("print(*a)")
        elif k == "list_lines":
            code.add('print("\\n".join(map(str, a)))')
        elif k == "count_list":
            if bk != "no_count":
                code.add("print(len(a))")
            code.add('print(" ".join(map(str, a)))')
    else:
        raise ValueError(style)


def pipeline_applicable(transforms: Sequence[Op]) -> bool:
    """The fused style needs every reordering after every element-wise step."""
    seen_order = False
    for op in transforms:
        if op.kind in ORDERS:
            seen_order = True
        elif seen_order:
            return False
    return True


def _pipeline(transforms: Sequence[Op], final: Op, bug: Bug | None) -> str:
    code = _Code()
    code.need("import sys")
    k, m = final.kind, final.arg
    bk = bug.kind if bug is not None else None
    body = ["n = int(sys.stdin.readline())", "a = [int(v) for v in sys.stdin.readline().split()]"]
    init = {
        "sum": ["total = 0"],
        "count": ["count = 0"],
        "max": ["best = 0" if bk == "init_zero" else "best = None"],
        "min": ["best = 0" if bk == "init_zero" else "best = None"],
        "prod_mod": ["p = 1"],
    }.get(k, ["out = []"])
    body += init
    body.append("for x in a:")
    loop: list[str] = []
    elementwise = [op for op in transforms if op.kind not in ORDERS]
    orders = [op for op in transforms if op.kind in ORDERS]
    for op in elementwise:
        if _is_filter(op.kind):
            loop += [f"if {_negated_cond(op, 'x')}:", "    continue"]
        else:
            loop.append(f"x = {_expr(op, 'x', 'pipeline')}")
    if k == "sum":
        loop.append("total += x")
    elif k == "count":
        loop.append("count += 1")
    elif k in ("max", "min"):
        cmp = ">" if k == "max" else "<"
        guard = f"x {cmp} best" if bk == "init_zero" else f"best is None or x {cmp} best"
        loop += [f"if {guard}:", "    best = x"]
    elif k == "prod_mod":
        loop.append("p = p * x" if bk == "no_mod" else f"p = p * x % {m}")
    else:
        loop.append("out.append(x)")
    body += _indent(loop)
    for op in orders:
        body.append(
            {"sort_asc": "out.sort()", "sort_desc": "out.sort(reverse=True)"}.get(
                op.kind, "out.reverse()"
            )
        )
    if k == "sum":
        body.append("print(total)")
    elif k == "count":
        body.append("print(count)")
    elif k in ("max", "min"):
        body.append(
            "print(best)" if bk == "init_zero" else 'print("EMPTY" if best is None else best)'
        )
    elif k == "prod_mod":
        body.append("print(p)")
    elif bk == "print_repr":
        body.append("print(out)")
    elif k == "list_space":
        body.append("print(*out)")
    elif k == "list_lines":
        body += ["for x in out:", "    print(x)"]
    elif k == "count_list":
        if bk != "no_count":
            body.append("print(len(out))")
        body.append("print(*out)")
    code.add("def main():", *_indent(body), "", "", "main()")
    return code.text()


def render_solution(transforms: Sequence[Op], final: Op, style: str, bug: Bug | None = None) -> str:
    """Python 3 source of the composition in ``style``, with ``bug`` (if any) written in."""
    ops = buggy_spec(transforms, bug)
    if style == "pipeline":
        if not pipeline_applicable(ops):
            raise ValueError("the pipeline style needs reorderings last")
        if bug is not None and bug.kind in ("skip_first", "skip_last", "no_empty_guard"):
            raise ValueError(f"bug {bug.kind} is not written in the pipeline style")
        return _pipeline(ops, final, bug)
    code = _Code()
    _read_lines(style, bug, code)
    for op in ops:
        _transform_lines(op, style, code)
    _final_lines(final, style, bug, code)
    return code.text()


def solution_styles(transforms: Sequence[Op]) -> list[str]:
    styles = ["loop", "comprehension", "functional"]
    if pipeline_applicable(transforms):
        styles.append("pipeline")
    return styles


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def _rand_list(rng: random.Random, n: int, lo: int = -VALUE_MAX, hi: int = VALUE_MAX) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _interesting_values(transforms: Sequence[Op], final: Op) -> list[int]:
    vals = {0, 1, -1, 2, -2}
    for op in (*transforms, final):
        if op.kind in ("keep_gt", "keep_lt"):
            vals |= {op.arg - 1, op.arg, op.arg + 1}
        elif op.kind in ("keep_div", "mod"):
            vals |= {op.arg, 2 * op.arg, -op.arg, op.arg + 1, op.arg - 1}
    return sorted(v for v in vals if -VALUE_MAX <= v <= VALUE_MAX)


def _make_inputs(rng: random.Random, transforms: Sequence[Op], final: Op) -> list[list[int]]:
    def result(xs: list[int]) -> list[int]:
        for op in transforms:
            xs = _apply_transform(op, xs)
        return xs

    inputs: list[list[int]] = [[], [rng.randint(-VALUE_MAX, VALUE_MAX)]]
    special = _interesting_values(transforms, final)
    boundary = special + _rand_list(rng, 3, -20, 20)
    rng.shuffle(boundary)
    inputs.append(boundary)
    inputs.append(_rand_list(rng, rng.randint(4, 8), -VALUE_MAX, -1))  # all negative
    inputs.append(_rand_list(rng, rng.randint(4, 8), 1, VALUE_MAX))  # all positive
    pool = _rand_list(rng, 3, -30, 30)
    inputs.append([rng.choice(pool) for _ in range(rng.randint(5, 9))])  # duplicates
    if any(_is_filter(op.kind) for op in transforms):  # everything filtered out
        for _ in range(300):
            xs = _rand_list(rng, rng.randint(2, 6), -30, 30)
            if not result(list(xs)):
                inputs.append(xs)
                break
    for _ in range(4):
        inputs.append(_rand_list(rng, rng.randint(5, 15), -50, 50))
    for _ in range(2):
        inputs.append(_rand_list(rng, rng.randint(30, 60)))
    return inputs


def _example_input(rng: random.Random, transforms: Sequence[Op], final: Op) -> list[int]:
    """A short example whose answer is not trivially empty (when one can be found)."""
    xs: list[int] = []
    for _ in range(100):
        xs = _rand_list(rng, rng.randint(5, 7), -20, 20)
        ys = xs
        for op in transforms:
            ys = _apply_transform(op, ys)
        if len(ys) >= 2:
            break
    return xs


# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------


def _pick_constant(rng: random.Random, kind: str) -> int | None:
    choices = CONSTANTS.get(kind)
    return None if choices is None else rng.choice(choices)


class DegenerateProblem(ValueError):
    """The drawn problem is (nearly) constant or its bugs cannot be told apart from it."""


MIN_DISTINCT_OUTPUTS = 4


def make_problem(
    name: str,
    split: str,
    kinds: tuple[str, ...],
    rng: random.Random,
    n_incorrect: int = 3,
    tries: int = 20,
) -> Problem:
    """One problem of composition ``kinds`` (constants, tests, solutions drawn from ``rng``).

    Constants are redrawn (up to ``tries`` times) while the tests' expected outputs take fewer
    than :data:`MIN_DISTINCT_OUTPUTS` distinct values (e.g. multiply by 2, then keep the odd
    numbers); :class:`DegenerateProblem` if that never works.
    """
    *t_kinds, f_kind = kinds
    for _ in range(tries):
        transforms = tuple(Op(k, _pick_constant(rng, k)) for k in t_kinds)
        final = Op(f_kind, _pick_constant(rng, f_kind))
        example = _example_input(rng, transforms, final)
        inputs = _make_inputs(rng, transforms, final)
        outputs = {evaluate(transforms, final, xs) for xs in [example, *inputs]}
        if len(outputs) >= MIN_DISTINCT_OUTPUTS:
            break
    else:
        raise DegenerateProblem(f"{name}: {kinds} gives (nearly) constant outputs")

    # Choose bugs that change at least one test's output; add an exposing test when needed.
    candidates = applicable_bugs(transforms, final)
    rng.shuffle(candidates)
    chosen: list[Bug] = []
    for bug in candidates:
        if len(chosen) >= n_incorrect:
            break
        if any(b.kind == bug.kind for b in chosen):
            continue  # prefer different kinds of mistakes

        def exposes(xs: list[int], bug: Bug = bug) -> bool:
            return not outputs_equal(
                evaluate(transforms, final, xs), evaluate(transforms, final, xs, bug)
            )

        if not any(exposes(xs) for xs in [example, *inputs]):
            for _ in range(300):
                xs = _rand_list(rng, rng.randint(1, 12), -30, 30)
                if exposes(xs):
                    inputs.append(xs)
                    break
            else:
                continue
        chosen.append(bug)
    if len(chosen) < 2:
        raise DegenerateProblem(f"{name}: fewer than two exposable bugs for {kinds}")

    public = [(format_input(example), evaluate(transforms, final, example))]
    private = [(format_input(xs), evaluate(transforms, final, xs)) for xs in inputs]
    statement = render_statement(transforms, final, public[0])

    solutions = [(s, render_solution(transforms, final, s)) for s in solution_styles(transforms)]
    incorrect = []
    for bug in chosen:
        ops = buggy_spec(transforms, bug)
        styles = [
            s
            for s in _BUG_STYLES.get(bug.kind, STYLES)
            if s != "pipeline" or pipeline_applicable(ops)
        ]
        style = rng.choice(styles)
        incorrect.append((f"{bug.label()}/{style}", render_solution(transforms, final, style, bug)))
    return Problem(
        name=name,
        split=split,
        statement=statement,
        transforms=transforms,
        final=final,
        public_tests=public,
        private_tests=private,
        solutions=solutions,
        incorrect_solutions=incorrect,
        bugs=chosen,
    )


def generate_split(split: str, size: int, seed: int = 0) -> list[Problem]:
    """``size`` problems of ``split`` ('train', 'valid' or 'test'), a pure function of the seed."""
    pools = composition_pools(seed)
    if split not in pools:
        raise ValueError(f"unknown split {split!r}")
    by_depth: dict[int, list[tuple[str, ...]]] = {}
    for kinds in pools[split]:
        by_depth.setdefault(len(kinds) - 1, []).append(kinds)
    weights = TRAIN_DEPTH_WEIGHTS if split == "train" else HELD_OUT_DEPTH_WEIGHTS
    depth_rng = random.Random(f"spo-embedded:{seed}:{split}:depths")
    # Held-out splits use each composition at most once while the pool lasts.
    unused = {d: depth_rng.sample(c, len(c)) for d, c in sorted(by_depth.items())}
    problems = []
    for i in range(size):
        rng = random.Random(f"spo-embedded:{seed}:{split}:{i}")
        depth = rng.choices(range(MAX_DEPTH + 1), weights=weights)[0]
        name = f"spo_embedded_{split}_{i:05d}"
        for _ in range(100):
            if split == "train":
                kinds = rng.choice(by_depth[depth])
            else:
                if not unused[depth]:
                    unused[depth] = depth_rng.sample(by_depth[depth], len(by_depth[depth]))
                kinds = unused[depth].pop()
            try:
                problems.append(make_problem(name, split, kinds, rng))
                break
            except DegenerateProblem:
                continue
        else:
            raise RuntimeError(f"{name}: no non-degenerate composition of depth {depth} found")
    return problems


def generate_problems(
    seed: int = 0, sizes: dict[str, int] | None = None
) -> dict[str, list[Problem]]:
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    return {split: generate_split(split, n, seed) for split, n in sizes.items()}


# ---------------------------------------------------------------------------------------------
# The CodeContests Parquet schema
# ---------------------------------------------------------------------------------------------


def _strings() -> pa.DataType:
    return pa.list_(pa.field("element", pa.string()))


_TESTS = pa.struct([pa.field("input", _strings()), pa.field("output", _strings())])
_SOLUTIONS = pa.struct(
    [
        pa.field("language", pa.list_(pa.field("element", pa.int64()))),
        pa.field("solution", _strings()),
    ]
)

CODE_CONTESTS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("public_tests", _TESTS),
        pa.field("private_tests", _TESTS),
        pa.field("generated_tests", _TESTS),
        pa.field("source", pa.int64()),
        pa.field("difficulty", pa.int64()),
        pa.field("solutions", _SOLUTIONS),
        pa.field("incorrect_solutions", _SOLUTIONS),
        pa.field("cf_contest_id", pa.int64()),
        pa.field("cf_index", pa.string()),
        pa.field("cf_points", pa.float32()),
        pa.field("cf_rating", pa.int64()),
        pa.field("cf_tags", _strings()),
        pa.field("is_description_translated", pa.bool_()),
        pa.field("untranslated_description", pa.string()),
        pa.field(
            "time_limit",
            pa.struct([pa.field("seconds", pa.int64()), pa.field("nanos", pa.int64())]),
        ),
        pa.field("memory_limit_bytes", pa.int64()),
        pa.field("input_file", pa.string()),
        pa.field("output_file", pa.string()),
    ]
)
"""The column schema of DeepMind CodeContests as published in Parquet (and of the shared sample)."""


def _tests(pairs: Sequence[tuple[str, str]]) -> dict:
    return {"input": [i for i, _ in pairs], "output": [o for _, o in pairs]}


def problem_row(p: Problem) -> dict:
    """``p`` as one CodeContests row.

    Conventions: ``source`` 0 (UNKNOWN_SOURCE); ``difficulty`` = depth + 1 (CodeContests' EASY,
    MEDIUM, HARD, HARDER); ``cf_tags`` holds the composition (transform kinds, then the final
    kind) so SQL can group by it; all other ``cf_*`` fields are zero / empty.
    """
    return {
        "name": p.name,
        "description": p.statement,
        "public_tests": _tests(p.public_tests),
        "private_tests": _tests(p.private_tests),
        "generated_tests": _tests([]),
        "source": SOURCE_UNKNOWN,
        "difficulty": p.depth + 1,
        "solutions": {
            "language": [LANGUAGE_PYTHON3] * len(p.solutions),
            "solution": [code for _, code in p.solutions],
        },
        "incorrect_solutions": {
            "language": [LANGUAGE_PYTHON3] * len(p.incorrect_solutions),
            "solution": [code for _, code in p.incorrect_solutions],
        },
        "cf_contest_id": 0,
        "cf_index": "",
        "cf_points": 0.0,
        "cf_rating": 0,
        "cf_tags": list(p.composition),
        "is_description_translated": False,
        "untranslated_description": "",
        "time_limit": {"seconds": TIME_LIMIT_S, "nanos": 0},
        "memory_limit_bytes": MEMORY_LIMIT_BYTES,
        "input_file": "",
        "output_file": "",
    }


def problems_table(problems: Sequence[Problem]) -> pa.Table:
    return pa.Table.from_pylist([problem_row(p) for p in problems], schema=CODE_CONTESTS_SCHEMA)


def write_parquet(problems: Sequence[Problem], path: str | Path) -> Path:
    """Write ``problems`` as one zstd-compressed Parquet file (byte-identical for equal input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        problems_table(problems),
        path,
        compression="zstd",
        compression_level=9,
        row_group_size=1 << 20,
    )
    return path
