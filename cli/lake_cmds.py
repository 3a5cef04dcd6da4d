"""`spo ingest`, `spo sql` and `spo lake ...`: thin wrappers over `spo_store`."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from spo_store.errors import SpoError
from spo_train.progress import progress_display

console = Console()
LakeOpt = Annotated[
    str | None,
    typer.Option(
        "--lake", help="Lake URI (default: $SPO_LAKE, else ./spo-lake)", show_default=False
    ),
]

ingest_app = typer.Typer(help="Bring data into the lake.", no_args_is_help=True)
lake_app = typer.Typer(
    help="Lake maintenance: versions, tags, compaction, cleanup, export.", no_args_is_help=True
)


class IngestFormat(StrEnum):
    auto = "auto"
    code_contests = "code_contests"
    taco = "taco"
    jsonl = "jsonl"


@ingest_app.command("human-solutions")
def ingest_human_solutions_cmd(
    paths: Annotated[list[str], typer.Argument(help="Files, directories or glob patterns")],
    lake: LakeOpt = None,
    format: Annotated[
        IngestFormat, typer.Option("--format", help="Input format")
    ] = IngestFormat.auto,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to record: train, valid, test or unspecified (default: the row's, "
            "else from file names); also moves these problems if already in the lake"
        ),
    ] = None,
    languages: Annotated[
        str, typer.Option(help="Comma-separated languages to keep, or 'all'")
    ] = "python3",
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Judge every new solution; store the verdict as reward (NULL: not judged) "
            "and flag problems whose labelled-correct solutions disagree",
        ),
    ] = False,
    rejudge: Annotated[
        bool,
        typer.Option(
            "--rejudge",
            help="With --verify: also re-judge these files' solutions already in the lake "
            "and update their rewards",
        ),
    ] = False,
    unsafe_no_sandbox: Annotated[
        bool, typer.Option("--unsafe-no-sandbox", help="Run solutions without bubblewrap")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Parallel judge workers (default: all cores)")
    ] = None,
) -> None:
    """Ingest CodeContests Parquet, TACO or JSONL problems with their human solutions.

    Prints what it added and skipped, the split of the problems, and every problem it flagged
    with a judge_issue and why (docs/ingest.md).
    """
    from spo_store.audit import SPLITS
    from spo_store.ingest import ingest_files_report, ingest_human_solutions
    from spo_store.lake import Lake

    if rejudge and not verify:
        raise SpoError("--rejudge re-judges stored solutions: use it with --verify")
    if split is not None and split not in SPLITS:
        raise SpoError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if workers is not None and workers < 1:
        raise SpoError(f"--workers {workers}: must be at least 1")
    langs = (
        None
        if languages.strip() == "all"
        else [x.strip() for x in languages.split(",") if x.strip()]
    )
    if langs is not None and not langs:
        raise SpoError("--languages is empty: give a comma-separated list, or 'all'")
    opened: list[Lake] = []

    def open_lake() -> Lake:
        # Opened (created) only after every input parsed: a bad file leaves no empty lake.
        opened.append(Lake.open(lake))
        return opened[0]

    with progress_display(rate=False) as bar:
        files_task = bar.add_task("files", total=None)
        verifier = _make_verifier(bar, workers, unsafe_no_sandbox) if verify else None
        report = ingest_human_solutions(
            open_lake,
            paths,
            fmt=format.value,
            split=split,
            languages=langs,
            verify=verifier,
            rejudge=rejudge,
            progress=lambda done, total: bar.update(files_task, completed=done, total=total),
        )
    console.print(
        ingest_files_report(report) + f"\nlake: {opened[0].uri}", highlight=False, soft_wrap=True
    )


def _make_verifier(bar: Progress, workers: int | None, unsafe_no_sandbox: bool):
    """A verifier judging (problem row, solution) pairs with spo_train.judge (Python 3 only)."""
    from spo_store.ingest import Judged
    from spo_train.judge import job_for_problem, judge_batch, verdict_reward
    from spo_train.judge.sandbox import ensure_sandbox

    if not unsafe_no_sandbox:
        ensure_sandbox()  # a missing bwrap is one line before anything is judged

    def verify(pairs):
        task = bar.add_task("judging", total=len(pairs))
        out: list[Judged | None] = [None] * len(pairs)
        jobs, where = [], []
        for i, (row, sol) in enumerate(pairs):
            if sol.language != "python3":
                out[i] = Judged(None, f"unsupported_language {sol.language}")
                bar.advance(task)
                continue
            try:
                jobs.append(job_for_problem(row, sol.text))
            except SpoError as exc:  # a row the judge cannot run (bad file name, ...)
                out[i] = Judged(None, f"not_judged: {exc}")
                bar.advance(task)
                continue
            where.append(i)
        verdicts = judge_batch(  # cancels queued jobs on Ctrl-C / SIGTERM
            jobs,
            workers=workers,
            progress=lambda n=1: bar.advance(task, n),
            unsafe_no_sandbox=unsafe_no_sandbox,
            stop_on_first_failure=False,
        )
        for i, v in zip(where, verdicts, strict=True):
            out[i] = Judged(verdict_reward(v), v.status, v.passed_tests, v.total_tests)
        return [j for j in out if j is not None]

    return verify


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


def sql_cmd(
    query: Annotated[
        str | None,
        typer.Argument(
            help="DuckDB SQL over the lake tables and views by name", show_default=False
        ),
    ] = None,
    lake: LakeOpt = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", help="Output format")
    ] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (required for parquet)")
    ] = None,
    max_width: Annotated[
        int,
        typer.Option(help="Truncate text cells in table output (--schema shows comments whole)"),
    ] = 60,
    schema: Annotated[
        bool,
        typer.Option(
            "--schema", help="List every table and view with its columns and what they mean"
        ),
    ] = False,
) -> None:
    """Run SQL over the lake (tables: problems, trajectories, runs, annotations, metrics, ...;
    views: attempts, with `passed` for reward = 0, and pass_rates). Read-only and local:
    local files may be read, remote paths are refused (docs/lake.md)."""
    from spo_store.analyst import SCHEMA_QUERY
    from spo_store.lake import Lake

    if schema:
        if query:
            raise SpoError("give a QUERY or --schema, not both")
        query = SCHEMA_QUERY
    if query is None:
        raise SpoError(
            "missing argument 'QUERY' (or --schema); e.g. spo sql 'SELECT count(*) FROM "
            "problems' (see spo sql --help)"
        )
    if not query.strip():
        raise SpoError("the SQL query is empty; e.g. spo sql 'SELECT count(*) FROM problems'")
    if max_width < 1:
        raise SpoError(f"--max-width {max_width}: must be at least 1")
    if output is not None:
        _check_output_file(output)
    _check_read_only(query)
    lk = Lake.open(lake, create=False)
    _sweep(lk)
    result = lk.sql_arrow(query, analyst=True)
    if format is OutputFormat.parquet:
        if output is None:
            raise SpoError("--format parquet needs --output FILE")
        from spo_store.analyst import result_parquet

        tmp = output.with_name(output.name + ".tmp")
        try:
            result_parquet(result, str(tmp))
        except SpoError:
            tmp.unlink(missing_ok=True)  # nothing half-written
            raise
        tmp.replace(output)
        console.print(f"wrote {result.num_rows} rows to {output}", highlight=False)
        return
    if format is OutputFormat.json:
        text = json.dumps(result.to_pylist(), default=_json_default, ensure_ascii=False)
    elif format is OutputFormat.csv:
        from spo_store.analyst import result_csv

        text = result_csv(result)
    else:
        # --schema is where a column's meaning is read: its comments are never cut at 60
        _print_table(result, 0 if schema else max_width)
        return
    if output:
        output.write_text(text + ("\n" if not text.endswith("\n") else ""))
    else:
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))


def _sweep(lk: Any) -> list[str]:
    """Mark `interrupted` this host's runs whose process is gone (kill -9) and say so on
    stderr (stdout may be JSON/CSV); cheap: only this host's `running` rows are read."""
    try:
        swept = lk.sweep_dead_runs()
    except OSError:  # a lake this user may read but not write: reading still works
        return []
    if swept:
        Console(stderr=True).print(
            f"marked {len(swept)} run(s) interrupted: their process on this host is gone "
            f"({', '.join(swept)})",
            highlight=False,
            soft_wrap=True,
        )
    return swept


def _check_read_only(query: str) -> None:
    """`spo sql` only reads: refuse COPY, INSERT, CREATE, ATTACH, SET ... in one line.

    DuckDB parses the query (`extract_statements`) and names each statement's type; WITH,
    DESCRIBE, SHOW and SUMMARIZE parse as SELECT. PRAGMA is refused too (some write files)."""
    import duckdb

    try:
        statements = duckdb.connect().extract_statements(query)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpoError(f"SQL error: {first}") from exc
    for st in statements:
        kind = st.type.name  # StatementType.SELECT -> "SELECT"
        if kind == "EXPLAIN":
            # EXPLAIN ANALYZE runs its statement: only an explained read is let through.
            # EXPLAIN [ANALYZE] or EXPLAIN (ANALYZE, FORMAT JSON, ...): the options go first.
            inner = re.sub(
                r"^\s*EXPLAIN\s*(\([^)]*\)\s*)?(ANALY[SZ]E\s+)?", "", st.query, flags=re.I
            )
            try:
                inner_kinds = [x.type.name for x in duckdb.connect().extract_statements(inner)]
            except duckdb.Error as exc:
                first = str(exc).strip().splitlines()[0]
                raise SpoError(f"SQL error: {first}") from exc
            kind = next((k for k in inner_kinds if k != "SELECT"), "SELECT")
            kind = "EXPLAIN " + kind if kind != "SELECT" else kind
        if kind == "MULTI":  # a PIVOT without an IN list: DuckDB runs a CREATE TYPE first
            raise SpoError(
                "spo sql is read-only: this PIVOT runs a CREATE TYPE first and is refused; "
                "name its columns (PIVOT t ON col IN ('a', 'b') USING ...) or use GROUP BY"
            )
        if kind != "SELECT":
            raise SpoError(
                f"spo sql is read-only: {kind} is refused (use SELECT, WITH, "
                "DESCRIBE, SHOW, EXPLAIN or SUMMARIZE; export with --format/--output or "
                "`spo lake export`)"
            )


def _check_output_file(output: Path) -> None:
    """One line, before any work, for an output file that cannot be written."""
    if output.is_dir():
        raise SpoError(f"--output {output} is a directory; give a file name")
    if not output.parent.is_dir():
        raise SpoError(f"--output {output}: folder {output.parent} does not exist")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _cell(value: Any, max_width: int | None) -> str:
    if value is None:
        return "NULL"
    text = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    if max_width and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def _print_table(
    result: pa.Table, max_width: int, no_wrap: tuple[str, ...] = (), **table_kw: Any
) -> None:
    """A rich table; columns named in `no_wrap` (ids) are never folded mid-value, and no
    header is ever broken: when the headers alone do not fit the terminal, each row is printed
    as a block of `column  value` lines instead (as psql's expanded display)."""
    names = result.column_names
    if sum(len(n) + 3 for n in names) + 1 > console.width:
        _print_records(result, max_width)
        return
    table = Table(show_lines=False, **table_kw)
    for name in names:
        if name in no_wrap:
            table.add_column(name, no_wrap=True, overflow="ignore", min_width=len(name))
        else:
            table.add_column(name, overflow="fold", min_width=len(name))
    for row in result.to_pylist():
        table.add_row(*[_cell(v, max_width) for v in row.values()])
    console.print(table)
    console.print(f"{result.num_rows} row(s)", style="dim")


def _print_records(result: pa.Table, max_width: int) -> None:
    """Rows as blocks of `column  value` lines, for results too wide for a table."""
    for i, row in enumerate(result.to_pylist(), 1):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for name, value in row.items():
            grid.add_row(name, _cell(value, max_width))
        console.print(f"-- row {i}", style="dim", highlight=False)
        console.print(grid)
    console.print(f"{result.num_rows} row(s)", style="dim")


@lake_app.command("versions")
def versions_cmd(
    lake: LakeOpt = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help="Table(s) to list (default: all)")
    ] = None,
) -> None:
    """List every version of the lake's tables, with row counts, fragments and tags."""
    from spo_store.lake import Lake
    from spo_store.maintenance import list_versions

    rows = list_versions(Lake.open(lake, create=False), table)
    _print_table(pa.Table.from_pylist(rows), 40)


@lake_app.command("tag")
def tag_cmd(name: Annotated[str, typer.Argument(help="Tag name")], lake: LakeOpt = None) -> None:
    """Tag the current version of every table (tagged versions survive cleanup)."""
    from spo_store.lake import Lake
    from spo_store.maintenance import tag_lake

    tagged = tag_lake(Lake.open(lake, create=False), name)
    console.print(f"tagged {name}: " + ", ".join(f"{t}@{v}" for t, v in tagged.items()))


@lake_app.command("compact")
def compact_cmd(lake: LakeOpt = None) -> None:
    """Merge small fragments so scans stay fast."""
    from spo_store.lake import Lake
    from spo_store.maintenance import compact

    for name, (before, after) in compact(Lake.open(lake, create=False)).items():
        console.print(f"{name}: {before} -> {after} fragments")


@lake_app.command("cleanup")
def cleanup_cmd(
    lake: LakeOpt = None,
    older_than_hours: Annotated[float, typer.Option(help="Keep every version newer than this")] = 24
    * 7,
) -> None:
    """Remove old untagged versions outside the safety window."""
    from spo_store.lake import Lake
    from spo_store.maintenance import cleanup

    removed = cleanup(
        Lake.open(lake, create=False), older_than=dt.timedelta(hours=older_than_hours)
    )
    console.print(", ".join(f"{t}: {b} bytes removed" for t, b in removed.items()))


@lake_app.command("export")
def export_cmd(
    output: Annotated[Path, typer.Argument(help="Directory for <table>.parquet files")],
    lake: LakeOpt = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help="Table(s) to export (default: all)")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Version number or tag (default: latest)")
    ] = None,
) -> None:
    """Export tables to Parquet."""
    from spo_store.lake import Lake
    from spo_store.maintenance import export_parquet

    if output.exists() and not output.is_dir():
        raise SpoError(f"{output} is a file; export writes <table>.parquet files into a folder")
    ver: str | int | None = int(version) if version and version.isdigit() else version
    counts = export_parquet(Lake.open(lake, create=False), output, table, version=ver)
    console.print(", ".join(f"{t}: {n} rows" for t, n in counts.items()) + f" -> {output}")


@lake_app.command("audit")
def audit_cmd(
    lake: LakeOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (the last line of output)")
    ] = False,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="First re-derive platform, float tolerance and judge issues of stored "
            "problems from their rows (keeps labels_disagree flags from --verify)",
        ),
    ] = False,
    limit: Annotated[int, typer.Option(help="Flagged problems to list (table output)")] = 50,
) -> None:
    """List problems by reliability: judged reliably, or flagged with a judge_issue and why."""
    from spo_store.audit import audit, update_problems
    from spo_store.lake import Lake

    if limit < 0:
        raise SpoError(f"--limit {limit}: must be at least 0")
    lk = Lake.open(lake, create=False)
    _sweep(lk)
    updated = update_problems(lk) if update else None
    result = audit(lk)
    if updated is not None:
        result["update"] = updated
    if as_json:
        sys.stdout.write(json.dumps(result, default=str, sort_keys=True) + "\n")
        return
    if updated is not None:
        fields = ", ".join(f"{n} {f}" for f, n in sorted(updated["changes"].items())) or "none"
        console.print(
            f"updated {updated['updated']} of {updated['checked']} problems (changed: {fields})",
            highlight=False,
        )
    reasons = ", ".join(f"{n} {r}" for r, n in result["by_reason"].items()) or "none"
    console.print(
        f"{result['problems']} problems: {result['reliable']} judged reliably, "
        f"{result['flagged']} flagged ({reasons})",
        highlight=False,
    )
    groups = pa.Table.from_pylist(
        [
            {
                "source_dataset": g["source_dataset"],
                "split": g["split"],
                "problems": g["problems"],
                "reliable": g["reliable"],
                "flagged": ", ".join(f"{n} {r}" for r, n in sorted(g["by_reason"].items())),
            }
            for g in result["groups"]
        ]
    )
    if groups.num_rows:
        _print_table(groups, 80)
    shown = result["flagged_problems"][:limit]
    if shown:
        _print_table(
            pa.Table.from_pylist(
                [
                    {k: f[k] for k in ("name", "source_dataset", "split", "judge_issue")}
                    for f in shown
                ]
            ),
            100,
        )
    if len(result["flagged_problems"]) > len(shown):
        console.print(
            f"... {len(result['flagged_problems']) - len(shown)} more flagged (--limit, --json)",
            highlight=False,
        )


@lake_app.command("set-split")
def set_split_cmd(
    split: Annotated[str, typer.Argument(help="train | valid | test | unspecified")],
    lake: LakeOpt = None,
    problem: Annotated[
        list[str] | None, typer.Option("--problem", "-p", help="Problem id or name (repeatable)")
    ] = None,
    from_split: Annotated[
        str | None, typer.Option("--from-split", help="Only problems now in this split")
    ] = None,
    source_dataset: Annotated[
        str | None, typer.Option("--source-dataset", help="Only problems of this dataset")
    ] = None,
) -> None:
    """Move problems to another split (e.g. an ingest that recorded 'unspecified')."""
    from spo_store.audit import set_split
    from spo_store.lake import Lake

    lk = Lake.open(lake, create=False)
    _sweep(lk)
    n = set_split(lk, split, problems=problem, from_split=from_split, source_dataset=source_dataset)
    console.print(f"moved {n} problem(s) to split {split}", highlight=False)


@lake_app.command("runs")
def runs_cmd(
    lake: LakeOpt = None,
    limit: Annotated[int, typer.Option(help="Most recent runs to list")] = 20,
    status: Annotated[
        str | None,
        typer.Option(help="Only runs with this status: running, completed, failed, interrupted"),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="Only runs of this kind (ingest, eval, ...)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """List runs, newest first, with their status (docs/lake.md, Provenance).

    First marks `interrupted` the `running` runs of this host whose process is gone (kill -9).
    """
    from spo_store.lake import RUN_STATUSES, Lake, sql_quote

    if limit < 1:
        raise SpoError(f"--limit {limit}: must be at least 1")
    if status is not None and status not in RUN_STATUSES:
        raise SpoError(f"--status {status!r} is not one of {', '.join(RUN_STATUSES)}")
    lk = Lake.open(lake, create=False)
    swept = lk.sweep_dead_runs()
    if swept:
        console.print(
            f"marked {len(swept)} run(s) interrupted: their process on this host is gone "
            f"({', '.join(swept)})",
            highlight=False,
            soft_wrap=True,
        )
    where = []
    if status:
        where.append(f"status = {sql_quote(status)}")
    if kind:
        where.append(f"kind = {sql_quote(kind)}")
    result = lk.sql_arrow(
        "SELECT run_id, status, strftime(started_at, '%Y-%m-%d %H:%M:%S') AS started, "
        "strftime(ended_at, '%Y-%m-%d %H:%M:%S') AS ended, kind, host FROM runs"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY started_at DESC LIMIT {int(limit)}"
    )
    if as_json:
        doc = {"runs": result.to_pylist(), "swept": swept}
        sys.stdout.write(json.dumps(doc, default=str, sort_keys=True) + "\n")
        return
    if result.num_rows == 0:
        present = lk.sql_arrow(
            "SELECT kind, status, count(*) AS n FROM runs GROUP BY 1, 2 ORDER BY 1, 2"
        ).to_pylist()
        shown = ", ".join(f"{r['kind']} {r['status']} ({r['n']})" for r in present) or "none"
        console.print(f"no run matches; runs present: {shown}", highlight=False)
        return
    # Ids and times never fold; at 80 columns the host is left out (it is in --json).
    if console.width < 110:
        result = result.drop_columns(["kind", "host"])
    else:
        result = result.drop_columns(["kind"])
    for name in ("started", "ended"):
        short = [None if v is None else v[5:16] for v in result.column(name).to_pylist()]
        result = result.set_column(
            result.column_names.index(name), name, pa.array(short, pa.string())
        )
    _print_table(
        result, 40, no_wrap=("run_id", "status", "started", "ended"), box=None, pad_edge=False
    )


def register(app: typer.Typer) -> None:
    """Add `ingest`, `sql` and `lake` to the `spo` app."""
    app.add_typer(ingest_app, name="ingest")
    app.command("sql")(sql_cmd)
    app.add_typer(lake_app, name="lake")
