"""Lake maintenance: versions, tags, compaction, cleanup and export to Parquet.

A lake tag names one version of every table (`<tag>` on each dataset). Cleanup never removes a
tagged version, nor any version newer than the safety window, because a reader (a trainer
reproducing a batch, a running SQL scan) may still hold it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from spo_schemas import TABLES

from spo_store.errors import SpoError
from spo_store.lake import Lake

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_SAFETY_WINDOW = dt.timedelta(days=7)
COMPACT_THRESHOLD_FRAGMENTS = 32


def _tables(tables: Sequence[str] | None) -> list[str]:
    chosen = list(tables) if tables else list(TABLES)
    for name in chosen:
        if name not in TABLES:
            raise SpoError(f"unknown lake table {name!r}; tables: {', '.join(TABLES)}")
    return chosen


def list_versions(lake: Lake, tables: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every version of the chosen tables, with time, row count and tags."""
    rows = []
    for name in _tables(tables):
        ds = lake.dataset(name)
        tags_by_version: dict[int, list[str]] = {}
        for tag, info in ds.tags.list().items():
            tags_by_version.setdefault(info["version"], []).append(tag)
        for v in ds.versions():
            rows.append(
                {
                    "table": name,
                    "version": v["version"],
                    "timestamp": v["timestamp"],
                    "rows": int(v["metadata"].get("total_rows", 0)),
                    "fragments": int(v["metadata"].get("total_fragments", 0)),
                    "tags": ",".join(sorted(tags_by_version.get(v["version"], []))),
                }
            )
    return rows


def tag_lake(lake: Lake, tag: str, tables: Sequence[str] | None = None) -> dict[str, int]:
    """Tag the current version of each table `tag`; returns the tagged versions."""
    if not TAG_PATTERN.match(tag):
        raise SpoError(f"tag {tag!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    tagged = {}
    for name in _tables(tables):
        ds = lake.dataset(name)
        if tag in ds.tags.list():
            raise SpoError(f"tag {tag!r} already exists on table {name!r}")
        ds.tags.create(tag, ds.version)
        tagged[name] = ds.version
    return tagged


def fragment_counts(lake: Lake) -> dict[str, int]:
    return {name: len(lake.dataset(name).get_fragments()) for name in TABLES}


def _is_commit_conflict(exc: BaseException) -> bool:
    """Lance's "Retryable commit conflict": another writer committed a conflicting change
    (e.g. two processes compacting the same table at once) and this commit was dropped."""
    return "commit conflict" in str(exc).lower()


def compact(
    lake: Lake,
    tables: Sequence[str] | None = None,
    *,
    min_fragments: int = 2,
    attempts: int = 3,
) -> dict[str, tuple[int, int]]:
    """Merge small fragments; returns `{table: (fragments before, after)}`.

    Compaction commits a Rewrite, which Lance reconciles with concurrent appends; a Rewrite
    preempted by another writer's Rewrite (two processes compacting one table) is retried on
    the new version up to `attempts` times, then left to the other writer (nothing is lost:
    the dropped rewrite's files are garbage for `cleanup`).
    """
    out = {}
    for name in _tables(tables):
        before = len(lake.dataset(name).get_fragments())
        for _attempt in range(attempts):
            ds = lake.dataset(name)
            if len(ds.get_fragments()) < min_fragments:
                break
            try:
                ds.optimize.compact_files(
                    target_rows_per_fragment=1 << 20, materialize_deletions=True
                )
                break
            except (OSError, RuntimeError, ValueError) as exc:
                if not _is_commit_conflict(exc):
                    raise
                # another writer compacted first: retry on its version (or leave it its result)
        # Compaction remaps the key index onto the new fragments; rows appended since it was
        # last updated are folded in now, so key checks start from a whole index.
        lake.ensure_key_index(name, fold_all=True)
        out[name] = (before, len(lake.dataset(name).get_fragments()))
    return out


def maybe_compact(lake: Lake, threshold: int = COMPACT_THRESHOLD_FRAGMENTS) -> None:
    """Compact the tables whose fragment count passed `threshold` (called by long writers;
    several processes may do it at once on one lake: see `compact`)."""
    crowded = [n for n, c in fragment_counts(lake).items() if c > threshold]
    if crowded:
        compact(lake, crowded)


def cleanup(
    lake: Lake,
    tables: Sequence[str] | None = None,
    *,
    older_than: dt.timedelta = DEFAULT_SAFETY_WINDOW,
) -> dict[str, int]:
    """Remove versions older than `older_than` that no tag holds; returns bytes removed per table."""
    if older_than < dt.timedelta(0):
        raise SpoError("cleanup window must not be negative")
    removed = {}
    for name in _tables(tables):
        stats = lake.dataset(name).cleanup_old_versions(
            older_than=older_than, error_if_tagged_old_versions=False
        )
        removed[name] = int(getattr(stats, "bytes_removed", 0))
    return removed


def export_parquet(
    lake: Lake,
    output: str | Path,
    tables: Sequence[str] | None = None,
    *,
    version: str | int | None = None,
) -> dict[str, int]:
    """Write each table (at `version`, a number or tag, else latest) to `output/<table>.parquet`.

    Each file is written to a temporary name and renamed, so a failed export leaves no
    half-written file.
    """
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in _tables(tables):
        ds = lake.dataset(name, version=version) if version is not None else lake.dataset(name)
        target = out_dir / f"{name}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        rows = 0
        with pq.ParquetWriter(tmp, ds.schema, compression="zstd") as writer:
            for batch in ds.to_batches(batch_size=4096):
                writer.write_batch(batch)
                rows += batch.num_rows
        tmp.replace(target)
        counts[name] = rows
    return counts
