"""Mixture sources resolved once: filters over what the sampler's index does not hold.

The sampler's index (`spo_store.mixture_index.MetadataIndex`) keeps the light columns of
`trajectories`, of `problems` (with the run's q0) and of `annotations` in memory. A source
filter that names anything else (a heavy column such as `t.response`, `t.prompt` or
`p.description`, or another lake table: `q0_estimates`, `runs`, `batches`, `metrics`, the
`trajectories` table itself) cannot be evaluated there. Such a source is **pinned**: its filter
is evaluated ONCE, when the run starts, by a full DuckDB query over the lake (`trajectories` at
one version, joined to the problems with the run's q0 as `p`, every other table at its latest
version), into the set of `traj_id`s it matches (`PinnedSource`). The sampler then draws the
source from `t.traj_id IN (the pinned ids)` over its index, with the conditions every source gets
(judged, q0, split, reliable problems, `--train-problems`) applied live as for any source.

So a pinned source is offline data fixed at the start: rows appended later never join it (their
ids are not in the set), rows deleted later are no longer drawn. The set is kept with the run
(`spo train` writes it to OUTPUT/pinned_sources.json and records its count and SHA-256 in the
`runs` row's config) and a `--resume` reads it back instead of evaluating the filter again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from spo_schemas import heavy_columns

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.predicates import _parse, _walk

# Tables the index answers for (`t`, `p` are the aliases of its views).
INDEX_TABLES = frozenset({"t", "p", "t_index", "p_index", "annotations"})
# Columns the index leaves out: any column of these names makes a source pinned.
HEAVY = frozenset(
    c for table in ("trajectories", "problems", "annotations") for c in heavy_columns(table)
)
# Placeholders a pinned filter may not use: unknown when it is resolved (run_id is bound once
# the run is recorded) or changing during the run (the policy window).
UNPINNABLE = ("{run_id}", "{policy_version}", "{staleness}")
PINNED_IDS = "pinned_ids"
"""The index view (`source`, `traj_id`) that pinned sources are drawn through."""
PINS_FILE = "pinned_sources.json"
"""The file in a run's --output that keeps its pinned sources."""


def outside_index(predicate: str) -> list[str]:
    """What `predicate` (placeholders filled) reads that the index does not hold, in order of
    appearance: heavy columns as written (`t.response`) and lake tables other than the index's
    (`q0_estimates`); [] for a filter the index evaluates live. Unparsable text gives []
    (the predicate check reports it)."""
    try:
        tree = _parse(f"SELECT 1 FROM t WHERE {predicate}")
    except (ValueError, duckdb.Error):
        return []
    found: list[str] = []
    # a CTE the filter defines itself is not a lake table
    ctes = {
        str(e.get("key", "")).lower()
        for node in _walk(tree)
        for e in (node.get("cte_map") or {}).get("map") or []
        if isinstance(e, dict)
    }
    for node in _walk(tree):
        if node.get("class") == "COLUMN_REF":
            names = node.get("column_names") or []
            if names and names[-1].lower() in HEAVY:
                found.append(".".join(names))
        elif node.get("type") == "BASE_TABLE":
            name = (node.get("table_name") or "").lower()
            if name and name not in INDEX_TABLES and name not in ctes:
                found.append(name)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class PinnedSource:
    """A source's filter resolved once: the `traj_ids` (sorted) it matched over `trajectories`
    at `trajectories_version` (`filter` as the sources file wrote it, placeholders unfilled)."""

    name: str
    filter: str
    trajectories_version: int
    traj_ids: tuple[str, ...]

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the ids, sorted, each followed by a newline."""
        return hashlib.sha256("".join(i + "\n" for i in self.traj_ids).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What the run's `runs` row records: the filter, the version, the count and hash."""
        return {
            "filter": self.filter,
            "trajectories_version": self.trajectories_version,
            "rows": len(self.traj_ids),
            "sha256": self.sha256,
        }


def resolve(
    lake: Lake, name: str, template: str, predicate: str, problems_sql: str
) -> PinnedSource:
    """Evaluate source `name`'s filter (`predicate`: `template` with its placeholders filled)
    over the whole lake: `trajectories t` at its latest version JOIN (`problems_sql`) `p`.
    Raises SpoError (one line naming the source) for invalid SQL or a placeholder that cannot
    be pinned."""
    used = [p for p in UNPINNABLE if p in template]
    if used:
        raise SpoError(
            f"source {name!r} names {', '.join(outside_index(predicate))}, which the mixture's "
            "index does not hold, so it is resolved once when the run starts; it cannot use "
            f"{', '.join(used)} (not known then, or changing during the run)"
        )
    ds = lake.dataset("trajectories")
    con = lake.duckdb()
    try:
        con.register("trajectories", ds)  # the version the ids are recorded against
        ids = (
            con.sql(
                f"SELECT t.traj_id FROM trajectories t JOIN ({problems_sql}) p "
                f"USING (problem_id) WHERE ({predicate}) ORDER BY t.traj_id"
            )
            .to_arrow_table()
            .column(0)
        )
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpoError(f"source {name!r}: bad SQL predicate ({first})") from None
    finally:
        con.close()
    return PinnedSource(name, template, ds.version, tuple(dict.fromkeys(ids.to_pylist())))


def pinned_table(pins: Mapping[str, PinnedSource]) -> pa.Table:
    """The `pinned_ids` view: one row per (source, traj_id)."""
    names = [n for n, p in pins.items() for _ in p.traj_ids]
    ids = [i for p in pins.values() for i in p.traj_ids]
    return pa.table({"source": pa.array(names, pa.string()), "traj_id": pa.array(ids, pa.string())})


def save_pins(output: Path, pins: Mapping[str, PinnedSource]) -> None:
    """Write `output/pinned_sources.json` (atomically): per source its summary and its ids;
    with no pinned source, remove one a run that stopped before its first checkpoint left."""
    if not pins:
        (output / PINS_FILE).unlink(missing_ok=True)
        return
    body = {"sources": {n: {**p.summary(), "traj_ids": list(p.traj_ids)} for n, p in pins.items()}}
    tmp = output / f".{PINS_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    tmp.replace(output / PINS_FILE)


def load_pins(output: Path) -> dict[str, PinnedSource] | None:
    """The pinned sources a run kept in `output` (None: it kept none). Raises SpoError (one
    line) for a file that is not what `save_pins` wrote or whose ids no longer match their
    recorded count and hash."""
    path = output / PINS_FILE
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        pins = {}
        for name, s in body["sources"].items():
            pin = PinnedSource(
                name, str(s["filter"]), int(s["trajectories_version"]), tuple(s["traj_ids"])
            )
            if len(pin.traj_ids) != s["rows"] or pin.sha256 != s["sha256"]:
                raise ValueError(f"the ids of source {name!r} do not match their count and hash")
            if not all(isinstance(i, str) for i in pin.traj_ids):
                raise ValueError(f"the ids of source {name!r} are not strings")
            pins[name] = pin
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SpoError(
            f"{path}: not a readable record of the run's pinned sources ({exc})"
        ) from None
    return pins
