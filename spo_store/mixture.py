"""Training mixtures chosen by SQL: `"online:0.5,offline:0.5"`.

A mixture names sources with weights. Each source is a SQL predicate over the aliases `t`
(trajectories) and `p` (problems). Sampling a batch:
1. a `MetadataIndex` keeps the light columns of `trajectories` (and `problems`) in memory and
   refreshes incrementally when the lake version moves (appends add fragments; only those are
   read);
2. each source's candidate rows are computed by DuckDB over that index and kept: when the
   trajectories table only grew by appends, only the new rows are evaluated and merged in
   (content-hash dedup included); deletions, updates, compaction or a change of problems,
   q0 estimates or annotations recompute them whole. The merged set equals a full recompute
   (tested), so a batch depends only on `(lake version, seed, step)`. The policy-version window
   of `online` is applied to its kept set per call, so a new policy version costs no query;
3. per-source counts are exact (largest remainder), the draw is seeded by `(seed, step)`;
4. the heavy columns (text, token ids, log-probs) are fetched by row with Lance `take` from the
   pinned version, and `(lake version, trajectory ids)` identifies the batch for reproduction.

Predicates may also read `annotations` (light columns; `pts` does). A source whose filter names
anything the index does not hold (a heavy column such as `t.response`, another lake table) is
resolved once, at the start, into a pinned set of trajectory ids (`spo_store.mixture_pins`):
rows appended later never join it. `p` is the problems table
plus the q0 estimate of the run's reference model and q0 sampler
settings (`q0_estimates`, LEFT JOIN: `p.q0` is NULL where that model has no estimate; see
`spo_store.q0_estimates.problems_with_q0_sql`), so predicates over `p.q0` mean the q0 the run
trains against. Problems with a `judge_issue` are left out unless `include_unreliable`.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.mixture_index import (
    POLICY_WINDOW,
    WHOLE_TABLE,
    KeptCandidates,
    MetadataIndex,
    merge_deduplicated,
    split_window,
)
from spo_store.mixture_pins import PINNED_IDS, PinnedSource, outside_index, pinned_table, resolve
from spo_store.predicates import check_predicate, fill_placeholders
from spo_store.q0_estimates import problems_with_q0_sql
from spo_store.selection import check_condition_binds

# Predicates over t (trajectories) and p (problems). {run_id}, {policy_version} and {staleness}
# are filled from the sampling context; a source that needs them fails clearly without one.
BUILTIN_SOURCES: dict[str, str] = {
    "online": "t.source = 'online' AND t.run_id = {run_id} AND " + POLICY_WINDOW,
    "offline": (
        "t.reward = 0 AND t.language = 'python3' "
        "AND NOT (t.source = 'online' AND t.run_id = {run_id})"
    ),
    "human": "t.source = 'human' AND t.reward = 0 AND t.language = 'python3'",
    "pi0": "t.source = 'pi0'",
    # Trajectories `spo pts` annotated under this run's reference model (their S_t targets
    # feed --mc-weight), and the PTS rollouts themselves (the paper's Figure 2c control).
    "pts": (
        "t.reward = 0 AND t.traj_id IN (SELECT a.traj_id FROM annotations a "
        "WHERE a.method = 'pts' AND a.ref_model_id = {ref_model_id})"
    ),
    "pts_rollouts": "t.source = 'pts' AND t.model_id = {ref_model_id}",
}
# Sources whose rows are deduplicated by content hash (one row per distinct response).
DEDUPLICATED = {"offline", "human"}
# Every source only sees judged trajectories of problems with a Q0 estimate (SPO needs both);
# a sampler told `require_q0=False` (TOPR: rewards only) drops the q0 half.
BASE_PREDICATE = "t.reward IS NOT NULL AND p.q0 IS NOT NULL"
JUDGED_PREDICATE = "t.reward IS NOT NULL"
# ... and, unless the sampler is told to include them, problems the judge handles reliably.
RELIABLE_PREDICATE = "p.judge_issue IS NULL"


@dataclass(frozen=True)
class MixtureSpec:
    weights: dict[str, float]

    @classmethod
    def parse(cls, text: str, known: Sequence[str]) -> MixtureSpec:
        """Parse `"name:weight,..."`; weights must be non-negative and sum to 1."""
        weights: dict[str, float] = {}
        if not text or not text.strip():
            raise SpoError("mixture spec is empty; expected e.g. 'online:0.5,offline:0.5'")
        for part in text.split(","):
            name, sep, raw = part.strip().partition(":")
            name = name.strip()
            if not sep or not name:
                raise SpoError(f"mixture spec {text!r}: {part.strip()!r} is not 'source:weight'")
            try:
                weight = float(raw)
            except ValueError:
                raise SpoError(
                    f"mixture spec {text!r}: weight {raw.strip()!r} of {name!r} is not a number"
                ) from None
            if not math.isfinite(weight) or weight < 0:
                raise SpoError(
                    f"mixture spec {text!r}: weight of {name!r} is negative or not finite"
                )
            if name not in known:
                raise SpoError(
                    f"mixture spec {text!r}: unknown source {name!r}; known: {', '.join(sorted(known))}"
                )
            if name in weights:
                raise SpoError(f"mixture spec {text!r}: source {name!r} appears twice")
            weights[name] = weight
        total = sum(weights.values())
        if abs(total - 1.0) > 1e-6:
            raise SpoError(f"mixture spec {text!r}: weights sum to {total:g}, not 1")
        return cls(weights)

    def counts(self, batch_size: int) -> dict[str, int]:
        """Exact per-source counts summing to `batch_size` (largest remainder method)."""
        quotas = {k: w * batch_size for k, w in self.weights.items()}
        counts = {k: int(math.floor(q)) for k, q in quotas.items()}
        left = batch_size - sum(counts.values())
        # Ties go to the source listed first, so the split is deterministic.
        order = sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), list(quotas).index(k)))
        for k in order[:left]:
            counts[k] += 1
        return counts


def load_sources(path: str | Path | None = None) -> dict[str, str]:
    """Built-in sources plus user sources from a TOML file: `[sources] name = "SQL predicate"`."""
    sources = dict(BUILTIN_SOURCES)
    if path is None:
        return sources
    if Path(path).exists() and not Path(path).is_file():
        raise SpoError(f"{path}: the sources file is not a file")
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpoError(f"{path}: no such sources file") from None
    except UnicodeDecodeError as exc:
        raise SpoError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpoError(f"{path}: invalid TOML ({exc})") from None
    user = data.get("sources")
    if not isinstance(user, dict) or not all(isinstance(v, str) for v in user.values()):
        raise SpoError(f'{path}: expected a [sources] table of name = "SQL predicate"')
    # A built-in name means what the docs say it means: redefining it would silently put
    # other rows in (say) an "online" mixture.
    clash = sorted(set(user) & set(BUILTIN_SOURCES))
    if clash:
        raise SpoError(
            f"{path}: {', '.join(clash)} {'is a' if len(clash) == 1 else 'are'} built-in "
            "source name(s) and cannot be redefined; give the source another name"
        )
    for name, pred in user.items():
        check_source_name(name, f"{path}: source {name!r}")
        check_source(pred, f"{path}: source {name!r}")
    sources.update(user)
    return sources


SOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_source_name(name: str, what: str) -> None:
    """A user source's name (a sources file's or an experiment config's) must be usable in
    `--mix name:weight`: a letter, then letters, digits, `_`, `-`. Raises SpoError starting
    with `what`."""
    if not SOURCE_NAME.fullmatch(name):
        raise SpoError(
            f"{what}: a source name starts with a letter and has only letters, digits, "
            "'_' and '-' (as --mix NAME:WEIGHT reads it)"
        )


def check_source(pred: str, what: str) -> None:
    """A user source's predicate (SQL over t, p): one boolean expression reading only lake
    tables (`check_predicate`), checked with the placeholders filled in as a run fills them.
    Raises SpoError, one line starting with `what` (a file and source name)."""
    try:
        filled = fill_placeholders(pred, _example_params())
        check_predicate(filled, what)
    except SpoError as exc:
        msg = str(exc)
        raise SpoError(msg if msg.startswith(what) else f"{what}: {msg}") from None
    # Bound against the lake's schema (empty tables): a misspelt column is refused here,
    # not by every run at its start.
    view = problems_with_q0_sql(None, None, None)
    source = f"FROM trajectories t JOIN ({view}) p USING (problem_id)"
    check_condition_binds(filled, source, what, "trajectories t and problems p")


def _example_params() -> dict[str, str]:
    """Placeholder values of the right SQL kinds, for checking a source before a run."""
    return {"run_id": "'r'", "policy_version": "0", "staleness": "0", "ref_model_id": "'m'"}


@dataclass
class SampledBatch:
    """A batch: the pinned lake version, the ids per source, and the rows (heavy columns too)."""

    version: int
    traj_ids: list[str]
    sources: list[str]
    table: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


class MixtureSampler:
    """Seeded, reproducible mixture batches from the lake (see the module docstring)."""

    def __init__(
        self,
        lake: Lake,
        spec: str | MixtureSpec,
        *,
        sources: Mapping[str, str] | None = None,
        run_id: str | None = None,
        staleness: int = 10,
        split: str | None = "train",
        seed: int = 0,
        ref_model_id: str | None = None,
        q0_sampler_key: str | None = None,
        beta: float | None = None,
        include_unreliable: bool = False,
        problem_where: str | None = None,
        require_q0: bool = True,
        pinned: Mapping[str, PinnedSource] | None = None,
    ) -> None:
        """`ref_model_id` and `q0_sampler_key` choose the q0 estimates that `p.q0` shows
        (without them no problem has a q0, so BASE_PREDICATE selects nothing);
        `require_q0=False` draws from every judged row whatever its problem's q0 (an
        algorithm that trains on rewards alone, TOPR); `beta`
        recomputes `p.q0` at the training beta; `include_unreliable` keeps problems with a
        `judge_issue` (left out by default: their rewards are not trustworthy);
        `problem_where` (SQL over `p`) further restricts the problems every source draws from
        (`spo train --train-problems N`). A source whose filter the index cannot evaluate is
        pinned (`spo_store.mixture_pins`) when first drawn from (`check_sources` does it for
        every source of the spec); `pinned` gives the sets a run pinned before (a resume):
        then they are used as they are and a source missing from them is refused, never
        resolved again."""
        self.problem_where = problem_where
        self.require_q0 = require_q0
        self.sources = dict(sources or BUILTIN_SOURCES)
        self.spec = (
            spec if isinstance(spec, MixtureSpec) else MixtureSpec.parse(spec, list(self.sources))
        )
        self.run_id, self.staleness, self.split, self.seed = run_id, staleness, split, seed
        self.include_unreliable = include_unreliable
        self.ref_model_id = ref_model_id
        self.index = MetadataIndex(lake, ref_model_id, q0_sampler_key, beta)
        self.lake = lake
        self.restoring = pinned is not None
        self.pinned: dict[str, PinnedSource] = {}
        """The pinned sources this sampler draws from (resolved or restored), by name."""
        self._problems_sql = problems_with_q0_sql(ref_model_id, q0_sampler_key, beta)
        self._candidates: dict[tuple[str, int | None], KeptCandidates] = {}
        self.stats = {"full": 0, "incremental": 0}
        """How candidate sets were brought up to date: `full` recomputes, `incremental`
        extensions over appended rows (benchmarks and tests read it)."""
        self._outside: dict[str, list[str]] = {}
        for name, pin in (pinned or {}).items():
            if name in self.spec.weights:
                self._pin(pin)

    def _params(self, policy_version: int) -> dict[str, str]:
        return {
            "run_id": "NULL" if self.run_id is None else "'" + self.run_id.replace("'", "''") + "'",
            "policy_version": str(int(policy_version)),
            "staleness": str(int(self.staleness)),
            "ref_model_id": "NULL"
            if self.ref_model_id is None
            else "'" + self.ref_model_id.replace("'", "''") + "'",
        }

    def _fill(self, name: str, template: str, policy_version: int) -> str:
        try:
            # Only the placeholders: braces of a regex quantifier (`{2,}`) stay as written.
            return fill_placeholders(template, self._params(policy_version))
        except SpoError as exc:
            raise SpoError(f"source {name!r}: {exc}") from None

    def needs_pin(self, name: str) -> list[str]:
        """What source `name`'s filter reads outside the index ([]: evaluated live)."""
        if name not in self._outside:  # parsed once: DuckDB's parser costs ~10 ms a call
            self._outside[name] = (
                []
                if name in BUILTIN_SOURCES
                else outside_index(self._fill(name, self.sources[name], 0))
            )
        return self._outside[name]

    def _pin(self, pin: PinnedSource) -> None:
        self.pinned[pin.name] = pin
        self.index.pinned = pinned_table(self.pinned)
        self._candidates = {k: v for k, v in self._candidates.items() if k[0] != pin.name}

    def _template(self, name: str) -> str:
        """The predicate the index evaluates for `name`: its filter, or for a pinned source
        membership in its pinned ids (resolved now if it has none yet)."""
        template = self.sources[name]
        pin = self.pinned.get(name)
        if pin is None and self.needs_pin(name):
            if self.restoring:
                raise SpoError(
                    f"source {name!r} has no pinned ids kept by this run (its filter names "
                    f"{', '.join(self.needs_pin(name))}, so it is resolved once when a run "
                    "starts, and `spo train` keeps the ids in OUTPUT/pinned_sources.json): "
                    "restore that file, or start a new run to resolve the filter again"
                )
            pred = self._fill(name, template, 0)
            self._pin(resolve(self.lake, name, template, pred, self._problems_sql))
            pin = self.pinned[name]
        if pin is None:
            return template
        if pin.filter != template:
            raise SpoError(
                f"source {name!r} is now {template!r}, but this run pinned its ids for "
                f"{pin.filter!r}: resume with the sources it started with, or start a new run"
            )
        return f"t.traj_id IN (SELECT traj_id FROM {PINNED_IDS} WHERE source = " + (
            "'" + name.replace("'", "''") + "')"
        )

    def _predicate(self, name: str, policy_version: int, template: str | None = None) -> str:
        pred = self._fill(
            name, self._template(name) if template is None else template, policy_version
        )
        where = f"({BASE_PREDICATE if self.require_q0 else JUDGED_PREDICATE}) AND ({pred})"
        if not self.include_unreliable:
            where += f" AND ({RELIABLE_PREDICATE})"
        if self.split:
            where += " AND p.split = '" + self.split.replace("'", "''") + "'"
        if self.problem_where:
            where += f" AND ({self.problem_where})"
        return where

    def left_out(self) -> dict[str, int]:
        """Problems of the split left out for a `judge_issue`, counted per reason (the text
        before ':'); empty when `include_unreliable`."""
        self.index.refresh()
        if self.include_unreliable:
            return {}
        where = "p.judge_issue IS NOT NULL"
        if self.split:
            where += " AND p.split = '" + self.split.replace("'", "''") + "'"
        rows = self.index.query(
            "SELECT trim(split_part(p.judge_issue, ':', 1)) AS reason, count(*) AS n "
            f"FROM p_index p WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1"
        ).to_pylist()
        return {r["reason"]: int(r["n"]) for r in rows}

    def candidates(self, name: str, policy_version: int = 0) -> np.ndarray:
        """Row positions (at the index's version, ascending) that source `name` may draw from.

        Equal to evaluating the whole predicate over the whole index (see the module docstring
        for when the kept set is extended instead); raises SpoError for a bad predicate.
        """
        template, windowed = split_window(self._template(name))
        windowed = windowed and name not in DEDUPLICATED
        varies = "{policy_version}" in template
        key = (name, policy_version if varies else None)
        idx = self.index
        n = idx.trajectories.num_rows if idx.trajectories is not None else 0
        kept = self._candidates.get(key)
        row_local = not WHOLE_TABLE.search(template)
        if (
            kept is not None
            and kept.epoch == idx.epoch
            and kept.problems_version == idx._problems_version
            and kept.rows <= n
            and (row_local or kept.rows == n)
        ):
            if kept.rows < n:
                self._extend(name, template, policy_version, kept, n)
        else:
            kept = self._full(name, template, policy_version, n)
            if varies:  # one kept set per source and policy version is plenty
                self._candidates = {k: v for k, v in self._candidates.items() if k[0] != name}
            self._candidates[key] = kept
        if not windowed:
            return kept.positions
        return kept.window(idx, int(policy_version) - int(self.staleness), int(policy_version))

    def _select(self, name: str, template: str, policy_version: int, *, start: int) -> pa.Table:
        where = self._predicate(name, policy_version, template)
        sql = (
            "SELECT t._pos, t.content_hash, t.traj_id FROM t_index t "
            f"JOIN p_index p USING (problem_id) WHERE {where}"
        )
        if name in DEDUPLICATED and start == 0:
            # ties of traj_id (appends do not dedupe ids) go to the first row: deterministic
            sql += (
                " QUALIFY row_number() OVER (PARTITION BY t.content_hash "
                "ORDER BY t.traj_id, t._pos) = 1"
            )
        sql += " ORDER BY t._pos"
        try:
            return self.index.query(sql, start=start)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise SpoError(f"source {name!r}: bad SQL predicate ({first})") from None

    def _full(self, name: str, template: str, policy_version: int, n: int) -> KeptCandidates:
        rows = self._select(name, template, policy_version, start=0)
        self.stats["full"] += 1
        dedup = name in DEDUPLICATED
        return KeptCandidates(
            epoch=self.index.epoch,
            problems_version=self.index._problems_version,
            rows=n,
            positions=rows.column("_pos").to_numpy(),
            hashes=rows.column("content_hash").combine_chunks() if dedup else None,
            traj_ids=rows.column("traj_id").combine_chunks() if dedup else None,
        )

    def _extend(
        self, name: str, template: str, policy_version: int, kept: KeptCandidates, n: int
    ) -> None:
        """Evaluate the predicate over rows `kept.rows..n` only and merge them into `kept`.

        Deduplicated sources are merged by `merge_deduplicated`."""
        new = self._select(name, template, policy_version, start=kept.rows)
        self.stats["incremental"] += 1
        kept.rows = n
        if new.num_rows == 0:
            return
        if name not in DEDUPLICATED:
            kept.positions = np.concatenate([kept.positions, new.column("_pos").to_numpy()])
            return
        merge_deduplicated(kept, new)

    def check_sources(self) -> None:
        """Raise SpoError (`why_empty`'s line) for the first source with weight > 0, other than
        `online` (filled by the run's own rollouts), that has no candidate now.

        Call it before a run is recorded or its output claimed: a mixture that cannot be drawn
        is a refusal, not a failed run (the advice `--mix online:1` must work as given).
        """
        self.index.refresh()
        for name, weight in self.spec.weights.items():
            if weight > 0 and name != "online" and len(self.candidates(name)) == 0:
                raise SpoError(self.why_empty(name))

    def why_empty(self, name: str, policy_version: int = 0) -> str:
        """One line saying why source `name` has no candidate and what to do instead, found by
        narrowing down: no problem in the split, no q0 estimate there, all flagged, no judged
        (or, for `offline`/`human`, no correct) trajectory. The raw SQL is appended only under
        SPO_DEBUG=1 (a user source names its own predicate)."""
        self.index.refresh()
        head = f"mixture source {name!r} is empty at lake version {self.index.version}"
        in_split = (
            f"p.split = '{self.split.replace(chr(39), chr(39) * 2)}'" if self.split else "TRUE"
        )
        where_split = f"of split {self.split!r}" if self.split else "in the lake"

        def count(where: str, *, trajectories: bool = False) -> int:
            sql = (
                f"SELECT count(*) FROM t_index t JOIN p_index p USING (problem_id) WHERE {where}"
                if trajectories
                else f"SELECT count(*) FROM p_index p WHERE {where}"
            )
            return int(self.index.query(sql).column(0)[0].as_py())

        reliable = "TRUE" if self.include_unreliable else RELIABLE_PREDICATE
        with_q0 = " with a q0 estimate" if self.require_q0 else ""
        if count(in_split) == 0:
            present = self.index.query(
                "SELECT coalesce(split, 'NULL') AS s, count(*) AS n FROM p_index GROUP BY 1 "
                "ORDER BY 1"
            ).to_pylist()
            splits = ", ".join(f"{r['s']} ({r['n']})" for r in present) or "none"
            why = (
                f"no problem {where_split} (splits present: {splits}; move problems with "
                "`spo lake set-split`)"
            )
        elif count(f"{in_split} AND {reliable}") == 0:
            why = f"every problem {where_split} has a judge_issue (--include-unreliable keeps them)"
        elif self.require_q0 and count(f"{in_split} AND {reliable} AND p.q0 IS NOT NULL") == 0:
            why = (
                f"no problem {where_split} has a q0 estimate of this reference model and q0 "
                "sampler: run `spo estimate-q0` with the same model and sampler settings first"
            )
        elif name == "online":
            why = (
                "no online rollout of this run within the staleness window yet (online rows "
                "come from this run's own rollouts)"
            )
        elif name in ("offline", "human"):
            what = "human solutions" if name == "human" else "trajectories"
            why = (
                f"no correct (reward 0) Python 3 {what} for the problems {where_split}"
                f"{with_q0} (lake holds "
                f"{count(f'{in_split} AND t.reward = 0', trajectories=True)} correct, "
                f"{count(f'{in_split} AND t.reward IS NOT NULL', trajectories=True)} judged "
                f"rows there): train on rollouts only with `--mix online:1`, or ingest correct "
                "solutions with `spo ingest human-solutions FILE` (labelled, or judged with "
                "--verify)"
            )
        elif name in ("pts", "pts_rollouts"):
            what = "successful trajectory annotated" if name == "pts" else "rollout stored"
            why = (
                f"no {what} by `spo pts` under this reference model for the problems "
                f"{where_split}{with_q0}: run `spo pts` with the same --model first "
                "(docs/pts.md)"
            )
        elif name in self.pinned:
            pin = self.pinned[name]
            why = (
                f"its filter {pin.filter!r} (resolved once over trajectories version "
                f"{pin.trajectories_version}: it names {', '.join(self.needs_pin(name))}) "
                + (
                    "matches no trajectory"
                    if not pin.traj_ids
                    else f"matches {len(pin.traj_ids)} trajectories, none of them a judged "
                    f"trajectory of the problems {where_split}{with_q0}"
                )
            )
        else:
            why = (
                f"source predicate {self.sources[name]!r} matches no judged trajectory of the "
                f"problems {where_split}{with_q0}"
            )
        line = f"{head}: {why}"
        if os.environ.get("SPO_DEBUG"):
            line += f" [SQL: {self._predicate(name, policy_version)}]"
        return line

    def sample(
        self,
        batch_size: int,
        *,
        step: int = 0,
        policy_version: int = 0,
        columns: Sequence[str] | None = None,
    ) -> SampledBatch:
        """Draw one batch; the same `(seed, step)` at the same lake version gives the same ids."""
        self.index.refresh()
        counts = self.spec.counts(batch_size)
        rng = np.random.default_rng([self.seed, step])
        positions: list[np.ndarray] = []
        labels: list[str] = []
        for name, count in counts.items():
            if count == 0:
                continue
            pool = self.candidates(name, policy_version)
            if len(pool) == 0:
                raise SpoError(self.why_empty(name, policy_version))
            pick = rng.choice(pool, size=count, replace=len(pool) < count)
            positions.append(pick)
            labels += [name] * count
        pos = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
        table = self.fetch(pos, columns)
        return SampledBatch(
            version=self.index.version,
            traj_ids=table.column("traj_id").to_pylist(),
            sources=labels,
            table=table.append_column("mixture_source", pa.array(labels, pa.string())),
            counts=counts,
        )

    def fetch(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows at `positions` of the pinned version, all columns unless `columns` is given."""
        assert self.index.dataset is not None and self.index.trajectories is not None
        cols = list(columns) if columns else list(self.index.dataset.schema.names)
        if "traj_id" not in cols:
            cols = ["traj_id", *cols]
        # Light columns come from the in-memory index (same pinned version); Lance reads only
        # the heavy ones: on an uncompacted lake (~100 fragments) that halves a batch's take.
        idx = pa.array(positions, pa.int64())
        cached = set(self.index.trajectories.column_names) - {"_pos"}
        light = self.index.take(positions, [c for c in cols if c in cached])
        heavy = [c for c in cols if c not in cached]
        fetched = self.index.dataset.take(idx, columns=heavy) if heavy else None
        return pa.table(
            [light.column(c) if c in cached else fetched.column(c) for c in cols], names=cols
        )


def fetch_by_ids(
    lake: Lake, version: int, traj_ids: Sequence[str], columns: Sequence[str] | None = None
) -> pa.Table:
    """Reproduce a logged batch: the rows of `traj_ids` in order, at trajectories `version`
    while it exists, else by id at the latest version (see `spo_store.reproduce`)."""
    from spo_store.reproduce import fetch_rows_by_ids

    return fetch_rows_by_ids(lake, version, traj_ids, columns).table
