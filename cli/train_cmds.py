"""`spo estimate-q0`, `spo train`, `spo eval`, `spo demo`: thin wrappers over `spo_train`."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from spo_cli.lake_cmds import LakeOpt

from spo_store.errors import SpoError

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


def parse_ks(text: str, option: str = "--k") -> list[int]:
    """`"1,10"` -> [1, 10]; a bad value is one SpoError line naming the option."""
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpoError(
            f"{option} {text!r}: expected comma-separated integers such as 1,10"
        ) from None
    if not ks:
        raise SpoError(f"{option} {text!r}: expected comma-separated integers such as 1,10")
    return ks


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def advance_with_rate(bar: Progress, task: Any, unit: str) -> Callable[[int], None]:
    """A callback that advances `task` by n and shows the rate in `unit`/s."""

    def advance(n: int) -> None:
        bar.advance(task, n)
        t = bar.tasks[task]
        if t.elapsed:
            bar.update(task, rate=f"{t.completed / t.elapsed:.1f} {unit}/s")

    return advance


def load_generator(
    model: str | None, backend: str, device: str = "cpu"
) -> tuple[Any, Any, str, str]:
    """(generator, tokenizer, model_id, tokenizer_id) for `model` (default: embedded pi_0)."""
    from spo_train.generation import TransformersGenerator, make_generator
    from spo_train.models import (
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
    from spo_train.defaults import ensure_problems

    lk = Lake.open(lake)
    ensure_problems(lk, say=lambda m: console.print(m, highlight=False))
    return lk


def estimate_q0_cmd(
    samples: Annotated[
        int, typer.Option("--samples", "-n", help="pi_0 samples per problem (paper: 800)")
    ] = 800,
    where: Annotated[
        str | None, typer.Option(help="SQL predicate over problems (alias p); default: the --split")
    ] = None,
    split: Annotated[
        str, typer.Option(help="Split to estimate when --where is not given")
    ] = "train",
    limit: Annotated[int | None, typer.Option(help="At most this many problems this run")] = None,
    beta: Annotated[float, typer.Option(help="KL strength beta (default 1/log(100000))")] = 1
    / math.log(100000),
    temperature: Annotated[
        float,
        typer.Option(
            help="Sampling temperature; 1.0 samples pi_0 itself, which Q0 is defined under"
        ),
    ] = 1.0,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling; 1.0 samples pi_0 itself")
    ] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Response length bound")] = 256,
    chunk_problems: Annotated[
        int, typer.Option(help="Problems per commit (resume granularity)")
    ] = 16,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    model: ModelOpt = None,
    lake: LakeOpt = None,
    backend: BackendOpt = "transformers",
    workers: WorkersOpt = None,
    include_unreliable: UnreliableOpt = False,
    unsafe_no_sandbox: UnsafeOpt = False,
) -> None:
    """Estimate Q0 of --model for each problem by sampling it and judging (resumable).

    Estimates are kept per (problem, model, sampler settings): another model or sampler gets
    its own; a rerun with the same settings adds nothing; a larger --samples tops them up.
    """
    from spo_store.lake import sql_quote
    from spo_train.q0 import estimate_q0, q0_sampler_key, q0_todo_predicate
    from spo_train.rollout import SamplerSettings, count_problems

    if samples < 1:
        raise SpoError("--samples must be at least 1")
    if max_new_tokens < 1:
        raise SpoError("--max-new-tokens must be at least 1")
    lk = _open_lake_with_problems(lake)
    gen, tok, model_id, tok_id = load_generator(model, backend)
    predicate = where or f"p.split = {sql_quote(split)}"
    settings = SamplerSettings(samples, temperature, top_p, max_new_tokens, seed)
    todo = count_problems(
        lk,
        q0_todo_predicate(predicate, samples, include_unreliable=include_unreliable),
        q0_of=(model_id, q0_sampler_key(settings)),
    )
    todo = min(todo, limit) if limit is not None else todo
    with progress() as bar:
        ptask = bar.add_task("problems", total=todo, rate="")
        stask = bar.add_task("samples", total=todo * samples, rate="")

        report = estimate_q0(
            lk,
            gen,
            tok,
            where=predicate,
            settings=settings,
            beta=beta,
            model_id=model_id,
            tokenizer_id=tok_id,
            chunk_problems=chunk_problems,
            limit=limit,
            workers=workers,
            include_unreliable=include_unreliable,
            on_problems=lambda n: bar.advance(ptask, n),
            on_samples=advance_with_rate(bar, stask, "samples"),
            unsafe_no_sandbox=unsafe_no_sandbox,
        )
    from spo_train.rollout import left_out_line

    say = lambda m: console.print(m, highlight=False)  # noqa: E731
    line = left_out_line(report.left_out, "estimate-q0")
    if line:
        say(line)
    mean_s0 = report.successes / max(1, sum(p["n"] for p in report.per_problem))
    say(
        f"q0 of {model_id[:19]} ({report.sampler_key}) estimated for {report.problems} problems "
        f"({report.samples} new samples, {report.reused} reused; {report.inserted} new "
        f"estimates, {report.updated} updated; mean S0 {mean_s0:.3f}); run {report.run_id}"
    )
    if report.unjudged:
        say(
            f"{report.unjudged} new samples could not be judged (reward NULL) and are not "
            "counted in n; a rerun samples replacements"
        )
    if report.no_estimate:
        shown = ", ".join(report.no_estimate[:5]) + (", ..." if len(report.no_estimate) > 5 else "")
        say(f"{len(report.no_estimate)} problems have no judged sample and no estimate: {shown}")


def eval_cmd(
    split: Annotated[str, typer.Option(help="Problem split")] = "test",
    where: Annotated[
        str | None, typer.Option(help="SQL predicate over problems (alias p) instead of --split")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per problem")] = 20,
    k: Annotated[str, typer.Option("--k", help="Comma-separated k values")] = "1,10",
    temperature: Annotated[float, typer.Option(help="Sampling temperature")] = 0.4,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Response length bound")] = 256,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most this many problems")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
    model: ModelOpt = None,
    lake: LakeOpt = None,
    backend: BackendOpt = "transformers",
    workers: WorkersOpt = None,
    include_unreliable: UnreliableOpt = False,
    unsafe_no_sandbox: UnsafeOpt = False,
) -> None:
    """pass@k of a model on a split (or an SQL selection) of the lake's problems.

    Counts only judged samples (a sample the sandbox could not judge is reported, not scored);
    problems with a judge_issue are left out unless --include-unreliable.
    """
    from spo_store.lake import sql_quote
    from spo_train.evaluate import eval_notes, evaluate
    from spo_train.rollout import (
        RELIABLE,
        SamplerSettings,
        judge_issue_counts,
        left_out_line,
        load_problems,
    )

    ks = parse_ks(k)
    bad = [x for x in ks if not 1 <= x <= n]
    if bad:
        raise SpoError(f"--k {k}: pass@k needs 1 <= k <= --n ({n})")
    lk = _open_lake_with_problems(lake)
    predicate = where or f"p.split = {sql_quote(split)}"
    left_out = {} if include_unreliable else judge_issue_counts(lk, predicate)
    reliable = "TRUE" if include_unreliable else RELIABLE
    problems = load_problems(lk, f"({predicate}) AND {reliable}")[: limit or None]
    line = left_out_line(left_out, "eval")
    if not problems and left_out:
        raise SpoError(f"{line}, and no other problem matches: nothing to evaluate")
    if line:
        console.print(line, highlight=False)
    gen, tok, model_id, tok_id = load_generator(model, backend)
    run_id = lk.start_run(
        "eval",
        {
            "split": split,
            "where": where,
            "n": n,
            "k": ks,
            "temperature": temperature,
            "top_p": top_p,
            "limit": limit,
            "seed": seed,
            "include_unreliable": include_unreliable,
        },
        model_id=model_id,
        tokenizer_id=tok_id,
    )
    with progress() as bar:
        task = bar.add_task("samples", total=len(problems) * n, rate="")

        try:
            result = evaluate(
                lk,
                gen,
                tok,
                problems,
                settings=SamplerSettings(n, temperature, top_p, max_new_tokens, seed),
                ks=ks,
                run_id=run_id,
                model_id=model_id,
                tokenizer_id=tok_id,
                split=None if where else split,
                workers=workers,
                on_samples=advance_with_rate(bar, task, "samples"),
                unsafe_no_sandbox=unsafe_no_sandbox,
            )
        except BaseException:
            lk.end_run(run_id, "failed")
            raise
    lk.end_run(run_id, "completed")
    table = Table(title=f"pass@k on {where or split} ({result['problems']} problems, n={n})")
    for key in [f"pass@{x}" for x in ks]:
        table.add_column(key)
    table.add_row(
        *[f"{result[f'pass@{x}']:.3f}" if result[f"pass@{x}"] is not None else "n/a" for x in ks]
    )
    console.print(table)
    for note in eval_notes(result):
        console.print(note, highlight=False)
    if json_out:
        sys.stdout.write(json.dumps({**result, "left_out": left_out, "run_id": run_id}) + "\n")


def train_cmd(
    mix: Annotated[
        str, typer.Option(help="Mixture, e.g. online:0.5,offline:0.5")
    ] = "online:0.5,offline:0.5",
    loss: Annotated[
        str,
        typer.Option(
            help="terminal_ce | terminal_sq | reverse_q_ce | reverse_q_sq | advantage_bce"
        ),
    ] = "terminal_ce",
    beta: Annotated[float, typer.Option(help="KL strength (default 1/log(100000))")] = 1
    / math.log(100000),
    ce_clip_eps: Annotated[
        float | None,
        typer.Option(
            help="CE variants: clip Q/beta to <= -eps; bounds a failure's gradient ~1/eps "
            "(default 0.1 for terminal_ce, 1e-6 for reverse_q_ce, whose per-token targets "
            "above exp(-eps) a larger eps moves to 1; docs/losses.md)",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps")] = 100,
    batch_size: Annotated[int, typer.Option(help="Trajectories per step")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate")] = 1e-4,
    model_update_interval: Annotated[
        int, typer.Option(help="Steps between rollout-policy weight updates")
    ] = 10,
    staleness: Annotated[
        int,
        typer.Option(
            help="Online data: policy versions at most this many steps older than the rollout "
            "policy's version (not the trainer step)"
        ),
    ] = 10,
    rollout_n: Annotated[int, typer.Option(help="Online samples per problem")] = 4,
    eval_every: Annotated[
        int,
        typer.Option(help="Steps between extra evaluations (0: none; start and end always)"),
    ] = 0,
    eval_n: Annotated[int, typer.Option(help="Samples per problem in evaluation (paper: 20)")] = 20,
    eval_k: Annotated[str, typer.Option(help="pass@k values, each <= --eval-n")] = "1,10",
    eval_temperature: Annotated[float, typer.Option(help="Evaluation temperature")] = 0.4,
    eval_top_p: Annotated[float, typer.Option(help="Evaluation top-p")] = 0.95,
    eval_split: Annotated[str, typer.Option(help="Split evaluated")] = "valid",
    eval_problems: Annotated[
        int, typer.Option(help="Problems per evaluation (0: do not evaluate)")
    ] = 100,
    max_new_tokens: Annotated[int, typer.Option(help="Response length bound")] = 256,
    q0_temperature: Annotated[
        float, typer.Option(help="Sampler of the q0 estimates to use: temperature")
    ] = 1.0,
    q0_top_p: Annotated[
        float, typer.Option(help="Sampler of the q0 estimates to use: top-p")
    ] = 1.0,
    q0_max_new_tokens: Annotated[
        int | None,
        typer.Option(
            help="Sampler of the q0 estimates to use: length bound (default: --max-new-tokens)",
            show_default=False,
        ),
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints")] = 25,
    output: Annotated[
        str, typer.Option(help="Checkpoints, TensorBoard events, run summary")
    ] = "runs/spo",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in --output")
    ] = False,
    sources_file: Annotated[
        str | None, typer.Option(help="TOML file with user mixture sources")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed")] = 0,
    wandb: Annotated[
        str,
        typer.Option(
            help="W&B logging: auto (offline under --output when wandb is installed), "
            "offline, online, off"
        ),
    ] = "auto",
    model: ModelOpt = None,
    lake: LakeOpt = None,
    workers: WorkersOpt = None,
    include_unreliable: UnreliableOpt = False,
    unsafe_no_sandbox: UnsafeOpt = False,
) -> None:
    """Train with SPO on a mixture of online rollouts and offline lake data.

    Uses the q0 estimates of --model under the q0 sampler settings (refuses, naming the
    `spo estimate-q0` command, without them); evaluates the policy at the start and the end.
    """
    from spo_train.trainer import TrainConfig, train

    config = TrainConfig(
        model=model,
        lake=lake,
        output=output,
        mix=mix,
        sources_file=sources_file,
        loss=loss,
        beta=beta,
        ce_clip_eps=ce_clip_eps,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        model_update_interval=model_update_interval,
        staleness=staleness,
        rollout_n=rollout_n,
        eval_every=eval_every,
        eval_n=eval_n,
        eval_k=tuple(parse_ks(eval_k, "--eval-k")),
        eval_temperature=eval_temperature,
        eval_top_p=eval_top_p,
        eval_split=eval_split,
        eval_problems=eval_problems,
        max_new_tokens=max_new_tokens,
        q0_temperature=q0_temperature,
        q0_top_p=q0_top_p,
        q0_max_new_tokens=q0_max_new_tokens,
        include_unreliable=include_unreliable,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
        wandb=wandb,
        workers=workers,
        unsafe_no_sandbox=unsafe_no_sandbox,
    )
    config.validate()  # bad settings fail before the lake or a model is touched
    _open_lake_with_problems(lake)
    # The bar starts with the first step, so a refusal (no q0, bad data) stays one line.
    bar = progress()
    task: Any = None

    def on_step(step: int, m: dict[str, float]) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("steps", total=steps, completed=step, rate="")
        bar.update(
            task,
            completed=step + 1,
            rate=f"loss {m.get('train/loss', float('nan')):.4f} |Q_T-r| {m.get('train/terminal_abs_error', float('nan')):.3f}",
        )

    try:
        result = train(
            config, on_step=on_step, on_event=lambda m: console.print(m, highlight=False)
        )
    finally:
        if task is not None:
            bar.stop()
    console.print(
        f"trained {result.steps_done} steps; run {result.run_id}; checkpoints in {result.output}",
        highlight=False,
    )


def demo_cmd(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
    output: Annotated[
        str, typer.Option(help="Where checkpoints, the plot and the summary go")
    ] = "runs/demo",
    lake: LakeOpt = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: the demo's budget)")
    ] = None,
    unsafe_no_sandbox: UnsafeOpt = False,
) -> None:
    """End to end on the embedded default: ingest, Q0, eval, SPO training, eval, plot."""
    from spo_train.demo import DemoConfig, run_demo

    config = DemoConfig(lake=lake, output=output, unsafe_no_sandbox=unsafe_no_sandbox)
    if steps is not None:
        config.steps = steps
    summary = run_demo(config, console=console)
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")


def register(app: typer.Typer) -> None:
    """Add estimate-q0, train, eval and demo to the `spo` app."""
    app.command("estimate-q0")(estimate_q0_cmd)
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("demo")(demo_cmd)
