"""Batch sources: where a training step's batch comes from, chosen by the algorithm's rules.

Both read the batch from the lake, so every algorithm's batch is one `(lake version,
trajectory ids)` pair, logged in `batches` and reproduced by `spo lake batch`:
- `MixtureBatches` (SPO, TOPR: `online_only` False): the SQL mixture `--mix` over the lake
  (`spo_store.mixture.MixtureSampler`; `online` = this run's rollouts within `--staleness`;
  rows of problems with a q0 estimate only when the algorithm `needs_q0`);
- `GroupBatches` (PPO, GRPO, `online_only` True): `batch_size / rollout_n` whole groups of this
  run's judged rollouts within `--staleness` that no logged batch of the run holds yet, the
  newest first (policy version, then commit time, then group id). A group is the samples of
  one problem drawn together (`spo_train.rollouts.sampling.grouped_traj_ids`).
  With `--grpo-reference-per-group N`, each group also gets N of the lake's correct offline
  solutions of its problem (`reference_rows`: the mixture's `offline` source, one per content
  hash, drawn by `(seed, step, group)`), labelled `offline` in the batch log; a problem without
  one keeps its group as is.

A source is made before the run is recorded (so a source with nothing to draw is a refusal
that leaves no run behind), then `bind(run_id)` once it is. Mixture sources whose filter the
sampler's index cannot evaluate (`t.response`, ...) are pinned to trajectory ids then
(`pinned`; `spo_store.mixture_pins`), and the loop keeps them with the run. `rows_per_step`
tells the rollout source how many online rows a step uses; `ready(version)` tells a rollout
source that fills the lake in the background (`spo_train.rollouts.ray_rollouts`) whether a
step's data is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote
from spo_store.mixture import BUILTIN_SOURCES, MixtureSampler
from spo_store.mixture_pins import PinnedSource
from spo_store.predicates import fill_placeholders
from spo_train.algorithm_rules import rules_of
from spo_train.config import TrainConfig
from spo_train.rollouts.sampling import group_id_sql, grouped_id_sql


@dataclass
class Batch:
    """One step's batch: the trajectories table `version` it was read at, the rows' ids, the
    source each was drawn for (the mixture's names; `online` for groups), the group of each
    (rows with the same value are samples of one problem drawn together; a mixture's rows are
    each their own), and the rows themselves (all columns of `trajectories`)."""

    version: int
    traj_ids: list[str]
    sources: list[str]
    groups: list[int]
    table: pa.Table


class BatchSource(Protocol):
    rows_per_step: int
    """Online rows one step's batch uses (what the rollout source samples per step)."""
    pinned: Mapping[str, PinnedSource]
    """Sources resolved once into traj ids (`spo_store.mixture_pins`), kept with the run."""

    def bind(self, run_id: str) -> None:
        """The run is recorded: `online` means this run's rollouts from now on."""
        ...

    def ready(self, policy_version: int) -> tuple[bool, str]:
        """Whether the lake holds a step's data for rollouts of `policy_version`, and what is
        missing (for the message of a step that waits too long)."""
        ...

    def draw(self, step: int, policy_version: int) -> Batch:
        """The batch of `step` (SpoError, one line, when there is nothing to train on)."""
        ...


class MixtureBatches:
    """SPO's and TOPR's batches: `--mix` drawn from the lake, seeded by `(seed, step)`."""

    def __init__(self, sampler: MixtureSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size
        self.rows_per_step = sampler.spec.counts(batch_size).get("online", 0)
        self.pinned = sampler.pinned

    def bind(self, run_id: str) -> None:
        self.sampler.run_id = run_id  # only `online` reads it

    def ready(self, policy_version: int) -> tuple[bool, str]:
        self.sampler.index.refresh()
        have = len(self.sampler.candidates("online", policy_version))
        need = self.rows_per_step
        return have >= need, f"{have}/{need} online rows within the staleness window"

    def draw(self, step: int, policy_version: int) -> Batch:
        b = self.sampler.sample(self.batch_size, step=step, policy_version=policy_version)
        return Batch(b.version, b.traj_ids, b.sources, list(range(len(b.traj_ids))), b.table)


class GroupBatches:
    """PPO's and GRPO's batches: whole fresh groups of this run's rollouts (module docstring)."""

    def __init__(self, lake: Lake, config: TrainConfig) -> None:
        self.lake, self.config = lake, config
        self.rows_per_step = config.batch_size
        self.groups_per_step = config.batch_size // config.rollout_n
        self.run_id: str | None = None
        self.pinned: Mapping[str, PinnedSource] = {}

    def bind(self, run_id: str) -> None:
        self.run_id = run_id

    def fresh_groups(self, policy_version: int) -> list[tuple[str, str, list[str]]]:
        """This run's judged online groups within `--staleness` of `policy_version` that no
        logged batch of the run holds, newest first: `[(group id, problem id, traj ids in
        sample order)]` (a group's unjudged rows are left out: not judged is not a reward)."""
        assert self.run_id is not None, "bind(run_id) first"
        rid = sql_quote(self.run_id)
        low = policy_version - self.config.staleness
        rows = self.lake.sql_arrow(
            f"SELECT {group_id_sql('t.traj_id')} AS grp, max(t.policy_version) AS v, "
            "max(t.created_at) AS made, any_value(t.problem_id) AS problem, "
            "list(t.traj_id ORDER BY t.traj_id) AS ids "
            f"FROM trajectories t WHERE t.run_id = {rid} AND t.source = 'online' "
            f"AND {grouped_id_sql('t.traj_id')} AND t.reward IS NOT NULL "
            f"AND t.policy_version BETWEEN {low} AND {policy_version} "
            "AND t.traj_id NOT IN (SELECT unnest(b.traj_ids) FROM batches b "
            f"WHERE b.run_id = {rid}) GROUP BY 1 ORDER BY v DESC, made DESC, grp"
        ).to_pylist()
        return [(r["grp"], r["problem"], list(r["ids"])) for r in rows]

    def ready(self, policy_version: int) -> tuple[bool, str]:
        have = len(self.fresh_groups(policy_version))
        need = self.groups_per_step
        return have >= need, f"{have}/{need} untrained groups"

    def reference_rows(self, problem_ids: list[str], step: int) -> list[list[str]]:
        """Per group `k` (of problem `problem_ids[k]`), the traj ids of up to
        `grpo_reference_per_group` correct offline solutions of its problem: the `offline`
        mixture source's rows (correct Python 3, not this run's rollouts), one per content
        hash, chosen without replacement by `numpy.random.default_rng([seed, step, k])` from
        the problem's candidates in traj-id order ([] for a problem without one)."""
        n = self.config.grpo_reference_per_group
        if not n or not problem_ids:
            return [[] for _ in problem_ids]
        assert self.run_id is not None, "bind(run_id) first"
        offline = fill_placeholders(BUILTIN_SOURCES["offline"], {"run_id": sql_quote(self.run_id)})
        wanted = ", ".join(sql_quote(p) for p in sorted(set(problem_ids)))
        rows = self.lake.sql_arrow(
            "SELECT problem_id, list(traj_id ORDER BY traj_id) AS ids FROM ("
            f"SELECT t.problem_id, t.traj_id FROM trajectories t WHERE {offline} "
            f"AND t.problem_id IN ({wanted}) QUALIFY row_number() OVER "
            "(PARTITION BY t.problem_id, t.content_hash ORDER BY t.traj_id) = 1) GROUP BY 1"
        ).to_pylist()
        pool = {r["problem_id"]: list(r["ids"]) for r in rows}
        out = []
        for k, problem in enumerate(problem_ids):
            ids = pool.get(problem, [])
            rng = np.random.default_rng([self.config.seed, step, k])
            pick = rng.choice(len(ids), size=min(n, len(ids)), replace=False) if ids else []
            out.append([ids[int(i)] for i in sorted(pick)])
        return out

    def draw(self, step: int, policy_version: int) -> Batch:
        groups = self.fresh_groups(policy_version)[: self.groups_per_step]
        if not groups:
            raise SpoError(
                f"step {step}: no judged rollout of this run to train on (every rollout of "
                "the step was left unjudged: sandbox trouble, see `spo judge --help`)"
            )
        references = self.reference_rows([problem for _, problem, _ in groups], step)
        # read after the queries: a version that holds every row they found
        version = self.lake.dataset("trajectories").version
        # each group's rollouts, then its reference rows (GRPO normalises over both)
        rows = [g + refs for (_, _, g), refs in zip(groups, references, strict=True)]
        reference = {i for refs in references for i in refs}
        ids = [i for g in rows for i in g]
        # by key (the keyed writes keep an index on traj_id), then in the groups' order
        table = self.lake.dataset("trajectories", version=version).to_table(
            filter=f"traj_id IN ({', '.join(sql_quote(i) for i in ids)})"
        )
        at = {t: k for k, t in enumerate(table.column("traj_id").to_pylist())}
        table = table.take(pa.array([at[i] for i in ids], pa.int64()))
        return Batch(
            version,
            ids,
            ["offline" if i in reference else "online" for i in ids],
            [k for k, g in enumerate(rows) for _ in g],
            table,
        )


def make_batches(
    lake: Lake,
    config: TrainConfig,
    *,
    sources: Mapping[str, str],
    ref_model_id: str,
    q0_sampler_key: str,
    problem_where: str | None,
    pinned: Mapping[str, PinnedSource] | None = None,
) -> BatchSource:
    """The batch source the algorithm's rules choose (`online_only`: whole groups; else the
    mixture). A mixture source with nothing to draw is refused here (SpoError naming --mix),
    before the run is recorded; so is a filter that is not valid SQL. Sources the mixture's
    index cannot evaluate are pinned here (`spo_store.mixture_pins`), or, with `pinned` (a
    resumed run's kept sets), taken from it and never resolved again."""
    rules = rules_of(config.algo)
    if rules.online_only:
        return GroupBatches(lake, config)
    sampler = MixtureSampler(
        lake,
        config.mix,
        sources=sources,
        run_id=None,  # bound once the run is recorded (only `online` reads it)
        staleness=config.staleness,
        split=config.train_split,
        seed=config.seed,
        ref_model_id=ref_model_id,
        q0_sampler_key=q0_sampler_key,
        beta=config.beta,
        include_unreliable=config.include_unreliable,
        problem_where=problem_where,
        require_q0=rules.needs_q0,
        pinned=pinned,
    )
    try:
        sampler.check_sources()
    except SpoError as exc:
        raise SpoError(f"--mix {config.mix}: {exc}") from None
    return MixtureBatches(sampler, config.batch_size)


__all__ = ["Batch", "BatchSource", "GroupBatches", "MixtureBatches", "make_batches"]
