"""The sampler's in-memory index and the candidate sets it keeps (see `spo_store.mixture`).

`MetadataIndex` holds the light columns of `trajectories` (and the problems with their q0) and
follows the lake: appends are read as new rows at the end (positions of old rows stay; one
"epoch"), anything else reloads it whole (a new epoch). `KeptCandidates` is one source's
candidate set within an epoch, extended over appended rows by the sampler.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from spo_schemas import light_columns

from spo_store.lake import DUCKDB_CONFIG, Lake
from spo_store.q0_estimates import problems_with_q0_sql

# The staleness window: a source whose predicate ends with `AND <POLICY_WINDOW>` keeps its
# candidates without the window (they grow with appends) and applies it per policy version.
POLICY_WINDOW = "t.policy_version BETWEEN {policy_version} - {staleness} AND {policy_version}"
# A predicate naming the trajectories index itself (a subquery over other rows) is not a
# per-row test: adding rows can change old rows' membership, so it is recomputed whole.
WHOLE_TABLE = re.compile(r"\bt_index\b", re.IGNORECASE)


def split_window(template: str) -> tuple[str, bool]:
    """`(predicate without the trailing policy window, True)` for a source that ends with
    `AND <POLICY_WINDOW>` and uses `{policy_version}` nowhere else (nor a top-level-looking
    OR, whose precedence the split could change); else `(template, False)`."""
    suffix = " AND " + POLICY_WINDOW
    if template.endswith(suffix):
        head = template[: -len(suffix)]
        if "{policy_version}" not in head and " or " not in f" {head.lower()} ":
            return head, True
    return template, False


@dataclass
class KeptCandidates:
    """A source's kept candidate set: row positions (sorted) of the index at `epoch`, computed
    over its first `rows` rows under `problems_version`; `hashes`/`traj_ids` align with
    `positions` for deduplicated sources (the current winner of each content hash)."""

    epoch: int
    problems_version: tuple[int, ...]
    rows: int
    positions: np.ndarray
    hashes: pa.Array | pa.ChunkedArray | None = None
    traj_ids: pa.Array | pa.ChunkedArray | None = None
    # Windowed sources: `positions[:window_rows]` bucketed by policy version, as indices
    # into `positions` (each array ascending; NULL versions left out, as no window holds
    # them), and the versions present, sorted: a window gathers its own rows (`window`).
    window_rows: int = 0
    by_version: dict[int, list[np.ndarray]] = field(default_factory=dict)
    versions: list[int] = field(default_factory=list)

    def window(self, index: MetadataIndex, lo: int, hi: int) -> np.ndarray:
        """Kept positions (ascending) whose policy version is in `[lo, hi]`; the versions of
        rows kept since the last call are read from `index` once. Costs the rows in the window
        (a sort of their indices) while they are few, else a byte per kept row (a mark)."""
        if self.window_rows < len(self.positions):
            start = self.window_rows
            pv = index.take(self.positions[start:], ["policy_version"]).column(0)
            values = pc.fill_null(pv.cast(pa.float64()), float("nan")).to_numpy()
            rows = np.flatnonzero(~np.isnan(values))
            versions = values[rows].astype(np.int64)
            order = np.argsort(versions, kind="stable")  # ascending rows per version
            rows, versions = rows[order] + start, versions[order]
            cuts = np.flatnonzero(np.diff(versions)) + 1
            for first, part in zip(np.r_[0, cuts], np.split(rows, cuts), strict=True):
                if len(part):
                    v = int(versions[first])
                    if v not in self.by_version:
                        bisect.insort(self.versions, v)
                    self.by_version.setdefault(v, []).append(part)
            self.window_rows = len(self.positions)
        inside = self.versions[
            bisect.bisect_left(self.versions, lo) : bisect.bisect_right(self.versions, hi)
        ]
        parts = [a for v in inside for a in self.by_version[v]]
        if not parts:
            return np.empty(0, dtype=self.positions.dtype)
        if sum(len(a) for a in parts) * WINDOW_SORT_FRACTION < len(self.positions):
            return self.positions[np.sort(np.concatenate(parts))]
        mark = np.zeros(len(self.positions), dtype=bool)
        for a in parts:
            mark[a] = True
        return self.positions[mark]


# A window holding more than 1/WINDOW_SORT_FRACTION of a source's kept rows is read by a mark
# over all of them rather than a sort of its own (4M kept, 464k in the window: sorting them
# took 53 ms, the mark 9 ms, a float mask over every kept row 29-42; BENCHMARKS.md).
WINDOW_SORT_FRACTION = 16


def merge_deduplicated(kept: KeptCandidates, new: pa.Table) -> None:
    """Merge `new` matching rows (`_pos`, `content_hash`, `traj_id`, all after `kept`'s rows)
    into the deduplicated set `kept`: one row per content hash (NULL is one hash, as DuckDB's
    PARTITION BY has it), the smallest `(traj_id, row)`. An old winner can only be displaced by
    a new row of its own hash, so only those hashes are re-decided; the result equals the full
    query's `QUALIFY row_number() OVER (PARTITION BY content_hash ORDER BY traj_id, _pos) = 1`.
    """
    assert kept.hashes is not None and kept.traj_ids is not None
    new_hashes = new.column("content_hash").combine_chunks()
    touched = pc.is_in(kept.hashes, value_set=new_hashes.unique(), skip_nulls=False)
    touched = np.asarray(touched.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    contenders = list(
        zip(
            new_hashes.to_pylist(),
            new.column("traj_id").to_pylist(),
            new.column("_pos").to_pylist(),
            strict=True,
        )
    )
    if touched.any():
        mask = pa.array(touched)
        contenders += zip(
            kept.hashes.filter(mask).to_pylist(),
            kept.traj_ids.filter(mask).to_pylist(),
            kept.positions[touched].tolist(),
            strict=True,
        )
    best: dict[Any, tuple[str, int]] = {}
    for h, t, p in contenders:
        if h not in best or (t, p) < best[h]:
            best[h] = (t, p)
    won = sorted((p, h, t) for h, (t, p) in best.items())
    won_pos = np.array([p for p, _, _ in won], dtype=np.int64)
    won_hashes = pa.array([h for _, h, _ in won], kept.hashes.type)
    won_ids = pa.array([t for _, _, t in won], kept.traj_ids.type)
    if not touched.any():
        # the usual case: no new row shares a hash with a kept winner, so the new winners,
        # all after the kept rows, are appended (chunks: no copy of the kept arrays)
        kept.positions = np.concatenate([kept.positions, won_pos])
        kept.hashes = _chunks(kept.hashes, won_hashes)
        kept.traj_ids = _chunks(kept.traj_ids, won_ids)
        return
    keep = ~touched
    positions = np.concatenate([kept.positions[keep], won_pos])
    order = pa.array(np.argsort(positions, kind="stable"))
    kept.positions = positions[order.to_numpy()]
    kept.hashes = _chunks(kept.hashes.filter(pa.array(keep)), won_hashes).take(order)
    kept.traj_ids = _chunks(kept.traj_ids.filter(pa.array(keep)), won_ids).take(order)


def _chunks(old: pa.Array | pa.ChunkedArray, new: pa.Array) -> pa.ChunkedArray:
    """`old` then `new` without copying, combined once the chunks grow many (each append
    adds one)."""
    parts = old.chunks if isinstance(old, pa.ChunkedArray) else [old]
    out = pa.chunked_array([*parts, new], type=new.type)
    return out if out.num_chunks <= 256 else pa.chunked_array([out.combine_chunks()])


# Chunks appended to the in-memory index (one or a few per append) before those, and only
# those, are combined into one: the rows loaded before stay as they are.
MAX_INDEX_CHUNKS = 64
MAX_VERSIONS_WALKED = 64
"""Commits walked to prove a compaction kept the rows (each reads one manifest); past this
many since the index's version it reloads whole."""


def _signature(fragment: Any) -> tuple[Any, ...]:
    """A fragment is unchanged while its rows, deletions and data files are (a column rewritten
    in place would change the files)."""
    m = fragment.metadata
    return (fragment.fragment_id, m.physical_rows, m.deletion_file, tuple(d.path for d in m.files))


def _live_rows(sig: tuple[Any, ...]) -> int:
    deletions = sig[2]
    return sig[1] - (deletions.num_deleted_rows if deletions is not None else 0)


_UNREADABLE = object()
"""A commit whose transaction the installed pylance cannot rebuild."""


def _replaced_in_place(prev: list[tuple[Any, ...]], cur: list[tuple[Any, ...]]) -> bool:
    """`cur` is `prev` with runs of fragments replaced, at their place, by runs of new fragments
    (ids above every id in `prev`: not a restore of older ones) of as many live rows, perhaps
    with new fragments appended at the end."""
    prev_ids, cur_ids = {s[0] for s in prev}, {s[0] for s in cur}
    if any(i <= max(prev_ids) for i in cur_ids - prev_ids):
        return False
    i = j = 0
    while i < len(prev):
        if j < len(cur) and prev[i] == cur[j]:
            i, j = i + 1, j + 1
            continue
        ri, rj = i, j
        while i < len(prev) and prev[i][0] not in cur_ids:
            i += 1
        while j < len(cur) and cur[j][0] not in prev_ids:
            j += 1
        if i == ri or j == rj:  # a fragment changed in place, or removed without a replacement
            return False
        if sum(map(_live_rows, prev[ri:i])) != sum(map(_live_rows, cur[rj:j])):
            return False
    return all(s[0] not in prev_ids for s in cur[j:])  # the rest: appended


def _rows_from(fragments: list[Any], start: int, columns: list[str]) -> pa.Table | None:
    """The dataset's live rows from scan position `start` on (whole fragments after the one
    `start` falls in, and that one from its offset)."""
    parts = []
    seen = 0
    for f in fragments:
        live = _live_rows(_signature(f))
        if seen + live > start:
            offset = max(0, start - seen)
            parts.append(
                f.to_table(columns=columns, offset=offset)
                if offset
                else f.to_table(columns=columns)
            )
        seen += live
    return pa.concat_tables(parts) if parts else None


def _with_positions(table: pa.Table, start: int) -> pa.Table:
    """`table` with `_pos` = start, start + 1, ... chunked as its columns are (no copy of them)."""
    pos = np.arange(start, start + table.num_rows, dtype=np.int64)
    if table.num_columns and table.column(0).num_chunks > 1:
        bounds = np.cumsum([len(c) for c in table.column(0).chunks])[:-1]
        return table.append_column("_pos", pa.chunked_array(np.split(pos, bounds), pa.int64()))
    return table.append_column("_pos", pa.array(pos, pa.int64()))


class MetadataIndex:
    """Light columns of trajectories and problems in memory, refreshed incrementally.

    `problems` also carries the q0 columns of `problems_with_q0_sql(ref_model_id,
    q0_sampler_key, beta)`; it is rebuilt when `problems` or `q0_estimates` moves.
    """

    def __init__(
        self,
        lake: Lake,
        ref_model_id: str | None = None,
        q0_sampler_key: str | None = None,
        beta: float | None = None,
    ) -> None:
        self.lake = lake
        self.version = -1
        self.dataset: lance.LanceDataset | None = None
        self.trajectories: pa.Table | None = None
        # its record batches and their first rows, for `take` (refreshed with it)
        self._batches: list[pa.RecordBatch] = []
        self._batch_starts = np.zeros(0, dtype=np.int64)
        # rows and chunks of the last full load (or combine); chunks after them are appends'
        self._loaded_rows = 0
        self._loaded_chunks = 0
        self.problems: pa.Table | None = None
        self.annotations: pa.Table | None = None
        self._fragments: list[tuple[Any, ...]] = []
        # Bumped by every full reload: positions of one epoch stay valid while it lasts (only
        # appends happened), so candidate sets computed in it can be extended.
        self.epoch = 0
        self._con: duckdb.DuckDBPyConnection | None = None
        # (source, traj_id) of the sampler's pinned sources (`spo_store.mixture_pins`)
        self.pinned: pa.Table = pa.table(
            {"source": pa.array([], pa.string()), "traj_id": pa.array([], pa.string())}
        )
        # (problems, q0_estimates, annotations) versions: what the candidates also depend on
        self._problems_version: tuple[int, ...] = (-1, -1, -1)
        self._q0_sql = problems_with_q0_sql(ref_model_id, q0_sampler_key, beta)

    def refresh(self) -> bool:
        """Bring the index to the latest lake version; True when anything changed."""
        ds = self.lake.dataset("trajectories")
        pds = self.lake.dataset("problems")
        qds = self.lake.dataset("q0_estimates")
        ads = self.lake.dataset("annotations")
        changed = False
        if (pds.version, qds.version, ads.version) != self._problems_version:
            con = duckdb.connect(config=DUCKDB_CONFIG)  # no extension download
            try:
                con.register("problems", pds.to_table(columns=light_columns("problems")))
                con.register("q0_estimates", qds.to_table())
                self.problems = con.sql(self._q0_sql).to_arrow_table()
            finally:
                con.close()
            self.annotations = ads.to_table(columns=light_columns("annotations"))
            self._problems_version = (pds.version, qds.version, ads.version)
            changed = True
        if ds.version == self.version:
            return changed
        frags = ds.get_fragments()
        # A fragment is unchanged while its rows, deletions and data files are (a column
        # rewritten in place would change the files).
        sig = [_signature(f) for f in frags]
        cols = light_columns("trajectories")
        appended_only = sig[: len(self._fragments)] == self._fragments
        if self.trajectories is not None and (appended_only or self._rows_kept_since(ds)):
            table = self.trajectories
            if appended_only:
                new = frags[len(self._fragments) :]
                tail = (
                    ds.scanner(columns=cols, fragments=new, scan_in_order=True).to_table()
                    if new
                    else None
                )
            else:  # compacted: the same rows in the same order, perhaps more appended
                tail = _rows_from(frags, table.num_rows, cols)
            if tail is not None and tail.num_rows:
                table = pa.concat_tables([table, _with_positions(tail, table.num_rows)])
            if table.column(0).num_chunks - self._loaded_chunks > MAX_INDEX_CHUNKS:
                # Only the appended rows are combined: combining the whole index copied every
                # row (14 s at 10M rows, every 64 appends).
                head = table.slice(0, self._loaded_rows)
                tail = table.slice(self._loaded_rows).combine_chunks()
                table = pa.concat_tables([head, tail])
                self._loaded_rows = table.num_rows
                self._loaded_chunks = table.column(0).num_chunks
        else:
            # Kept in the scan's chunks: `take` works chunk by chunk (a call per chunk touched),
            # and combining them copied the whole index (14 s of a 25 s cold start at 10M rows,
            # and twice its memory meanwhile).
            table = _with_positions(ds.to_table(columns=cols, scan_in_order=True), 0)
            self._loaded_rows = table.num_rows
            self._loaded_chunks = table.column(0).num_chunks if table.num_columns else 0
            self.epoch += 1
        self.trajectories = table
        self._batches = [b for b in self.trajectories.to_batches() if b.num_rows]
        self._batch_starts = np.cumsum([0] + [b.num_rows for b in self._batches])[:-1]
        self.dataset, self.version, self._fragments = ds, ds.version, sig
        return True

    def _rows_kept_since(self, ds: lance.LanceDataset) -> bool:
        """True when every commit since the index's version kept its rows and their order:
        appends at the end, compactions (a Rewrite replaces contiguous runs of fragments, in
        place, by new fragments of as many live rows: Lance writes a group's rows in their
        order), and commits that leave the fragments as they were (index builds, config).
        Anything else (deletes, updates, merges, a restore, an unreadable or pruned version, a
        long gap) is False: the index reloads whole. Keeping the index across a compaction
        saves the reload and every candidate recompute (17-21 s + 15-18 s at 10M rows)."""
        if not self._fragments or ds.version - self.version > MAX_VERSIONS_WALKED:
            return False
        prev, spot_check = self._fragments, False
        try:
            for v in range(self.version + 1, ds.version + 1):
                cur = [_signature(f) for f in ds.checkout_version(v).get_fragments()]
                if cur == prev:
                    continue
                try:
                    op = getattr(ds.read_transaction(v), "operation", None)
                except TypeError:
                    # pylance 14 cannot rebuild a Rewrite that remapped an index (RewrittenIndex's
                    # arguments): judged by its fragments, then by the keys at sampled positions
                    op, spot_check = _UNREADABLE, True
                if isinstance(op, lance.LanceOperation.Append):
                    ok = cur[: len(prev)] == prev
                elif isinstance(op, lance.LanceOperation.Rewrite) or op is _UNREADABLE:
                    ok = _replaced_in_place(prev, cur)
                else:
                    ok = False
                if not ok:
                    return False
                prev = cur
        except (OSError, ValueError, RuntimeError):  # a version cleaned up, or unreadable
            return False
        return not spot_check or self._same_keys_at_samples(ds)

    def _same_keys_at_samples(self, ds: lance.LanceDataset, samples: int = 64) -> bool:
        """The index's `traj_id`s equal the dataset's at `samples` spread positions."""
        assert self.trajectories is not None
        n = self.trajectories.num_rows
        if not n:
            return True
        pos = np.unique(np.linspace(0, n - 1, min(samples, n)).astype(np.int64))
        theirs = ds.take(pos, columns=["traj_id"]).column("traj_id")
        return theirs.to_pylist() == self.take(pos, ["traj_id"]).column("traj_id").to_pylist()

    def take(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows at `positions` (in that order) of the index's trajectories, `columns` only.

        Taken chunk by chunk (the scan's chunks, plus at most `MAX_INDEX_CHUNKS` appended):
        pyarrow's `Table.take` on a column of many chunks concatenates the whole column first
        (170 ms per column at 10M rows, on every batch), which made a steady-state batch grow
        with the lake; this costs the rows taken plus a call per chunk touched."""
        assert self.trajectories is not None
        pos = np.asarray(positions, dtype=np.int64)
        cols = list(columns) if columns is not None else self.trajectories.column_names
        if len(self._batches) <= 1 or len(pos) == 0:
            return self.trajectories.select(cols).take(pa.array(pos, pa.int64()))
        order = np.argsort(pos, kind="stable")
        sorted_pos = pos[order]
        which = np.searchsorted(self._batch_starts, sorted_pos, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1
        parts = []
        for chunk in np.split(np.arange(len(sorted_pos)), cuts):
            b = which[chunk[0]]
            local = sorted_pos[chunk] - self._batch_starts[b]
            parts.append(self._batches[b].select(cols).take(pa.array(local, pa.int64())))
        taken = pa.Table.from_batches(parts).combine_chunks()
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return taken.take(pa.array(inverse, pa.int64()))

    def query(self, sql: str, *, start: int = 0) -> pa.Table:
        """Run `sql` over `t_index` (trajectories from row `start` on: a zero-copy slice, so
        new rows are evaluated without scanning old ones), `p_index`, `annotations` and
        `pinned_ids` (the pinned sources' ids)."""
        # One connection for the index's life: opening one costs ~10 ms, more than a query
        # over a few new rows; registering an Arrow table again replaces the view.
        if self._con is None:
            self._con = duckdb.connect(config=DUCKDB_CONFIG)  # no extension download
        con = self._con
        t = self.trajectories if start == 0 else self.trajectories.slice(start)
        con.register("t_index", t)
        con.register("p_index", self.problems)
        con.register("annotations", self.annotations)
        con.register("pinned_ids", self.pinned)
        return con.sql(sql).to_arrow_table()
