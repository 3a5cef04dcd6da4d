"""Everything around a `spo train` run that is not the loop itself: checks before anything
loads (`preflight`), the output lock, the run's config.toml / run.json, q0 bookkeeping, what a
resume drops, and the loggers (TensorBoard, W&B). The loop is `spo_train.train.loop`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote
from spo_store.mixture import MixtureSpec, load_sources
from spo_store.q0_estimates import q0_of_s0, sampler_key
from spo_store.selection import RELIABLE, check_where, count_problems, split_predicate
from spo_train.algorithm_rules import rules_of
from spo_train.config import (
    TrainConfig,
    as_saved,
    check_output_dir,
    dump_toml,
    stored_train_config,
)
from spo_train.lm.fast_step import check_device  # noqa: F401 - re-exported
from spo_train.lm.models import resolve_model_path
from spo_train.q0 import q0_value
from spo_train.rollouts.sampling import load_problems


def q0_sampler_key(config: TrainConfig) -> str:
    """The `q0_estimates.sampler_key` of the estimates this run trains against."""
    return sampler_key(
        config.q0_temperature, config.q0_top_p, config.q0_max_new_tokens or config.max_new_tokens
    )


def estimate_q0_command(config: TrainConfig, lake_uri: str, restrict: str | None = None) -> str:
    """The exact `spo estimate-q0 ...` that gives this run the q0 estimates it needs
    (`restrict`: the SQL over `p` that keeps `--train-problems N`'s first N problems)."""
    parts = ["spo estimate-q0"]
    if config.model:
        parts.append(f"--model {config.model}")
    parts.append(f"--lake {lake_uri}")
    if restrict:  # --where replaces --split in estimate-q0: the split goes into it
        parts.append(f'--where "{split_predicate(config.train_split)} AND {restrict}"')
    else:
        parts.append(f"--split {config.train_split}")
    if config.q0_temperature != 1.0:
        parts.append(f"--temperature {config.q0_temperature:g}")
    if config.q0_top_p != 1.0:
        parts.append(f"--top-p {config.q0_top_p:g}")
    parts.append(f"--max-new-tokens {config.q0_max_new_tokens or config.max_new_tokens}")
    if config.include_unreliable:
        parts.append("--include-unreliable")
    # A small first step: the default --n (800, the paper's) takes about a day on the
    # embedded model; rerunning with a larger --n tops the estimates up.
    parts += ["--n 4"] if restrict else ["--n 4", "--limit 512"]
    return " ".join(parts)


def rebase_q0(problems: list[dict[str, Any]], beta: float) -> int:
    """Make every problem's `q0` the value at `beta`; returns how many were recomputed.

    q0 depends on beta (`beta * log(S0 + (1 - S0) exp(-1/beta))`), and the lake keeps the counts
    `(n, c)` behind it, so training at another beta recomputes q0 instead of silently using a
    value estimated for a different objective.
    """
    changed = 0
    for p in problems:
        if p.get("q0_beta") is not None and math.isclose(p["q0_beta"], beta, rel_tol=1e-9):
            continue
        if not p.get("q0_samples") or p.get("q0_successes") is None:
            raise SpoError(
                f"problem {p['problem_id']}: q0 was set for beta {p.get('q0_beta')} without the "
                f"(n, c) counts needed to recompute it for beta {beta}; rerun `spo estimate-q0`"
            )
        if p.get("q0_s0") is not None:  # the unbiased S0 (not c/n under a sequential rule)
            p["q0"] = q0_of_s0(p["q0_s0"], beta)
        else:
            p["q0"] = q0_value(p["q0_successes"], p["q0_samples"], beta)
        changed += 1
    return changed


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def check_split(lake: Lake, split: str, option: str) -> None:
    """A split with no problem (a typo included) is one error naming the splits present."""
    from spo_store.selection import check_split

    check_split(lake, split, option)


def splits_present_suffix(lake: Lake) -> str:
    from spo_store.selection import describe_splits, splits_present

    return f" (splits present: {describe_splits(splits_present(lake))})"


def write_config(
    output: Path,
    config: TrainConfig,
    run_id: str,
    say: Callable[[str], None],
    *,
    resumed: bool = False,
) -> None:
    """Write output/config.toml (reloadable: `spo train --config output/config.toml`) and
    run.json. On resume the stored settings equal these except operational ones (workers,
    wandb, ...) and `steps`, which a resume may raise: that change is said, never silent."""
    stored = stored_train_config(output)
    if resumed and stored is not None and stored[0].get("steps", config.steps) != config.steps:
        say(
            f"--steps {config.steps}: the run continues to step {config.steps} "
            f"(started with {stored[0]['steps']}); config.toml updated"
        )
    header = (
        f"spo train settings of run {run_id}; `spo train --config {output / 'config.toml'}` "
        "reproduces them\n(add --resume to continue this run, or give another --output)"
    )
    tmp = output / ".config.toml.tmp"
    tmp.write_text(dump_toml(config, header), encoding="utf-8")
    tmp.replace(output / "config.toml")
    (output / "run.json").write_text(
        json.dumps({"run_id": run_id, "config": as_saved(config)}, indent=2, default=str)
    )


def drop_after(lake: Lake, run_id: str, step: int) -> int:
    """Delete this run's metrics and batches logged for steps the resume runs again.

    Training metrics and batches of step >= `step`, evaluations of step > `step` (the
    evaluation at `step` ran before its checkpoint was written and is kept). Returns the
    number of rows deleted.
    """
    rid = sql_quote(run_id)
    where_metrics = (
        f"run_id = {rid} AND ((step >= {step} AND name NOT LIKE 'eval/%') OR step > {step})"
    )
    n = 0
    for table, where in (
        ("metrics", where_metrics),
        ("batches", f"run_id = {rid} AND step >= {step}"),
    ):
        found = int(lake.sql_arrow(f"SELECT count(*) FROM {table} WHERE {where}")[0][0].as_py())
        if found:
            lake.delete_rows(table, where)
            n += found
    return n


def relog_evals(lake: Lake, writer: Any, run_id: str, step: int) -> None:
    """purge_step also hides the kept evaluation at the resume step: write it again."""
    rows = lake.sql_arrow(
        f"SELECT name, value FROM metrics WHERE run_id = {sql_quote(run_id)} AND step = {step} "
        "AND name LIKE 'eval/%pass@%'"
    ).to_pylist()
    for r in rows:
        writer.add_scalar(r["name"], r["value"], step)


def start_wandb(config: TrainConfig, run_id: str, output: Path) -> Any:
    """A W&B run (offline by default: files under output/wandb, `wandb sync` uploads them)."""
    if config.wandb == "off":
        return None
    try:
        import wandb
    except ImportError:
        if config.wandb == "auto":
            return None
        raise SpoError(
            f"--wandb {config.wandb} needs the wandb package: pip install 'spo[wandb]'"
        ) from None
    return wandb.init(
        project="spo",
        name=run_id,
        id=run_id,
        resume="allow",  # --resume continues the same W&B run
        dir=str(output),
        mode="online" if config.wandb == "online" else "offline",
        config=dataclasses.asdict(config),
        # console="off": W&B must not wrap stdout (`--json` prints the last line there)
        settings=wandb.Settings(silent=True, console="off"),
    )


def lock_output(output: Path) -> Any:
    """Hold `output/.lock` exclusively (fcntl.flock, non-blocking) for the life of a run, so
    two `spo train` never write one directory; the second gets one SpoError line with the
    holder's pid. Returns the open lock file (closing it releases the lock)."""
    import fcntl

    fh = open(output / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise SpoError(f"--output {output} is in use by another spo train (pid {pid})") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def preflight(config: TrainConfig) -> tuple[Path, dict[str, str]]:
    """Every check that needs no lake and no model load: the settings, --output, --device,
    the --model directory, --sources-file and --mix. Returns (pi_0 path, mixture sources);
    raises one SpoError line."""
    config.validate()
    check_output_dir(config)
    check_device(config.device)
    if config.rollout_workers:
        from spo_train.rollouts.workers import check_ray_address

        check_ray_address(config.ray_address)
    pi0_path = resolve_model_path(config.model)
    sources = load_sources(config.sources_file)
    try:
        MixtureSpec.parse(config.resolved().mix, list(sources))
    except SpoError as exc:
        raise SpoError(f"--mix: {exc}") from None
    return pi0_path, sources


def train_problems(
    lake: Lake, config: TrainConfig, q0_of: tuple[str, str], note: Callable[[str], None]
) -> tuple[list[dict[str, Any]], str | None]:
    """The problems this run trains on, and the SQL restriction (over `p`) that keeps the
    mixture to them when `train_where` or `train_problems` is set. SPO keeps those with a q0
    estimate. Raises SpoError (one line naming --train-where) for invalid SQL or no match."""
    in_split = split_predicate(config.train_split)
    reliable = "TRUE" if config.include_unreliable else RELIABLE
    where = f"{in_split} AND {reliable}"
    restrict = None
    if config.train_where:
        check_where(lake, f"{in_split} AND ({config.train_where})", flag="--train-where")
        where += f" AND ({config.train_where})"
    if config.train_where or config.train_problems:
        limit = f" LIMIT {int(config.train_problems)}" if config.train_problems else ""
        ids = lake.sql_arrow(
            f"SELECT p.problem_id FROM problems p WHERE {where} ORDER BY p.problem_id{limit}"
        ).column(0)
        if config.train_where:
            # The mixture evaluates `restrict` over its own index of trajectories and problems,
            # where a subquery's tables (problems, q0_estimates, ...) do not exist: pin the
            # matched problems by id (the training set is fixed when the run starts).
            quoted = ", ".join(sql_quote(i.as_py()) for i in ids)
            restrict = f"p.problem_id IN ({quoted})" if len(ids) else "FALSE"
        elif len(ids):
            restrict = f"p.problem_id <= {sql_quote(ids[len(ids) - 1].as_py())}"
        if restrict:
            where += f" AND {restrict}"
    if not rules_of(config.algo).needs_q0:
        problems = load_problems(lake, where)
        if not problems:
            raise SpoError(
                f"no {config.train_split!r} problem in lake {lake.uri} to train on"
                + splits_present_suffix(lake)
            )
        return problems, restrict
    problems = load_problems(lake, f"{where} AND p.q0 IS NOT NULL", q0_of=q0_of)
    if not problems:
        others = lake.sql_arrow(
            "SELECT count(DISTINCT (ref_model_id, sampler_key)) AS n FROM q0_estimates q "
            f"JOIN problems p USING (problem_id) WHERE {in_split}"
        ).to_pylist()[0]["n"]
        raise SpoError(
            f"no {config.train_split!r} problem in lake {lake.uri} has a q0 estimate of this "
            f"model ({q0_of[0][:19]}) with sampler {q0_of[1]}"
            + (
                f" ({others} other model/sampler estimates exist and are not used)"
                if others
                else ""
            )
            + f": run `{estimate_q0_command(config, lake.uri, restrict)}` (a small first estimate; "
            "rerun it with a larger --n, e.g. 64, to top the estimates up)"
        )
    without = count_problems(lake, f"{where} AND p.q0 IS NULL", q0_of=q0_of)
    if without:
        note(
            f"{without} {config.train_split} problems have no q0 estimate of this model and "
            f"sampler and are left out (run `{estimate_q0_command(config, lake.uri, restrict)}`)"
        )
    rebased = rebase_q0(problems, config.beta)
    if rebased:
        note(f"q0 of {rebased} problems recomputed from their (n, c) for beta {config.beta:.4g}")
    return problems, restrict


def mc_weight_note(lake: Lake, config: TrainConfig, ref_model_id: str) -> str | None:
    """A warning when `--mc-weight` > 0 can have no effect: the lake holds no `spo pts`
    annotation under this run's pi_0, so the MC term is 0 at every step (issue 12)."""
    if config.mc_weight <= 0 or not rules_of(config.algo).has_mc_term:
        return None
    found = (
        lake.sql_arrow(
            "SELECT count(*) FROM annotations WHERE method = 'pts' "
            f"AND ref_model_id = {sql_quote(ref_model_id)}"
        )
        .column(0)[0]
        .as_py()
    )
    if found:
        return None
    return (
        f"--mc-weight {config.mc_weight:g}: lake {lake.uri} holds no `spo pts` annotation under "
        f"this pi_0 ({ref_model_id[:19]}), so the MC term is 0 at every step; run `spo pts` "
        "first (docs/pts.md)"
    )
