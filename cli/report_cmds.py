"""`spo report RUN_DIR...`: pass@k against step over seeds, to PNG, HTML, JSON and markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


_TWO_LINE_HEADERS = {"first step": "first\nstep", "last step": "last\nstep"}


def report_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR",
            help="spo train output directories (run.json) and/or spo experiment directories "
            "(experiment.json)",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for pass_at_k.png, report.html, summary.json, results.md "
            "(default: <first path>/report)",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Group (experiment arm) the others are compared with at the last step "
            "(default: the experiment's reference_arm, else none)",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            metavar="GROUP,...",
            help="Report only these groups (experiment arms, or run labels), in this order",
            show_default=False,
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option("--title", help="Title of the report (default: the experiment's name)"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """Plot and tabulate pass@k against step: mean and min-max band over seeds, bootstrap
    intervals over seeds and problems (docs/experiments.md, Reports)."""
    from spo_train.experiment.report import (
        build_report,
        few_seeds_note,
        set_title,
        table_columns,
        table_rows,
    )

    def say(msg: str) -> None:
        (err_console if as_json else console).print(msg, highlight=False, soft_wrap=True)

    groups = [g.strip() for g in only.split(",") if g.strip()] if only else None
    summary = build_report(
        paths, output=output, reference=reference, only=groups, title=title, say=say
    )
    if as_json:
        doc = {
            key: summary[key]
            for key in ("title", "output", "files", "reference", "sets", "ks", "groups", "tables")
        }
        doc["warnings"] = summary["warnings"]
        sys.stdout.write(json.dumps(doc, default=str, sort_keys=True) + "\n")
        return
    cols = table_columns(summary)
    for eval_set in summary["sets"]:
        for k in summary["ks"]:
            rows = table_rows(summary, eval_set, k, compact=True)
            if not rows:
                continue
            table = Table(title=f"{set_title(eval_set)}: pass@{k}")
            for col in cols:
                short = col.replace("pass@k at ", "").replace(" [95% CI]", "")
                short = short.replace("change last - first", "change")
                # one-digit steps under a one-line "first step" held 10 of the 80 columns that
                # the intervals need, and rich cut "(reference)" to "(refere…": two-line
                # headers, and a word wider than its column folds rather than being cut
                table.add_column(_TWO_LINE_HEADERS.get(short, short), overflow="fold")
            for cells in rows:
                table.add_row(*cells)
            console.print(table)
    console.print(summary["caption"], highlight=False, soft_wrap=True)
    if note := few_seeds_note(summary):
        console.print(note, highlight=False, soft_wrap=True)
    files = summary["files"]
    console.print(
        f"wrote {files['plot']}, {files['html']}, {files['summary']}, {files['markdown']}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add `report` to the `spo` app (its help shows no `<bool>` whatever the register order)."""
    from spo_cli.options import SpoCommand

    app.command("report", cls=SpoCommand)(report_cmd)
