"""`spo estimate-q0`, `spo train`, `spo eval`, `spo demo`: thin wrappers over `spo_train`."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from spo_cli.lake_cmds import LakeOpt

from spo_store.errors import SpoError
from spo_train.progress import advance_with_rate, progress_display

console = Console(stderr=True)
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hugging Face model directory (default: the embedded pi_0)",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="Generation backend: transformers or vllm")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Judge processes (default: all cores)")
]
UnsafeOpt = Annotated[
    bool,
    typer.Option("--unsafe-no-sandbox", help="Run programs without bubblewrap (trusted code only)"),
]
UnreliableOpt = Annotated[
    bool,
    typer.Option(
        "--include-unreliable",
        help="Keep problems with a judge_issue (left out by default: their rewards are not "
        "trustworthy)",
    ),
]


def load_generator(
    model: str | None, backend: str, device: str = "cpu"
) -> tuple[Any, Any, str, str]:
    """(generator, tokenizer, model_id, tokenizer_id) for `model` (default: embedded pi_0)."""
    from spo_train.lm.generation import TransformersGenerator, make_generator
    from spo_train.lm.models import (
        load_model_and_tokenizer,
        model_identity,
        resolve_model_path,
        tokenizer_identity,
    )

    path = resolve_model_path(model)
    if backend == "transformers":
        lm, tok = load_model_and_tokenizer(path, device=device)
        gen = TransformersGenerator(lm, tok, device=device)
    elif backend == "vllm":
        gen = make_generator("vllm", str(path))
        tok = gen.tokenizer
    else:
        raise SpoError(f"--backend {backend!r}: choose transformers or vllm")
    return gen, tok, model_identity(path), tokenizer_identity(tok)


def _open_lake_with_problems(lake: str | None):
    from spo_store.lake import Lake
    from spo_train.embedded.defaults import ensure_problems

    lk = Lake.open(lake)
    ensure_problems(lk, say=lambda m: console.print(m, highlight=False))
    return lk


def _sampling_config(
    cls: type,
    explicit: dict[str, Any],
    kwargs: dict[str, Any],
    config_file: str | None = None,
) -> Any:
    """The command's config: defaults < --config FILE < flags given; validated (one line).
    --split and --where together are refused (which one selects would be a guess)."""
    from spo_train.config import build, coerce, field_map, flag_of, read_toml

    fields = field_map(cls)
    values = {k: coerce(cls, k, v, flag_of(fields[k])) for k, v in kwargs.items() if k in fields}
    given = {**(read_toml(cls, config_file) if config_file else {}), **explicit}
    if given.get("split") is not None and given.get("where") is not None:
        raise SpoError(
            f"--split {given['split']} and --where given together: give one (to filter a "
            f"split, put it in the predicate: --where \"p.split = '{given['split']}' AND ...\")"
        )
    return build(cls, {**values, **given})


def _check_model(model: str | None, *, absolute: bool = True) -> str | None:
    """The model directory of --model, checked before the lake is touched (one error line for a
    folder that is not a usable model); a `spo train --output` folder becomes its latest
    checkpoint, and the command says which. Returned absolute (what a run records), or with
    `absolute=False` as given unless it was a run folder (a `spo train --resume` compares it
    with the stored setting). None stays None (the embedded pi_0)."""
    from pathlib import Path

    from spo_train.lm.models import check_model

    path = check_model(model)
    if model is None:
        return None
    if path != Path(model).expanduser():
        console.print(
            f"--model {model}: a spo train output folder; using its latest checkpoint {path}",
            highlight=False,
            soft_wrap=True,
        )
    elif not absolute:
        return model
    return str(path.resolve()) if absolute else str(path)


def _selection(lk: Any, cfg: Any) -> str:
    """The problems predicate of --where / --split; a split with no problem is one error."""
    from spo_store.lake import sql_quote

    if cfg.where:
        from spo_store.selection import check_where

        check_where(lk, cfg.where)
        return cfg.where
    if cfg.split is None:
        raise SpoError("give --split or --where")
    from spo_store.selection import check_split

    check_split(lk, cfg.split, "--split")
    return f"p.split = {sql_quote(cfg.split)}"


def _estimate_q0(
    _explicit: dict[str, Any],
    *,
    json_out: bool = False,
    config_file: str | None = None,
    **kwargs: Any,
) -> None:
    """Estimate Q0 of --model for each problem by sampling it and judging (resumable).

    Sequential by default: each problem is sampled in rounds until --stop-successes successes
    or the cap --samples (easy problems stop early); --stopping fixed draws exactly --samples.
    Estimates are kept per (problem, model, sampler settings): another model or sampler gets
    its own; a rerun with the same settings adds nothing; a larger --samples tops them up.
    """
    from spo_train.config import EstimateQ0Config

    cfg: EstimateQ0Config = _sampling_config(EstimateQ0Config, _explicit, kwargs, config_file)
    from spo_store.q0_sequential import StoppingRule
    from spo_train.q0 import estimate_q0, q0_todo
    from spo_train.rollouts.sampling import SamplerSettings, check_context

    samples = cfg.n
    rule = StoppingRule(cfg.stopping, cap=samples, successes=cfg.stop_successes)
    r = rule.successes if rule.kind == "sequential" else None
    cfg.model = _check_model(cfg.model)
    lk = _open_lake_with_problems(cfg.lake)
    predicate = _selection(lk, cfg)
    gen, tok, model_id, tok_id = load_generator(cfg.model, cfg.backend)
    settings = SamplerSettings(samples, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
    todo_problems = q0_todo(
        lk,
        predicate,
        model_id=model_id,
        settings=settings,
        limit=cfg.limit,
        include_unreliable=cfg.include_unreliable,
        stopping=rule,
    )
    check_context(tok, getattr(gen, "max_positions", None), todo_problems, cfg.max_new_tokens)
    todo = len(todo_problems)
    with progress_display(console) as bar:
        ptask = bar.add_task("problems", total=todo, rate="")
        # sequential: the cap bounds the samples; most problems stop well before it
        stask = bar.add_task("samples", total=todo * samples, rate="")

        report = estimate_q0(
            lk,
            gen,
            tok,
            where=predicate,
            settings=settings,
            beta=cfg.beta,
            model_id=model_id,
            tokenizer_id=tok_id,
            chunk_problems=cfg.chunk_problems,
            limit=cfg.limit,
            workers=cfg.workers,
            include_unreliable=cfg.include_unreliable,
            on_problems=lambda n: bar.advance(ptask, n),
            on_samples=advance_with_rate(bar, stask, "samples"),
            unsafe_no_sandbox=cfg.unsafe_no_sandbox,
            model_path=cfg.model,
            stopping=rule,
        )
    from spo_store.selection import left_out_line

    say = lambda m: console.print(m, highlight=False)  # noqa: E731
    line = left_out_line(report.left_out, "estimate-q0")
    if line:
        say(line)
    done_rule = f">= {samples} samples" + (f" or >= {r} successes" if r else "")
    if report.problems == 0 and report.already_done:
        say(
            f"{report.already_done} problems already have estimates of {model_id[:19]} for "
            f"sampler {report.sampler_key} with {done_rule}; nothing to do (a larger "
            f"--samples tops them up); run {report.run_id}"
        )
    elif report.problems == 0:
        say(f"no problem to estimate; run {report.run_id}")
    else:
        mean_s0 = sum(p["s0"] for p in report.per_problem) / max(1, len(report.per_problem))
        say(
            f"q0 of {model_id[:19]} ({report.sampler_key}) estimated for {report.problems} "
            f"problems, {cfg.stopping} (cap {samples}{f', r {r}' if r else ''}): "
            f"{report.samples} new samples, {report.reused} reused, {report.judged} judged in "
            f"the estimates; {report.inserted} new estimates, {report.updated} updated; mean "
            f"S0 {mean_s0:.3f}; run {report.run_id}"
        )
    if report.unjudged:
        say(
            f"{report.unjudged} new samples could not be judged (reward NULL) and are not "
            "counted in n; a rerun samples replacements"
        )
    if report.no_estimate:
        shown = ", ".join(report.no_estimate[:5]) + (", ..." if len(report.no_estimate) > 5 else "")
        say(f"{len(report.no_estimate)} problems have no judged sample and no estimate: {shown}")
    if json_out:
        print(json.dumps(q0_summary(report, model_id, r), default=str))


def q0_summary(report: Any, model_id: str, r: int | None) -> dict[str, Any]:
    """The `spo estimate-q0 --json` object (docs/settings.md lists its keys)."""
    per = report.per_problem
    widths = sorted(p["q0_high"] - p["q0_low"] for p in per)
    return {
        "run_id": report.run_id,
        "model_id": model_id,
        "sampler_key": report.sampler_key,
        "stopping": report.stopping,
        "cap": report.cap,
        "stop_successes": r,
        "problems": report.problems,
        "already_done": report.already_done,
        "samples_drawn": report.samples,
        "samples_reused": report.reused,
        "samples_judged": report.judged,
        "unjudged": report.unjudged,
        "successes": report.successes,
        "mean_samples_per_problem": report.judged / len(per) if per else None,
        "stopped_by": report.stopped,
        "inserted": report.inserted,
        "updated": report.updated,
        "no_estimate": len(report.no_estimate),
        "mean_s0": sum(p["s0"] for p in per) / len(per) if per else None,
        "q0_interval_width": {
            "median": widths[len(widths) // 2] if widths else None,
            "max": widths[-1] if widths else None,
        },
        "left_out": report.left_out,
    }


JsonOpt = inspect.Parameter(
    "json_out",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ],
)


def _eval(
    _explicit: dict[str, Any],
    *,
    json_out: bool = False,
    config_file: str | None = None,
    **kwargs: Any,
) -> None:
    """pass@k of a model on a split (or an SQL selection) of the lake's problems.

    Counts only judged samples (a sample the sandbox could not judge is reported, not scored);
    problems with a judge_issue are left out unless --include-unreliable.
    """
    from spo_train.config import EvalConfig

    cfg: EvalConfig = _sampling_config(EvalConfig, _explicit, kwargs, config_file)
    from spo_store.selection import RELIABLE, judge_issue_counts, left_out_line
    from spo_train.diversity import diversity_line
    from spo_train.evaluate import eval_notes, evaluate
    from spo_train.rollouts.sampling import SamplerSettings, check_context, load_problems

    n, ks, split, where = cfg.n, list(cfg.k), cfg.split, cfg.where
    cfg.model = _check_model(cfg.model)
    lk = _open_lake_with_problems(cfg.lake)
    predicate = _selection(lk, cfg)
    left_out = {} if cfg.include_unreliable else judge_issue_counts(lk, predicate)
    reliable = "TRUE" if cfg.include_unreliable else RELIABLE
    problems = load_problems(lk, f"({predicate}) AND {reliable}")[: cfg.limit or None]
    line = left_out_line(left_out, "eval")
    if not problems and left_out:
        raise SpoError(f"{line}, and no other problem matches: nothing to evaluate")
    if not problems:  # before the eval run is recorded (it would end `failed`)
        from spo_store.selection import explain_empty

        raise SpoError(explain_empty(lk, where, None if where else split))
    if line:
        console.print(line, highlight=False)
    gen, tok, model_id, tok_id = load_generator(cfg.model, cfg.backend)
    check_context(tok, getattr(gen, "max_positions", None), problems, cfg.max_new_tokens)
    run_id = lk.start_run(
        "eval",
        {
            "model": cfg.model,  # the --model directory (None: the embedded pi_0)
            "backend": cfg.backend,
            "split": split,
            "where": where,
            "n": n,
            "k": ks,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens,
            "limit": cfg.limit,
            "seed": cfg.seed,
            "include_unreliable": cfg.include_unreliable,
        },
        model_id=model_id,
        tokenizer_id=tok_id,
    )
    with progress_display(console) as bar:
        task = bar.add_task("samples", total=len(problems) * n, rate="")

        try:
            result = evaluate(
                lk,
                gen,
                tok,
                problems,
                settings=SamplerSettings(
                    n, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed
                ),
                ks=ks,
                run_id=run_id,
                model_id=model_id,
                tokenizer_id=tok_id,
                split=None if where else split,
                workers=cfg.workers,
                on_samples=advance_with_rate(bar, task, "samples"),
                unsafe_no_sandbox=cfg.unsafe_no_sandbox,
            )
        except BaseException as exc:
            lk.end_run(run_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
    lk.end_run(run_id, "completed")
    title = f"pass@k on {where or split} ({result['problems']} problems, n={n})"
    # one narrow column would wrap its title into a ribbon: the table is as wide as its title
    table = Table(title=title, min_width=min(len(title) + 4, 80))
    for key in [f"pass@{x}" for x in ks]:
        table.add_column(key)
    table.add_row(
        *[f"{result[f'pass@{x}']:.3f}" if result[f"pass@{x}"] is not None else "n/a" for x in ks]
    )
    console.print(table)
    console.print(diversity_line(result["diversity"]), highlight=False)
    for note in eval_notes(result):
        console.print(note, highlight=False)
    if json_out:
        sys.stdout.write(json.dumps({**result, "left_out": left_out, "run_id": run_id}) + "\n")


ConfigOpt = inspect.Parameter(
    "config_file",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="TOML file of settings (keys: the option names with _, e.g. learning_rate = "
            "2e-4); flags given override it. A train run's output/config.toml reproduces it",
            show_default=False,
        ),
    ],
)


def resolve_train_config(explicit: dict[str, Any], config_file: str | None) -> Any:
    """The TrainConfig of `spo train`: defaults < --config FILE < flags given; with --resume
    the stored run's settings are the base, and a setting given that differs from them is
    refused (one line naming each). Validated; nothing is loaded or written."""
    from spo_train.config import (
        TrainConfig,
        build,
        differing_settings,
        has_checkpoint,
        read_toml,
        refuse_differing,
        stored_train_config,
    )

    given = {**(read_toml(TrainConfig, config_file) if config_file else {}), **explicit}
    if given.get("model"):  # a run folder is its latest checkpoint, named in the run's config
        given["model"] = _check_model(given["model"], absolute=False)
    base: dict[str, Any] = {}
    if given.get("resume"):
        output = given.get("output", TrainConfig.output)
        # Only a checkpoint is continued; without one the resume starts fresh with `given`.
        stored = stored_train_config(output) if has_checkpoint(output) else None
        if stored is not None:
            values, source = stored
            diffs = differing_settings(values, given)
            if diffs:
                refuse_differing(output, source, diffs)
            base = values
    return build(TrainConfig, {**base, **given})


def _train(
    explicit: dict[str, Any],
    *,
    json_out: bool = False,
    config_file: str | None = None,
    **_: Any,
) -> None:
    """Train with SPO (default), PPO, GRPO, TOPR or SFT (--algo) around the lake.

    SPO trains on a mixture of online rollouts and offline lake data against the q0 estimates
    of --model (refuses, naming the `spo estimate-q0` command, without them); PPO and GRPO on
    this run's online rollouts only; TOPR (Tapered Off-Policy REINFORCE) on the same mixture
    as SPO, from the judge's rewards alone; SFT (token-level NLL) on the successes of a
    mixture, by default the lake's correct solutions only (offline:1, no rollouts). Evaluates
    the policy at the start and the end.
    Settings: flags, or --config FILE (TOML, same names); the run's config.toml in --output
    reloads as is. docs/settings.md lists them with their TRL / verl names.
    """
    from pathlib import Path

    from spo_train.algorithm_rules import rules_of
    from spo_train.train import distributed
    from spo_train.train.loop import train
    from spo_train.train.setup import preflight

    config = resolve_train_config(explicit, config_file)
    if distributed.env_rank() != 0:
        # a follower of a data-parallel group: rank 0 checks, writes and reports
        config.validate()
        try:
            train(config)
        except KeyboardInterrupt:
            import signal

            from spo_store.stopping import STOP_SIGNALS
            from spo_train.train.launch import quiet_stop

            term = signal.SIGTERM in STOP_SIGNALS
            raise typer.Exit(quiet_stop(143 if term else 130)) from None
        return
    # settings, another run's --output or a resume that changes settings, --model,
    # --sources-file and --mix: all refused before the lake is touched
    preflight(config)
    distributed.check_world(config.nproc, config.batch_size)

    _open_lake_with_problems(config.lake)
    if config.nproc > 1 and distributed.world_from_env() is None:
        # --nproc N: this command again as N processes (rank 0 prints the progress and --json)
        from spo_train.train.launch import launch

        code = launch(config.nproc, sys.argv[1:], output=Path(config.output), lake_uri=config.lake)
        raise typer.Exit(code)
    steps = config.steps
    rules = rules_of(config.algo)  # its progress line
    # The bar starts with the first step, so a refusal (no q0, bad data) stays one line.
    bar = progress_display(console)
    task: Any = None

    def on_step(step: int, m: dict[str, float]) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("steps", total=steps, completed=step, rate="")
        bar.update(task, completed=step + 1, rate=rules.progress(m))

    try:
        result = train(
            config, on_step=on_step, on_event=lambda m: console.print(m, highlight=False)
        )
    finally:
        if task is not None:
            bar.stop()
    console.print(
        f"trained {result.steps_done} steps ({config.algo}); run {result.run_id}; "
        f"checkpoints in {result.output}",
        highlight=False,
    )
    if json_out:
        sys.stdout.write(json.dumps(result.summary(), default=str) + "\n")


def demo_cmd(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
    output: Annotated[
        str,
        typer.Option(
            help="Where checkpoints, the plot and the summary go: a new or empty directory, "
            "or an earlier demo's (its spo-demo.json)"
        ),
    ] = "runs/demo",
    lake: LakeOpt = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: the demo's budget)")
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=2**63 - 2,  # seed + 1 within spo_train.config.SEED_MAX
            help="Seeds Q0 and training; evaluation uses seed + 1 (fresh samples)",
        ),
    ] = 0,
    unsafe_no_sandbox: UnsafeOpt = False,
) -> None:
    """End to end on the embedded default, in the off-policy regime: hard problems pi_0 never
    solved, SPO half-online (with the reference solutions) against GRPO, before and after,
    plus held-out problems; table, plot, summary."""
    from spo_train.experiment.demo import DemoConfig, run_demo

    config = DemoConfig(lake=lake, output=output, seed=seed, unsafe_no_sandbox=unsafe_no_sandbox)
    if steps is not None:
        config.steps = steps
    summary = run_demo(config, console=console)
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")


def register(app: typer.Typer) -> None:
    """Add estimate-q0, train, eval and demo to the `spo` app (options from spo_train.config)."""
    from spo_cli.options import SpoCommand, command_from, use_spo_command

    from spo_train.config import EstimateQ0Config, EvalConfig, TrainConfig

    app.command("estimate-q0", cls=SpoCommand)(
        command_from(EstimateQ0Config, _estimate_q0, extra=[ConfigOpt, JsonOpt])
    )
    app.command("train", cls=SpoCommand)(
        command_from(TrainConfig, _train, extra=[JsonOpt, ConfigOpt])
    )
    app.command("eval", cls=SpoCommand)(command_from(EvalConfig, _eval, extra=[JsonOpt, ConfigOpt]))
    app.command("demo", cls=SpoCommand)(demo_cmd)
    # Registered last (cli/main.py): no command's help shows `<bool>` after a switch.
    use_spo_command(app)
