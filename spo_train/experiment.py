"""`spo experiment CONFIG.toml`: a named set of `spo train` runs at one budget, resumable.

An experiment config (TOML; docs/experiments.md defines it) names arms (algorithm, loss,
mixture, ...: settings of `spo_train.config.TrainConfig`), the settings they share
(`[common]`, the budget), the seeds, user mixture sources and what the runs need prepared in
the lake (q0 estimates). `load_experiment` validates the whole file first (one SpoError line
naming the file, the table and the key; nothing written); `plan_runs` turns it into one
`RunPlan` per (arm, seed) and reads what an earlier invocation left (the run directories and
the lake's `runs` table); `run_experiment` prepares the lake and runs every run as a child
process `spo --threads 1 train --config OUTPUT/<arm>/seed-<s>.toml`, at most `jobs` at once.

Resumable: a run whose lake run is `completed` at the configured `steps` is skipped; one with a
checkpoint is continued with `--resume` (also a completed run whose `steps` were raised in the
config); one without a checkpoint starts (again). A run directory holding a run with other
settings is refused before anything runs. A failed run is reported and the others continue.
Ctrl-C / SIGTERM stops the children with one SIGTERM each (they checkpoint and end their lake
runs `interrupted`) and raises `ExperimentStopped`.

No torch here: the parent only reads the lake, loads the embedded problems into an empty one
(`spo_train.defaults.ensure_problems`) and starts children; `spo estimate-q0` and `spo train`
run as child processes (their own logs, their own memory, one SIGTERM each to stop).
"""

from __future__ import annotations

import datetime as dt
import difflib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, resolve_lake_uri, sql_quote
from spo_train.config import (
    TrainConfig,
    as_saved,
    build,
    checkpoint_step,
    coerce,
    differing_settings,
    dump_toml,
    field_map,
    has_checkpoint,
    show_value,
    stored_train_config,
)

TABLES = ("experiment", "prepare", "sources", "common", "arms")
EXPERIMENT_KEYS = ("name", "description", "seeds", "reference_arm", "lake")
PREPARE_KEYS = ("q0_problems", "q0_samples")
FORBIDDEN = {
    "output": "the runner puts each run in OUTPUT/<arm>/seed-<s> (spo experiment --output)",
    "resume": "the runner resumes runs that have a checkpoint",
    "seed": "seeds come from [experiment] seeds",
    "lake": "the lake comes from [experiment] lake or spo experiment --lake",
    "sources_file": "user sources go in the config's [sources] table",
}
"""TrainConfig settings an experiment config may not set, and why (the runner sets them)."""
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Directory names an arm cannot take: the runner's own entries in the output directory.
RESERVED_ARMS = ("lake", "prepare")
STOP_GRACE_S = 300.0
"""How long a stopped child may take to write its checkpoint before it is killed."""


class ExperimentStopped(Exception):
    """Ctrl-C or SIGTERM stopped the experiment; `signum` is the signal (SIGINT or SIGTERM)
    and `message` the one line to print (what stopped, how to resume)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message


@dataclass
class Experiment:
    """A validated experiment config (see docs/experiments.md for every key).

    `common` and `arms[arm]` hold coerced TrainConfig values (tuples for list settings);
    `settings(arm)` merges them. `q0_problems` 0 means no q0 step (`[prepare]` absent).
    """

    name: str
    description: str
    seeds: list[int]
    reference_arm: str | None
    lake: str | None
    q0_problems: int
    q0_samples: int
    sources: dict[str, str]
    common: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    config_file: Path

    def settings(self, arm: str) -> dict[str, Any]:
        """[common] overridden by [arms.<arm>]: the arm's settings (TrainConfig field values)."""
        return {**self.common, **self.arms[arm]}


@dataclass
class RunPlan:
    """One (arm, seed) run: where it lives and what this invocation does with it.

    `action`: `train` (no checkpoint: start), `resume` (a checkpoint of an unfinished run),
    `extend` (a completed run whose configured steps were raised: resumed to the new steps)
    or `skip` (completed at the configured steps). `status`: the lake status of the run in
    `output` (`completed`, `failed`, `interrupted`, `running`), or `pending` when none ran yet.
    """

    arm: str
    seed: int
    output: Path
    config_path: Path
    log_path: Path
    config: TrainConfig
    action: str = "train"
    status: str = "pending"
    run_id: str | None = None
    trained_steps: int | None = None
    error: str | None = None
    eval: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def rel_output(self) -> str:
        return f"{self.arm}/seed-{self.seed}"


# ----------------------------------------------------------------------------- config
def _fail(path: Path, where: str, message: str) -> SpoError:
    return SpoError(f"{path}{' ' + where if where else ''}: {message}")


def _unknown(path: Path, where: str, key: str, known: list[str], what: str) -> SpoError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return _fail(path, where, f"{key!r} is not {what}{hint}")


def _read_settings(path: Path, where: str, table: Any) -> dict[str, Any]:
    """A [common] / [arms.X] table as coerced TrainConfig values, each checked alone (one line
    naming the file, the table and the key)."""
    if not isinstance(table, dict):
        raise _fail(path, where, "expected a table of spo train settings (key = value)")
    fields = {n: f for n, f in field_map(TrainConfig).items() if f.metadata.get("saved", True)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in FORBIDDEN:
            raise _fail(path, where, f"{key!r} cannot be set here: {FORBIDDEN[key]}")
        if key not in fields:
            raise _unknown(path, where, key, list(fields), "a spo train setting")
        if isinstance(value, dict):
            raise _fail(path, where, f"{key} is a table; expected a value")
        coerced = coerce(TrainConfig, key, value, f"{path} {where} {key}")
        check = fields[key].metadata.get("check")
        problem = check(coerced) if check is not None and coerced is not None else None
        if problem:
            raise _fail(path, where, f"{key} = {show_value(coerced)}: {problem}")
        out[key] = coerced
    return out


def _int_list(path: Path, where: str, key: str, value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise _fail(
            path, where, f"{key} = {value!r}: expected a list of integers >= 0, e.g. [0, 1, 2]"
        )
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        raise _fail(path, where, f"{key}: seed {dup[0]} is listed twice")
    return list(value)


def _positive_int(path: Path, where: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(path, where, f"{key} = {value!r}: expected an integer >= 1")
    return value


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment config; every arm's settings are built into a
    TrainConfig and checked as `spo train` checks them (its mixture against the built-in and
    the config's sources).

    Raises SpoError, one line naming the file, the table and the key: a missing or invalid
    file, an unknown table or key (with the closest name), a value of the wrong type or out of
    range, a setting the runner sets itself (`FORBIDDEN`), no arm, a bad or reserved arm name,
    a reference arm that is not an arm, a source that redefines a built-in one.
    """
    from spo_store.mixture import BUILTIN_SOURCES, MixtureSpec

    p = Path(path)
    if not p.is_file():
        raise SpoError(f"{path}: no such experiment config")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpoError(f"{path}: not valid TOML ({exc})") from None
    for key in data:
        if key not in TABLES:
            raise _unknown(p, "", key, list(TABLES), "a table of an experiment config")
        if not isinstance(data[key], dict):
            raise _fail(p, "", f"{key!r} must be a table ([{key}])")

    exp = data.get("experiment")
    if exp is None:
        raise _fail(p, "", "no [experiment] table (name and seeds are required)")
    for key in exp:
        if key not in EXPERIMENT_KEYS:
            raise _unknown(p, "[experiment]", key, list(EXPERIMENT_KEYS), "an [experiment] key")
    name = exp.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise _fail(
            p,
            "[experiment]",
            f"name = {name!r}: expected letters, digits, '-' or '_' (it "
            "names the output directory)",
        )
    description = exp.get("description", "")
    if not isinstance(description, str):
        raise _fail(p, "[experiment]", f"description = {description!r}: expected a string")
    if "seeds" not in exp:
        raise _fail(p, "[experiment]", "seeds is required, e.g. seeds = [0, 1, 2]")
    seeds = _int_list(p, "[experiment]", "seeds", exp["seeds"])
    lake = exp.get("lake")
    if lake is not None and (not isinstance(lake, str) or not lake.strip()):
        raise _fail(p, "[experiment]", f"lake = {lake!r}: expected a lake URI")

    prep = data.get("prepare", {})
    for key in prep:
        if key not in PREPARE_KEYS:
            raise _unknown(p, "[prepare]", key, list(PREPARE_KEYS), "a [prepare] key")
    q0_problems = q0_samples = 0
    if prep:
        if "q0_problems" not in prep:
            raise _fail(p, "[prepare]", "q0_problems is required (train problems to estimate)")
        q0_problems = _positive_int(p, "[prepare]", "q0_problems", prep["q0_problems"])
        q0_samples = _positive_int(p, "[prepare]", "q0_samples", prep.get("q0_samples", 4))

    sources = data.get("sources", {})
    for key, value in sources.items():
        if not NAME_RE.fullmatch(key):
            raise _fail(p, "[sources]", f"{key!r}: a source name is letters, digits, '-', '_'")
        if key in BUILTIN_SOURCES:
            raise _fail(
                p,
                "[sources]",
                f"{key!r} is a built-in source and cannot be redefined; give "
                "the source another name",
            )
        if not isinstance(value, str) or not value.strip():
            raise _fail(p, "[sources]", f"{key}: expected an SQL predicate over t and p")

    common = _read_settings(p, "[common]", data.get("common", {}))
    arms_raw = data.get("arms", {})
    if not arms_raw:
        raise _fail(p, "", "no arms: add at least one [arms.<name>] table")
    arms: dict[str, dict[str, Any]] = {}
    lowered: dict[str, str] = {}
    for arm, table in arms_raw.items():
        where = f"[arms.{arm}]"
        if not NAME_RE.fullmatch(arm) or arm in RESERVED_ARMS:
            raise _fail(
                p,
                where,
                f"arm name {arm!r}: expected letters, digits, '-' or '_' (it names "
                f"a directory), not {' or '.join(RESERVED_ARMS)}",
            )
        if arm.lower() in lowered:  # one directory on a case-insensitive file system
            raise _fail(
                p, where, f"arm {arm!r} differs from arm {lowered[arm.lower()]!r} only in case"
            )
        lowered[arm.lower()] = arm
        arms[arm] = _read_settings(p, where, table)

    reference = exp.get("reference_arm")
    if reference is not None and reference not in arms:
        raise _fail(
            p,
            "[experiment]",
            f"reference_arm = {reference!r} is not an arm; arms: {', '.join(arms)}",
        )
    experiment = Experiment(
        name=name,
        description=description,
        seeds=seeds,
        reference_arm=reference,
        lake=lake,
        q0_problems=q0_problems,
        q0_samples=q0_samples,
        sources=dict(sources),
        common=common,
        arms=arms,
        config_file=p.resolve(),
    )
    known = [*BUILTIN_SOURCES, *sources]
    for arm in arms:
        where = f"[arms.{arm}]"
        run_dir = default_output(experiment) / arm / f"seed-{seeds[0]}"
        cfg = _build(experiment, arm, seeds[0], run_dir, None, None, where)
        mix = resolved(cfg).mix
        if mix is not None:
            try:
                MixtureSpec.parse(mix, known)
            except SpoError as exc:
                raise _fail(p, where, f"mix: {exc}") from None
    return experiment


def resolved(cfg: TrainConfig) -> TrainConfig:
    """`cfg.resolved()` where TrainConfig has it (the algorithm's defaults filled in)."""
    fill = getattr(cfg, "resolved", None)
    return fill() if callable(fill) else cfg


def needs_q0(cfg: TrainConfig) -> bool:
    """Whether a run trains against q0 estimates (SPO does; PPO and GRPO do not)."""
    return getattr(cfg, "algo", "spo") == "spo"


def _build(
    exp: Experiment,
    arm: str,
    seed: int,
    output: Path,
    lake_uri: str | None,
    sources_file: Path | None,
    where: str,
) -> TrainConfig:
    values = {
        **exp.settings(arm),
        "seed": seed,
        "output": str(output),
        "lake": lake_uri,
        "sources_file": None if sources_file is None else str(sources_file),
    }
    try:
        return build(TrainConfig, values)
    except SpoError as exc:
        raise _fail(exp.config_file, where, str(exc)) from None


# ----------------------------------------------------------------------------- plan
def default_output(exp: Experiment) -> Path:
    return Path("runs") / "experiments" / exp.name


def lake_uri_of(exp: Experiment, output: Path, lake: str | None) -> str:
    """The lake of the experiment: --lake, else [experiment] lake, else OUTPUT/lake."""
    return resolve_lake_uri(lake or exp.lake or str(output / "lake"))


def select(
    exp: Experiment, only: list[str] | None, seeds: list[int] | None
) -> list[tuple[str, int]]:
    """The (arm, seed) pairs `--only` and `--seeds` pick (all by default), in config order.
    Raises SpoError for an arm or seed the config does not have."""
    arms = list(exp.arms)
    for arm in only or []:
        if arm not in exp.arms:
            raise SpoError(f"--only {arm}: not an arm of {exp.name}; arms: {', '.join(arms)}")
    for s in seeds or []:
        if s not in exp.seeds:
            raise SpoError(
                f"--seeds {s}: not a seed of {exp.name}; seeds: {', '.join(map(str, exp.seeds))}"
            )
    return [
        (a, s)
        for a in (a for a in arms if not only or a in only)
        for s in exp.seeds
        if not seeds or s in seeds
    ]


def _open_existing_lake(uri: str) -> Lake | None:
    """The lake at `uri` when one exists there (nothing is created), else None."""
    if "://" not in uri and not (Path(uri) / "runs.lance").exists():
        return None
    try:
        return Lake.open(uri, create=False)
    except SpoError:
        return None


def lake_statuses(lake: Lake | None, run_ids: list[str]) -> dict[str, str]:
    """run_id -> status in the lake's `runs` table (ids the lake lacks are left out)."""
    if lake is None or not run_ids:
        return {}
    ids = ", ".join(sql_quote(r) for r in run_ids)
    rows = lake.sql_arrow(f"SELECT run_id, status FROM runs WHERE run_id IN ({ids})").to_pylist()
    return {r["run_id"]: r["status"] for r in rows}


def _run_id_in(output: Path) -> str | None:
    try:
        return json.loads((output / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _given(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a run's TOML sets (unset optional ones are left to the trainer)."""
    return {k: v for k, v in as_saved(resolved(cfg)).items() if v is not None}


def plan_runs(
    exp: Experiment,
    output: Path,
    lake_uri: str,
    pairs: list[tuple[str, int]],
) -> list[RunPlan]:
    """One RunPlan per (arm, seed) of the whole config, its action and status from what an
    earlier invocation left; runs outside `pairs` get action `skip` unless completed (they are
    reported, not run).

    Raises SpoError (before anything is written) when a run directory holds a run whose
    settings differ from the config's (other than `steps` and the operational settings
    `spo train --resume` may change), or one trained past the configured `steps`.
    """
    out = output.resolve()
    sources_file = out / "sources.toml" if exp.sources else None
    plans = []
    for arm in exp.arms:
        for seed in exp.seeds:
            run_dir = out / arm / f"seed-{seed}"
            cfg = _build(exp, arm, seed, run_dir, lake_uri, sources_file, f"[arms.{arm}]")
            plans.append(
                RunPlan(
                    arm=arm,
                    seed=seed,
                    output=run_dir,
                    config_path=out / arm / f"seed-{seed}.toml",
                    log_path=out / arm / f"seed-{seed}.log",
                    config=cfg,
                )
            )
    lake = _open_existing_lake(lake_uri)
    ids = {pl.rel_output: _run_id_in(pl.output) for pl in plans}
    statuses = lake_statuses(lake, [i for i in ids.values() if i])
    chosen = set(pairs)
    for pl in plans:
        pl.run_id = ids[pl.rel_output]
        pl.status = statuses.get(pl.run_id or "", "pending")
        step = checkpoint_step(pl.output) if has_checkpoint(pl.output) else None
        pl.trained_steps = step
        if step is not None:
            stored = stored_train_config(pl.output)
            if stored is not None:
                diffs = differing_settings(stored[0], _given(pl.config))
                if diffs:
                    shown = "; ".join(
                        f"{n} = {show_value(new)} (run: {show_value(old)})" for n, old, new in diffs
                    )
                    raise SpoError(
                        f"{pl.output} holds run {pl.run_id or '?'} with other settings than "
                        f"{exp.config_file.name} [arms.{pl.arm}] ({shown}): restore them, or give "
                        "another --output (a run's directory holds one run)"
                    )
            if step > pl.config.steps:
                raise SpoError(
                    f"{pl.output} holds run {pl.run_id or '?'} trained to step {step}, past "
                    f"steps = {pl.config.steps} of {exp.config_file.name}: a run cannot be "
                    "shortened; raise steps, or give another --output"
                )
        if (pl.arm, pl.seed) not in chosen:
            pl.action = "skip"
        elif pl.status == "completed" and step is not None and step < pl.config.steps:
            pl.action = "extend"
        elif pl.status == "completed":
            pl.action = "skip"
        elif step is not None:
            pl.action = "resume"
        else:
            pl.action = "train"
    return plans


# ----------------------------------------------------------------------------- prepare
@dataclass
class Q0Need:
    """One `spo estimate-q0` the SPO runs need: its model and sampler (what the runs look
    their q0 up by), and the fixed problem subset."""

    model: str | None
    temperature: float
    top_p: float
    max_new_tokens: int
    split: str
    include_unreliable: bool
    problems: int
    samples: int

    def where(self) -> str:
        """The first `problems` train problems by problem_id (reliable ones unless
        include_unreliable): a fixed subset, so a rerun selects the same problems (estimate-q0's
        --limit counts problems still to do, which would move on to others)."""
        reliable = "" if self.include_unreliable else " AND judge_issue IS NULL"
        return (
            "p.problem_id IN (SELECT problem_id FROM problems WHERE split = "
            f"{sql_quote(self.split)}{reliable} ORDER BY problem_id LIMIT {int(self.problems)})"
        )

    def args(self, lake_uri: str) -> list[str]:
        """`spo estimate-q0` arguments (after the command name)."""
        args = [
            "--lake", lake_uri,
            "--where", self.where(),
            "--n", str(self.samples),
            "--temperature", f"{self.temperature:g}",
            "--top-p", f"{self.top_p:g}",
            "--max-new-tokens", str(self.max_new_tokens),
        ]  # fmt: skip
        if self.model is not None:
            args += ["--model", self.model]
        if self.include_unreliable:
            args.append("--include-unreliable")
        return args


def q0_needs(exp: Experiment, plans: list[RunPlan]) -> list[Q0Need]:
    """The distinct estimate-q0 steps of the runs this invocation trains that need q0 (none
    without a [prepare] table)."""
    if not exp.q0_problems:
        return []
    needs: list[Q0Need] = []
    for pl in plans:
        cfg = pl.config
        if pl.action == "skip" or not needs_q0(cfg):
            continue
        need = Q0Need(
            model=cfg.model,
            temperature=cfg.q0_temperature,
            top_p=cfg.q0_top_p,
            max_new_tokens=cfg.q0_max_new_tokens or cfg.max_new_tokens,
            split=cfg.train_split,
            include_unreliable=cfg.include_unreliable,
            problems=exp.q0_problems,
            samples=exp.q0_samples,
        )
        if need not in needs:
            needs.append(need)
    return needs


def q0_missing(lake: Lake, need: Q0Need) -> int:
    """How many problems of `need`'s subset lack an estimate with >= `samples` judged samples
    of its model and sampler (0: estimate-q0 would add nothing, so it is not started)."""
    from spo_store.q0_estimates import problems_with_q0_sql, sampler_key
    from spo_train.models import model_identity

    key = sampler_key(need.temperature, need.top_p, need.max_new_tokens)
    view = problems_with_q0_sql(model_identity(need.model), key)
    done = lake.sql_arrow(
        f"SELECT count(*) FILTER (WHERE p.q0_samples >= {int(need.samples)}) AS done, "
        f"count(*) AS n FROM ({view}) p WHERE {need.where()}"
    ).to_pylist()[0]
    return int(done["n"]) - int(done["done"])


# ----------------------------------------------------------------------------- files
def experiment_record(exp: Experiment, plans: list[RunPlan], lake_uri: str) -> dict[str, Any]:
    """The content of OUTPUT/experiment.json (`spo report` reads this shape)."""
    arms: dict[str, Any] = {}
    for arm in exp.arms:
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in exp.settings(arm).items()}
        arms[arm] = {
            "settings": settings,
            "runs": [
                {
                    "seed": pl.seed,
                    "output": pl.rel_output,
                    "status": pl.status,
                    "run_id": pl.run_id,
                }
                for pl in plans
                if pl.arm == arm
            ],
        }
    return {
        "name": exp.name,
        "description": exp.description,
        "lake": lake_uri,
        "reference_arm": exp.reference_arm,
        "config_file": str(exp.config_file),
        "arms": arms,
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def train_command(pl: RunPlan, *, json_flag: bool) -> list[str]:
    """`spo` arguments of a run (after `spo`): train --config its TOML (+ --resume)."""
    args = ["--threads", "1", "train", "--config", str(pl.config_path)]
    if json_flag:
        args.append("--json")
    if pl.action in ("resume", "extend"):
        args.append("--resume")
    return args


def write_run_files(exp: Experiment, plans: list[RunPlan], output: Path) -> None:
    """OUTPUT/sources.toml (the config's [sources]) and each run's settings TOML."""
    if exp.sources:
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in exp.sources.items())
        _write_atomic(
            output / "sources.toml",
            f"# mixture sources of experiment {exp.name} ({exp.config_file})\n[sources]\n{body}\n",
        )
    for pl in plans:
        pl.config_path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"spo train settings of experiment {exp.name}, arm {pl.arm}, seed {pl.seed}\n"
            f"written by `spo experiment {exp.config_file}`; by hand: "
            f"spo --threads 1 train --config {pl.config_path} (add --resume to continue it)"
        )
        _write_atomic(pl.config_path, dump_toml(pl.config, header))


# ----------------------------------------------------------------------------- results
def read_eval(lake: Lake, run_id: str) -> dict[str, float]:
    """The run's last evaluation: `eval/<set>/pass@k` -> value at the highest step evaluated."""
    rows = lake.sql_arrow(
        "SELECT name, value, step FROM metrics WHERE run_id = "
        f"{sql_quote(run_id)} AND name LIKE 'eval/%/pass@%' ORDER BY step"
    ).to_pylist()
    if not rows:
        return {}
    last = max(r["step"] for r in rows)
    return {r["name"]: r["value"] for r in rows if r["step"] == last}


def last_json_line(log: Path) -> dict[str, Any] | None:
    """The last line of `log` that is a JSON object with a run_id (`spo train --json`)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "run_id" in obj:
                return obj
    return None


def last_error_line(log: Path, since: int) -> str:
    """The last non-empty line the child wrote to `log` after byte `since` (its error line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- running
@dataclass
class _Child:
    plan: RunPlan
    proc: subprocess.Popen
    log_start: int
    started: float


def _spo_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "spo_cli.main", *args]


def shown_command(args: list[str]) -> str:
    return "spo " + shlex.join(args)


def _start(args: list[str], log: Path, header: str) -> tuple[subprocess.Popen, int]:
    """Start `spo <args>` with stdout and stderr appended to `log`, in its own session (a
    Ctrl-C at the terminal reaches only the runner, which stops each child with one SIGTERM)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        fh.write(f"=== {stamp} {header}: {shown_command(args)}\n".encode())
        start = fh.tell()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "160")}
        proc = subprocess.Popen(
            _spo_argv(args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return proc, start


class _StopGuard:
    """While stopping: further Ctrl-C / SIGTERM only count (the second kills the children
    instead of waiting for their checkpoints). A no-op off the main thread."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _StopGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._on)
        return self

    def _on(self, signum: int, _frame: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def stop_children(
    procs: list[subprocess.Popen],
    say: Callable[[str], None],
    what: str = "run(s): each saves a checkpoint",
) -> None:
    """SIGTERM each live child once (it checkpoints and ends its lake run `interrupted`),
    wait for them (a second Ctrl-C, or `STOP_GRACE_S`, kills them)."""
    with _StopGuard() as guard:
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if live:
            say(f"stopping {len(live)} {what} (Ctrl-C again to kill)")
        deadline = time.monotonic() + STOP_GRACE_S
        while any(p.poll() is None for p in live):
            if guard.count or time.monotonic() > deadline:
                for p in live:
                    if p.poll() is None:
                        p.kill()
                for p in live:
                    p.wait()
                break
            time.sleep(0.1)


def run_experiment(
    exp: Experiment,
    *,
    output: Path,
    lake: str | None = None,
    jobs: int = 1,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    dry_run: bool = False,
    train_json: bool = True,
    say: Callable[[str], None] = print,
    progress: Any = None,
    command_line: str = "",
) -> dict[str, Any]:
    """Run the experiment (or, with `dry_run`, only plan it); returns the summary: name,
    output, lake, dry_run, prepare (the estimate-q0 commands this invocation runs), runs (arm,
    seed, action, status, run_id, output, command, eval, and error for a failed one: the runs
    `only` and `seeds` select), failed (how many of them failed).

    `eval` is the run's last evaluation from the lake's metrics (`eval/<set>/pass@k`).
    `progress`: a rich Progress advanced over the selected runs (its task has a `current`
    field: the runs in flight). `train_json`: pass `--json` to `spo train` (its last line's
    `metrics` are kept). `command_line`: how this experiment was started (the resume hint).

    Raises SpoError before anything is written (bad --jobs/--only/--seeds, an --output of
    another experiment, a run directory holding other settings, another `spo experiment`
    holding OUTPUT/.lock) or when the q0 step fails; ExperimentStopped on Ctrl-C / SIGTERM after
    the children stopped and experiment.json was written.
    """
    if jobs < 1:
        raise SpoError(f"--jobs {jobs}: must be at least 1")
    out = output.resolve()
    if out.exists() and not out.is_dir():
        raise SpoError(f"--output {output} is a file; give a directory")
    record_path = out / "experiment.json"
    if record_path.is_file():
        try:
            other = json.loads(record_path.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            other = None
        if other is not None and other != exp.name:
            raise SpoError(
                f"--output {output} holds experiment {other!r}, not {exp.name!r}: give another "
                "--output"
            )
    lake_uri = lake_uri_of(exp, out, lake)
    pairs = set(select(exp, only, seeds))
    plans = plan_runs(exp, out, lake_uri, sorted(pairs))
    chosen = [pl for pl in plans if (pl.arm, pl.seed) in pairs]
    needs = q0_needs(exp, plans)
    prepare = [
        shown_command(["--threads", "1", "estimate-q0", *need.args(lake_uri)]) for need in needs
    ]

    def summary(failed: int) -> dict[str, Any]:
        reader = _open_existing_lake(lake_uri)
        runs = []
        for pl in chosen:
            if reader is not None and pl.run_id and pl.status == "completed":
                pl.eval = read_eval(reader, pl.run_id)
            runs.append(
                {
                    "arm": pl.arm,
                    "seed": pl.seed,
                    "action": pl.action,
                    "status": pl.status,
                    "run_id": pl.run_id,
                    "output": pl.rel_output,
                    "command": shown_command(train_command(pl, json_flag=train_json)),
                    "eval": pl.eval,
                    **({"error": pl.error} if pl.error else {}),
                }
            )
        return {
            "name": exp.name,
            "output": str(out),
            "lake": lake_uri,
            "dry_run": dry_run,
            "prepare": prepare,
            "runs": runs,
            "failed": failed,
        }

    if dry_run:
        return summary(0)

    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "a+")  # noqa: SIM115 - held for the whole experiment
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SpoError(
            f"--output {output} is in use by another spo experiment (it holds {out / '.lock'})"
        ) from None
    try:
        runner = _Runner(exp, out, lake_uri, plans, jobs, train_json, say, progress)
        runner.resume_hint = command_line or f"spo experiment {exp.config_file} --output {out}"
        failed = runner.run(chosen, needs)
    finally:
        lock.close()
    return summary(failed)


class _Runner:
    """The part of `run_experiment` that writes: files, the prepare step, the children."""

    def __init__(
        self,
        exp: Experiment,
        out: Path,
        lake_uri: str,
        plans: list[RunPlan],
        jobs: int,
        train_json: bool,
        say: Callable[[str], None],
        progress: Any,
    ) -> None:
        self.exp, self.out, self.lake_uri, self.plans = exp, out, lake_uri, plans
        self.jobs, self.train_json, self.say, self.progress = jobs, train_json, say, progress
        self.resume_hint = ""
        self.task: Any = None
        self.running: list[_Child] = []

    def write_record(self) -> None:
        record = experiment_record(self.exp, self.plans, self.lake_uri)
        _write_atomic(self.out / "experiment.json", json.dumps(record, indent=2) + "\n")

    def stopped(
        self, procs: list[subprocess.Popen], stopped_plans: list[RunPlan], what: str
    ) -> ExperimentStopped:
        """Stop the children, record their (interrupted) statuses; the exception to raise."""
        from spo_store.stopping import STOP_SIGNALS

        runs = what == "the runs"
        kept = (
            "stopped runs keep their checkpoints, none was marked completed"
            if runs
            else "estimates committed so far are kept, no run was started"
        )
        stop_children(procs, self.say, "run(s): each saves a checkpoint" if runs else "q0 estimate")
        reader = _open_existing_lake(self.lake_uri)
        for pl in stopped_plans:
            pl.run_id = _run_id_in(pl.output) or pl.run_id
        statuses = lake_statuses(reader, [pl.run_id for pl in stopped_plans if pl.run_id])
        for pl in stopped_plans:
            pl.status = statuses.get(pl.run_id or "", pl.status)
        self.write_record()
        signum = signal.SIGTERM if signal.SIGTERM in STOP_SIGNALS else signal.SIGINT
        how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        return ExperimentStopped(
            signum,
            f"{how} during {what}; {kept}: rerun the same command to resume: {self.resume_hint}",
        )

    def prepare(self, needs: list[Q0Need]) -> None:
        """Problems into an empty lake, then each missing q0 estimate (a child process)."""
        from spo_train.defaults import ensure_problems

        try:
            lk = Lake.open(self.lake_uri)
            ensure_problems(lk, say=self.say)
            for i, need in enumerate(needs):
                missing = q0_missing(lk, need)
                args = ["--threads", "1", "estimate-q0", *need.args(self.lake_uri)]
                if not missing:
                    self.say(
                        f"q0: the first {need.problems} {need.split} problems have estimates "
                        f"with >= {need.samples} samples (max_new_tokens {need.max_new_tokens})"
                    )
                    continue
                log = self.out / "prepare" / f"q0-{i}.log"
                self.say(
                    f"q0: estimating {missing} {need.split} problems x {need.samples} samples "
                    f"(max_new_tokens {need.max_new_tokens}); log {log}"
                )
                proc, start = _start(args, log, "prepare")
                try:
                    while proc.poll() is None:
                        time.sleep(0.2)
                except KeyboardInterrupt:
                    raise self.stopped([proc], [], "the q0 estimates") from None
                if proc.returncode != 0:
                    raise SpoError(
                        f"q0 estimate failed (exit {proc.returncode}): "
                        f"{last_error_line(log, start)} (log {log}; by hand: {shown_command(args)})"
                    )
        except KeyboardInterrupt:
            raise self.stopped([], [], "the lake's preparation") from None

    def run(self, chosen: list[RunPlan], needs: list[Q0Need]) -> int:
        """Prepare, run every chosen run not done; the number that failed."""
        write_run_files(self.exp, self.plans, self.out)
        (self.out / "experiment.toml").write_bytes(self.exp.config_file.read_bytes())
        self.write_record()
        todo = [pl for pl in chosen if pl.action != "skip"]
        done = [pl for pl in chosen if pl.action == "skip"]
        if done:
            self.say(f"{len(done)} run(s) already completed at their steps: skipped")
        if not todo:
            return 0
        self.prepare(needs)
        if self.progress is not None:
            self.task = self.progress.add_task(
                "runs", total=len(chosen), completed=len(done), current=""
            )
        queue = list(todo)
        failed: list[RunPlan] = []
        try:
            while queue or self.running:
                while queue and len(self.running) < self.jobs:
                    pl = queue.pop(0)
                    args = train_command(pl, json_flag=self.train_json)
                    proc, start = _start(args, pl.log_path, f"{pl.action} {pl.rel_output}")
                    self.running.append(_Child(pl, proc, start, time.monotonic()))
                    self.show_current()
                time.sleep(0.2)
                for child in [c for c in self.running if c.proc.poll() is not None]:
                    self.running.remove(child)
                    if not self.finish(child):
                        failed.append(child.plan)
                    self.show_current()
        except KeyboardInterrupt:
            raise self.stopped(
                [c.proc for c in self.running], [c.plan for c in self.running], "the runs"
            ) from None
        return len(failed)

    def show_current(self) -> None:
        if self.progress is not None and self.task is not None:
            now = ", ".join(f"{c.plan.arm} seed {c.plan.seed}" for c in self.running)
            self.progress.update(self.task, current=now)

    def finish(self, child: _Child) -> bool:
        """Record a child that ended (status, eval, error); whether it completed."""
        pl, rc = child.plan, child.proc.returncode
        pl.run_id = _run_id_in(pl.output) or pl.run_id
        result = last_json_line(pl.log_path)
        if result is not None and result.get("run_id"):
            pl.run_id = result["run_id"]
            pl.metrics = result.get("metrics") or {}
        reader = _open_existing_lake(self.lake_uri)
        status = lake_statuses(reader, [pl.run_id] if pl.run_id else []).get(pl.run_id or "")
        ok = rc == 0 and status == "completed"
        if ok:
            pl.status, pl.error = "completed", None
            pl.eval = read_eval(reader, pl.run_id) if reader is not None and pl.run_id else {}
        else:
            # a refusal before the run was recorded leaves the lake status of an earlier run
            pl.status = status if status in ("failed", "interrupted") else "failed"
            pl.error = last_error_line(pl.log_path, child.log_start) or f"exit {rc}"
        minutes, seconds = divmod(int(time.monotonic() - child.started), 60)
        shown = " ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in sorted(pl.eval.items()))
        self.say(
            f"{pl.arm} seed {pl.seed}: {pl.status} in {minutes}m{seconds:02d}s"
            + (f" ({shown})" if ok and shown else "")
            + (f": {pl.error}" if not ok else "")
            + f"; log {pl.log_path}"
        )
        self.write_record()
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
        return ok
