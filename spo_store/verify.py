"""`spo lake verify`: find damage in the lake's data files (bit rot, truncation, a bad copy).

Lance stores no checksum of a row, so a flipped bit in a data file can change a value and read
back without an error. Every row of the latest version of every table is read, fragment by
fragment, and checked against what it can be checked against, without any new column:
- the table: its schema version is a number this spo reads, its columns and their types are
  the schema's, its key (`spo_schemas.KEYS`) is unique and never NULL;
- every fragment reads without an error (Lance's own decoding: truncated or corrupt pages);
- `trajectories`: `content_hash` is the sha256 of problem id and response (normalised or as
  given, `spo_store.adapters`), a human solution's `traj_id` is `h-` + its first 24 digits,
  `response_chars` is the response's length, `num_response_tokens` and the per-token log-prob
  lists match `response_ids` in length, `reward` is 0, -1 or NULL;
- `problems`: `problem_id` is the stable hash of `source_dataset` and `name` (of a namesake:
  also of its digest), `extra.content_sha256` (ingests since this release) is the digest of
  statement and tests, `num_tests` counts the tests, and the limits are in the judge's ranges.
What is not covered: token ids, log-prob values, timestamps, runs, metrics and the statement
or tests of problems stored before `content_sha256`; docs/lake.md says what to do on damage.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from spo_schemas import KEYS, SCHEMA_VERSION, TABLES, VERSION_KEY

from spo_store.adapters import normalise_response, problem_digest, problem_id
from spo_store.errors import _RUST_LOCATION
from spo_store.lake import Lake
from spo_store.maintenance import _tables
from spo_store.problem_rules import limit_range_error

BATCH_ROWS = 4096
LIST_COLUMNS = ("behaviour_logprobs", "model_logprobs", "ref_logprobs")


@dataclass
class Damage:
    table: str
    where: str  # "fragment 3 (data/x.lance) row 17 (traj_id 'h-...')" or "table"
    what: str

    def __str__(self) -> str:
        return f"{self.table}: {self.where}: {self.what}"


@dataclass
class VerifyReport:
    rows: dict[str, int] = field(default_factory=dict)  # rows checked per table
    versions: dict[str, int] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


def verify_lake(
    lake: Lake,
    tables: Sequence[str] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> VerifyReport:
    """Check every row of the latest version of `tables` (default: all); see the module
    docstring for the checks. Returns a VerifyReport listing each damaged row, fragment or
    table; raises nothing for damage (SpoError only for an unknown table)."""
    report = VerifyReport()
    for name in _tables(tables):
        try:
            ds = lake.dataset(name)
        except Exception as exc:  # noqa: BLE001 - a manifest that cannot be read is damage
            detail = _RUST_LOCATION.sub("", " ".join(str(exc).split()))[:200]
            report.damage.append(Damage(name, "table", f"cannot be opened ({detail})"))
            continue
        report.versions[name] = ds.version
        report.rows[name] = 0
        report.damage.extend(_check_table_schema(name, ds.schema))
        check = ROW_CHECKS.get(name)
        key = KEYS.get(name)
        keys: set[Any] = set()
        for frag in ds.get_fragments():
            files = ", ".join(f.path for f in frag.data_files())
            where = f"fragment {frag.fragment_id} ({files})"
            offset = 0
            try:
                for batch in _batches(frag):
                    for i, row in enumerate(batch.to_pylist()):
                        at = f"{where} row {offset + i}"
                        if key is not None:
                            k = row.get(key)
                            at += f" ({key} {str(k)[:40]!r})"
                            if k is None:
                                report.damage.append(Damage(name, at, f"{key} is NULL"))
                            elif k in keys:
                                report.damage.append(Damage(name, at, f"{key} appears twice"))
                            keys.add(k)
                        if check is not None:
                            report.damage.extend(Damage(name, at, w) for w in check(row))
                    offset += batch.num_rows
                    report.rows[name] += batch.num_rows
                    if progress:
                        progress(name, report.rows[name])
            except Exception as exc:  # noqa: BLE001 - any decode failure is damage to report
                detail = _RUST_LOCATION.sub("", " ".join(str(exc).split()))[:200]
                report.damage.append(
                    Damage(name, f"{where} after row {offset}", f"unreadable ({detail})")
                )
    return report


def _batches(frag: Any) -> Iterator[pa.RecordBatch]:
    yield from frag.to_batches(batch_size=BATCH_ROWS)


def _check_table_schema(name: str, schema: pa.Schema) -> list[Damage]:
    out = []
    found = (schema.metadata or {}).get(VERSION_KEY, b"")
    if found != str(SCHEMA_VERSION).encode():
        shown = found[:20].decode(errors="replace")
        out.append(Damage(name, "table", f"spo.schema_version is {shown!r}, not {SCHEMA_VERSION}"))
    want = TABLES[name]
    for f in want:
        if f.name not in schema.names:
            out.append(Damage(name, "table", f"column {f.name!r} is missing"))
        elif schema.field(f.name).type != f.type:
            got = schema.field(f.name).type
            out.append(Damage(name, "table", f"column {f.name!r} is {got}, not {f.type}"))
    return out


def _sha(pid: str, text: str) -> str:
    return hashlib.sha256(f"{pid}\0{text}".encode()).hexdigest()


def _check_trajectory(row: dict[str, Any]) -> list[str]:
    out = []
    pid, response, digest = row.get("problem_id"), row.get("response"), row.get("content_hash")
    if pid is None or row.get("source") is None:
        out.append("problem_id or source is NULL")
    if response is not None and digest is not None and pid is not None:
        if digest not in (_sha(pid, response), _sha(pid, normalise_response(response))):
            out.append("content_hash is not the hash of problem_id and response")
        if row.get("source") == "human" and row.get("traj_id") != f"h-{digest[:24]}":
            out.append("traj_id of a human solution is not h- + its content_hash")
    if response is not None and row.get("response_chars") not in (None, len(response)):
        out.append(f"response_chars {row['response_chars']} but the response has {len(response)}")
    ids = row.get("response_ids")
    if ids is not None:
        n = row.get("num_response_tokens")
        if n is not None and n != len(ids):
            out.append(f"num_response_tokens {n} but {len(ids)} response_ids")
        for col in LIST_COLUMNS:
            values = row.get(col)
            if values is not None and len(values) != len(ids):
                out.append(f"{col} has {len(values)} values for {len(ids)} response_ids")
    reward = row.get("reward")
    if reward is not None and reward not in (0.0, -1.0):
        out.append(f"reward {reward!r} is not 0, -1 or NULL")
    return out


def _check_problem(row: dict[str, Any]) -> list[str]:
    out = []
    name, dataset = row.get("name"), row.get("source_dataset")
    try:
        extra = json.loads(row.get("extra") or "{}")
    except ValueError:
        extra = None
        out.append("extra is not JSON")
    digest = extra.get("content_sha256") if isinstance(extra, dict) else None
    if digest is None and isinstance(extra, dict):
        near = [
            k for k in extra if difflib.SequenceMatcher(None, k, "content_sha256").ratio() > 0.8
        ]
        if near:  # a flipped bit in the key's name: the digest is still there, unreadable
            out.append(f"extra key {near[0]!r} is a damaged 'content_sha256'")
    if name is not None and dataset is not None:
        ids = {problem_id(dataset, name)}
        if isinstance(digest, str):
            ids.add(problem_id(dataset, f"{name}\0{digest[:16]}"))
        if row.get("problem_id") not in ids:
            out.append("problem_id is not the hash of source_dataset and name")
    if isinstance(digest, str) and digest != problem_digest(row):
        out.append("statement or tests differ from extra.content_sha256")
    n_tests = sum(
        len((row.get(k) or {}).get("input") or [])
        for k in ("public_tests", "private_tests", "generated_tests")
    )
    if row.get("num_tests") is not None and row["num_tests"] != n_tests:
        out.append(f"num_tests {row['num_tests']} but {n_tests} tests")
    for k in ("public_tests", "private_tests", "generated_tests"):
        block = row.get(k) or {}
        if len(block.get("input") or []) != len(block.get("output") or []):
            out.append(
                f"{k} has {len(block.get('input') or [])} inputs but "
                f"{len(block.get('output') or [])} outputs"
            )
    for what, col in (("time", "time_limit_s"), ("memory", "memory_limit_mb")):
        value = row.get(col)
        if value is not None and (not math.isfinite(value) or limit_range_error(what, value)):
            out.append(f"{col} {value!r} is outside the judge's range")
    return out


ROW_CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "trajectories": _check_trajectory,
    "problems": _check_problem,
}
