"""What `spo sql` adds for analysts: column comments, the values of `trajectories.source`, and
views that say in words what the columns encode (`reward = 0` means passed).

Every table column carries its schema doc (`spo_schemas`, field metadata `doc`) as a DuckDB
comment, so `SELECT * FROM duckdb_columns()`, `spo sql --schema` and the views' own comments
show what each column means without leaving SQL. The views:
- `attempts`: one row per trajectory with `passed` (reward = 0; NULL: not judged), `judged`,
  `reliable` (its problem has no judge_issue) and the problem's name and split;
- `pass_rates`: per problem and source, attempts, judged, passed and pass_rate (passed /
  judged).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import duckdb
import pyarrow as pa
from spo_schemas import TABLES

TRAJECTORY_SOURCES: dict[str, str] = {
    "human": "a dataset's solution (spo ingest human-solutions): reward is its label, or the "
    "judge's verdict with --verify",
    "pi0": "a sample of the reference model pi_0 for its Q0 estimate (spo estimate-q0, spo demo)",
    "eval": "a sample of spo eval (pass@k), at its temperature and top-p",
    "online": "a rollout of spo train's policy (policy_version: the step that sampled it)",
    "rollout": "a sample of spo rollout, from any --model (model_id says which)",
    "pts": "a continuation sampled by spo pts (pivotal token search) from a prefix",
}
"""Every value `trajectories.source` takes, and what the row is."""

_SOURCE_DOC = "who made the row: " + "; ".join(f"{k}: {v}" for k, v in TRAJECTORY_SOURCES.items())

REWARD_DOC = "0 passed every test, -1 failed, NULL not judged (see judge_status)"

VIEWS: dict[str, tuple[str, str, dict[str, str]]] = {
    "attempts": (
        "SELECT t.traj_id, t.problem_id, p.name AS problem_name, p.split, t.source, t.run_id, "
        "t.model_id, t.policy_version, t.language, t.reward, t.reward = 0 AS passed, "
        "t.reward IS NOT NULL AS judged, t.judge_status, t.passed_tests, t.total_tests, "
        "p.judge_issue IS NULL AS reliable, t.response_chars, t.num_response_tokens, "
        "t.created_at FROM trajectories t LEFT JOIN problems p USING (problem_id)",
        "one row per trajectory, with what its reward means in words",
        {
            "passed": "TRUE: passed every test (reward = 0); FALSE: failed; NULL: not judged",
            "judged": "the judge (or a label) gave a reward",
            "reliable": "its problem has no judge_issue (training and eval use only these)",
            "source": _SOURCE_DOC,
            "reward": REWARD_DOC,
        },
    ),
    "pass_rates": (
        "SELECT problem_id, problem_name, split, source, count(*) AS attempts, "
        "count(reward) AS judged, count(*) FILTER (WHERE passed) AS passed, "
        "count(*) FILTER (WHERE passed) / nullif(count(reward), 0) AS pass_rate "
        "FROM attempts GROUP BY ALL",
        "per problem and source: attempts, judged, passed and pass_rate = passed / judged",
        {"pass_rate": "passed / judged (NULL: none judged)", "source": _SOURCE_DOC},
    ),
}


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def add_analyst_views(con: duckdb.DuckDBPyConnection) -> None:
    """Comment every registered table's columns with their schema doc and add `VIEWS`."""
    statements = []
    docs: dict[str, str] = {}  # column name -> doc, for the views' columns of the same name
    for table, schema in TABLES.items():
        for f in schema:
            doc = (f.metadata or {}).get(b"doc", b"").decode()
            if table == "trajectories" and f.name == "source":
                doc = _SOURCE_DOC
            elif table == "trajectories" and f.name == "reward":
                doc = REWARD_DOC
            if doc:
                statements.append(f'COMMENT ON COLUMN {table}."{f.name}" IS {_q(doc)}')
                if table in ("trajectories", "problems"):
                    docs.setdefault(f.name, doc)
    docs.update(problem_name="the problem's name (problems.name)", split=docs.get("split", ""))
    for name, (sql, doc, _) in VIEWS.items():
        statements.append(f"CREATE VIEW {name} AS {sql}")
        statements.append(f"COMMENT ON VIEW {name} IS {_q(doc)}")
    con.execute(";\n".join(statements))
    statements = []
    for name, (_, _, columns) in VIEWS.items():
        names = con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [name]
        ).fetchall()
        for (col,) in names:
            text = columns.get(col) or docs.get(col)
            if text:
                statements.append(f'COMMENT ON COLUMN {name}."{col}" IS {_q(text)}')
    con.execute(";\n".join(statements))


SCHEMA_QUERY = (
    'SELECT table_name AS "table", column_name AS "column", data_type AS type, comment '
    "FROM duckdb_columns() WHERE NOT internal ORDER BY table_name, column_index"
)
"""Every table and view of `spo sql` with its columns, types and comments."""


def check_parquet_schema(schema: pa.Schema) -> None:
    """Raise SpoError naming the columns of `schema` Parquet has no type for (DuckDB's
    INTERVAL, say), before anything is written."""
    from spo_store.errors import SpoError

    bad = [f.name for f in schema if _no_parquet_type(f.type)]
    if bad:
        raise SpoError(
            f"this result cannot be written as Parquet: column {', '.join(bad)} has a type "
            "Parquet lacks (an INTERVAL); cast it (e.g. ::VARCHAR) or choose CSV or JSON"
        )


def result_parquet(table: pa.Table, sink: Any) -> None:
    """Write a query result as Parquet to `sink` (a path or a pyarrow output stream), what
    `spo sql --format parquet` does. Raises SpoError naming the column for a type Parquet
    has no equivalent of (`check_parquet_schema`)."""
    import pyarrow.parquet as pq

    check_parquet_schema(table.schema)
    pq.write_table(table, sink)


def parquet_chunks(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Iterator[bytes]:
    """The Parquet file of `batches` as byte chunks, one row group per batch, so a large
    result streams in bounded memory (the explorer's download). Call
    `check_parquet_schema` first."""
    import pyarrow.parquet as pq

    class Chunks:  # the file-like sink pyarrow writes to; drained after each row group
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.pos = 0
            self.closed = False

        def write(self, data: Any) -> int:
            chunk = bytes(data)
            self.parts.append(chunk)
            self.pos += len(chunk)
            return len(chunk)

        def tell(self) -> int:
            return self.pos

        def flush(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

        def drain(self) -> bytes:
            out, self.parts = b"".join(self.parts), []
            return out

    sink = Chunks()
    writer = pq.ParquetWriter(sink, schema)
    try:
        for batch in batches:
            writer.write_batch(batch)
            if chunk := sink.drain():
                yield chunk
    finally:
        writer.close()
    yield sink.drain()


def _no_parquet_type(t: pa.DataType) -> bool:
    if pa.types.is_interval(t):
        return True
    return any(_no_parquet_type(t.field(i).type) for i in range(t.num_fields))


def csv_chunks(names: list[str], batches: Iterable[pa.RecordBatch]) -> Iterator[str]:
    """A query result as CSV, what `spo sql --format csv` prints: a header row, LF line
    ends, NULL as `NULL`, timestamps in ISO 8601 with their microseconds and zone, floats in
    full (`repr`), other values as `str`; one chunk per batch (the header first)."""
    import csv
    import datetime as dt
    import io

    def cell(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        return str(value)

    def lines(rows: Iterable[Iterable[Any]]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")  # LF: shells keep no stray \r
        writer.writerows(rows)
        return buf.getvalue()

    yield lines([names])
    for batch in batches:
        yield lines([cell(v) for v in row.values()] for row in batch.to_pylist())


def result_csv(table: pa.Table) -> str:
    """`table` as one CSV text (`csv_chunks`)."""
    return "".join(csv_chunks(table.column_names, table.to_batches()))
