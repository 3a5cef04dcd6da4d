"""`spo pts`: pivotal token search (a thin wrapper over `spo_train.pts`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=True)


def _pts(explicit: dict[str, Any], **kwargs: Any) -> None:
    """Estimate S_t, the success probability after each response prefix, along successful
    trajectories: K rollouts of pi_0 per prefix judged in the sandbox, bisecting where S
    changes by more than --threshold (pivotal token search). Estimates go to the annotations
    table, the rollouts to trajectories (source 'pts'). Resumable: rerun the same command."""
    from spo_train.config import build, coerce, field_map, flag_of
    from spo_train.pts import PTSConfig

    fields = field_map(PTSConfig)
    values = {
        k: coerce(PTSConfig, k, v, flag_of(fields[k])) for k, v in kwargs.items() if k in fields
    }
    cfg: PTSConfig = build(PTSConfig, {**values, **explicit})
    json_out = bool(kwargs.get("json_out"))

    from spo_cli.train_cmds import _check_model, _open_lake_with_problems

    from spo_train.pts import select_trajectories

    cfg.model = _check_model(cfg.model)
    lake = _open_lake_with_problems(cfg.lake)
    # bad SQL or nothing to annotate: one line before any model loads or run is recorded
    select_trajectories(lake, cfg.where, cfg.include_unreliable)

    from spo_cli.train_cmds import load_generator

    from spo_train.pts import (
        Sampler,
        annotate,
        largest_jump_annotation,
        plot_annotation,
        sandbox_judge,
    )

    gen, tok, model_id, tok_id = load_generator(cfg.model, "transformers")
    sampler = Sampler(max_new_tokens=cfg.max_new_tokens)
    from spo_train.progress import advance_with_rate, progress_display

    bar = progress_display(console)
    steps: dict[str, Any] = {}  # the tasks start when annotate knows how many trajectories

    def advance(name: str):
        return lambda n: steps[name](n)

    def start(todo: int) -> None:
        for name, total in (("trajectories", todo), ("prefixes", None), ("rollouts", None)):
            task = bar.add_task(name, total=total, rate="")
            steps[name] = advance_with_rate(bar, task, name, digits=2)

    with bar:
        report = annotate(
            lake,
            gen,
            tok,
            where=cfg.where,
            samples=cfg.samples,
            threshold=cfg.threshold,
            sampler=sampler,
            model_id=model_id,
            tokenizer_id=tok_id,
            limit=cfg.limit,
            seed=cfg.seed,
            chunk_trajectories=cfg.chunk_trajectories,
            include_unreliable=cfg.include_unreliable,
            judge=sandbox_judge(workers=cfg.workers, unsafe_no_sandbox=cfg.unsafe_no_sandbox),
            config={"model": cfg.model, "chunk_trajectories": cfg.chunk_trajectories},
            on_start=start,
            on_trajectories=advance("trajectories"),
            on_prefixes=advance("prefixes"),
            on_rollouts=advance("rollouts"),
        )
    summary = report.summary()
    say = lambda m: console.print(m, highlight=False, soft_wrap=True)  # noqa: E731
    if report.trajectories == 0 and report.already_done:
        say(
            f"{_count(report.already_done, 'selected trajectory', 'selected trajectories')} "
            f"already {'has' if report.already_done == 1 else 'have'} an annotation of "
            f"{model_id[:19]} with these settings: nothing to do (no run recorded)"
        )
    else:
        say(
            f"annotated {_count(report.trajectories, 'trajectory', 'trajectories')} under "
            f"{model_id[:19]} "
            f"({report.sampler_key}, K={cfg.samples}, threshold {cfg.threshold:g}): "
            f"{report.prefixes} prefixes estimated ({summary['prefixes_per_trajectory']:.1f} per "
            f"trajectory), {report.rollouts} rollouts sampled, {report.reused} reused, "
            f"{report.pivots} pivotal tokens; {report.seconds:.1f} s; run {report.run_id}"
        )
    if report.too_long or report.empty:
        say(
            f"skipped {report.too_long} trajectories whose prompt and response leave no room "
            f"for --max-new-tokens {cfg.max_new_tokens} in the model's context, and "
            f"{report.empty} with an empty response (not annotated)"
        )
    if report.unjudged:
        say(f"{report.unjudged} rollouts could not be judged (reward NULL): not counted in S_t")
    if cfg.plot:
        from spo_store.annotations import annotation_id as key_of

        selected = select_trajectories(lake, cfg.where, cfg.include_unreliable)
        keys = [
            key_of(t, model_id, tok_id, sampler.key, cfg.samples, cfg.threshold) for t in selected
        ]
        best = largest_jump_annotation(lake, keys)
        if best is None:
            say("--plot: no annotation of the selection to draw")
        else:
            path = plot_annotation(lake, best, cfg.plot, tok)
            summary["plot"] = {"file": str(path), "annotation_id": best}
            say(f"wrote {path} (S_t along the annotation {best} with the largest jump)")
    if json_out:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")


def register(app: typer.Typer) -> None:
    """Add `pts` to the `spo` app (options from `spo_train.pts.PTSConfig`)."""
    import inspect
    from typing import Annotated

    from spo_cli.options import SpoCommand, command_from

    from spo_train.pts import PTSConfig

    json_opt = inspect.Parameter(
        "json_out",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option("--json", help="Print one JSON object (the summary) as the last line"),
        ],
    )
    app.command("pts", cls=SpoCommand)(command_from(PTSConfig, _pts, extra=[json_opt]))


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
