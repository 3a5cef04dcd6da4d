"""Reproduce a logged training batch from `(trajectories version, trajectory ids)`.

Trajectory rows are keyed by `traj_id` and never rewritten by spo (compaction moves them
between files, cleanup drops old manifests), so a batch is reproducible by id alone. While
its version still exists the rows are read at that version (exactly as the trainer saw them);
after `spo lake cleanup` removed it, they are read by id at the latest version, and the
result says so. A row that is gone from the latest version too (only a user's own delete can
do that) raises SpoError naming how many are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote


@dataclass
class ReproducedBatch:
    """The rows of a logged batch, in batch order, and which version they were read at."""

    table: pa.Table
    logged_version: int
    read_version: int

    @property
    def exact_version(self) -> bool:
        return self.logged_version == self.read_version


def fetch_rows_by_ids(
    lake: Lake, version: int, traj_ids: Sequence[str], columns: Sequence[str] | None = None
) -> ReproducedBatch:
    """Rows of `traj_ids` in order, at trajectories `version` if it exists, else the latest."""
    try:
        ds = lake.dataset("trajectories", version=version)
    except SpoError:
        ds = lake.dataset("trajectories")
    ids = pa.array(list(traj_ids), pa.string())
    meta = ds.to_table(columns=["traj_id"], scan_in_order=True)
    con = duckdb.connect()
    try:
        con.register("m", meta.append_column("_pos", pa.array(np.arange(meta.num_rows))))
        con.register("wanted", pa.table({"traj_id": ids, "_ord": np.arange(len(ids))}))
        pos = con.sql(
            "SELECT m._pos FROM wanted w JOIN m USING (traj_id) ORDER BY w._ord"
        ).to_arrow_table()
    finally:
        con.close()
    if pos.num_rows != len(ids):
        missing = len(set(traj_ids) - set(meta.column(0).to_pylist()))
        raise SpoError(
            f"{missing} of {len(set(traj_ids))} trajectory ids of the batch are not in "
            f"trajectories version {ds.version}"
        )
    table = ds.take(pos.column(0), columns=list(columns) if columns else None)
    return ReproducedBatch(table, version, ds.version)


def logged_batch(lake: Lake, run_id: str, step: int) -> dict[str, Any]:
    """The `batches` row of `run_id` at `step` (the last one logged, should a resume repeat it)."""
    rows = (
        lake.dataset("batches")
        .to_table(filter=f"run_id = {sql_quote(run_id)} AND step = {int(step)}")
        .to_pylist()
    )
    if not rows:
        steps = (
            lake.dataset("batches")
            .to_table(columns=["step"], filter=f"run_id = {sql_quote(run_id)}")
            .column(0)
            .to_pylist()
        )
        if not steps:
            raise SpoError(f"run {run_id!r} logged no batch in lake {lake.uri}")
        raise SpoError(
            f"run {run_id!r} logged no batch at step {step}; it logged steps "
            f"{min(steps)}..{max(steps)}"
        )
    return max(rows, key=lambda r: r["created_at"])


def reproduce_batch(
    lake: Lake, run_id: str, step: int, columns: Sequence[str] | None = None
) -> ReproducedBatch:
    """The rows of the batch `run_id` trained on at `step`, in batch order."""
    row = logged_batch(lake, run_id, step)
    return fetch_rows_by_ids(lake, int(row["trajectories_version"]), row["traj_ids"], columns)


__all__ = ["ReproducedBatch", "fetch_rows_by_ids", "logged_batch", "reproduce_batch"]
