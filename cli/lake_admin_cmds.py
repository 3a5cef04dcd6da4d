"""`spo lake migrate`, `spo lake batch` and `spo lake verify`: schema upgrades, batch
reproduction and damage checks."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from spo_cli.lake_cmds import LakeOpt, lake_app

console = Console()
err = Console(stderr=True)


@lake_app.command("migrate")
def migrate_cmd(
    lake: LakeOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """Upgrade a lake written by an older spo to this spo's schema (tags the old versions first)."""
    from spo_store.migrate import migrate_lake

    report = migrate_lake(lake, say=lambda m: err.print(m, highlight=False))
    if report.from_version == report.to_version:
        err.print(f"lake {report.uri} is at schema version {report.to_version}: nothing to do")
    else:
        tag = f"schema-v{report.from_version}"
        err.print(
            f"migrated lake {report.uri} from schema version {report.from_version} to "
            f"{report.to_version}; the old versions stay readable under tag {tag!r}",
            highlight=False,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "lake": report.uri,
                    "from_version": report.from_version,
                    "to_version": report.to_version,
                    "tagged": report.tagged,
                    "notes": report.notes,
                }
            )
        )


@lake_app.command("batch")
def batch_cmd(
    run_id: Annotated[str, typer.Argument(help="Training run id")],
    step: Annotated[int, typer.Option("--step", help="Training step of the batch")],
    lake: LakeOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """Reproduce the batch a training run drew at a step, from its logged ids."""
    from spo_store.lake import Lake
    from spo_store.reproduce import reproduce_batch

    cols = ["traj_id", "problem_id", "source", "reward", "content_hash"]
    batch = reproduce_batch(Lake.open(lake, create=False), run_id, step, cols)
    rows = batch.table.to_pylist()
    where = (
        f"at its logged version {batch.logged_version}"
        if batch.exact_version
        else f"by id at version {batch.read_version} (logged version {batch.logged_version} "
        "was cleaned up; rows are keyed and immutable)"
    )
    err.print(f"batch of run {run_id} step {step}: {len(rows)} rows, read {where}")
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "step": step,
                    "logged_version": batch.logged_version,
                    "read_version": batch.read_version,
                    "rows": rows,
                }
            )
        )
    else:
        for r in rows:
            console.print(
                f"{r['traj_id']}  {r['source']:<8} reward {r['reward']}  {r['problem_id']}",
                highlight=False,
            )


@lake_app.command("verify")
def verify_cmd(
    lake: LakeOpt = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help="Table(s) to check (default: all)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """Read every row of the lake and check it against its content hash, its id, its schema
    and Lance's own decoding; exit 1 when damage is found (docs/lake.md: what to do then)."""
    from pathlib import Path

    from spo_store.errors import SpoError
    from spo_store.lake import Lake, resolve_lake_uri
    from spo_store.objstore import is_remote
    from spo_store.verify import verify_lake

    uri = resolve_lake_uri(lake)
    if not is_remote(uri) and not Path(uri, "problems.lance").is_dir():
        raise SpoError(f"no lake at {uri}")
    # Not Lake.open: a table it would refuse (a damaged schema version) is a finding here.
    report = verify_lake(Lake(uri), table)
    checked = ", ".join(f"{t} {n}" for t, n in report.rows.items())
    if as_json:
        print(
            json.dumps(
                {
                    "lake": uri,
                    "ok": report.ok,
                    "rows": report.rows,
                    "versions": report.versions,
                    "damage": [vars(d) for d in report.damage],
                }
            )
        )
    if report.ok:
        err.print(f"no damage found in lake {uri} (rows checked: {checked})", highlight=False)
        return
    for d in report.damage[:50]:
        console.print(str(d), highlight=False, soft_wrap=True)
    if len(report.damage) > 50:
        console.print(f"... and {len(report.damage) - 50} more (--json lists all)")
    err.print(
        f"damage found in lake {uri}: {len(report.damage)} finding(s) (rows checked: "
        f"{checked}); see docs/lake.md, 'When the lake is damaged'",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


@lake_app.command("serve")
def serve_cmd(
    lake: LakeOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port)")] = 8765,
) -> None:
    """Browse the lake in a web browser: a local, read-only explorer (docs/explorer.md).

    Prints its URL, then serves until Ctrl-C. Pages: problems (filters), trajectories (syntax
    highlighting, log-probs, S_t heat strips), runs (metrics plots, batches), compare, SQL.
    """
    from spo_cli.lake_cmds import _check_read_only

    from spo_store.errors import SpoError
    from spo_store.explorer import serve

    if not 0 <= port <= 65535:
        raise SpoError(f"--port {port}: must be between 0 and 65535")
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"warning: --host {host} lets other machines read this lake (no login, no TLS); "
            "its SQL page reads the lake's tables only, no other file here",
            highlight=False,
            soft_wrap=True,
        )
    # The SQL page refuses what `spo sql` refuses: one rule, spo sql's own check.
    serve(
        lake,
        host=host,
        port=port,
        sql_guard=_check_read_only,
        say=lambda m: console.print(m, highlight=False, soft_wrap=True),
    )


def register(app: typer.Typer) -> None:
    """The commands attach to `lake_app`, which `lake_cmds.register` adds to the app."""
