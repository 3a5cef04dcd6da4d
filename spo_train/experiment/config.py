"""The experiment config format (TOML): `Experiment` and `load_experiment` with its checks.

An experiment config (docs/experiments.md defines it) names arms (algorithm, loss, mixture,
...: settings of `spo_train.config.TrainConfig`), the settings they share (`[common]`, the
budget), the seeds, user mixture sources and what the runs need prepared in the lake (q0
estimates). `load_experiment` validates the whole file first: one SpoError line naming the
file, the table and the key; nothing is written. `run_config` builds one run's TrainConfig from
it (`spo_train.experiment.plan` plans the runs, `spo_train.experiment` runs them).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_train.config import TrainConfig, build, coerce, field_map, show_value

TABLES = ("experiment", "prepare", "sources", "common", "strata", "arms")
EXPERIMENT_KEYS = ("name", "description", "seeds", "reference_arm", "lake")
PREPARE_KEYS = ("q0_problems", "q0_samples", "q0_where", "q0_stopping", "q0_stop_successes")
STRATUM_KEYS = ("q0_successes", "description")
STRATUM_SEP = "."
"""Between a stratum's and an arm's name in the expanded arm name `<stratum>.<arm>` (a name
no arm of the config can take, so the two never clash)."""
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
    q0_where: str | None = None
    q0_stopping: str = "sequential"
    q0_stop_successes: int = 12
    strata: dict[str, tuple[int, int]] = field(default_factory=dict)
    stratum_of: dict[str, str] = field(default_factory=dict)

    def settings(self, arm: str) -> dict[str, Any]:
        """[common] overridden by [arms.<arm>]: the arm's settings (TrainConfig field values)."""
        return {**self.common, **self.arms[arm]}


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
    a reference arm that is not an arm, a source that redefines a built-in one or is not one
    SQL predicate reading only lake tables (`check_source`), a q0_where or
    train_where that is not one SQL predicate over the problems' columns (`p`; an unknown
    column or function included: bound against the lake's schema, no lake needed).
    """
    from spo_store.mixture import BUILTIN_SOURCES, MixtureSpec, check_source, check_source_name
    from spo_store.selection import check_where_binds

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
    q0_where: str | None = None
    q0_stopping, q0_stop_successes = "sequential", 12
    if prep:
        if "q0_problems" not in prep:
            raise _fail(p, "[prepare]", "q0_problems is required (train problems to estimate)")
        q0_problems = _positive_int(p, "[prepare]", "q0_problems", prep["q0_problems"])
        q0_samples = _positive_int(p, "[prepare]", "q0_samples", prep.get("q0_samples", 4))
        q0_where = prep.get("q0_where")
        if q0_where is not None and (not isinstance(q0_where, str) or not q0_where.strip()):
            raise _fail(
                p, "[prepare]", f"q0_where = {q0_where!r}: expected an SQL predicate over p"
            )
        if q0_where is not None:
            # one expression (it is pasted into the pool's query) over columns that exist: the
            # run would otherwise meet a typo only at the q0 step, after writing its record
            check_where_binds(q0_where, f"{p} [prepare]: q0_where")
        q0_stopping = prep.get("q0_stopping", "sequential")
        if q0_stopping not in ("sequential", "fixed"):
            raise _fail(
                p, "[prepare]", f"q0_stopping = {q0_stopping!r}: expected 'sequential' or 'fixed'"
            )
        q0_stop_successes = _positive_int(
            p, "[prepare]", "q0_stop_successes", prep.get("q0_stop_successes", 12)
        )
        if q0_stop_successes < 2:
            raise _fail(
                p, "[prepare]", f"q0_stop_successes = {q0_stop_successes}: needs at least 2"
            )

    sources = data.get("sources", {})
    for key, value in sources.items():
        check_source_name(key, f"{p} [sources]: {key!r}")  # the rule --sources-file keeps
        if key in BUILTIN_SOURCES:
            raise _fail(
                p,
                "[sources]",
                f"{key!r} is a built-in source and cannot be redefined; give "
                "the source another name",
            )
        if not isinstance(value, str) or not value.strip():
            raise _fail(p, "[sources]", f"{key}: expected an SQL predicate over t and p")
        # checked as `spo train --sources-file` checks it, before the lake or a run exists
        check_source(value, f"{p} [sources]: {key}")

    common = _read_settings(p, "[common]", data.get("common", {}))
    if common.get("train_where") is not None:
        check_where_binds(common["train_where"], f"{p} [common]: train_where")
    strata = _read_strata(p, data.get("strata", {}), q0_samples)
    for stratum, (_, high) in strata.items():
        if q0_stopping == "sequential" and high >= q0_stop_successes:
            raise _fail(
                p,
                f"[strata.{stratum}]",
                f"q0_successes up to {high}: a sequential estimate stops at "
                f"q0_stop_successes = {q0_stop_successes} successes before q0_samples, so it "
                "would never count; keep the bound below it (or q0_stopping = 'fixed')",
            )
    if strata and "train_where" in common:
        raise _fail(p, "[common]", "train_where cannot be set with [strata]: each stratum sets it")
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
        if arms[arm].get("train_where") is not None:
            check_where_binds(arms[arm]["train_where"], f"{p} {where}: train_where")
        if strata and "train_where" in arms[arm]:
            raise _fail(p, where, "train_where cannot be set with [strata]: each stratum sets it")

    stratum_of: dict[str, str] = {}
    if strata:  # one arm per (stratum, arm), stratum-major (the report lists them so)
        arms = {f"{s}{STRATUM_SEP}{a}": v for s in strata for a, v in arms.items()}
        stratum_of = {name: name.split(STRATUM_SEP, 1)[0] for name in arms}

    reference = exp.get("reference_arm")
    base_arms = list(arms_raw)
    if reference is not None and reference not in base_arms:
        raise _fail(
            p,
            "[experiment]",
            f"reference_arm = {reference!r} is not an arm; arms: {', '.join(base_arms)}",
        )
    if reference is not None and strata:  # the first stratum's (spo report --reference: another)
        reference = f"{next(iter(strata))}{STRATUM_SEP}{reference}"
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
        q0_where=q0_where,
        q0_stopping=q0_stopping,
        q0_stop_successes=q0_stop_successes,
        strata=strata,
        stratum_of=stratum_of,
    )
    known = [*BUILTIN_SOURCES, *sources]
    for arm in arms:
        where = f"[arms.{arm}]"
        run_dir = default_output(experiment) / arm / f"seed-{seeds[0]}"
        # the stratum's predicate needs pi_0's identity, read when the runs are planned
        cfg = run_config(experiment, arm, seeds[0], run_dir, None, None, where, model_id="")
        stratum = stratum_of.get(arm)
        if stratum is not None:  # the stratum's train_where, as the run will read it
            check_where_binds(cfg.train_where, f"{p} [strata.{stratum}]: train_where")
        mix = resolved(cfg).mix
        if mix is not None:
            try:
                MixtureSpec.parse(mix, known)
            except SpoError as exc:
                raise _fail(p, where, f"mix: {exc}") from None
    return experiment


def _read_strata(path: Path, table: Any, q0_samples: int) -> dict[str, tuple[int, int]]:
    """[strata.<name>] tables: each `q0_successes = [low, high]` (0 <= low <= high <=
    q0_samples) and an optional description; they need a [prepare] table."""
    if not table:
        return {}
    if not q0_samples:
        raise _fail(path, "[strata]", "strata select problems by q0: add a [prepare] table")
    out: dict[str, tuple[int, int]] = {}
    for name, body in table.items():
        where = f"[strata.{name}]"
        if not NAME_RE.fullmatch(name):
            raise _fail(path, where, f"stratum name {name!r}: expected letters, digits, '-', '_'")
        if not isinstance(body, dict):
            raise _fail(path, where, "expected a table (q0_successes = [low, high])")
        for key in body:
            if key not in STRATUM_KEYS:
                raise _unknown(path, where, key, list(STRATUM_KEYS), "a stratum key")
        bounds = body.get("q0_successes")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            or not 0 <= bounds[0] <= bounds[1] <= q0_samples
        ):
            raise _fail(
                path,
                where,
                f"q0_successes = {bounds!r}: expected [low, high], 0 <= low <= high <= "
                f"q0_samples ({q0_samples}), e.g. [0, 0] for problems pi_0 never solved",
            )
        if not isinstance(body.get("description", ""), str):
            raise _fail(path, where, "description: expected a string")
        out[name] = (bounds[0], bounds[1])
    return out


def q0_pool_where(exp: Experiment, split: str, include_unreliable: bool) -> str:
    """SQL over p: the problems `[prepare]` estimates, the first `q0_problems` of `split` by
    problem_id (reliable ones unless include_unreliable) that `q0_where` matches (the same
    problems `spo estimate-q0 --where` of this predicate selects on every run)."""
    from spo_store.lake import sql_quote

    reliable = "" if include_unreliable else " AND p.judge_issue IS NULL"
    pool = f" AND ({exp.q0_where})" if exp.q0_where else ""
    return (
        "p.problem_id IN (SELECT p.problem_id FROM problems p WHERE p.split = "
        f"{sql_quote(split)}{reliable}{pool} ORDER BY p.problem_id LIMIT {int(exp.q0_problems)})"
    )


def stratum_where(exp: Experiment, stratum: str, cfg: TrainConfig, model_id: str) -> str:
    """SQL over p: the problems of `stratum`, those of the q0 pool whose estimate (pi_0 =
    `model_id`, the run's q0 sampler) reached `q0_samples` judged samples with successes within
    the stratum's bounds. Problems still being estimated are in no stratum."""
    from spo_store.lake import sql_quote
    from spo_store.q0_estimates import sampler_key

    low, high = exp.strata[stratum]
    key = sampler_key(cfg.q0_temperature, cfg.q0_top_p, cfg.q0_max_new_tokens or cfg.max_new_tokens)
    return (
        f"{q0_pool_where(exp, cfg.train_split, cfg.include_unreliable)} AND p.problem_id IN "
        f"(SELECT problem_id FROM q0_estimates WHERE ref_model_id = {sql_quote(model_id)} "
        f"AND sampler_key = {sql_quote(key)} AND samples >= {int(exp.q0_samples)} "
        f"AND successes BETWEEN {int(low)} AND {int(high)})"
    )


def resolved(cfg: TrainConfig) -> TrainConfig:
    """`cfg.resolved()` where TrainConfig has it (the algorithm's defaults filled in)."""
    fill = getattr(cfg, "resolved", None)
    return fill() if callable(fill) else cfg


def run_config(
    exp: Experiment,
    arm: str,
    seed: int,
    output: Path,
    lake_uri: str | None,
    sources_file: Path | None,
    where: str,
    *,
    model_id: str | None = None,
) -> TrainConfig:
    """The TrainConfig of `arm`'s run with `seed` in directory `output` (the runner's settings
    added to the arm's; an arm of a stratum also gets the stratum's `train_where`, built with
    pi_0's identity `model_id`: read from its model directory when None). Raises SpoError
    naming the config file and `where` (the arm's table) when the settings do not build (a
    check across settings, as `spo train` makes it) or pi_0's directory cannot be read."""
    values = {
        **exp.settings(arm),
        "seed": seed,
        "output": str(output),
        "lake": lake_uri,
        "sources_file": None if sources_file is None else str(sources_file),
    }
    try:
        cfg = build(TrainConfig, values)
        stratum = exp.stratum_of.get(arm)
        if stratum is not None:
            if model_id is None:
                from spo_train.lm.models import model_identity

                model_id = model_identity(cfg.model)
            values["train_where"] = stratum_where(exp, stratum, cfg, model_id)
            cfg = build(TrainConfig, values)
        return cfg
    except SpoError as exc:
        raise _fail(exp.config_file, where, str(exc)) from None


def default_output(exp: Experiment) -> Path:
    """Where the experiment's runs go without --output: runs/experiments/<name>."""
    return Path("runs") / "experiments" / exp.name
