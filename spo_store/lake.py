"""The lake: one Lance dataset per table under a root URI, DuckDB SQL over them, provenance.

Design (see docs/lake.md):
- Writes are appends of whole batches: `write_fragments` then one `commit` with retries, so
  concurrent writers never lose or duplicate rows and a killed writer leaves only invisible,
  uncommitted files behind.
- Every write belongs to a run (`runs` table) that records config, input checksums, the lake
  versions at start and the code version.
- Each dataset carries `spo.schema_version`; a lake written by another version is refused
  with a message naming the versions (see `check_schema`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import lance
import polars as pl
import pyarrow as pa
from lance.fragment import write_fragments
from spo_schemas import KEYS, SCHEMA_VERSION, TABLES, VERSION_KEY, table_schema

from spo_store.errors import SpoError, environment_error
from spo_store.objstore import check_remote_lake, folder_entries, is_remote, lake_lock
from spo_store.stopping import stop_requested

DEFAULT_LAKE = "./spo-lake"
DUCKDB_CONFIG = {
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "allow_community_extensions": "false",
}
"""DuckDB settings of every lake connection: no extension is downloaded or loaded."""
COMMIT_RETRIES = 50
# A keyed table gets a BTREE index on its key from this many rows (`Lake.ensure_key_index`),
# and rows appended after it are folded in once this many are outside it (a key check scans
# those rows: 100k keys cost about as much as the index lookup itself).
KEY_INDEX_MIN_ROWS = 50_000
KEY_INDEX_MAX_UNINDEXED = 100_000


def resolve_lake_uri(uri: str | os.PathLike[str] | None) -> str:
    """`uri` if given, else `$SPO_LAKE`, else `./spo-lake`. Object-store URIs (`s3://`) pass
    untouched but for a trailing slash; local paths become absolute."""
    chosen = str(uri) if uri else os.environ.get("SPO_LAKE") or DEFAULT_LAKE
    if "://" in chosen:
        return chosen.rstrip("/")
    return str(Path(chosen).expanduser().resolve())


def lake_origin(uri: str | os.PathLike[str] | None) -> str:
    """Where a command's lake path came from (`resolve_lake_uri`'s order), for the messages
    about a lake that is not there: a `$SPO_LAKE` set long ago, or the default `./spo-lake`
    of the current folder, is not what a user looks at first."""
    if uri:
        return "from --lake"
    if os.environ.get("SPO_LAKE"):
        return "from $SPO_LAKE"
    return f"the default {DEFAULT_LAKE}: no --lake given, $SPO_LAKE not set"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id(prefix: str) -> str:
    """A sortable unique id: prefix, UTC time, random suffix."""
    return f"{prefix}-{utc_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RUN_STATUSES = ("running", "completed", "failed", "interrupted")
"""What `runs.status` means, the same in every command: `running` (in progress, or its
process died without a word on another host); `completed` (it did all it was asked);
`failed` (an error stopped it: bad data, a bug, out of memory; rerunning the same command
fails the same way until the cause is fixed); `interrupted` (stopped from outside: Ctrl-C,
SIGTERM from timeout/Slurm/Docker, or found dead by `Lake.sweep_dead_runs`; its committed work
is kept and rerunning the command resumes)."""


PROCESS_RUNS: dict[str, str] = {}
"""Runs started (or resumed) by this process, run_id -> status it last recorded (`running`
until `end_run`); `spo` names the interrupted ones when a signal stops a command."""


def run_status(exc: BaseException | None) -> str:
    """The `runs.status` a command ending with `exc` records (None: completed)."""
    if exc is None:
        return "completed"
    stopped = isinstance(exc, KeyboardInterrupt) or stop_requested()
    return "interrupted" if stopped else "failed"


def _host() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _process_alive_since(pid: int, started_at: dt.datetime | None) -> bool:
    """Whether process `pid` exists and was started before `started_at` (else the pid was
    reused by another process after the run's own one died)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    if started_at is None:
        return True
    try:  # Linux: field 22 of /proc/PID/stat is the start time in clock ticks after boot
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    began = btime + ticks / os.sysconf("SC_CLK_TCK")
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=dt.UTC)
    return began <= started_at.timestamp() + 2.0


def code_version() -> str:
    """spo's version plus the git commit of the checkout it runs from, when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("spo")
    except PackageNotFoundError:
        ver = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"spo {ver}" + (f" ({commit})" if commit else "")


def to_table(name: str, rows: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    """Cast `rows` to the schema of table `name`: missing nullable columns become NULL.

    Unknown columns and missing required columns raise SpoError (a typo must not vanish).
    """
    schema = table_schema(name)
    if not isinstance(rows, pa.Table):
        rows = list(rows)
        if not rows:
            return schema.empty_table()
        # Every key of every row (pa.Table.from_pylist alone would keep only the first row's).
        keys = set().union(*(r.keys() for r in rows)) if rows else set()
        unknown = keys - set(schema.names)
        if unknown:
            raise SpoError(f"table {name!r} has no column(s) {sorted(unknown)}")
        try:
            rows = pa.Table.from_pylist(
                rows, schema=pa.schema([f for f in schema if f.name in keys])
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SpoError(f"table {name!r}: cannot store these rows ({exc})") from exc
    unknown = set(rows.column_names) - set(schema.names)
    if unknown:
        raise SpoError(f"table {name!r} has no column(s) {sorted(unknown)}")
    arrays = []
    for field in schema:
        if field.name in rows.column_names:
            col = rows.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SpoError(
                        f"table {name!r} column {field.name!r}: cannot store {col.type} as "
                        f"{field.type} ({exc})"
                    ) from exc
            if not field.nullable and col.null_count:
                raise SpoError(f"table {name!r} column {field.name!r} must not be NULL")
            arrays.append(col)
        elif field.nullable:
            arrays.append(pa.nulls(rows.num_rows, field.type))
        else:
            raise SpoError(f"table {name!r} needs column {field.name!r}")
    return pa.Table.from_arrays(arrays, schema=schema)


class Lake:
    """A lake of Lance datasets under one root; create with `Lake.open(uri)`."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._datasets: dict[str, lance.LanceDataset] = {}

    # ------------------------------------------------------------------ open / datasets
    @classmethod
    def open(cls, uri: str | os.PathLike[str] | None = None, *, create: bool = True) -> Lake:
        """Open the lake at `uri` (see `resolve_lake_uri`), creating missing tables.

        Only a folder that is new, empty, or holds nothing but an spo lake's tables and locks
        may become a lake (`check_lake_folder`): any other is refused with SpoError, whatever
        the command, so a mistyped `--lake` or `$SPO_LAKE` never fills a folder of other files.
        """
        lake = cls(resolve_lake_uri(uri))
        if is_remote(lake.uri):
            check_remote_lake(lake.uri)
        else:
            root = Path(lake.uri)
            if root.exists() and not root.is_dir():
                raise SpoError(
                    f"lake path {lake.uri} ({lake_origin(uri)}) exists and is not a directory"
                )
            if not root.exists() and not create:
                raise SpoError(
                    f"no lake at {lake.uri} ({lake_origin(uri)}): check the path; an ingest "
                    "creates a lake"
                )
        check_lake_folder(lake.uri, folder_entries(lake.uri))
        if not is_remote(lake.uri):
            Path(lake.uri).mkdir(parents=True, exist_ok=True)
        # Check the tables that exist before creating missing ones: a lake of another schema
        # version is refused (or sent to `spo lake migrate`) without being touched.
        missing = []
        for name in TABLES:
            try:
                ds = lance.dataset(lake.table_uri(name))
            except (ValueError, FileNotFoundError, OSError) as exc:
                check_unopened_table(lake.uri, name, exc)
                missing.append(name)
                continue
            check_schema(name, ds, lake.uri)
            lake._datasets[name] = ds
        if not create and len(missing) == len(TABLES):
            raise SpoError(
                f"no lake at {lake.uri} ({lake_origin(uri)}): check the path; an ingest creates "
                "a lake"
            )
        for name in missing:
            lake._ensure_table(name, create=create)
        return lake

    def table_uri(self, name: str) -> str:
        if name not in TABLES:
            raise SpoError(f"unknown lake table {name!r}; tables: {', '.join(TABLES)}")
        return f"{self.uri}/{name}.lance"

    def _ensure_table(self, name: str, *, create: bool) -> None:
        try:
            ds = lance.dataset(self.table_uri(name))
        except (ValueError, FileNotFoundError, OSError) as exc:
            check_unopened_table(self.uri, name, exc)
            if not create:
                raise SpoError(f"lake {self.uri} has no table {name!r}") from None
            ds = self._create_table(name)
        check_schema(name, ds, self.uri)
        self._datasets[name] = ds

    def _create_table(self, name: str) -> lance.LanceDataset:
        """Create table `name` empty, once, even when several processes open a new lake.

        Lance's existence check and its commit are not atomic: two racing `mode="create"`
        writes can both pass the check, and the loser's commit is retried as an overwrite at
        the next version, which would erase rows appended in between. Tables are therefore
        created under the lake's `create` lock (`objstore.lake_lock`: flock locally, a lease
        object on S3) and re-checked inside it.
        """
        uri = self.table_uri(name)
        with lake_lock(self.uri, "create"):
            try:
                return lance.dataset(uri)
            except (ValueError, FileNotFoundError, OSError):
                return lance.write_dataset(table_schema(name).empty_table(), uri, mode="create")

    def dataset(self, name: str, version: int | str | None = None) -> lance.LanceDataset:
        """The dataset of table `name` at its latest version (refreshed), or at `version`."""
        uri = self.table_uri(name)
        if version is not None:
            try:
                return lance.dataset(uri, version=version)
            except (ValueError, OSError) as exc:
                raise SpoError(f"table {name!r} has no version {version!r}") from exc
        ds = self._datasets.get(name)
        if ds is None:
            ds = lance.dataset(uri)
        else:
            latest = ds.latest_version
            if latest != ds.version:
                ds = ds.checkout_version(latest)
        self._datasets[name] = ds
        return ds

    def versions(self) -> dict[str, int]:
        """The latest version of every table: the lake's version."""
        return {name: self.dataset(name).version for name in TABLES}

    # ------------------------------------------------------------------ writes
    def append(self, name: str, rows: pa.Table | Sequence[Mapping[str, Any]]) -> int:
        """Append `rows` to table `name` as one atomic commit; returns the new version.

        Fragments are written first (invisible until committed), then committed with retries:
        concurrent appenders each land exactly once.
        """
        table = to_table(name, rows)
        if table.num_rows == 0:
            return self.dataset(name).version
        uri = self.table_uri(name)
        fragments = write_fragments(table, uri, schema=table.schema)
        return self._commit_append(name, fragments)

    def insert_new(
        self, name: str, rows: pa.Table | Sequence[Mapping[str, Any]]
    ) -> tuple[int, int]:
        """Append the rows of keyed table `name` whose key is not in the table yet.

        Returns `(new version, rows inserted)`. Atomic under concurrent writers, local or on
        S3: the key check and the append run under the table's exclusive lock
        (`objstore.lake_lock`; Lance's own merge-insert does not re-check keys when it rebases
        a concurrent commit: 6 processes inserting the same 200 keys stored 400-800 rows here).
        Duplicate keys within `rows` keep their first row. Raises SpoError for a table without
        a key (see `spo_schemas.KEYS`), or when an S3 lock was lost before the commit.
        """
        key = KEYS.get(name)
        if key is None:
            raise SpoError(f"table {name!r} has no key; use append")
        table = to_table(name, rows)
        if table.num_rows == 0:
            return self.dataset(name).version, 0
        # first row per key within the batch
        keys = table.column(key).to_pylist()
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if len(first) != len(keys):
            table = table.take(pa.array(sorted(first.values()), pa.int64()))
        with self._table_lock(name) as lock:
            self.ensure_key_index(name)
            existing = self._existing_keys(name, key, list(first))
            if existing:
                mask = pa.array([k not in existing for k in table.column(key).to_pylist()])
                table = table.filter(mask)
            if table.num_rows == 0:
                return self.dataset(name).version, 0
            fragments = write_fragments(table, self.table_uri(name), schema=table.schema)
            lock.check()
            return self._commit_append(name, fragments), table.num_rows

    def ensure_key_index(self, name: str, *, fold_all: bool = False) -> str | None:
        """Keep a BTREE scalar index on the key of table `name`, so a key check reads index
        pages plus the rows appended since the index was last updated, not every key.

        Creates the index once the table has `KEY_INDEX_MIN_ROWS` rows (below that a scan is
        as cheap), and folds appended rows into it (`optimize_indices`, work proportional to
        the new rows) once more than `KEY_INDEX_MAX_UNINDEXED` are outside it, or whenever
        some are with `fold_all` (compaction). Lance searches unindexed fragments too, so a
        key check is exact in between. Call under the table's keyed-write lock (insert_new
        does; compaction runs it unlocked: Lance reconciles an index commit with concurrent
        appends). Returns what it did: "created", "updated" or None.
        """
        key = KEYS.get(name)
        if key is None:
            return None
        ds = self.dataset(name)
        index = next((i for i in ds.describe_indices() if i.field_names == [key]), None)
        if index is None:
            if ds.count_rows() < KEY_INDEX_MIN_ROWS:
                return None
            ds.create_scalar_index(key, "BTREE", name=f"{key}_idx")
            self._datasets.pop(name, None)
            return "created"
        indexed = {f for seg in index.segments for f in seg.fragment_ids}
        unindexed = sum(
            f.metadata.physical_rows for f in ds.get_fragments() if f.fragment_id not in indexed
        )
        if unindexed > (0 if fold_all else KEY_INDEX_MAX_UNINDEXED):
            ds.optimize.optimize_indices(index_names=[index.name])
            self._datasets.pop(name, None)
            return "updated"
        return None

    def _existing_keys(self, name: str, key: str, candidates: list[str]) -> set[str]:
        """Which of `candidates` are already keys of table `name` (latest version)."""
        found: set[str] = set()
        ds = self.dataset(name)
        for start in range(0, len(candidates), 5000):
            chunk = candidates[start : start + 5000]
            ids = ", ".join(sql_quote(k) for k in chunk)
            found.update(
                ds.to_table(columns=[key], filter=f"{key} IN ({ids})").column(0).to_pylist()
            )
        return found

    def _table_lock(self, name: str) -> Any:
        """The exclusive lock for keyed writes to `name`: `<lake>/.<name>.lock` (see
        `objstore.lake_lock`); entered, it yields an object whose `check()` raises SpoError
        when the lock was lost."""
        return lake_lock(self.uri, name)

    def _commit_append(self, name: str, fragments: list[Any]) -> int:
        uri = self.table_uri(name)
        op = lance.LanceOperation.Append(fragments)
        for attempt in range(COMMIT_RETRIES):
            try:
                read_version = lance.dataset(uri).latest_version
                ds = lance.LanceDataset.commit(
                    uri, op, read_version=read_version, max_retries=COMMIT_RETRIES
                )
                self._datasets[name] = ds
                return ds.version
            except OSError as exc:
                if "conflict" not in str(exc).lower() or attempt == COMMIT_RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def upsert(self, name: str, rows: pa.Table, key: str) -> int:
        """Insert rows of `rows`, replacing existing rows with the same `key` (one commit)."""
        table = to_table(name, rows)
        if table.num_rows == 0:
            return self.dataset(name).version
        ds = self.dataset(name)
        (
            ds.merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(table)
        )
        return self.dataset(name).version

    def update_rows(self, name: str, key: str, updates: Sequence[Mapping[str, Any]]) -> int:
        """Set some columns of existing rows, matched on `key`, in one commit.

        Each update is `{key: value, column: new value, ...}`; the other columns keep their
        values (rows are read, patched and merged back). On a keyed table (`spo_schemas.KEYS`)
        the read and the merge run under the table's keyed-write lock, the one `insert_new`
        takes: Lance's merge-insert does not re-check keys against a concurrent commit, so an
        unlocked update racing an insert could store a key twice. Raises SpoError when a key
        is not in the table.
        """
        if not updates:
            return self.dataset(name).version
        lock = self._table_lock(name) if name in KEYS else contextlib.nullcontext()
        with lock as held:
            by_key = {u[key]: u for u in updates}
            keys = ", ".join(sql_quote(k) for k in by_key)
            current = self.dataset(name).to_table(filter=f"{key} IN ({keys})").to_pylist()
            missing = set(by_key) - {r[key] for r in current}
            if missing:
                raise SpoError(f"table {name!r} has no row with {key} in {sorted(missing)[:3]}")
            for row in current:
                row.update(by_key[row[key]])
            table = pa.Table.from_pylist(current, schema=table_schema(name))
            if held is not None:
                held.check()
            return self.upsert(name, table, key)

    # ------------------------------------------------------------------ runs / provenance
    def start_run(
        self,
        kind: str,
        config: Mapping[str, Any] | None = None,
        *,
        inputs: Iterable[str | os.PathLike[str]] = (),
        model_id: str | None = None,
        tokenizer_id: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a new run (config, input checksums, lake versions, code version) as `running`.

        `host` is `user@hostname pid N` (the process that runs it); first, `running` runs of
        this host whose process is gone (kill -9, power loss) are marked `interrupted`
        (`sweep_dead_runs`). Call it after validating the command's options, so a refusal
        leaves no run behind; end the run with `end_run` or use `Lake.run`.
        """
        run_id = run_id or new_id(kind)
        input_rows = [{"path": str(p), "sha256": file_sha256(p)} for p in inputs]
        self.sweep_dead_runs()
        self.append(
            "runs",
            [
                {
                    "run_id": run_id,
                    "kind": kind,
                    "status": "running",
                    "model_id": model_id,
                    "tokenizer_id": tokenizer_id,
                    "config": json.dumps(dict(config or {}), default=str, sort_keys=True),
                    "inputs": json.dumps(input_rows),
                    "lake_version_at_start": json.dumps(self.versions()),
                    "code_version": code_version(),
                    "host": f"{_host()} pid {os.getpid()}",
                    "parent_run_id": parent_run_id,
                    "started_at": utc_now(),
                }
            ],
        )
        PROCESS_RUNS[run_id] = "running"
        return run_id

    def end_run(self, run_id: str, status: str = "completed") -> None:
        """Mark a run finished: `completed`, `failed` or `interrupted` (see `RUN_STATUSES`).

        Called with `failed` while a KeyboardInterrupt (Ctrl-C, or SIGTERM as `spo` turns it
        into one) is being handled, or after a stop signal whatever exception it became
        (`spo_store.stopping`), it records `interrupted`: the run was stopped from outside,
        not broken. Raises SpoError for another status.
        """
        if status not in RUN_STATUSES or status == "running":
            raise SpoError(f"run status {status!r} is not one of completed, failed, interrupted")
        if status == "failed" and (
            isinstance(sys.exc_info()[1], KeyboardInterrupt) or stop_requested()
        ):
            status = "interrupted"
        now = utc_now().strftime("%Y-%m-%d %H:%M:%S.%f")
        self.dataset("runs").update(
            {"status": f"'{status}'", "ended_at": f"CAST('{now}' AS TIMESTAMP)"},
            where=f"run_id = {sql_quote(run_id)}",
            conflict_retries=COMMIT_RETRIES,
        )
        self._datasets.pop("runs", None)
        PROCESS_RUNS[run_id] = status

    def resume_run(self, run_id: str) -> None:
        """Mark an `interrupted` (or `failed`) run `running` again, in this process (`spo train
        --resume` continues the same run id): host gets this pid, `ended_at` is cleared.
        Raises SpoError for a run id not in `runs`."""
        ds = self.dataset("runs")
        if not self.sql_arrow(f"SELECT 1 FROM runs WHERE run_id = {sql_quote(run_id)}").num_rows:
            raise SpoError(f"no run {run_id!r} in lake {self.uri}")
        ds.update(
            {
                "status": "'running'",
                "ended_at": "CAST(NULL AS TIMESTAMP)",
                "host": sql_quote(f"{_host()} pid {os.getpid()}"),
            },
            where=f"run_id = {sql_quote(run_id)}",
            conflict_retries=COMMIT_RETRIES,
        )
        self._datasets.pop("runs", None)
        PROCESS_RUNS[run_id] = "running"

    @contextlib.contextmanager
    def run(self, kind: str, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """`with lake.run(kind, config) as run_id:` - `start_run`, then `end_run` with the
        status the block's outcome means (`run_status`): completed, interrupted or failed."""
        run_id = self.start_run(kind, config, **kwargs)
        try:
            yield run_id
        except BaseException as exc:
            self.end_run(run_id, run_status(exc))
            raise
        self.end_run(run_id, "completed")

    def sweep_dead_runs(self) -> list[str]:
        """Mark `interrupted` the `running` runs started on this host by a process that is gone
        (kill -9, OOM killer, power loss: nothing could record their end); their `ended_at`
        is the sweep time (when the death was noticed, not when it happened). Cheap: it reads
        only this host's `running` rows. Returns their run ids. Runs of other hosts are left alone (their processes
        cannot be checked from here)."""
        me = _host()
        rows = self.sql_arrow(
            "SELECT run_id, host, started_at FROM runs WHERE status = 'running' "
            f"AND host LIKE {sql_quote(me + ' pid %')}"
        ).to_pylist()
        dead = []
        for r in rows:
            try:
                pid = int(r["host"].rsplit(" pid ", 1)[1])
            except (IndexError, ValueError):
                continue
            if not _process_alive_since(pid, r["started_at"]):
                dead.append(r["run_id"])
        if dead:
            ids = ", ".join(sql_quote(x) for x in dead)
            # The death time is unknown: ended_at records when it was noticed (this sweep).
            now = utc_now().strftime("%Y-%m-%d %H:%M:%S.%f")
            self.dataset("runs").update(
                {"status": "'interrupted'", "ended_at": f"CAST('{now}' AS TIMESTAMP)"},
                where=f"run_id IN ({ids}) AND status = 'running'",
                conflict_retries=COMMIT_RETRIES,
            )
            self._datasets.pop("runs", None)
        return dead

    def log_metrics(
        self, run_id: str, step: int, values: Mapping[str, float], split: str | None = None
    ) -> None:
        now = utc_now()
        self.append(
            "metrics",
            [
                {
                    "run_id": run_id,
                    "step": step,
                    "name": k,
                    "value": float(v),
                    "split": split,
                    "created_at": now,
                }
                for k, v in values.items()
            ],
        )

    # ------------------------------------------------------------------ reads
    def sql(self, query: str) -> pl.DataFrame:
        """Run DuckDB SQL over the lake's tables (by name); returns a polars DataFrame."""
        return pl.from_arrow(self.sql_arrow(query))

    def sql_arrow(self, query: str, *, analyst: bool = False, local_files: bool = True) -> pa.Table:
        """Run DuckDB SQL over the lake's tables; `analyst=True` adds the column comments and
        views of `spo_store.analyst` (what `spo sql` shows); `local_files=False` refuses
        reading files outside the lake (`Lake.duckdb`). Raises SpoError (one line)."""
        con = self.duckdb(analyst=analyst, local_files=local_files)
        try:
            return con.sql(query).to_arrow_table() if query.strip() else pa.table({})
        except duckdb.Error as exc:
            from spo_store.errors import environment_error

            known = environment_error(exc)  # a damaged data file, a full disk while spilling
            if known is not None:
                raise SpoError(known, exit_code=1) from exc
            first = str(exc).strip().splitlines()[0]
            raise SpoError(f"SQL error: {first}") from exc
        finally:
            con.close()

    def duckdb(
        self, *, analyst: bool = False, local_files: bool = True
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with every table registered under its name (latest versions).

        DuckDB scans the Lance datasets directly with projection and filter pushdown, so a
        query that names only light columns never reads token ids or text. The connection
        stays local: DuckDB may not install or load extensions (an `http://` or `s3://` path
        is an error, not a download), and its configuration is locked so a query cannot
        change that. Local files stay readable (`read_parquet('x.parquet')`) unless
        `local_files=False` (DuckDB's `enable_external_access`: the lake's tables only; what
        `spo lake serve` uses when it listens beyond this machine).
        """
        config = dict(DUCKDB_CONFIG)
        if not local_files:
            config["enable_external_access"] = "false"
        con = duckdb.connect(config=config)
        for name in TABLES:
            con.register(name, self.dataset(name))
        if analyst:
            from spo_store.analyst import add_analyst_views

            add_analyst_views(con)
        con.execute("SET lock_configuration = true")
        return con

    def get_problem(self, id_or_name: str) -> dict[str, Any]:
        """One problem by id, name or short name (`127_C` for "127_C. Hot Bath", see
        `match_problems`), with all its tests combined under `tests`. Raises SpoError for
        none or several matches (listing them)."""
        ds = self.dataset("problems")
        q = sql_quote(id_or_name)
        rows = ds.to_table(filter=f"problem_id = {q} OR name = {q}").to_pylist()
        if not rows:
            light = ds.to_table(columns=["problem_id", "name"]).to_pylist()
            ids = {r["problem_id"] for r in match_problems(light, id_or_name)}
            if ids:
                quoted = ", ".join(sql_quote(i) for i in sorted(ids))
                rows = ds.to_table(filter=f"problem_id IN ({quoted})").to_pylist()
        if not rows:
            raise SpoError(f"no problem with id or name {id_or_name!r} in lake {self.uri}")
        if len({r["problem_id"] for r in rows}) > 1:
            names = "; ".join(sorted(f"{r['problem_id']} ({r['name']})" for r in rows))
            raise SpoError(f"{id_or_name!r} matches several problems: {names}; use an id")
        row = rows[0]
        row["tests"] = problem_tests(row)
        return row

    def delete_rows(self, name: str, where: str) -> int:
        """Delete the rows of table `name` matching the Lance SQL predicate `where` (one
        commit); returns the new version. Used by `spo train --resume`
        to drop what a killed run logged after its last checkpoint (metrics, batches)."""
        self.dataset(name).delete(where)
        self._datasets.pop(name, None)
        return self.dataset(name).version


def problem_tests(
    row: Mapping[str, Any], kinds: Sequence[str] = ("public", "private", "generated")
) -> list[dict[str, str]]:
    """The tests of a problem row as a list of {"input", "output"} (public first)."""
    tests: list[dict[str, str]] = []
    for kind in kinds:
        block = row.get(f"{kind}_tests") or {}
        for inp, out in zip(block.get("input") or [], block.get("output") or [], strict=False):
            tests.append({"input": inp, "output": out})
    return tests


def match_problems(rows: Sequence[Mapping[str, Any]], wanted: str) -> list[Mapping[str, Any]]:
    """The rows (with `problem_id`, `name`) `wanted` names: its exact id, else its exact name,
    else names starting with `wanted` + "." - the short name of CodeContests' "<id>. <title>"
    names ("127_C" -> "127_C. Hot Bath"). Several matches are returned for the caller to
    refuse."""
    for test in (
        lambda r: r["problem_id"] == wanted,
        lambda r: r["name"] == wanted,
        lambda r: (r["name"] or "").startswith(wanted.rstrip(".") + ". "),
    ):
        found = [r for r in rows if test(r)]
        if found:
            return found
    return []


def sql_quote(value: str) -> str:
    """Quote a string literal for Lance/DuckDB SQL filters."""
    return "'" + str(value).replace("'", "''") + "'"


LANCE_LAYOUT = frozenset({"_versions", "data", "_transactions", "_indices", "_deletions", "_refs"})
"""What Lance writes inside a dataset folder (a table whose creation was killed may hold some
of it without a manifest yet: it is created again, not refused)."""


def check_lake_folder(uri: str, entries: Sequence[str]) -> None:
    """The rule of which folders may become a lake, the same for every command, `--lake` and
    `$SPO_LAKE`: a folder that does not exist, an empty one, or one holding only an spo lake's
    entries (`<table>.lance` for the tables in `spo_schemas.TABLES`, and `.<name>.lock` files).
    Anything else (the user's own files, another program's folders) is refused with one line
    naming the folder and what is in it; a `<table>.lance` that is not a Lance dataset is refused
    too, and one without spo's schema metadata by `check_schema` when it is opened.
    `entries`: the names directly under `uri` (`objstore.folder_entries`). Raises SpoError."""
    tables = {f"{name}.lance" for name in TABLES}
    foreign = [
        e for e in entries if e not in tables and not (e.startswith(".") and e.endswith(".lock"))
    ]
    for entry in foreign:
        if entry.endswith(".lance") and _spo_schema_version(f"{uri}/{entry}") is not None:
            # an spo table this spo does not know: the lake was written by a newer spo
            raise SpoError(
                f"lake {uri} holds table {entry.removesuffix('.lance')!r}, unknown to this spo "
                f"(schema version {SCHEMA_VERSION}): it was written by a newer spo; upgrade spo"
            )
    if foreign:
        shown = ", ".join(foreign[:4]) + (
            f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
        )
        raise SpoError(
            f"{uri} is not an spo lake: it holds {shown}; a lake is a new or empty folder, or one "
            "spo made (only <table>.lance folders): check --lake / $SPO_LAKE"
        )


def _spo_schema_version(table_uri: str) -> str | None:
    """`spo.schema_version` of the Lance dataset at `table_uri`; None if none or no dataset."""
    try:
        return (lance.dataset(table_uri).schema.metadata or {}).get(VERSION_KEY)
    except (ValueError, FileNotFoundError, OSError):
        return None


def check_unopened_table(uri: str, name: str, exc: BaseException | None = None) -> None:
    """Refuse a local `<name>.lance` that Lance cannot open and that holds more than Lance's
    own layout (`LANCE_LAYOUT`): another program's folder of that name, never to be
    overwritten; or that holds a committed version (a manifest): a damaged table, which is
    neither missing nor to be created again. Raises SpoError naming the folder; re-raises
    `exc` when the system refused the read (permissions, I/O: the CLI says which)."""
    path = Path(uri) / f"{name}.lance"
    if is_remote(uri) or not path.exists():
        return
    inside = set(os.listdir(path)) if path.is_dir() else {""}
    if not inside <= LANCE_LAYOUT:
        raise SpoError(
            f"{uri} is not an spo lake: {path.name} is not a Lance table; check --lake / $SPO_LAKE"
        )
    versions = path / "_versions"
    if exc is None or not versions.is_dir():
        return
    if not any(p.suffix == ".manifest" for p in versions.iterdir()):
        return
    # A writer racing this open may have committed the table's first version just after our
    # read failed: only a table that still cannot be opened is damaged.
    for _ in range(10):
        try:
            lance.dataset(str(path))
            return
        except (ValueError, FileNotFoundError, OSError) as again:
            exc = again
        time.sleep(0.05)
    if environment_error(exc) is not None and "cannot be read" not in environment_error(exc):
        raise exc
    detail = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", " ".join(str(exc).split()))[:200]
    raise SpoError(
        f"table {name!r} of lake {uri} exists but cannot be opened ({detail}): the lake may be "
        "damaged; run `spo lake verify` and see docs/lake.md, 'When the lake is damaged'",
        exit_code=1,
    )


def check_schema(name: str, ds: lance.LanceDataset, lake_uri: str) -> None:
    """Refuse a table written by another schema version, or one missing required columns."""
    meta = ds.schema.metadata or {}
    found = meta.get(VERSION_KEY)
    if found is None:
        raise SpoError(
            f"table {name!r} in lake {lake_uri} has no spo schema version: not an spo lake; "
            "check --lake / $SPO_LAKE"
        )
    try:
        found_version = int(found)
    except ValueError:
        raise SpoError(
            f"table {name!r} in lake {lake_uri} has spo schema version {found[:20].decode(errors='replace')!r}, not a "
            "number: its metadata is damaged (see docs/lake.md, 'When the lake is damaged')"
        ) from None
    if found_version > SCHEMA_VERSION:
        raise SpoError(
            f"lake {lake_uri} was written by schema version {found_version}, newer than this "
            f"spo's {SCHEMA_VERSION}: upgrade spo"
        )
    if found_version < SCHEMA_VERSION:
        raise SpoError(
            f"lake {lake_uri} uses schema version {found_version}; this spo reads version "
            f"{SCHEMA_VERSION}: run `spo lake migrate --lake {lake_uri}` (it tags every table "
            f"'schema-v{found_version}' first, so nothing of the old lake is lost)"
        )
    missing = set(TABLES[name].names) - set(ds.schema.names)
    if missing:
        raise SpoError(f"table {name!r} in lake {lake_uri} lacks columns {sorted(missing)}")
