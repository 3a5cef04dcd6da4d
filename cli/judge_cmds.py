"""`spo judge PROGRAM.py`: judge one program in the sandbox and show the verdict per test."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spo_store import jsontext
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


def load_tests_file(path: Path, call_based: bool = False) -> list[tuple[str, str]]:
    """Tests from a JSON file: a list of {"input": str, "output": str} objects.

    With `call_based` (--fn-name) input and output may be JSON values (the argument list, the
    return value), encoded as JSON text like generic JSONL's call-based tests; a string is kept
    as the JSON text it already is. Raises SpoError naming the file and item otherwise.
    """
    text = _read_text(path, "tests file")
    try:
        raw = jsontext.loads(text)
    except json.JSONDecodeError as exc:
        raise SpoError(
            f"tests file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:  # nested too deeply
        raise SpoError(f"tests file {path} is not valid JSON ({exc})") from None
    if not isinstance(raw, list) or not raw:
        raise SpoError(f'tests file {path} must hold a non-empty list of {{"input", "output"}}')
    tests = []
    for i, item in enumerate(raw):
        if call_based and isinstance(item, dict) and "input" in item and "output" in item:
            tests.append(
                tuple(
                    v if isinstance(v, str) else jsontext.dumps(v)
                    for v in (item["input"], item["output"])
                )
            )
            continue
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("input"), str)
            or not isinstance(item.get("output"), str)
        ):
            raise SpoError(
                f'tests file {path}: item {i} is not an object with string "input" and "output"'
                + ("" if call_based else " (JSON values need --fn-name: call-based tests)")
            )
        for part in ("input", "output"):
            try:
                item[part].encode("utf-8")
            except UnicodeEncodeError as exc:  # a JSON "\ud800": no Unicode text (as ingest)
                code = f"\\u{ord(exc.object[exc.start]):04x}"
                raise SpoError(
                    f"tests file {path}: item {i} {part!r}: a lone surrogate {code} (a JSON \\u "
                    "escape that is no Unicode character) is not text"
                ) from None
        tests.append((item["input"], item["output"]))
    return tests


def _issue_warning(judge_issue: str, has_checker: bool) -> str | None:
    """One line on a problem flagged unreliable (docs/judge.md), or None when a checker fixes it."""
    reason, _, detail = judge_issue.partition(":")
    reason, detail = reason.strip(), detail.strip()
    if reason == "multiple_answers":
        if has_checker:
            return None
        why = "its tests check one answer; add a checker (--checker)"
    else:
        why = "its verdict may not be reliable"
    return (
        f"warning: this problem is flagged {reason}"
        + (f" ({detail})" if detail else "")
        + f": {why}"
    )


def _problem_from_lake(lake_uri: str | None, id_or_name: str) -> dict[str, Any]:
    from spo_store.lake import Lake

    return Lake.open(lake_uri, create=False).get_problem(id_or_name)


def _cell(text: str) -> Text:
    """A one-line preview; Text (not markup) so program output cannot style the table."""
    flat = text.replace("\r", "").replace("\n", "⏎ ").strip()
    if len(flat) > CELL_CHARS:
        flat = flat[: CELL_CHARS - 1] + "…"
    return Text(flat)


def _print_rows(verdict: Any, title: str, call_based: bool) -> None:
    table = Table(title=title, title_justify="left")
    columns = ["test", "verdict", "cpu s", "wall s", "returned" if call_based else "output"]
    columns += ["expected", "stderr / checker"]
    for name in columns:
        table.add_column(name, justify="right" if name in ("test", "cpu s", "wall s") else "left")
    for t in verdict.tests:
        err_lines = (t.checker_message or t.stderr).strip().splitlines()
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
        typer.Option(
            "--float-tolerance",
            help="Accept numeric tokens within this absolute-or-relative error "
            "(overrides the problem's; default: the problem's, else exact; with --tests "
            "the default tolerance 1e-5 on decimals only)",
        ),
    ] = None,
    fn_name: Annotated[
        str | None,
        typer.Option(
            "--fn-name",
            help="Call-based tests (TACO): call this function / Solution method with each "
            "test's JSON argument list and compare the JSON return value",
        ),
    ] = None,
    checker: Annotated[
        Path | None,
        typer.Option(
            "--checker",
            help="Python 3 checker, run as `checker INPUT OUTPUT ANSWER` (exit 0 accepts)",
        ),
    ] = None,
    input_file: Annotated[
        str | None,
        typer.Option("--input-file", help="The program reads each test's input from this file"),
    ] = None,
    output_file: Annotated[
        str | None,
        typer.Option("--output-file", help="The program's answer is this file, not its stdout"),
    ] = None,
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform",
            help="Whose runtime a call-based program gets: leetcode (LeetCode's imports, "
            "ListNode/TreeNode), else TACO's (default: the problem's)",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every test's row even when all pass")
    ] = False,
    unsafe_no_sandbox: Annotated[
        bool,
        typer.Option("--unsafe-no-sandbox", help="Run without bubblewrap (trusted code only)"),
    ] = False,
) -> None:
    """Judge PROGRAM on every test (no stop at the first failure); exit 0 if all pass, else 1.

    With --problem the judgement is the training judge's (`spo_train.judge.job_for_problem`):
    the problem's limits, float tolerance, checker, call-based `fn_name` and input/output files.
    A passing run prints one summary line; test rows are shown on failure or with --verbose.
    --fn-name and --checker set (or override) how the tests are judged.
    """
    from spo_train.judge import (
        JudgeJob,
        check_file_name,
        default_float_tolerance,
        job_for_problem,
        judge_job,
    )

    if (tests is None) == (problem is None):
        raise SpoError("give exactly one of --tests FILE or --problem ID_OR_NAME")
    if float_tolerance is not None and not (
        math.isfinite(float_tolerance) and float_tolerance >= 0
    ):
        raise SpoError(f"--float-tolerance must be finite and >= 0, got {float_tolerance}")
    from spo_store.problem_rules import limit_range_error

    for flag, what, value in (
        ("--time-limit", "time", time_limit),
        ("--memory-limit", "memory", memory_limit),
    ):
        bad = None if value is None else limit_range_error(what, float(value))
        if bad:  # the ranges ingest accepts (docs/ingest.md)
            raise SpoError(f"{flag}: {bad}")
    source = _read_text(program, "program")
    judge_issue = None
    if tests is not None:
        # As a problem ingested without a tolerance: the default one, for decimals only.
        job = JudgeJob(
            source,
            load_tests_file(tests, call_based=fn_name is not None),
            float_tolerance=float_tolerance
            if float_tolerance is not None
            else default_float_tolerance(),
            float_tolerance_source="user" if float_tolerance is not None else "default",
        )
        title = f"{program.name} on {tests.name}"
    else:
        row = _problem_from_lake(lake, problem or "")
        job = job_for_problem(row, source, float_tolerance_override=float_tolerance)
        if not job.tests:
            raise SpoError(f"problem {problem!r} has no tests in the lake")
        judge_issue = row.get("judge_issue") or None
        title = f"{program.name} on {row.get('name') or row.get('problem_id')}"
    if fn_name is not None:
        if not fn_name.isidentifier():
            raise SpoError(f"--fn-name {fn_name!r} is not a Python identifier")
        job = dataclasses.replace(job, fn_name=fn_name)
    if checker is not None:
        job = dataclasses.replace(job, checker=_read_text(checker, "checker"))
    for name, value in (("input_file", input_file), ("output_file", output_file)):
        if value is not None:
            job = dataclasses.replace(
                job, **{name: check_file_name(value, "--" + name.replace("_", "-"))}
            )
    if platform is not None:
        job = dataclasses.replace(job, platform=platform.strip().lower() or None)
    job = dataclasses.replace(
        job,
        time_limit_s=float(time_limit) if time_limit is not None else job.time_limit_s,
        memory_limit_mb=int(memory_limit) if memory_limit is not None else job.memory_limit_mb,
    )

    verdict = judge_job(job, stop_on_first_failure=False, unsafe_no_sandbox=unsafe_no_sandbox)

    if verdict.status == "compile_error":
        console.print(Text(verdict.detail))
    elif verbose or not verdict.passed:
        _print_rows(verdict, title, bool(job.fn_name))
    warning = _issue_warning(judge_issue, bool(job.checker)) if judge_issue else None
    if warning:
        console.print(Text(warning, style="yellow"), soft_wrap=True)
    summary = Text()
    if verdict.passed:
        summary.append("PASSED", style="bold green")
    elif not verdict.judged:
        summary.append(f"NOT JUDGED ({verdict.status})", style="bold yellow")
    else:
        summary.append(f"FAILED ({verdict.status})", style="bold red")
    how = []
    if job.fn_name:
        how.append(f"calls {job.fn_name}()")
    if job.checker:
        how.append("checker")
    if job.float_tolerance is None:
        how.append("numbers compared exactly (no float tolerance)")
    elif job.float_tolerance_source == "default":
        how.append(f"float tolerance {job.float_tolerance:g} (default: decimals only)")
    else:
        how.append(f"float tolerance {job.float_tolerance:g} ({job.float_tolerance_source})")
    if job.input_file or job.output_file:
        how.append(f"files {job.input_file or 'stdin'} -> {job.output_file or 'stdout'}")
    summary.append(
        f" {verdict.passed_tests}/{verdict.total_tests} tests, {title}, limits "
        f"{job.time_limit_s:g} s CPU / {job.memory_limit_mb} MiB"
        + "".join(f", {h}" for h in how)
        + (", UNSANDBOXED" if unsafe_no_sandbox else "")
    )
    if not verdict.judged:
        summary.append(f": {verdict.detail}")
    elif not verdict.passed and verdict.tests:
        bad = next((t for t in verdict.tests if not t.passed), verdict.tests[-1])
        why = bad.checker_message.strip().splitlines()
        summary.append(f"; first failure: test {bad.index}" + (f" ({why[-1]})" if why else ""))
    console.print(summary, soft_wrap=True)  # one line, however narrow the terminal
    # SystemExit, not typer.Exit: with standalone_mode=False (cli/main.py) click returns a
    # typer.Exit's code instead of exiting with it. Not judged is not a pass: exit 1.
    raise SystemExit(0 if verdict.passed else 1)


def register(app: typer.Typer) -> None:
    """Add `judge` to the `spo` app."""
    app.command("judge")(judge_cmd)
