"""What the explorer's pages show, read from the lake (no torch, no web framework here).

Light columns of `trajectories` come from the sampler's in-memory `MetadataIndex` (loaded once,
then extended by appended rows), so a page filters a million rows in memory instead of
scanning the lake; heavy columns (response text, token ids, log-probs) are read by row position
(`LanceDataset.take`) for the few rows a page shows. The small tables (problems, runs, metrics,
batches, q0 estimates, annotations) are read with projection and filter pushdown.

Every method raises `NotFound` for an unknown id and `SpoError` for a bad query; nothing here
writes to the lake.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from spo_schemas import TABLES, heavy_columns

from spo_store.errors import SpoError, environment_error
from spo_store.lake import Lake, problem_tests, sql_quote
from spo_store.mixture_index import MetadataIndex

PAGE_SIZE = 50
TRAJECTORY_LIST = [  # the light columns a list of trajectories shows
    "traj_id",
    "problem_id",
    "run_id",
    "source",
    "policy_version",
    "model_id",
    "language",
    "reward",
    "judge_status",
    "passed_tests",
    "total_tests",
    "response_chars",
    "num_response_tokens",
    "finish_reason",
    "temperature",
    "created_at",
]
# Sources whose rows a model wrote whole: "solved by a model" counts these. `human` rows are
# people's; `pts` rows are rollouts continuing another trajectory's prefix (spo pts), so a
# success there is not a model's own solution.
NOT_MODEL_SOURCES = ("human", "pts")
SOLVED = "reward = 0"  # the judge's (or the dataset's label's) pass: trajectories.reward doc


class NotFound(LookupError):
    """No row with this id: the app answers 404."""


@dataclass
class ProblemFilter:
    """The `/problems` filters; None or "" means any. `human` / `model`: "yes" solved by at
    least one such trajectory, "no" by none, "failed" attempted and solved by none; `judge_issue`: "none" (judged reliably), "any"
    (flagged), or a reason (`no_tests`, ...); pass rates are the model rows' share with
    reward 0, in [0, 1]."""

    split: str | None = None
    platform: str | None = None
    judge_issue: str | None = None
    human: str | None = None
    model: str | None = None
    min_pass: float | None = None
    max_pass: float | None = None
    name: str | None = None
    page: int = 1

    def where(self) -> str:
        parts = []
        if self.split:
            parts.append(f"p.split = {sql_quote(self.split)}")
        if self.platform:
            parts.append(f"p.platform = {sql_quote(self.platform)}")
        if self.judge_issue == "none":
            parts.append("p.judge_issue IS NULL")
        elif self.judge_issue == "any":
            parts.append("p.judge_issue IS NOT NULL")
        elif self.judge_issue:
            parts.append(f"split_part(p.judge_issue, ':', 1) = {sql_quote(self.judge_issue)}")
        for who in ("human", "model"):
            value = getattr(self, who)
            if value == "yes":
                parts.append(f"coalesce(s.{who}_solved, 0) > 0")
            elif value == "no":
                parts.append(f"coalesce(s.{who}_solved, 0) = 0")
            elif value == "failed":  # attempted, never solved
                parts.append(f"coalesce(s.{who}_rows, 0) > 0 AND coalesce(s.{who}_solved, 0) = 0")
        if self.min_pass is not None:
            parts.append(f"s.model_pass_rate >= {float(self.min_pass)!r}")
        if self.max_pass is not None:
            parts.append(f"s.model_pass_rate <= {float(self.max_pass)!r}")
        if self.name:
            parts.append(f"contains(lower(p.name), lower({sql_quote(self.name)}))")
        return " AND ".join(parts) or "TRUE"


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    extra: dict[str, Any] = field(default_factory=dict)


class LakeReader:
    """Read-only views of one lake for the explorer; thread-safe (one lock: the index and its
    DuckDB connection are shared).

    `sql_guard(query)` raises SpoError for a query `spo sql` would refuse (the CLI passes
    its own check, so the two follow one rule); queries see the tables and the views of
    `spo sql` (`attempts`, `pass_rates`). `local_files=False`: queries read the lake's tables
    only, no other file on this machine (the server listens beyond it)."""

    def __init__(
        self, lake: Lake, sql_guard: Callable[[str], None], *, local_files: bool = True
    ) -> None:
        self.lake = lake
        self.sql_guard = sql_guard
        self.local_files = local_files
        self.index = MetadataIndex(lake)
        self._lock = threading.RLock()
        # connections of the SQL queries running now (outside _lock): interrupt() stops them
        self._running: set[duckdb.DuckDBPyConnection] = set()
        self._running_lock = threading.Lock()
        self._stats: tuple[Any, pa.Table] | None = None
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._groups: tuple[Any, tuple[dict[str, int], np.ndarray, np.ndarray]] | None = None
        self._names: tuple[int, dict[str, str]] | None = None
        self._versions: tuple[Any, pa.Table] | None = None
        self._overview: tuple[dict[str, int], dict[str, Any]] | None = None
        self._batches: tuple[Any, tuple[list[pa.RecordBatch], np.ndarray]] | None = None

    # ------------------------------------------------------------------ helpers
    def warm(self) -> None:
        """Load the index and build what pages share (per-problem counts and rows, rows per
        run and policy version), so the first page is as fast as the next (the server calls
        it before it prints its URL)."""
        with self._lock:
            self._fresh()
            self._problem_stats()
            self._by_problem()
            self._run_versions()
            self._take(np.zeros(0, np.int64))

    def reset(self) -> None:
        """Drop the DuckDB connection (after an error left it in an unknown state)."""
        with self._lock:
            if self._duck is not None:
                self._duck.close()
            self._duck = None

    def _fresh(self) -> MetadataIndex:
        self.index.refresh()
        return self.index

    def _con(self) -> duckdb.DuckDBPyConnection:
        """The index's connection with `t_index`, `p_index` and `stats` registered."""
        idx = self._fresh()
        if self._duck is None:  # one connection: opening one costs ~10 ms
            self._duck = duckdb.connect()
        con = self._duck
        # Registering an Arrow table is zero-copy; again, it replaces the view.
        con.register("t_index", idx.trajectories)
        con.register("p_index", idx.problems)
        con.register("stats", self._problem_stats())
        return con

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        return self._con().sql(sql).to_arrow_table().to_pylist()

    def _small(self, table: str, where: str | None, columns: list[str] | None = None) -> pa.Table:
        return self.lake.dataset(table).to_table(columns=columns, filter=where)

    def _problem_stats(self) -> pa.Table:
        """Per problem: trajectories by human and by models, solved counts, model pass rate
        (model rows with reward 0 over judged model rows); cached per index version."""
        idx = self.index
        key = (idx.epoch, idx.version)
        if self._stats is not None and self._stats[0] == key:
            return self._stats[1]
        con = duckdb.connect()
        try:
            con.register("t", idx.trajectories)
            not_model = ", ".join(sql_quote(s) for s in NOT_MODEL_SOURCES)
            table = con.sql(
                "SELECT problem_id, "
                "count(*) FILTER (source = 'human') AS human_rows, "
                f"count(*) FILTER (source = 'human' AND {SOLVED}) AS human_solved, "
                f"count(*) FILTER (source NOT IN ({not_model})) AS model_rows, "
                f"count(*) FILTER (source NOT IN ({not_model}) AND {SOLVED}) AS model_solved, "
                f"avg(CASE WHEN reward IS NULL THEN NULL WHEN {SOLVED} THEN 1.0 ELSE 0.0 END) "
                f"FILTER (source NOT IN ({not_model})) AS model_pass_rate "
                "FROM t GROUP BY problem_id"
            ).to_arrow_table()
        finally:
            con.close()
        self._stats = (key, table)
        return table

    # ------------------------------------------------------------------ pages
    def overview(self) -> dict[str, Any]:
        """The lake at a glance; computed once per lake version (every table's)."""
        with self._lock:
            versions = self.lake.versions()
            if self._overview is not None and self._overview[0] == versions:
                return self._overview[1]
            data = self._overview_now()
            self._overview = (versions, data)
            return data

    def _overview_now(self) -> dict[str, Any]:
        with self._lock:
            tables = []
            for name in TABLES:
                ds = self.lake.dataset(name)
                tables.append(
                    {
                        "name": name,
                        "rows": ds.count_rows(),
                        "version": ds.version,
                        "fragments": len(ds.get_fragments()),
                    }
                )
            con = self._con()
            sources = con.sql(
                "SELECT source, count(*) AS n, count(*) FILTER (reward = 0) AS solved "
                "FROM t_index GROUP BY 1 ORDER BY 2 DESC"
            ).to_arrow_table()
            splits = con.sql(
                "SELECT coalesce(split, 'NULL') AS split, count(*) AS n, "
                "count(*) FILTER (judge_issue IS NULL) AS reliable FROM p_index "
                "GROUP BY 1 ORDER BY 1"
            ).to_arrow_table()
            runs = self.lake.sql_arrow(
                "SELECT kind, status, count(*) AS n FROM runs GROUP BY 1, 2 ORDER BY 1, 2"
            )
            schema = [
                {
                    "table": name,
                    "columns": [
                        {
                            "name": f.name,
                            "type": str(f.type),
                            "heavy": name in HEAVY and f.name in HEAVY[name],
                            "doc": (f.metadata or {}).get(b"doc", b"").decode(),
                        }
                        for f in schema
                    ],
                }
                for name, schema in TABLES.items()
            ]
            return {
                "uri": self.lake.uri,
                "tables": tables,
                "sources": sources.to_pylist(),
                "splits": splits.to_pylist(),
                "runs": runs.to_pylist(),
                "schema": schema,
            }

    def problem_choices(self) -> dict[str, list[str]]:
        """Values offered by the `/problems` filter menus."""
        with self._lock:
            con = self._con()

            def values(sql: str) -> list[str]:
                return [r[0] for r in con.sql(sql).fetchall() if r[0] is not None]

            return {
                "split": values("SELECT DISTINCT split FROM p_index ORDER BY 1"),
                "platform": values("SELECT DISTINCT platform FROM p_index ORDER BY 1"),
                "judge_issue": values(
                    "SELECT DISTINCT split_part(judge_issue, ':', 1) FROM p_index ORDER BY 1"
                ),
            }

    def problems(self, flt: ProblemFilter) -> Page:
        with self._lock:
            con = self._con()
            base = f"FROM p_index p LEFT JOIN stats s USING (problem_id) WHERE {flt.where()}"
            total = con.sql(f"SELECT count(*) {base}").fetchall()[0][0]
            pages = max(1, -(-total // PAGE_SIZE))
            page = min(max(1, flt.page), pages)
            rows = con.sql(
                "SELECT p.problem_id, p.name, p.split, p.platform, p.source_dataset, "
                "p.difficulty, p.num_tests, p.judge_issue, "
                "coalesce(s.human_rows, 0) AS human_rows, "
                "coalesce(s.human_solved, 0) AS human_solved, "
                "coalesce(s.model_rows, 0) AS model_rows, "
                "coalesce(s.model_solved, 0) AS model_solved, s.model_pass_rate "
                f"{base} ORDER BY p.name, p.problem_id "
                f"LIMIT {PAGE_SIZE} OFFSET {(page - 1) * PAGE_SIZE}"
            ).to_arrow_table()
            return Page(rows.to_pylist(), int(total), page, pages)

    def problem(self, problem_id: str) -> dict[str, Any]:
        with self._lock:
            rows = self._small("problems", f"problem_id = {sql_quote(problem_id)}").to_pylist()
            if not rows:
                raise NotFound(f"no problem {problem_id!r}")
            row = rows[0]
            row["tests"] = problem_tests(row)
            q0 = self._small(
                "q0_estimates",
                f"problem_id = {sql_quote(problem_id)}",
                [
                    "ref_model_id",
                    "sampler_key",
                    "samples",
                    "successes",
                    "stopping",
                    "s0",
                    "s0_low",
                    "s0_high",
                    "beta",
                    "q0",
                    "q0_low",
                    "q0_high",
                    "run_id",
                ],
            ).to_pylist()
            solutions = self._problem_rows(problem_id)
            return {"problem": row, "q0": q0, "solutions": solutions}

    def _by_problem(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """Row positions of the index grouped by problem: `(code of each problem id, starts,
        positions)`, problem `c`'s rows being `positions[starts[c]:starts[c + 1]]` in write
        order. Built once per index version (~0.2 s at 1M rows), so a problem page takes its
        rows without scanning a million."""
        idx = self.index
        key = (idx.epoch, idx.version)
        if self._groups is not None and self._groups[0] == key:
            return self._groups[1]
        column = idx.trajectories.column("problem_id").combine_chunks()
        encoded = pc.dictionary_encode(column)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(encoded.dictionary))
        starts = np.concatenate([[0], np.cumsum(counts)])
        lookup = {v: i for i, v in enumerate(encoded.dictionary.to_pylist())}
        self._groups = (key, (lookup, starts, order))
        return lookup, starts, order

    def _take(self, positions: np.ndarray) -> pa.Table:
        """The index rows at `positions` (ascending), without `Table.take`, which joins a
        chunked table's chunks first (~0.1 s at 1M rows): each position's batch is found by
        binary search and the batches are taken from one by one."""
        idx = self.index
        key = (idx.epoch, idx.version)
        if self._batches is None or self._batches[0] != key:
            batches = idx.trajectories.to_batches()
            ends = np.cumsum([b.num_rows for b in batches])
            self._batches = (key, (batches, ends))
        batches, ends = self._batches[1]
        positions = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(ends, positions, side="right")
        parts = []
        for b in np.unique(which):
            local = positions[which == b] - (ends[b] - batches[b].num_rows)
            parts.append(batches[b].take(pa.array(local)))
        if not parts:
            return idx.trajectories.schema.empty_table()
        return pa.Table.from_batches(parts, schema=idx.trajectories.schema)

    def _light_rows(self, positions: np.ndarray) -> list[dict[str, Any]]:
        """The index's light columns of the rows at `positions` (ascending)."""
        return self._take(positions).select(TRAJECTORY_LIST).to_pylist()

    def _problem_rows(self, problem_id: str) -> list[dict[str, Any]]:
        """Every trajectory of a problem (light columns): humans first, then in the order they
        were written (then policy version), so pi_0's samples, an evaluation before training,
        the run's rollouts by policy version and the evaluation of its checkpoint read in the
        order they happened."""
        self._fresh()
        lookup, starts, order = self._by_problem()
        code = lookup.get(problem_id)
        if code is None:
            return []
        rows = self._light_rows(np.sort(order[starts[code] : starts[code + 1]]))
        rows.sort(
            key=lambda r: (
                r["source"] != "human",
                r["created_at"].timestamp() if r["created_at"] else 0.0,
                -1 if r["policy_version"] is None else r["policy_version"],
                r["traj_id"],
            )
        )
        return rows

    def trajectories(
        self,
        *,
        run_id: str | None = None,
        problem_id: str | None = None,
        source: str | None = None,
        policy_version: int | None = None,
        model_id: str | None = None,
        annotated: bool = False,
        page: int = 1,
    ) -> Page:
        """Trajectories matching all the given fields (`annotated`: only those with an
        `annotations` row, i.e. searched by `spo pts`), paged, in the order they were written
        (a training run's rows by policy version): no sort over a million rows."""
        with self._lock:
            idx = self._fresh()
            table = idx.trajectories
            chosen = None  # index positions of the rows `table` holds (None: all)
            if problem_id is not None:
                lookup, starts, order = self._by_problem()
                code = lookup.get(problem_id)
                chosen = (
                    np.sort(order[starts[code] : starts[code + 1]])
                    if code is not None
                    else np.zeros(0, np.int64)
                )
                table = self._take(chosen)
            # Masks over the needed columns only; the rows of the page alone are taken.
            mask = None
            filters = (
                ("policy_version", policy_version),
                ("run_id", run_id),
                ("source", source),
                ("model_id", model_id),
            )
            for col, value in filters:
                if value is not None:
                    m = pc.equal(table.column(col), value)
                    mask = m if mask is None else pc.and_(mask, m)
            if annotated:
                ids = self._small("annotations", None, ["traj_id"]).column("traj_id")
                m = pc.is_in(table.column("traj_id"), value_set=ids.unique())
                mask = m if mask is None else pc.and_(mask, m)
            if mask is None:
                matching = np.arange(table.num_rows)
            else:
                matching = pc.indices_nonzero(mask.fill_null(False)).to_numpy()
            total = len(matching)
            pages = max(1, -(-total // PAGE_SIZE))
            page = min(max(1, page), pages)
            shown = matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
            if chosen is not None:
                shown = chosen[shown]
            rows = self._take(shown).select(TRAJECTORY_LIST)
            names = self._problem_names()
            out = rows.to_pylist()
            for r in out:
                r["problem_name"] = names.get(r["problem_id"])
            return Page(out, int(total), page, pages)

    def _run_versions(self) -> pa.Table:
        """Trajectories per (run, source, model, policy version) with their reward-0 count and
        first write time, ordered (within a source by policy version, then time); computed
        once per index version."""
        self._fresh()
        idx = self.index
        key = (idx.epoch, idx.version)
        if self._versions is None or self._versions[0] != key:
            con = duckdb.connect()
            try:
                con.register("t", idx.trajectories)
                # by model too: a run's evaluations of pi_0 and of its trained checkpoint
                # (eval rows carry no policy version) are different rows
                table = con.sql(
                    "SELECT run_id, source, model_id, policy_version, count(*) AS n, "
                    "count(*) FILTER (reward = 0) AS solved, min(created_at) AS first "
                    "FROM t GROUP BY run_id, source, model_id, policy_version "
                    "ORDER BY run_id, source, policy_version NULLS FIRST, first, model_id"
                ).to_arrow_table()
            finally:
                con.close()
            self._versions = (key, table)
        return self._versions[1]

    def _problem_names(self) -> dict[str, str]:
        idx = self.index
        key = id(idx.problems)
        if self._names is None or self._names[0] != key:
            p = idx.problems.select(["problem_id", "name"]).to_pydict()
            self._names = (key, dict(zip(p["problem_id"], p["name"], strict=True)))
        return self._names[1]

    def trajectory(self, traj_id: str) -> dict[str, Any]:
        """One trajectory: light columns from the index, heavy ones by row position, its
        problem's name and judge issue, its run, and its `annotations` (S_t)."""
        with self._lock:
            idx = self._fresh()
            assert idx.trajectories is not None and idx.dataset is not None
            hits = pc.indices_nonzero(pc.equal(idx.trajectories.column("traj_id"), traj_id))
            if len(hits) == 0:
                raise NotFound(f"no trajectory {traj_id!r}")
            light = self._take(np.array([hits[0].as_py()])).to_pylist()[0]
            pos = light.pop("_pos")
            heavy = idx.dataset.take([pos], columns=heavy_columns("trajectories")).to_pylist()[0]
            row = {**light, **heavy}
            problem = self._small(
                "problems",
                f"problem_id = {sql_quote(row['problem_id'])}",
                ["problem_id", "name", "judge_issue", "split"],
            ).to_pylist()
            run = self._small("runs", f"run_id = {sql_quote(row['run_id'])}").to_pylist()
            annotations = self._small("annotations", f"traj_id = {sql_quote(traj_id)}")
            return {
                "row": row,
                "problem": problem[0] if problem else None,
                "run": run[0] if run else None,
                "annotations": [heat_strip(a, row) for a in annotations.to_pylist()],
            }

    def runs(self, kind: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            where = []
            if kind:
                where.append(f"kind = {sql_quote(kind)}")
            if status:
                where.append(f"status = {sql_quote(status)}")
            table = self._small(
                "runs",
                " AND ".join(where) or None,
                ["run_id", "kind", "status", "model_id", "started_at", "ended_at", "host"],
            )
            rows = table.to_pylist()
            # newest first; a run without a start time (hand-written rows) last
            rows.sort(
                key=lambda r: r["started_at"].timestamp() if r["started_at"] else float("-inf"),
                reverse=True,
            )
            counts: dict[str, int] = {}
            for r in self._run_versions().to_pylist():
                counts[r["run_id"]] = counts.get(r["run_id"], 0) + r["n"]
            for r in rows:
                r["trajectories"] = counts.get(r["run_id"], 0)
            return rows

    def run(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            q = sql_quote(run_id)
            rows = self._small("runs", f"run_id = {q}").to_pylist()
            if not rows:
                raise NotFound(f"no run {run_id!r}")
            run = rows[0]
            for key in ("config", "inputs", "lake_version_at_start"):
                run[key + "_pretty"] = _pretty_json(run[key])
            metrics = self._small(
                "metrics", f"run_id = {q}", ["step", "name", "value", "split"]
            ).to_pylist()
            series: dict[str, list[tuple[int, float]]] = {}
            for m in metrics:
                if m["value"] is None or m["step"] is None:
                    continue
                label = m["name"] + (f" ({m['split']})" if m["split"] else "")
                series.setdefault(label, []).append((int(m["step"]), float(m["value"])))
            for points in series.values():
                points.sort()
            batches = self._small(
                "batches", f"run_id = {q}", ["step", "trajectories_version", "sources", "seed"]
            ).to_pylist()
            for b in batches:
                counts: dict[str, int] = {}
                for s in b.pop("sources") or []:
                    counts[s] = counts.get(s, 0) + 1
                b["size"] = sum(counts.values())
                b["sources"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            batches.sort(key=lambda b: b["step"])
            versions = self._run_versions()
            by_version = versions.filter(pc.equal(versions.column("run_id"), run_id))
            # rows other runs sampled from this run's checkpoints (model RUN@STEP): a demo's
            # or `spo eval --model`'s evaluation of the trained policy
            elsewhere = versions.filter(
                pc.and_(
                    pc.starts_with(versions.column("model_id"), f"{run_id}@"),
                    pc.not_equal(versions.column("run_id"), run_id),
                ).fill_null(False)
            )
            children = self._small(
                "runs", f"parent_run_id = {q}", ["run_id", "kind", "status"]
            ).to_pylist()
            return {
                "run": run,
                "series": series,
                "batches": batches,
                "by_version": by_version.to_pylist(),
                "checkpoint_rows": elsewhere.to_pylist(),
                "children": children,
            }

    def batch(self, run_id: str, step: int) -> dict[str, Any]:
        """The rows a training run drew at `step`, in batch order: the ids `spo lake batch`
        reproduces (`reproduce.logged_batch`), their light columns from the index (the lake
        as it is now: a reward re-judged since shows its new value)."""
        from spo_store.reproduce import logged_batch

        with self._lock:
            try:
                logged = logged_batch(self.lake, run_id, step)
            except SpoError as exc:
                raise NotFound(str(exc)) from exc
            ids = list(logged["traj_ids"] or [])
            idx = self._fresh()
            wanted = pa.array(ids, pa.string())
            hits = pc.indices_nonzero(pc.is_in(idx.trajectories.column("traj_id"), wanted))
            found = {r["traj_id"]: r for r in self._light_rows(hits.to_numpy())}
            rows = [found.get(t, {"traj_id": t, "missing": True}) for t in ids]
            return {
                "rows": rows,
                "logged_version": logged["trajectories_version"],
                "missing": sum(1 for r in rows if r.get("missing")),
            }

    def compare(self, problem_id: str, left: str | None, right: str | None) -> dict[str, Any]:
        """Two solutions of one problem side by side: by default the first passing human one
        (else the first human one) and the most recently written model one."""
        with self._lock:
            data = self.problem(problem_id)
            sols = data["solutions"]
            ids = {s["traj_id"] for s in sols}
            for chosen in (left, right):
                if chosen and chosen not in ids:
                    raise NotFound(f"problem {problem_id!r} has no trajectory {chosen!r}")
            humans = [s for s in sols if s["source"] == "human"]
            models = [s for s in sols if s["source"] not in NOT_MODEL_SOURCES]
            if not left:
                passing = [s for s in humans if s["reward"] == 0]
                left = (passing or humans or sols or [{"traj_id": None}])[0]["traj_id"]
            if not right and models:
                # the most recent: eval rows of a trained checkpoint carry no policy version
                right = max(
                    models,
                    key=lambda s: (
                        s["created_at"].timestamp() if s["created_at"] else 0.0,
                        -1 if s["policy_version"] is None else s["policy_version"],
                    ),
                )["traj_id"]
            sides = [self.trajectory(t)["row"] if t else None for t in (left, right)]
            return {**data, "left": sides[0], "right": sides[1]}

    def _run(self, query: str) -> tuple[Any, Callable[[], None]]:
        """Start a read-only query (`sql_guard` first) on a fresh analyst connection, counted
        as running until `release()`: `(DuckDB relation or None, release)`. Raises SpoError
        for an empty, refused or failing query (the connection is released then)."""
        if not query.strip():
            raise SpoError("the SQL query is empty")
        self.sql_guard(query)
        with self._lock:  # the lake's datasets are refreshed here; the query runs unlocked
            con = self.lake.duckdb(analyst=True, local_files=self.local_files)
        with self._running_lock:
            self._running.add(con)

        def release() -> None:
            with self._running_lock:
                self._running.discard(con)
            con.close()

        try:
            return con.sql(query), release
        except QUERY_ERRORS as exc:
            release()
            raise _sql_error(exc) from exc

    def sql(self, query: str, limit: int | None) -> tuple[pa.Table, bool]:
        """The result of a read-only query (`sql_guard` first), and whether it was cut to
        `limit` rows (None: every row, on the connection `spo sql` uses). With a limit only
        the first batches are read, so a query over a million rows shows its head without
        building the whole result. A running query stops at `interrupt()`. Raises SpoError
        for a refused, failing or interrupted query."""
        rel, release = self._run(query)
        try:
            if rel is None:  # a statement without a result
                return pa.table({}), False
            if limit is None:
                return rel.to_arrow_table(), False
            reader = _arrow_reader(rel, limit + 1)
            batches, rows = [], 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                if rows > limit:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except QUERY_ERRORS as exc:
            raise _sql_error(exc) from exc
        finally:
            release()
        if table.num_rows > limit:
            return table.slice(0, limit), True
        return table, False

    def sql_stream(
        self, query: str, batch_rows: int = 10_000
    ) -> tuple[pa.Schema, Generator[pa.RecordBatch, None, None]]:
        """Every row of a read-only query as `(schema, batches)`, read from DuckDB a batch at
        a time so a download larger than memory streams (`sql` holds the whole result). The
        query runs here up to its first batch, so a refused or failing query raises SpoError
        before anything is sent; the connection is released when the batches are exhausted
        or closed, and `interrupt()` stops it (the generator then raises SpoError)."""
        rel, release = self._run(query)
        if rel is None:  # a statement without a result
            release()
            return pa.schema([]), (b for b in ())
        first: pa.RecordBatch | None = None
        try:
            stream = _arrow_reader(rel, batch_rows)
            with contextlib.suppress(StopIteration):
                first = stream.read_next_batch()
        except QUERY_ERRORS as exc:
            release()
            raise _sql_error(exc) from exc

        def batches() -> Generator[pa.RecordBatch, None, None]:
            try:
                if first is None:
                    return
                yield first
                while True:
                    try:
                        batch = stream.read_next_batch()
                    except StopIteration:
                        return
                    except QUERY_ERRORS as exc:
                        raise _sql_error(exc) from exc
                    yield batch
            finally:
                release()

        return stream.schema, batches()

    def interrupt(self) -> None:
        """Stop every running SQL query (the server is stopping: Ctrl-C or SIGTERM must not
        wait for a query that takes an hour)."""
        with self._running_lock:
            running = list(self._running)
        for con in running:
            with contextlib.suppress(duckdb.Error):
                con.interrupt()


# What a failing query raises: DuckDB's errors, and, read through an Arrow stream, the same
# errors as Arrow's (an OSError with DuckDB's message, "Invalid Input Error: ...").
QUERY_ERRORS = (duckdb.Error, pa.ArrowException, OSError)


def _arrow_reader(rel: Any, batch_rows: int) -> pa.RecordBatchReader:
    """A DuckDB relation's rows as an Arrow stream of `batch_rows`-row batches (DuckDB 1.x
    calls it fetch_record_batch, 2.x to_arrow_reader)."""
    return (getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch)(batch_rows)


def _sql_error(exc: BaseException) -> SpoError:
    """A failing query's one line: a damaged data file as `spo sql` says it, else DuckDB's
    first line."""
    known = environment_error(exc)
    first = str(exc).strip().splitlines()[0]
    return SpoError(known or f"SQL error: {first}")


HEAVY = {name: set(heavy_columns(name)) for name in TABLES}


def _pretty_json(text: str | None) -> str:
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


def heat_strip(annotation: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """One annotation as a row of tokens, each with the S the search knows at it (the last
    estimate at or before it: the search knows nothing between estimates), whether it was
    estimated there, and whether it is pivotal: S moved by more than the threshold across this
    single token (the previous position estimated too; S = 1 after the last token of a
    passing response, as `spo pts` counts it). Behaviour/reference log-probs per token where
    the trajectory stores them (same tokenizer)."""
    positions = list(annotation.get("positions") or [])
    samples = list(annotation.get("samples") or [])
    successes = list(annotation.get("successes") or [])
    # S as spo pts decides pivots: successes / samples, exactly; s_t is their float32 copy
    # (0.4 - 0.2 is 0.2000000030 there, over a 0.2 threshold), used only where counts are
    # missing (annotations written before schema 4).
    s_t = [None if v is None else float(v) for v in annotation.get("s_t") or []]
    for i in range(min(len(s_t), len(samples), len(successes))):
        if samples[i] and successes[i] is not None:
            s_t[i] = successes[i] / samples[i]
    n_tokens = int(annotation.get("response_tokens") or 0)
    estimates = dict(zip(positions, s_t, strict=False))
    counts = dict(zip(positions, samples, strict=False))
    known = dict(estimates)
    if row.get("reward") == 0 and n_tokens:
        known.setdefault(n_tokens - 1, 1.0)
    threshold = annotation.get("threshold")
    texts = list(annotation.get("tokens") or [])
    same_tokens = annotation.get("tokenizer_id") == row.get("tokenizer_id")
    behaviour = (row.get("behaviour_logprobs") or []) if same_tokens else []
    reference = (row.get("ref_logprobs") or []) if same_tokens else []
    tokens = []
    current = known.get(-1)
    for t in range(max(n_tokens, len(texts))):
        if t in known:
            prev = known.get(t - 1)
            jump = None if prev is None else known[t] - prev
        else:
            jump = None
        if t in known:
            current = known[t]
        pivotal = jump is not None and threshold is not None and abs(jump) > threshold
        tokens.append(
            {
                "t": t,
                "text": texts[t] if t < len(texts) else "",
                "s": current,
                "estimated": t in estimates,
                "samples": counts.get(t),
                "jump": jump,
                "pivotal": pivotal,
                "heat": None if current is None else min(10, max(0, round(current * 10))),
                "behaviour": behaviour[t] if t < len(behaviour) else None,
                "reference": reference[t] if t < len(reference) else None,
            }
        )
    return {
        "annotation_id": annotation.get("annotation_id"),
        "run_id": annotation.get("run_id"),
        "method": annotation.get("method"),
        "ref_model_id": annotation.get("ref_model_id"),
        "sampler_key": annotation.get("sampler_key"),
        "threshold": threshold,
        "rollouts_per_estimate": annotation.get("rollouts_per_estimate"),
        "s_prompt": estimates.get(-1),
        "estimates": len(estimates),
        "tokens": tokens,
        "has_text": bool(texts),
        "pivots": [tok for tok in tokens if tok["pivotal"]],
    }
