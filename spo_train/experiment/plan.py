"""Planning an experiment: its runs, what an earlier invocation left, what they need prepared.

`plan_runs` turns a validated `Experiment` (spo_train.experiment.config) into one `RunPlan` per
(arm, seed) and reads what an earlier invocation left (the run directories and the lake's
`runs` table) to choose each run's action (train, resume, extend, skip); `q0_needs` lists the
`spo estimate-q0` steps the SPO runs need and `q0_missing` what the lake still lacks of them;
`write_run_files` writes each run's settings TOML and `experiment_record` gives the content of
OUTPUT/experiment.json (`spo report` reads it); `read_eval` reads a run's last evaluation. No
torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, resolve_lake_uri, sql_quote
from spo_train.algorithm_rules import rules_of
from spo_train.config import (
    TrainConfig,
    as_saved,
    checkpoint_step,
    differing_settings,
    dump_toml,
    has_checkpoint,
    show_value,
    stored_train_config,
)
from spo_train.experiment.config import Experiment, q0_pool_where, resolved, run_config


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


# ----------------------------------------------------------------------------- plan
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


def open_existing_lake(uri: str) -> Lake | None:
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


def run_id_in(output: Path) -> str | None:
    """The run_id in `output`/run.json (written when a run starts), or None without one."""
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
            cfg = run_config(exp, arm, seed, run_dir, lake_uri, sources_file, f"[arms.{arm}]")
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
    lake = open_existing_lake(lake_uri)
    ids = {pl.rel_output: run_id_in(pl.output) for pl in plans}
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
    """One `spo estimate-q0` the runs need: its model and sampler (what the runs look their
    q0 up by), the fixed problem subset (`pool`: SQL over p, `experiment_config.q0_pool_where`)
    and the stopping rule (cap `samples`)."""

    model: str | None
    temperature: float
    top_p: float
    max_new_tokens: int
    split: str
    include_unreliable: bool
    problems: int
    samples: int
    pool: str = ""
    stopping: str = "sequential"
    stop_successes: int = 12

    def where(self) -> str:
        """The first `problems` train problems by problem_id (reliable ones unless
        include_unreliable) that [prepare] q0_where matches: a fixed subset, written out so
        the command names it."""
        return self.pool

    def done_sql(self) -> str:
        """SQL over `problems_with_q0_sql` aliased p: the estimate needs no more samples (the
        cap, or, sequential, r successes: `spo_train.q0.q0_done`)."""
        done = f"p.q0_samples >= {int(self.samples)}"
        if self.stopping == "sequential":
            done += f" OR p.q0_successes >= {int(self.stop_successes)}"
        return done

    def args(self, lake_uri: str) -> list[str]:
        """`spo estimate-q0` arguments (after the command name)."""
        args = [
            "--lake", lake_uri,
            "--where", self.where(),
            "--n", str(self.samples),
            "--temperature", f"{self.temperature:g}",
            "--top-p", f"{self.top_p:g}",
            "--max-new-tokens", str(self.max_new_tokens),
            "--stopping", self.stopping,
        ]  # fmt: skip
        if self.stopping == "sequential":
            args += ["--stop-successes", str(self.stop_successes)]
        if self.model is not None:
            args += ["--model", self.model]
        if self.include_unreliable:
            args.append("--include-unreliable")
        return args


def needs_q0(cfg: TrainConfig) -> bool:
    """Whether a run trains against q0 estimates (its algorithm's rules say: SPO does, PPO and
    GRPO do not)."""
    return rules_of(getattr(cfg, "algo", None)).needs_q0


def q0_needs(exp: Experiment, plans: list[RunPlan]) -> list[Q0Need]:
    """The distinct estimate-q0 steps of the runs this invocation trains that need q0 (none
    without a [prepare] table): the SPO runs', and with [strata] every run's (a stratum is
    chosen by q0)."""
    if not exp.q0_problems:
        return []
    needs: list[Q0Need] = []
    for pl in plans:
        cfg = pl.config
        if pl.action == "skip" or not (needs_q0(cfg) or exp.strata):
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
            pool=q0_pool_where(exp, cfg.train_split, cfg.include_unreliable),
            stopping=exp.q0_stopping,
            stop_successes=exp.q0_stop_successes,
        )
        if need not in needs:
            needs.append(need)
    return needs


def q0_pool_size(lake: Lake, need: Q0Need) -> int:
    """How many problems `need`'s subset holds in `lake` (0: `[prepare]` q0_where, the split
    and the reliability rule together match none, so no run has problems)."""
    rows = lake.sql_arrow(f"SELECT count(*) AS n FROM problems p WHERE {need.where()}")
    return int(rows.to_pylist()[0]["n"])


def q0_missing(lake: Lake, need: Q0Need) -> int:
    """How many problems of `need`'s subset lack a finished estimate of its model and sampler
    (`Q0Need.done_sql`; 0: estimate-q0 would add nothing, so it is not started)."""
    from spo_store.q0_estimates import problems_with_q0_sql, sampler_key
    from spo_train.lm.models import model_identity

    key = sampler_key(need.temperature, need.top_p, need.max_new_tokens)
    view = problems_with_q0_sql(model_identity(need.model), key)
    done = lake.sql_arrow(
        f"SELECT count(*) FILTER (WHERE {need.done_sql()}) AS done, "
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
            **({"stratum": exp.stratum_of[arm]} if arm in exp.stratum_of else {}),
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


def write_atomic(path: Path, text: str) -> None:
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
        write_atomic(
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
        write_atomic(pl.config_path, dump_toml(pl.config, header))


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
