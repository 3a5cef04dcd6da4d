"""Schema migrations: bring a lake written by an older spo to the current schema, losing nothing.

`spo lake migrate` (`migrate_lake`) runs one step per schema version (`MIGRATIONS[v]` takes a
lake from version v to v + 1). Before the first step it tags every table's current version
`schema-v<old>`, so the old lake stays readable by version (`lance.dataset(uri,
version="schema-v1")`) and `spo lake cleanup` never removes it. Each step is idempotent and
each table's `spo.schema_version` is raised only after its data is in place, so a migration
killed half-way is finished by running it again.

Run it with no other spo process writing to the lake: it holds the lake's keyed-write locks
(`Lake.insert_new`) and its create lock, but plain appends of an older spo do not take them.

Version history (see `spo_schemas`):
- 1 -> 2: problems gain platform, float_tolerance_source, checker, fn_name, input_file,
  output_file and judge_issue (derived from each row by `spo_store.problem_rules`); q0 moves
  from problems to `q0_estimates`, keyed by problem, reference model and sampler settings (taken
  from the estimate-q0 run that wrote it); trajectories gain max_new_tokens (from the config
  of the run that sampled them); token_cache entries of responses cut at max_new_tokens are
  dropped (v1 re-encoded them with an EOS that was never generated).
- 2 -> 3: trajectories gain `model_logprobs` (the sampling model's temperature-1 log-probs),
  filled from the old `behaviour_logprobs`, which held exactly that; `behaviour_logprobs` now
  means the log-probs of the distribution that drew each token (tempered, top-p renormalised),
  so it is kept only where that distribution was the model itself (temperature 1 and top-p 1),
  set to 0 per token on greedy rows (temperature 0: the argmax is drawn with probability 1),
  and set NULL on every other sampled row: recomputing it needs the sampling model's full
  next-token distribution at every position, which the lake does not hold.
- 3 -> 4: annotations gain their key `annotation_id` and the columns recording what their
  estimates are of (reference model, sampler, rollouts per estimate, threshold, successes,
  response length, rollout key, token texts). No spo release wrote annotations before 4; rows a user
  appended get `annotation_id = 'legacy-' + sha256(traj_id, run_id, method, created_at,
  positions)` (identical rows share it) and NULL in the other new columns: what model and
  sampler their estimates came from was never recorded.
- 4 -> 5: trajectories gain `worker_id` (the rollout worker that sampled a row), NULL on every
  existing row: before schema 5 every row was sampled in its command's own process.
- 5 -> 6: q0_estimates gain `s0`, its exact 95% interval (`s0_low`, `s0_high`), that interval
  in Q0 (`q0_low`, `q0_high`, at the row's own beta) and `stopping`. Every estimate before 6
  came from a fixed number of samples (n chosen before sampling), so each row gets
  `stopping = 'fixed'`, `s0 = c/n` and the Clopper-Pearson interval of its stored (n, c): exact,
  nothing is guessed. The stored q0 is unchanged (it was already computed from c/n).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
from spo_schemas import KEYS, SCHEMA_VERSION, TABLES, VERSION_KEY, table_schema

from spo_store.errors import SpoError
from spo_store.lake import resolve_lake_uri, to_table, utc_now
from spo_store.q0_estimates import estimate_id, sampler_key


@dataclass
class MigrationReport:
    """What `migrate_lake` did: versions, tags made, and per-step notes (row counts)."""

    uri: str
    from_version: int
    to_version: int
    tagged: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _table_uri(root: str, name: str) -> str:
    return f"{root}/{name}.lance"


def _open(root: str, name: str, version: int | str | None = None) -> lance.LanceDataset | None:
    try:
        return lance.dataset(_table_uri(root, name), version=version)
    except (ValueError, FileNotFoundError, OSError):
        return None


def schema_version_of(ds: lance.LanceDataset) -> int:
    """The `spo.schema_version` a table was written with (SpoError when it has none)."""
    found = (ds.schema.metadata or {}).get(VERSION_KEY)
    if found is None:
        raise SpoError(f"{ds.uri} has no spo schema version: not an spo lake")
    try:
        return int(found)
    except ValueError:
        raise SpoError(
            f"{ds.uri} has spo schema version {found[:20].decode(errors='replace')!r}, not a "
            "number: its metadata is damaged (see docs/lake.md, 'When the lake is damaged')"
        ) from None


def lake_schema_version(uri: str | os.PathLike[str] | None) -> int:
    """The oldest schema version among the lake's tables (its version for migration)."""
    root = resolve_lake_uri(uri)
    versions = [schema_version_of(ds) for n in TABLES if (ds := _open(root, n)) is not None]
    if not versions:
        raise SpoError(f"no lake at {root}")
    return min(versions)


@contextlib.contextmanager
def _locks(root: str) -> Iterator[None]:
    """Hold the migrate lock, the create lock and every keyed-write lock of the lake: `flock`
    files on a local lake, lease objects on S3 (`spo_store.objstore.lake_lock`)."""
    from spo_store.objstore import lake_lock

    names = ["migrate", "create", *sorted(KEYS)]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(lake_lock(root, name))
        yield


def migrate_lake(
    uri: str | os.PathLike[str] | None, *, say: Callable[[str], None] | None = None
) -> MigrationReport:
    """Migrate the lake at `uri` to `SCHEMA_VERSION` (see the module docstring).

    Raises SpoError when there is no lake there or it was written by a newer spo. A lake that is
    already current is left untouched (the report's from and to versions are equal).
    """
    say = say or (lambda _m: None)
    root = resolve_lake_uri(uri)
    if "://" not in root and not Path(root).is_dir():
        raise SpoError(f"no lake at {root}")
    with _locks(root):
        current = lake_schema_version(root)
        newest = max(schema_version_of(ds) for n in TABLES if (ds := _open(root, n)) is not None)
        if newest > SCHEMA_VERSION:
            raise SpoError(
                f"lake {root} was written by schema version {newest}, newer than this spo's "
                f"{SCHEMA_VERSION}: upgrade spo"
            )
        report = MigrationReport(root, current, SCHEMA_VERSION)
        if current == SCHEMA_VERSION:
            return report
        if current not in MIGRATIONS:
            raise SpoError(
                f"lake {root} uses schema version {current}, which no spo release wrote: "
                "no migration exists from it"
            )
        tag = f"schema-v{current}"
        for name in TABLES:
            ds = _open(root, name)
            if ds is None or schema_version_of(ds) != current:
                continue
            if tag not in ds.tags.list():
                ds.tags.create(tag, ds.version)
            report.tagged[name] = ds.tags.list()[tag]["version"]
        say(f"tagged the current version of every table {tag!r}")
        for version in range(current, SCHEMA_VERSION):
            MIGRATIONS[version](root, tag, report, say)
        return report


def _finish_tables(root: str, version: int) -> None:
    """The last step of every migration: tables new in `version` are created empty, and every
    other table is stamped `version` (those the step had nothing to change in)."""
    for name in TABLES:
        ds = _open(root, name)
        if ds is None:
            lance.write_dataset(table_schema(name).empty_table(), _table_uri(root, name))
        elif schema_version_of(ds) < version:
            _set_version(ds, version)


def _set_version(ds: lance.LanceDataset, version: int) -> None:
    meta = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
    meta[VERSION_KEY.decode()] = str(version)
    ds.update_schema_metadata(meta, replace=True)


def _run_configs(root: str, tag: str) -> dict[str, dict[str, Any]]:
    """run_id -> {kind, model_id, config} from the runs table (at the pre-migration tag)."""
    ds = _open(root, "runs", tag) or _open(root, "runs")
    if ds is None:
        return {}
    out = {}
    for r in ds.to_table(columns=["run_id", "kind", "model_id", "config"]).to_pylist():
        try:
            cfg = json.loads(r["config"] or "{}")
        except json.JSONDecodeError:
            cfg = {}
        out[r["run_id"]] = {"kind": r["kind"], "model_id": r["model_id"], "config": cfg}
    return out


def _v1_to_v2(root: str, tag: str, report: MigrationReport, say: Callable[[str], None]) -> None:
    runs = _run_configs(root, tag)

    # 1. q0_estimates from the q0 columns of v1 problems (read at the tag: it survives a
    # migration killed after the problems rewrite).
    if _open(root, "q0_estimates") is None:
        lance.write_dataset(
            table_schema("q0_estimates").empty_table(), _table_uri(root, "q0_estimates")
        )
    old_problems = _open(root, "problems", tag)
    estimates = []
    if old_problems is not None and "q0" in old_problems.schema.names:
        cols = ["problem_id", "q0", "q0_samples", "q0_successes", "q0_beta", "q0_run_id"]
        for p in old_problems.to_table(columns=cols, filter="q0 IS NOT NULL").to_pylist():
            run = runs.get(p["q0_run_id"] or "", {})
            cfg = run.get("config", {})
            model = run.get("model_id") or "unknown (migrated from schema v1)"
            temp, top_p = float(cfg.get("temperature", 1.0)), float(cfg.get("top_p", 1.0))
            max_new = int(cfg.get("max_new_tokens", 256))
            key = sampler_key(temp, top_p, max_new)
            estimates.append(
                {
                    "estimate_id": estimate_id(p["problem_id"], model, key),
                    "problem_id": p["problem_id"],
                    "ref_model_id": model,
                    "sampler_key": key,
                    "temperature": temp,
                    "top_p": top_p,
                    "max_new_tokens": max_new,
                    "samples": p["q0_samples"],
                    "successes": p["q0_successes"],
                    "beta": p["q0_beta"],
                    "q0": p["q0"],
                    "run_id": p["q0_run_id"],
                    "created_at": utc_now(),
                }
            )
    q0_ds = lance.dataset(_table_uri(root, "q0_estimates"))
    have = set(q0_ds.to_table(columns=["estimate_id"]).column(0).to_pylist())
    new = [e for e in estimates if e["estimate_id"] not in have]
    if new:
        lance.write_dataset(to_table("q0_estimates", new), q0_ds.uri, mode="append")
    report.notes.append(f"q0_estimates: {len(new)} estimates moved from problems")
    say(report.notes[-1])

    # 2. problems: rewritten with the v2 columns (small table: one overwrite commit).
    ds = _open(root, "problems")
    if ds is not None and schema_version_of(ds) < 2:
        from spo_store.problem_rules import annotate_problem

        rows = ds.to_table().to_pylist()
        v2_names = set(TABLES["problems"].names)
        out = []
        for row in rows:
            new_row = {k: v for k, v in row.items() if k in v2_names}
            if row.get("float_tolerance") is not None:
                new_row["float_tolerance_source"] = "dataset"
            out.append(annotate_problem(new_row))
        lance.write_dataset(to_table("problems", out), ds.uri, mode="overwrite")
        flagged = sum(r.get("judge_issue") is not None for r in out)
        report.notes.append(
            f"problems: {len(out)} rows rewritten with the v2 columns ({flagged} flagged "
            "with a judge_issue)"
        )
        say(report.notes[-1])

    # 3. trajectories: max_new_tokens from the run that sampled each row (new column only).
    ds = _open(root, "trajectories")
    if ds is not None and schema_version_of(ds) < 2:
        if "max_new_tokens" not in ds.schema.names:
            by_run = {
                run_id: int(r["config"]["max_new_tokens"])
                for run_id, r in runs.items()
                if isinstance(r["config"].get("max_new_tokens"), int | float)
            }

            @lance.batch_udf(output_schema=pa.schema([pa.field("max_new_tokens", pa.int32())]))
            def fill(batch: pa.RecordBatch) -> pa.RecordBatch:
                runs_col = batch.column("run_id").to_pylist()
                src = batch.column("source").to_pylist()
                values = [
                    None if s == "human" else by_run.get(r)
                    for r, s in zip(runs_col, src, strict=True)
                ]
                return pa.record_batch([pa.array(values, pa.int32())], names=["max_new_tokens"])

            ds.add_columns(fill, read_columns=["run_id", "source"])
            ds = lance.dataset(ds.uri)
        filled = ds.count_rows(filter="max_new_tokens IS NOT NULL")
        _set_version(ds, 2)
        report.notes.append(f"trajectories: max_new_tokens set on {filled} sampled rows")
        say(report.notes[-1])

    # 4. token_cache: v1 re-encoded a response cut at max_new_tokens with an EOS it never
    # generated; drop those entries (they are recomputed, correctly, when next needed).
    tc = _open(root, "token_cache")
    traj = _open(root, "trajectories")
    if tc is not None and traj is not None and schema_version_of(tc) < 2:
        cut = traj.to_table(columns=["traj_id"], filter="finish_reason = 'length'")
        ids = sorted(
            set(cut.column(0).to_pylist())
            & set(tc.to_table(columns=["traj_id"]).column(0).to_pylist())
        )
        for start in range(0, len(ids), 1000):
            chunk = ", ".join("'" + i.replace("'", "''") + "'" for i in ids[start : start + 1000])
            tc.delete(f"traj_id IN ({chunk})")
        report.notes.append(
            f"token_cache: {len(ids)} entries of responses cut at max_new_tokens dropped"
        )
        say(report.notes[-1])

    # 5. every other table: same columns, new version number.
    _finish_tables(root, 2)


GREEDY_MAX_TEMPERATURE = 1e-6
"""Rows sampled at or below this temperature were greedy (`TransformersGenerator._sample`)."""


def _v2_to_v3(root: str, tag: str, report: MigrationReport, say: Callable[[str], None]) -> None:
    ds = _open(root, "trajectories")
    if ds is not None and schema_version_of(ds) < 3:
        # 1. model_logprobs := the old behaviour_logprobs (raw temperature-1 log pi), as one
        # add-column commit before behaviour_logprobs changes: a rerun after a kill finds the
        # column and never copies the new meaning into it.
        if "model_logprobs" not in ds.schema.names:
            field_ = TABLES["trajectories"].field("model_logprobs")
            out_schema = pa.schema([field_])

            @lance.batch_udf(output_schema=out_schema)
            def copy(batch: pa.RecordBatch) -> pa.RecordBatch:
                old = batch.column("behaviour_logprobs").cast(field_.type)
                return pa.record_batch([old], schema=out_schema)

            ds.add_columns(copy, read_columns=["behaviour_logprobs"])
            ds = lance.dataset(ds.uri)
        # 2. behaviour_logprobs := log mu where it can be known without the model: greedy rows
        # drew the argmax with probability 1 (log mu = 0 per token); rows drawn at temperature 1
        # and top-p 1 keep theirs (mu is the model); the rest become NULL. Both updates are
        # idempotent (a rerun rewrites the same values or matches nothing).
        greedy = (
            f"temperature IS NOT NULL AND temperature <= {GREEDY_MAX_TEMPERATURE} "
            "AND behaviour_logprobs IS NOT NULL AND num_response_tokens IS NOT NULL"
        )
        ds.update(
            {"behaviour_logprobs": "array_repeat(CAST(0.0 AS FLOAT), num_response_tokens)"},
            where=greedy,
        )
        ds = lance.dataset(ds.uri)
        ds.update(
            {"behaviour_logprobs": "NULL"},
            where=(
                "behaviour_logprobs IS NOT NULL AND (temperature IS NULL OR top_p IS NULL OR "
                f"((temperature != 1 OR top_p != 1) AND temperature > {GREEDY_MAX_TEMPERATURE}))"
            ),
        )
        ds = lance.dataset(ds.uri)
        with_model = ds.count_rows(filter="model_logprobs IS NOT NULL")
        kept = ds.count_rows(filter="model_logprobs IS NOT NULL AND behaviour_logprobs IS NOT NULL")
        zeroed = ds.count_rows(filter=f"model_logprobs IS NOT NULL AND {greedy}")
        _set_version(ds, 3)
        report.notes.append(
            f"trajectories: model_logprobs set on {with_model} sampled rows (their old "
            f"behaviour_logprobs, the model's temperature-1 log-probs); behaviour_logprobs kept "
            f"on {kept - zeroed} rows sampled at temperature 1 and top-p 1, set to 0 on "
            f"{zeroed} greedy rows, and NULL on {with_model - kept} rows sampled otherwise "
            "(their sampling distribution's log-probs cannot be recomputed without the model)"
        )
        say(report.notes[-1])

    _finish_tables(root, 3)


def legacy_annotation_id(row: dict[str, Any]) -> str:
    """The key a pre-v4 annotations row gets (see the module docstring, 3 -> 4)."""
    created = row.get("created_at")
    parts = [
        row.get("traj_id") or "",
        row.get("run_id") or "",
        row.get("method") or "",
        created.isoformat() if created is not None else "",
        json.dumps(row.get("positions")),
    ]
    return "legacy-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _add_missing_columns(
    ds: Any,
    table: str,
    read: list[str],
    values_of: Callable[[dict[str, Any]], dict[str, Any]],
    names: list[str] | None = None,
) -> Any:
    """Add the columns of `TABLES[table]` (only `names`, if given) that `ds` lacks in one
    add-columns commit (a rerun after a kill finds them and skips it), each row's values from
    `values_of(row)` (the `read` columns; a column it leaves out is NULL). Returns the
    dataset as committed."""
    new = [
        f
        for f in TABLES[table]
        if f.name not in ds.schema.names and (names is None or f.name in names)
    ]
    if not new:
        return ds
    out_schema = pa.schema(new)

    @lance.batch_udf(output_schema=out_schema)
    def fill(batch: pa.RecordBatch) -> pa.RecordBatch:
        rows = [values_of(r) for r in batch.to_pylist()]
        cols = [pa.array([r.get(f.name) for r in rows], f.type) for f in new]
        return pa.record_batch(cols, schema=out_schema)

    ds.add_columns(fill, read_columns=read)
    return lance.dataset(ds.uri)


def _v3_to_v4(root: str, tag: str, report: MigrationReport, say: Callable[[str], None]) -> None:
    ds = _open(root, "annotations")
    if ds is not None and schema_version_of(ds) < 4:
        ds = _add_missing_columns(
            ds,
            "annotations",
            ["traj_id", "run_id", "method", "created_at", "positions"],
            lambda r: {"annotation_id": legacy_annotation_id(r)},
        )
        _set_version(ds, 4)
        rows = ds.count_rows()
        if rows:  # annotations were not written by any spo release before 4: usually none
            report.notes.append(
                f"annotations: {rows} rows written before schema 4 keyed by a 'legacy-' "
                "annotation_id (their reference model and sampler were never recorded)"
            )
            say(report.notes[-1])

    _finish_tables(root, 4)


def _v4_to_v5(root: str, tag: str, report: MigrationReport, say: Callable[[str], None]) -> None:
    ds = _open(root, "trajectories")
    if ds is not None and schema_version_of(ds) < 5:
        ds = _add_missing_columns(ds, "trajectories", ["traj_id"], lambda r: {}, ["worker_id"])
        _set_version(ds, 5)
        report.notes.append(
            f"trajectories: worker_id added, NULL on all {ds.count_rows()} existing rows "
            "(sampled in their command's own process)"
        )
        say(report.notes[-1])

    _finish_tables(root, 5)


def _v5_to_v6(root: str, tag: str, report: MigrationReport, say: Callable[[str], None]) -> None:
    from spo_store.q0_estimates import q0_of_s0
    from spo_store.q0_sequential import s0_interval

    ds = _open(root, "q0_estimates")
    if ds is not None and schema_version_of(ds) < 6:

        def fill(r: dict[str, Any]) -> dict[str, Any]:
            n, c, beta = r["samples"], r["successes"], r["beta"]
            ok = n is not None and c is not None and 0 <= c <= n and n > 0
            low, high = s0_interval(n, c, [n], None) if ok else (None, None)
            good_beta = ok and beta is not None and beta > 0
            return {
                "s0": c / n if ok else None,
                "s0_low": low,
                "s0_high": high,
                "q0_low": q0_of_s0(low, beta) if good_beta else None,
                "q0_high": q0_of_s0(high, beta) if good_beta else None,
                "stopping": "fixed",
            }

        ds = _add_missing_columns(ds, "q0_estimates", ["samples", "successes", "beta"], fill)
        _set_version(ds, 6)
        report.notes.append(
            f"q0_estimates: {ds.count_rows()} rows (all fixed-n) gained s0 = c/n, its "
            "Clopper-Pearson 95% interval and q0_low/q0_high at their own beta; stopping = 'fixed'"
        )
        say(report.notes[-1])

    _finish_tables(root, 6)


MIGRATIONS: dict[int, Callable[[str, str, MigrationReport, Callable[[str], None]], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
}
