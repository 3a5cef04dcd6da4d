"""The data of `spo report`: finding runs, grouping them, reading their evaluations, statistics.

Inputs are `spo train` output directories (`run.json`) and `spo experiment` directories
(`experiment.json`, expanded into their runs, one group per arm): `collect_inputs`. Runs given
directly are grouped by algorithm, loss (SPO only) and mixture; several seeds of the same
settings are one group. `read_evaluations` reads each run's lake: the `metrics` rows
`eval/<set>/pass@<k>` (one per seed and step) and the `source='eval'` trajectories (joined to
`problems` for their split). `compare_groups` turns them into the curves (mean, min, max over
seeds per step) and the table rows (seed means at the first and last common step; the change
as each seed's own per-problem change averaged over seeds, so it is the difference of the two
seed-mean columns, `seed_change`; each group against a reference, `group_difference`), each
with a two-level bootstrap interval over seeds and problems (`_interval`). `spo_train.experiment.report`
renders them; no torch is imported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote
from spo_train.algorithm_rules import RULES
from spo_train.metrics import bootstrap_seeds_problems, pass_at_k

BOOTSTRAP_SEED = 0
"""Fixed seed of the bootstrap resampling: the same inputs give the same intervals."""

MIN_SEEDS = 3
"""Seeds per arm below which an interval is marked (`few_seeds`): resampling so few seeds
understates their spread, so the interval is too narrow (docs/experiments.md, "Reading the
intervals"; issue 22 asks for at least 3 seeds, `HEADLINE_SEEDS` for a headline claim)."""

HEADLINE_SEEDS = 5
"""Seeds per arm a headline claim should rest on (docs/experiments.md, "Reading the
intervals")."""

PASS_METRIC = re.compile(r"^eval/(?:(?P<set>.+)/)?pass@(?P<k>\d+)$")
UNJUDGED_METRIC = re.compile(r"^eval/(?:(?P<set>.+)/)?unjudged$")
NO_SPLIT_SET = "eval"
"""Set name of metrics logged without a split (`eval/pass@k`, `spo eval` without --split)."""

# Settings that do not change what a run learns: runs that differ only in these are seeds of
# one group (the seed itself, where files go, how long it ran, hardware and logging).
NOT_GROUPING = frozenset(
    {
        "seed",
        "output",
        "lake",
        "steps",
        "resume",
        "workers",
        "device",
        "tensorboard",
        "wandb",
        "unsafe_no_sandbox",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        # Which sets are evaluated and at which k: each set is compared on its own.
        "eval_train_problems",
        "eval_k",
    }
)


# ----------------------------------------------------------------------------- inputs
@dataclass
class ReportRun:
    """One training run to report: where it is, its lake, its group and seed."""

    run_dir: Path
    run_id: str
    lake_uri: str
    group: str
    seed: int | None
    config: dict[str, Any]


@dataclass
class ReportInputs:
    """The runs of a report, in group order, with what the inputs said about them."""

    runs: list[ReportRun]
    groups: list[str]
    title: str
    description: str
    reference: str | None
    default_output: Path
    warnings: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpoError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SpoError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise SpoError(f"{path} must hold a JSON object")
    return doc


def _lake_of(config: Mapping[str, Any], run_dir: Path, fallback: str | None, where: Path) -> str:
    """The run's lake URI: run.json's `lake`, else the experiment's; a relative path is read
    from the run directory when it exists there (a moved checkout), else from here."""
    lake = config.get("lake") or fallback
    if not lake:
        raise SpoError(f"{where}: no lake recorded (config.lake); cannot find its metrics")
    lake = str(lake)
    if "://" in lake or Path(lake).is_absolute():
        return lake
    beside = run_dir / lake
    return str(beside.resolve() if beside.exists() else Path(lake).resolve())


def _run_from_dir(run_dir: Path, lake_fallback: str | None = None) -> ReportRun:
    doc = _read_json(run_dir / "run.json")
    run_id = doc.get("run_id")
    config = doc.get("config")
    if not isinstance(run_id, str) or not isinstance(config, dict):
        raise SpoError(f"{run_dir / 'run.json'}: expected {{'run_id': str, 'config': {{...}}}}")
    seed = config.get("seed")
    return ReportRun(
        run_dir=run_dir,
        run_id=run_id,
        lake_uri=_lake_of(config, run_dir, lake_fallback, run_dir / "run.json"),
        group="",
        seed=seed if isinstance(seed, int) else None,
        config=config,
    )


def settings_label(config: Mapping[str, Any]) -> str:
    """`spo terminal_sq online:0.5,offline:0.5`: algorithm (absent: spo), the loss of an SPO
    run, and the mixture when one was set (None: the algorithm's default)."""
    algo = config.get("algo") or "spo"
    parts = [str(algo)]
    named = RULES[algo].label_settings if algo in RULES else ()
    parts += [str(config[k]) for k in named if config.get(k)]
    if config.get("mix"):
        parts.append(str(config["mix"]))
    return " ".join(parts)


def group_plain_runs(runs: list[ReportRun]) -> None:
    """Label runs given by directory: by settings_label, plus `name=value` of any other
    learning setting that differs between runs sharing that label (so lr 1e-4 and 3e-4 runs
    are two groups, never one mean)."""
    by_label: dict[str, list[ReportRun]] = {}
    for run in runs:
        by_label.setdefault(settings_label(run.config), []).append(run)
    for label, members in by_label.items():
        # Keys every run records: an older run.json without a newer setting is not a split.
        shared = set.intersection(*(set(r.config) for r in members))
        keys = sorted(shared - NOT_GROUPING - {"algo", "loss", "mix"})
        differing = [
            k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in members}) > 1
        ]
        for run in members:
            extra = " ".join(f"{k}={_short(run.config.get(k))}" for k in differing)
            run.group = f"{label} {extra}".strip()


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _runs_of_experiment(exp_dir: Path, doc: dict[str, Any]) -> tuple[list[ReportRun], list[str]]:
    arms = doc.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise SpoError(f"{exp_dir / 'experiment.json'}: no arms ({{'arms': {{name: ...}}}})")
    runs: list[ReportRun] = []
    warnings: list[str] = []
    for arm, spec in arms.items():
        listed = spec.get("runs") if isinstance(spec, dict) else None
        if not isinstance(listed, list):
            raise SpoError(f"{exp_dir / 'experiment.json'}: arm {arm!r} has no 'runs' list")
        for entry in listed:
            out = entry.get("output") if isinstance(entry, dict) else None
            if not isinstance(out, str):
                raise SpoError(
                    f"{exp_dir / 'experiment.json'}: arm {arm!r}: each run needs an 'output' path"
                )
            run_dir = Path(out) if Path(out).is_absolute() else exp_dir / out
            if not (run_dir / "run.json").is_file():
                warnings.append(
                    f"experiment {exp_dir}: arm {arm!r} seed {entry.get('seed')}: no run.json in "
                    f"{run_dir} (not run yet?); left out"
                )
                continue
            run = _run_from_dir(run_dir, doc.get("lake"))
            run.group = str(arm)
            status = entry.get("status")
            if status not in (None, "completed"):
                warnings.append(
                    f"experiment {exp_dir}: arm {arm!r} seed {entry.get('seed')}: run status "
                    f"{status}; its evaluations so far are included"
                )
            if isinstance(entry.get("seed"), int):
                run.seed = entry["seed"]
            runs.append(run)
    return runs, warnings


def collect_inputs(paths: Sequence[str | Path], reference: str | None = None) -> ReportInputs:
    """Expand `paths` (run dirs, experiment dirs) into labelled runs.

    Raises SpoError naming a path that is neither, and an unknown `reference` (checked in
    `build_report`, once groups with evaluations are known).
    """
    if not paths:
        raise SpoError("spo report needs at least one RUN_DIR or experiment directory")
    plain: list[ReportRun] = []
    experiments: list[tuple[Path, dict[str, Any], list[ReportRun]]] = []
    warnings: list[str] = []
    for raw in paths:
        path = Path(raw)
        if (path / "experiment.json").is_file():
            doc = _read_json(path / "experiment.json")
            runs, notes = _runs_of_experiment(path, doc)
            experiments.append((path, doc, runs))
            warnings += notes
        elif (path / "run.json").is_file():
            plain.append(_run_from_dir(path))
        elif not path.exists():
            raise SpoError(f"{path}: no such directory (expected a spo train or experiment dir)")
        else:
            raise SpoError(
                f"{path} is neither a spo train output directory (no run.json) nor an "
                "experiment directory (no experiment.json)"
            )
    group_plain_runs(plain)
    if len(experiments) > 1:
        # Arms of two experiments may share names: keep them apart.
        for exp_dir, doc, runs in experiments:
            for run in runs:
                run.group = f"{doc.get('name') or exp_dir.name}/{run.group}"
    all_runs: list[ReportRun] = []
    seen: set[str] = set()
    for run in [r for _, _, runs in experiments for r in runs] + plain:
        if run.run_id in seen:
            warnings.append(f"{run.run_dir}: run {run.run_id} given twice; counted once")
            continue
        seen.add(run.run_id)
        all_runs.append(run)
    if not all_runs:
        raise SpoError("no runs to report: " + "; ".join(warnings))
    groups = list(dict.fromkeys(r.group for r in all_runs))
    first = Path(paths[0])
    if experiments and first == experiments[0][0]:
        doc = experiments[0][1]
        title = str(doc.get("name") or first.name)
        description = str(doc.get("description") or "")
        ref = doc.get("reference_arm")
        if isinstance(ref, str) and len(experiments) > 1:
            ref = f"{doc.get('name') or first.name}/{ref}"
    else:
        title, description, ref = f"spo report: {', '.join(groups)}", "", None
    return ReportInputs(
        runs=all_runs,
        groups=groups,
        title=title,
        description=description,
        reference=reference if reference is not None else (ref if isinstance(ref, str) else None),
        default_output=first / "report",
        warnings=warnings,
    )


# ----------------------------------------------------------------------------- lake reads
@dataclass
class RunEvals:
    """What one run's lake holds about its evaluations.

    `values[(set, k)][step]`: pass@k from `metrics`; `steps[set]`: steps evaluated on the set;
    `unjudged[set][step]`: samples not judged; `counts[set][step][problem_id]`:
    `(judged samples, successes)` from the eval trajectories.
    """

    values: dict[tuple[str, int], dict[int, float]] = field(default_factory=dict)
    steps: dict[str, set[int]] = field(default_factory=dict)
    unjudged: dict[str, dict[int, float]] = field(default_factory=dict)
    counts: dict[str, dict[int, dict[str, tuple[int, int]]]] = field(default_factory=dict)


def _split_of_set(eval_set: str, config: Mapping[str, Any]) -> str:
    """The problems.split of an evaluation set: `train` is the run's own training split."""
    if eval_set == "train":
        return str(config.get("train_split") or "train")
    return eval_set


def newest_metrics(lake: Lake, run_ids: Sequence[str], name_like: str = "%") -> list[dict]:
    """`metrics` rows (`run_id`, `step`, `name`, `value`) of `run_ids` whose name is LIKE
    `name_like`: one per (run, step, name), the newest (a resumed run may log a step twice)."""
    ids = ", ".join(sql_quote(r) for r in run_ids)
    return lake.sql_arrow(
        "SELECT run_id, step, name, value FROM ("
        "SELECT run_id, step, name, value, row_number() OVER (PARTITION BY run_id, step, "
        "name ORDER BY created_at DESC) AS newest FROM metrics "
        f"WHERE run_id IN ({ids}) AND name LIKE {sql_quote(name_like)}) WHERE newest = 1"
    ).to_pylist()


def read_evaluations(runs: Sequence[ReportRun]) -> dict[str, RunEvals]:
    """Evaluation metrics and per-problem sample counts of `runs`, by run_id (one query per
    table and lake). A lake that cannot be opened raises SpoError naming the run directory."""
    by_lake: dict[str, list[ReportRun]] = {}
    for run in runs:
        by_lake.setdefault(run.lake_uri, []).append(run)
    out: dict[str, RunEvals] = {r.run_id: RunEvals() for r in runs}
    for uri, members in by_lake.items():
        try:
            lake = Lake.open(uri, create=False)
        except SpoError as exc:
            where = "" if uri in str(exc) else f" (lake {uri})"
            raise SpoError(f"{members[0].run_dir}{where}: {exc}") from None
        rows = newest_metrics(lake, [r.run_id for r in members], "eval/%")
        ids = ", ".join(sql_quote(r.run_id) for r in members)
        for row in rows:
            ev = out[row["run_id"]]
            step = int(row["step"])
            if m := PASS_METRIC.match(row["name"]):
                eval_set = m["set"] or NO_SPLIT_SET
                ev.values.setdefault((eval_set, int(m["k"])), {})[step] = float(row["value"])
            elif m := UNJUDGED_METRIC.match(row["name"]):
                eval_set = m["set"] or NO_SPLIT_SET
                ev.unjudged.setdefault(eval_set, {})[step] = float(row["value"])
            else:
                continue
            ev.steps.setdefault(eval_set, set()).add(step)
        counts = lake.sql_arrow(
            "SELECT t.run_id, t.policy_version AS step, p.split, t.problem_id, "
            "count(t.reward) AS judged, "
            "sum(CASE WHEN t.reward = 0 THEN 1 ELSE 0 END) AS correct "
            "FROM trajectories t JOIN problems p ON t.problem_id = p.problem_id "
            f"WHERE t.source = 'eval' AND t.run_id IN ({ids}) AND t.policy_version IS NOT NULL "
            "GROUP BY ALL"
        ).to_pylist()
        by_split: dict[tuple[str, str | None], dict[int, dict[str, tuple[int, int]]]] = {}
        for row in counts:
            by_split.setdefault((row["run_id"], row["split"]), {}).setdefault(int(row["step"]), {})[
                row["problem_id"]
            ] = (int(row["judged"]), int(row["correct"] or 0))
        for run in members:
            ev = out[run.run_id]
            for eval_set in ev.steps:
                split = _split_of_set(eval_set, run.config)
                if eval_set == NO_SPLIT_SET:
                    continue  # no split recorded: the samples' set is unknown
                ev.counts[eval_set] = by_split.get((run.run_id, split), {})
    return out


# ----------------------------------------------------------------------------- statistics
def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """`mean`, `std` (sample standard deviation, ddof 1; None for one seed), `n`, `values`."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if len(arr) else None,
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
        "n": len(arr),
        "values": [float(v) for v in arr],
    }


def _seed_pass_at_k(ev: RunEvals, eval_set: str, step: int, k: int) -> dict[str, float]:
    """One seed's pass@k per problem at `step` (problems with at least k judged samples)."""
    per_problem = ev.counts.get(eval_set, {}).get(step) or {}
    return {pid: pass_at_k(n, c, k) for pid, (n, c) in per_problem.items() if n >= k}


def _keyed(evals: Mapping[str, RunEvals] | Sequence[RunEvals]) -> dict[str, RunEvals]:
    """Seeds by a stable key: the run ids given, else the positions."""
    if isinstance(evals, Mapping):
        return dict(evals)
    return {f"{i:06d}": ev for i, ev in enumerate(evals)}


def _interval(
    arm: Mapping[str, Mapping[str, float]],
    minus: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any] | None:
    """The two-level bootstrap (`bootstrap_seeds_problems`) of the per-seed per-problem
    values `arm` (seed -> problem -> value), minus those of `minus` if given, as a table
    cell: `diff`, `ci95` [low, high], `problems`, `seeds` (per arm: `[n]` or `[n, n_minus]`,
    seeds with at least one of the problems), `interval` ("seeds x problems", or "problems"
    when every arm has one seed), `few_seeds` (some arm has fewer than `MIN_SEEDS`: the
    interval understates the seed-to-seed spread) and `noise` ("inside" when the interval
    holds 0, else "outside"). None when there is no problem to average over."""
    problems = set().union(*arm.values())
    if minus is not None:
        problems &= set().union(*minus.values())
    if not problems:
        return None
    got = bootstrap_seeds_problems(arm, minus, seed=BOOTSTRAP_SEED)
    return {
        "diff": got.diff,
        "ci95": [got.low, got.high],
        "problems": got.problems,
        "seeds": list(got.seeds),
        "interval": got.levels,
        "few_seeds": min(got.seeds) < MIN_SEEDS,
        "noise": "inside" if got.low <= 0 <= got.high else "outside",
    }


def seed_change(
    evals: Mapping[str, RunEvals] | Sequence[RunEvals],
    eval_set: str,
    first: int,
    last: int,
    k: int,
) -> dict[str, Any] | None:
    """A group's change in pass@k from step `first` to `last` (`evals`: its seeds, by run id
    or in a fixed order): each seed's own per-problem change (problems it evaluated with at
    least k judged samples at both steps), averaged over seeds per problem, then over
    problems, with the two-level bootstrap 95% interval over seeds and problems (`_interval`;
    a seed's change keeps the pairing of its two steps, and one problem draw serves both).
    When every seed judged every problem k times at both steps (the usual case), the point
    estimate is exactly the mean over seeds of pass@k at `last` minus the same at `first`
    (the table's two columns); None without such problems."""
    per_seed = {}
    for key, ev in _keyed(evals).items():
        before = _seed_pass_at_k(ev, eval_set, first, k)
        after = _seed_pass_at_k(ev, eval_set, last, k)
        per_seed[key] = {p: after[p] - before[p] for p in before if p in after}
    return _interval(per_seed)


def group_difference(
    ref: Mapping[str, RunEvals] | Sequence[RunEvals],
    other: Mapping[str, RunEvals] | Sequence[RunEvals],
    eval_set: str,
    step: int,
    k: int,
) -> dict[str, Any] | None:
    """`other - ref` pass@k at `step`: per problem, the mean over each group's seeds of their
    pass@k, differenced over the problems both groups have, with the two-level bootstrap 95%
    interval (`_interval`: each group's seeds resampled on their own, since seeds of two
    groups are not paired; one problem draw shared by both, since problems are). Equal to
    the difference of the two groups' seed means when every seed judged every problem k
    times."""
    a = {key: _seed_pass_at_k(ev, eval_set, step, k) for key, ev in _keyed(other).items()}
    b = {key: _seed_pass_at_k(ev, eval_set, step, k) for key, ev in _keyed(ref).items()}
    return _interval(a, b)


def paired_interval(
    before: Mapping[str, tuple[int, int]] | None,
    after: Mapping[str, tuple[int, int]] | None,
    k: int,
) -> dict[str, Any] | None:
    """`after - before` mean pass@k over the problems both have with at least k judged samples
    (`(judged, successes)` per problem), with the paired bootstrap 95% interval over problems
    (as `seed_change` for one seed: `interval` "problems", `few_seeds` true). None without
    samples or common problems."""
    if before is None or after is None:
        return None
    common = [p for p in before if p in after and min(before[p][0], after[p][0]) >= k]
    change = {p: pass_at_k(*after[p], k) - pass_at_k(*before[p], k) for p in common}
    return _interval({"run": change})


@dataclass
class GroupSet:
    """One group's evaluations on one set: which steps all its seeds reached."""

    runs: list[ReportRun]
    evals: list[RunEvals]
    common_steps: list[int]
    seed_last_steps: list[int]

    @property
    def first(self) -> int | None:
        return self.common_steps[0] if self.common_steps else None

    @property
    def last(self) -> int | None:
        return self.common_steps[-1] if self.common_steps else None

    @property
    def steps_differ(self) -> bool:
        return len(set(self.seed_last_steps)) > 1

    @property
    def by_run(self) -> dict[str, RunEvals]:
        """The seeds' evaluations by run id (the bootstrap orders seeds by this key)."""
        return {run.run_id: ev for run, ev in zip(self.runs, self.evals, strict=True)}


def _group_set(runs: list[ReportRun], evals: Mapping[str, RunEvals], eval_set: str) -> GroupSet:
    """The group's seeds that evaluated `eval_set` (a seed run without, say, the training-set
    evaluation is left out of that set only) and the steps they all reached."""
    evaluated = [r for r in runs if evals[r.run_id].steps.get(eval_set)]
    mine = [evals[r.run_id] for r in evaluated]
    step_sets = [ev.steps[eval_set] for ev in mine]
    common = sorted(set.intersection(*step_sets)) if step_sets else []
    return GroupSet(
        runs=evaluated,
        evals=mine,
        common_steps=common,
        seed_last_steps=[max(s) for s in step_sets],
    )


def _seed_values(gs: GroupSet, eval_set: str, k: int, step: int | None) -> dict[str, Any]:
    if step is None:
        return _mean_std([])
    vals = [ev.values.get((eval_set, k), {}).get(step) for ev in gs.evals]
    return _mean_std([v for v in vals if v is not None])


def _curve(gs: GroupSet, eval_set: str, k: int) -> list[dict[str, Any]]:
    """Per step: mean, min, max over the seeds with a value there, and how many they are."""
    steps = sorted({s for ev in gs.evals for s in ev.values.get((eval_set, k), {})})
    points = []
    for step in steps:
        vals = [
            ev.values[(eval_set, k)][step]
            for ev in gs.evals
            if step in ev.values.get((eval_set, k), {})
        ]
        points.append(
            {
                "step": step,
                "mean": float(np.mean(vals)),
                "min": float(min(vals)),
                "max": float(max(vals)),
                "n": len(vals),
            }
        )
    return points


def _set_order(sets: Iterable[str]) -> list[str]:
    """Held-out sets first (test, valid, then others by name), the training set last."""
    rank = {"test": 0, "valid": 1}
    return sorted(set(sets), key=lambda s: (s == "train", rank.get(s, 2), s))


def _table_row(
    group: str,
    gs: GroupSet,
    eval_set: str,
    k: int,
    ref: str | None,
    ref_gs: GroupSet | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": group,
        "set": eval_set,
        "k": k,
        "seeds": len(gs.runs),
        "first_step": gs.first,
        "last_step": gs.last,
        "seed_last_steps": gs.seed_last_steps,
        "steps_differ": gs.steps_differ,
        "first": _seed_values(gs, eval_set, k, gs.first),
        "last": _seed_values(gs, eval_set, k, gs.last),
        "unjudged_last": None,
        "change": None,
        "vs_reference": None,
    }
    if gs.last is not None:
        unj = [ev.unjudged.get(eval_set, {}).get(gs.last) for ev in gs.evals]
        row["unjudged_last"] = sum(v for v in unj if v is not None)
    if gs.first is not None and gs.last is not None and gs.last != gs.first:
        row["change"] = seed_change(gs.by_run, eval_set, gs.first, gs.last, k)
    if ref is None or ref_gs is None:
        return row
    if group == ref:
        row["vs_reference"] = {"reference": True}
        return row
    both = sorted(set(gs.common_steps) & set(ref_gs.common_steps))
    if not both:
        row["vs_reference"] = {"step": None}
        return row
    step = both[-1]
    cmp = group_difference(ref_gs.by_run, gs.by_run, eval_set, step, k)
    row["vs_reference"] = {"step": step, **(cmp or {"diff": None})}
    return row


@dataclass
class Comparison:
    """The statistics of a report: the evaluation sets (held-out first) and ks found,
    `curves[group][set][str(k)]` (per step: mean, min, max over the seeds with a value, n) and
    `tables` (one row per group, set and k whose group has seeds that evaluated the set)."""

    sets: list[str]
    ks: list[int]
    curves: dict[str, dict[str, dict[str, list[dict[str, Any]]]]]
    tables: list[dict[str, Any]]


def compare_groups(
    members: Mapping[str, list[ReportRun]], evals: Mapping[str, RunEvals], ref: str | None
) -> Comparison:
    """Curves and table rows of the groups `members` (group -> its runs, in report order)
    from their evaluations `evals` (run_id -> RunEvals); `ref`, a group or None, is the
    reference each row is compared with (`vs_reference`)."""
    kept = [r for runs in members.values() for r in runs]
    groups = list(members)
    sets = _set_order(s for r in kept for (s, _k) in evals[r.run_id].values)
    ks = sorted({k for r in kept for (_s, k) in evals[r.run_id].values})

    curves: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    tables: list[dict[str, Any]] = []
    for eval_set in sets:
        gsets = {g: _group_set(members[g], evals, eval_set) for g in groups}
        ref_gs = gsets.get(ref) if ref else None
        for k in ks:
            for g in groups:
                gs = gsets[g]
                curve = _curve(gs, eval_set, k)
                if curve:
                    curves.setdefault(g, {}).setdefault(eval_set, {})[str(k)] = curve
                if not gs.runs:
                    continue
                row = _table_row(g, gs, eval_set, k, ref, ref_gs)
                row["group_seeds"] = len(members[g])
                tables.append(row)
    return Comparison(sets=sets, ks=ks, curves=curves, tables=tables)
