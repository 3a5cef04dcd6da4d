"""`spo judge PROGRAM.py`: judge one program in the sandbox and show the verdict per test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spo_store.errors import SpoError

console = Console()

STATUS_STYLE = {"ok": "green", "wrong_answer": "red", "compile_error": "red"}
CELL_CHARS = 40


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise SpoError(f"{what} {path} not found")
    if not path.is_file():
        raise SpoError(f"{what} {path} is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpoError(f"{what} {path} is not valid UTF-8 (byte {exc.start})") from None


def load_tests_file(path: Path) -> list[tuple[str, str]]:
    """Tests from a JSON file: a list of {"input": str, "output": str} objects."""
    text = _read_text(path, "tests file")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpoError(
            f"tests file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(raw, list) or not raw:
        raise SpoError(f'tests file {path} must hold a non-empty list of {{"input", "output"}}')
    tests = []
    for i, item in enumerate(raw):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("input"), str)
            or not isinstance(item.get("output"), str)
        ):
            raise SpoError(
                f'tests file {path}: item {i} is not an object with string "input" and "output"'
            )
        tests.append((item["input"], item["output"]))
    return tests


def _problem_from_lake(lake_uri: str | None, id_or_name: str) -> dict[str, Any]:
    from spo_store.lake import Lake

    problem = Lake.open(lake_uri, create=False).get_problem(id_or_name)
    tests = [(t["input"], t["output"]) for t in problem.get("tests") or []]
    if not tests:
        raise SpoError(f"problem {id_or_name!r} has no tests in the lake")
    problem["tests"] = tests
    return problem


def _cell(text: str) -> Text:
    """A one-line preview; Text (not markup) so program output cannot style the table."""
    flat = text.replace("\r", "").replace("\n", "⏎ ").strip()
    if len(flat) > CELL_CHARS:
        flat = flat[: CELL_CHARS - 1] + "…"
    return Text(flat)


def judge_cmd(
    program: Annotated[Path, typer.Argument(help="Python 3 program (stdin -> stdout)")],
    tests: Annotated[
        Path | None,
        typer.Option("--tests", help='JSON file: [{"input": ..., "output": ...}, ...]'),
    ] = None,
    problem: Annotated[
        str | None, typer.Option("--problem", help="Problem id or name in the lake")
    ] = None,
    lake: Annotated[
        str | None,
        typer.Option("--lake", help="Lake URI (default: $SPO_LAKE, else ./spo-lake)"),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option("--time-limit", help="CPU seconds per test (default: problem's, else 2)"),
    ] = None,
    memory_limit: Annotated[
        int | None,
        typer.Option("--memory-limit", help="MiB per test (default: problem's, else 256)"),
    ] = None,
    float_tolerance: Annotated[
        float | None,
        typer.Option("--float-tolerance", help="Accept float tokens within this abs/rel error"),
    ] = None,
    unsafe_no_sandbox: Annotated[
        bool,
        typer.Option("--unsafe-no-sandbox", help="Run without bubblewrap (trusted code only)"),
    ] = False,
) -> None:
    """Judge PROGRAM on every test (no stop at the first failure); exit 0 if all pass, else 1."""
    from spo_train.sandbox import judge

    if (tests is None) == (problem is None):
        raise SpoError("give exactly one of --tests FILE or --problem ID_OR_NAME")
    source = _read_text(program, "program")
    limits: dict[str, Any] = {}
    if tests is not None:
        cases = load_tests_file(tests)
        title = f"{program.name} on {tests.name}"
    else:
        row = _problem_from_lake(lake, problem or "")
        cases = row["tests"]
        limits = {
            "time_limit_s": row.get("time_limit_s"),
            "memory_limit_mb": row.get("memory_limit_mb"),
            "float_tolerance": row.get("float_tolerance"),
        }
        title = f"{program.name} on {row.get('name') or row.get('problem_id')}"
    time_s = time_limit if time_limit is not None else limits.get("time_limit_s") or 2.0
    mem_mb = memory_limit if memory_limit is not None else limits.get("memory_limit_mb") or 256
    tol = float_tolerance if float_tolerance is not None else limits.get("float_tolerance")
    if time_s <= 0 or mem_mb <= 0:
        raise SpoError("--time-limit and --memory-limit must be positive")

    verdict = judge(
        source,
        cases,
        time_limit_s=float(time_s),
        memory_limit_mb=int(mem_mb),
        stop_on_first_failure=False,
        float_tolerance=tol,
        unsafe_no_sandbox=unsafe_no_sandbox,
    )

    if verdict.status == "compile_error":
        console.print(Text(verdict.detail))
    else:
        table = Table(title=title, title_justify="left")
        for name, kw in (
            ("test", {"justify": "right"}),
            ("verdict", {}),
            ("cpu s", {"justify": "right"}),
            ("wall s", {"justify": "right"}),
            ("output", {}),
            ("expected", {}),
            ("stderr", {}),
        ):
            table.add_column(name, **kw)
        for t in verdict.tests:
            err_lines = t.stderr.strip().splitlines()
            table.add_row(
                str(t.index),
                Text(t.status, style=STATUS_STYLE.get(t.status, "yellow")),
                f"{t.cpu_s:.3f}",
                f"{t.wall_s:.3f}",
                _cell(t.stdout),
                _cell(t.expected),
                _cell(err_lines[-1] if err_lines else ""),
            )
        console.print(table)
    summary = Text()
    if verdict.passed:
        summary.append("PASSED", style="bold green")
    else:
        summary.append(f"FAILED ({verdict.status})", style="bold red")
    summary.append(
        f" {verdict.passed_tests}/{verdict.total_tests} tests, "
        f"limits {time_s:g} s CPU / {mem_mb} MiB" + (", UNSANDBOXED" if unsafe_no_sandbox else "")
    )
    if verdict.status == "sandbox_error":
        summary.append(f": {verdict.detail}")
    console.print(summary)
    # SystemExit, not typer.Exit: with standalone_mode=False (cli/main.py) click returns a
    # typer.Exit's code instead of exiting with it.
    raise SystemExit(0 if verdict.passed else 1)


def register(app: typer.Typer) -> None:
    """Add `judge` to the `spo` app."""
    app.command("judge")(judge_cmd)
