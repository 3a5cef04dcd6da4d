"""Diversity of a model's correct programs per problem (issue 22, item 3), from an evaluation's
own judged samples: distinct programs after normalisation, the embedded generator's solution
styles among them, and the slope of log pass@k in log k.

Nothing here executes a program: programs are read with the stdlib `ast` only. See
docs/evaluation.md ("Diversity") for what each number means and its limits.
"""

from __future__ import annotations

import ast
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from spo_train.embedded.generator import STYLES  # loop, comprehension, functional, pipeline
from spo_train.metrics import pass_at_k

EMBEDDED = "embedded"
"""`problems.source_dataset` of the embedded generator's problems: the only ones with styles."""


_UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError)


def _parse(code: str) -> ast.Module:
    """`ast.parse` without the warnings a model's program may raise (an invalid escape such as
    `"\\d"` warns, on stderr, from Python 3.12): they are the program's, not the user's. A
    leading byte-order mark is dropped, as Python drops it from a source file (the judge runs
    such a program; `ast.parse` of the text refuses U+FEFF). Raises what `ast.parse` raises
    (`_UNPARSABLE`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code.removeprefix("\ufeff"))


# ----------------------------------------------------------------------------- normalisation
class _Names(ast.NodeVisitor):
    """The names a module binds itself (assignment and loop targets, parameters, functions,
    classes, exception and `with` names, imports under `as`, `match` captures), in
    first-occurrence order over every use: so two programs that differ only in their own names
    list them alike."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.order: list[str] = []

    def _seen(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.bound.add(node.id)
        self._seen(node.id)

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)
        self._seen(node.arg)
        self.generic_visit(node)

    def _define(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.bound.add(node.name)
        self._seen(node.name)
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _define

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound.add(node.name)
            self._seen(node.name)
        self.generic_visit(node)

    def visit_alias(self, node: ast.alias) -> None:
        if node.asname:  # `import numpy as np`: np is the program's own name for numpy
            self.bound.add(node.asname)
            self._seen(node.asname)

    def _capture(self, node: ast.MatchAs | ast.MatchStar | ast.MatchMapping) -> None:
        # `case [first, *rest]`, `case {"k": v, **rest}`, `case [x] as whole`: a pattern binds
        # these, written after its sub-patterns (visited first: first-occurrence order)
        self.generic_visit(node)
        name = node.rest if isinstance(node, ast.MatchMapping) else node.name
        if name:
            self.bound.add(name)
            self._seen(name)

    visit_MatchAs = visit_MatchStar = visit_MatchMapping = _capture


class _Rename(ast.NodeTransformer):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.names.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def _declare(self, node: Any) -> Any:
        node.names = [self.names.get(n, n) for n in node.names]
        return node

    visit_Global = visit_Nonlocal = _declare

    def _define(self, node: Any) -> Any:
        node.name = self.names.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _define

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        if node.name:
            node.name = self.names.get(node.name, node.name)
        self.generic_visit(node)
        return node

    def visit_alias(self, node: ast.alias) -> ast.alias:
        if node.asname:
            node.asname = self.names.get(node.asname, node.asname)
        return node

    def _capture(self, node: Any) -> Any:
        if isinstance(node, ast.MatchMapping):
            node.rest = self.names.get(node.rest, node.rest) if node.rest else None
        elif node.name:
            node.name = self.names.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_MatchAs = visit_MatchStar = visit_MatchMapping = _capture

    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        # A bare string statement (a docstring) does nothing: dropped like a comment.
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        self.generic_visit(node)
        return node


def normalise_program(code: str) -> str:
    """A canonical text of a Python program: two programs that differ only in comments,
    docstrings, whitespace and layout, quoting and redundant parentheses, and the names of their
    own variables, functions, parameters and `as` aliases (renamed `v0`, `v1`, ... in order of
    first occurrence) get the same text; attribute names, keyword names and names the program
    does not bind (builtins, imported modules) are kept, so a different algorithm or a different
    library call is a different program.

    Built from the stdlib `ast` (`ast.unparse`); nothing is executed. Code that does not parse
    (or is too deeply nested for the parser) falls back to its whitespace-normalised text
    prefixed `unparsed:`, which never equals the text of a program that parsed.
    """
    try:
        tree = _parse(code)
        names = _Names()
        names.visit(tree)
        own = [n for n in names.order if n in names.bound]
        tree = _Rename({n: f"v{i}" for i, n in enumerate(own)}).visit(tree)
        if not tree.body:  # only docstrings
            return ""
        return ast.unparse(tree)
    except _UNPARSABLE:
        return "unparsed:" + " ".join(code.split())


# ----------------------------------------------------------------------------- styles
def _call_path(node: ast.AST) -> str | None:
    """`sys.stdin.read` for a call of `sys.stdin.read(...)`; None for other calls."""
    if not isinstance(node, ast.Call):
        return None
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if not isinstance(f, ast.Name):
        return None
    return ".".join([f.id, *reversed(parts)])


def embedded_style(code: str) -> str | None:
    """The embedded generator's style a program reads its input in, or None.

    The generator gives each of its four styles its own way of reading the input list, and
    writes no other: `pipeline` calls `sys.stdin.readline()` (inside `def main`),
    `comprehension` calls `sys.stdin.read()`, `functional` calls `map(int, ...)` and `input()`
    (`list(map(int, input().split()))`), and `loop` calls `input()` and nothing of the others
    (`row = input().split()`, then `int(row[i])`). The label is that
    reading idiom, checked in this order; a program that mixes a style's reading with another
    style's body keeps its reading's label, and one that reads in none of these ways (or does
    not parse) is None. Every reference solution the generator ships gets its own style
    (tests/q0_eval/test_eval_diversity.py).
    """
    try:
        tree = _parse(code)
    except _UNPARSABLE:
        return None
    calls: set[str] = set()
    for node in ast.walk(tree):
        path = _call_path(node)
        if path is not None:
            calls.add(path)
        if path == "map" and isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id == "int":
                calls.add("map(int)")
    if "sys.stdin.readline" in calls:
        return "pipeline"
    if "sys.stdin.read" in calls:
        return "comprehension"
    if "map(int)" in calls and "input" in calls:
        return "functional"
    if "input" in calls:
        return "loop"
    return None


EMBEDDED_STYLE_SQL: dict[str, str] = {
    "pipeline": "t.response LIKE '%sys.stdin.readline(%'",
    "comprehension": "t.response LIKE '%sys.stdin.read(%'",
    "functional": "t.response LIKE '%map(int, input()%'",
    "loop": (
        "t.response LIKE '%input()%' AND t.response NOT LIKE '%sys.stdin.read%' "
        "AND t.response NOT LIKE '%map(int, input()%'"
    ),
}
"""`embedded_style` as DuckDB predicates over `t.response`, for mixture sources that keep or
withhold styles (docs/experiments.md, "Held out"): each selects exactly the rows of its style
among the embedded set's human solutions, correct and incorrect (the generator writes each
reading idiom one way; tests/embedded/test_style_predicates.py checks every row). They read the
text, not the AST: on other programs (a model's, spaced differently) they may disagree with
`embedded_style`. `t.response NOT LIKE '%sys.stdin%'` is `loop` or `functional` on that set."""


# ----------------------------------------------------------------------------- pass@k slope
def slope_ks(n: int) -> list[int]:
    """The k of the pass@k slope for n judged samples: 1, 2, 4, ... up to n (powers of two)."""
    return [2**i for i in range(n.bit_length())] if n >= 1 else []


def pass_at_k_slope(n: int, c: int) -> float | None:
    """Least-squares slope of log pass@k against log k over k in `slope_ks(n)`, with the unbiased
    estimator (`spo_train.metrics.pass_at_k`); dimensionless, in [0, 1] (1: pass@k grows like k,
    independent tries; 0: pass@k no longer grows, e.g. every sample correct). None without a
    correct sample (log 0) or with fewer than two k (n < 2)."""
    ks = slope_ks(n)
    if c < 1 or len(ks) < 2:
        return None
    return _log_log_slope(ks, [pass_at_k(n, c, k) for k in ks])


def _log_log_slope(ks: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(ks); every value > 0, len(ks) >= 2."""
    x = np.log(np.asarray(ks, dtype=np.float64))
    y = np.log(np.asarray(values, dtype=np.float64))
    x = x - x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


def mean_curve_slope(counts: Sequence[tuple[int, int]]) -> tuple[float | None, int]:
    """Slope of log(mean pass@k) against log k for a set of problems given as `(n judged,
    c correct)`, with k in `slope_ks(max n)` and the problems with at least that many judged
    samples (unsolved ones included: they lower every mean pass@k alike); returns `(slope,
    problems in the curve)`, the slope None when no problem of the curve has a correct sample
    or there are fewer than two k."""
    ks = slope_ks(max((n for n, _ in counts), default=0))
    curve = [(n, c) for n, c in counts if ks and n >= ks[-1]]
    if len(ks) < 2 or not any(c for _, c in curve):
        return None, len(curve)
    means = [float(np.mean([pass_at_k(n, c, k) for n, c in curve])) for k in ks]
    return _log_log_slope(ks, means), len(curve)


# ----------------------------------------------------------------------------- summary
def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(np.mean(vals)) if vals else None


def diversity(
    problems: Sequence[Mapping[str, Any]],
    correct_programs: Mapping[str, Sequence[str]],
    judged: Mapping[str, int],
    *,
    temperature: float | tuple[float, float],
    top_p: float,
) -> dict[str, Any]:
    """The `diversity` object of `spo eval --json` (keys in docs/evaluation.md).

    `problems`: the evaluated problems (`problem_id`, optional `source_dataset`);
    `correct_programs[problem_id]`: the programs (extracted code) of its judged samples that
    passed; `judged[problem_id]`: its judged sample count. Per problem with at least one correct
    sample: `correct`, `distinct_programs`, `distinct_fraction`, `styles` (None unless the
    problem is the embedded generator's), `style_counts`, `log_pass_at_k_slope`; aggregated as
    means over those problems (`problems` counts them), plus the slope of the set's mean pass@k
    curve over every problem (`mean_curve_slope`). `temperature` and `top_p` are the
    sampler's, recorded because every number here depends on them.
    """
    by_problem: dict[str, dict[str, Any]] = {}
    shares: Counter[str] = Counter()
    for p in problems:
        pid = p["problem_id"]
        programs = list(correct_programs.get(pid, ()))
        if not programs:
            continue
        distinct = len({normalise_program(code) for code in programs})
        styles = counts = None
        if p.get("source_dataset") == EMBEDDED:
            labels = [embedded_style(code) for code in programs]
            shares.update(label or "unrecognised" for label in labels)
            counts = {s: labels.count(s) for s in STYLES if s in labels}
            if None in labels:
                counts["unrecognised"] = labels.count(None)
            styles = len([s for s in STYLES if s in labels])
        by_problem[pid] = {
            "correct": len(programs),
            "distinct_programs": distinct,
            "distinct_fraction": distinct / len(programs),
            "styles": styles,
            "style_counts": counts,
            "log_pass_at_k_slope": pass_at_k_slope(judged.get(pid, 0), len(programs)),
        }
    rows = list(by_problem.values())
    styled = [r["styles"] for r in rows if r["styles"] is not None]
    slopes = [r["log_pass_at_k_slope"] for r in rows if r["log_pass_at_k_slope"] is not None]
    labelled = sum(shares.values())
    counts = [
        (judged.get(p["problem_id"], 0), len(correct_programs.get(p["problem_id"], ())))
        for p in problems
    ]
    curve_slope, curve_problems = mean_curve_slope(counts)
    return {
        "temperature": list(temperature) if isinstance(temperature, tuple) else temperature,
        "top_p": top_p,
        "problems": len(rows),
        "distinct_programs": _mean(r["distinct_programs"] for r in rows),
        "distinct_fraction": _mean(r["distinct_fraction"] for r in rows),
        "styles": _mean(styled),
        "style_problems": len(styled),
        "style_shares": (
            {s: shares[s] / labelled for s in (*STYLES, "unrecognised") if shares[s]}
            if labelled
            else None
        ),
        "log_pass_at_k_slope": _mean(slopes),
        "slope_problems": len(slopes),
        "slope_k": slope_ks(max((n for n, _ in counts), default=0)),
        "log_mean_pass_at_k_slope": curve_slope,
        "curve_problems": curve_problems,
        "by_problem": by_problem,
    }


def diversity_line(div: Mapping[str, Any]) -> str:
    """One short line of `div` for the human output of `spo eval` (docs/evaluation.md)."""
    t = div["temperature"]
    temp = f"{t:g}" if isinstance(t, int | float) else "-".join(f"{x:g}" for x in t)
    head = f"diversity (T={temp}, top-p {div['top_p']:g}"
    if not div.get("problems"):
        return head + "): no problem has a correct sample"
    parts = [
        f"{div['distinct_programs']:.2f} distinct correct programs "
        f"({div['distinct_fraction']:.2f} of correct)"
    ]
    if div.get("styles") is not None:
        parts.append(f"{div['styles']:.2f} styles")
    if div.get("log_pass_at_k_slope") is not None:
        curve = div.get("log_mean_pass_at_k_slope")
        parts.append(
            f"log pass@k slope {div['log_pass_at_k_slope']:.2f}"
            + (f" (mean curve {curve:.2f})" if curve is not None else "")
        )
    return f"{head}, {div['problems']} solved problems): " + ", ".join(parts)
