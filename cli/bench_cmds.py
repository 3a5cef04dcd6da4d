"""`spo bench step`: the cost of one training step of SPO, PPO and GRPO (a thin wrapper over
`spo_train.train.bench_step`; docs/gpu.md)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def step_cmd(
    algos: Annotated[
        str, typer.Option("--algos", metavar="ALGO,...", help="Algorithms to measure")
    ] = "spo,ppo,grpo",
    modes: Annotated[
        str,
        typer.Option(
            "--modes",
            metavar="MODE,...",
            help="fast (the settings below) and/or plain (fp32, one log-prob chunk, no "
            "checkpointing, no compile)",
        ),
    ] = "fast",
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Local model directory (default: the embedded pi_0)", show_default=False
        ),
    ] = None,
    random_llama: Annotated[
        str | None,
        typer.Option(
            "--random-llama",
            metavar="SIZE",
            help="A randomly initialised Llama of this size instead of --model: 1b "
            "(TinyLlama-1.1B's shape) or 30m (a 32k vocabulary, CPU-sized)",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="torch device")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per step")] = 8,
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="Tokens per row (prompt + response)")
    ] = 256,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prompt tokens per row")] = 64,
    group_size: Annotated[
        int, typer.Option("--group-size", help="Rows per problem (PPO/GRPO groups)")
    ] = 4,
    micro_batch_size: Annotated[
        int | None,
        typer.Option(
            "--micro-batch-size",
            help="Rows per forward (default: the whole batch)",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps after one warm-up")] = 3,
    precision: Annotated[
        str, typer.Option("--precision", help="Fast mode's precision: auto, bf16, fp32")
    ] = "auto",
    logprob_chunk_size: Annotated[
        int, typer.Option("--logprob-chunk-size", help="Fast mode's log-prob chunk (tokens)")
    ] = 256,
    activation_checkpointing: Annotated[
        bool,
        typer.Option("--activation-checkpointing", help="Fast mode: checkpoint decoder layers"),
    ] = False,
    compile_: Annotated[
        bool, typer.Option("--compile", help="Fast mode: torch.compile the models")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the random batch and model")] = 0,
    profile: Annotated[
        int,
        typer.Option(
            "--profile",
            metavar="N",
            help="Profile the timed steps (torch.profiler) and report the N costliest "
            "operators (profiled step times are slower than unprofiled ones)",
        ),
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object as the last line")
    ] = False,
) -> None:
    """Time one training step (Algorithm.update, as the trainer runs it) of each algorithm on
    a synthetic batch; print tokens/s, MFU (GPUs with a known peak) and peak memory."""
    from spo_train.train.bench_step import BenchSpec, run

    spec = BenchSpec(
        algos=_split(algos),
        modes=_split(modes),
        model=model,
        random_llama=random_llama,
        device=device,
        batch_size=batch_size,
        seq_len=seq_len,
        prompt_len=prompt_len,
        group_size=group_size,
        micro_batch_size=micro_batch_size,
        steps=steps,
        precision=precision,
        logprob_chunk_size=logprob_chunk_size,
        activation_checkpointing=activation_checkpointing,
        compile=compile_,
        seed=seed,
        profile=profile,
    )

    def say(msg: str) -> None:
        err_console.print(msg, highlight=False, soft_wrap=True)

    doc = run(spec, say=say)
    if as_json:
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
        return
    table = Table(title=f"one training step, {doc['machine'].get('gpu', spec.device)}")
    for col in ("algo", "mode", "step s", "tokens/s", "MFU", "peak MiB", "step MiB"):
        table.add_column(col)
    for r in doc["results"]:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        table.add_row(
            r["algo"],
            r["mode"],
            f"{r['step_s']:.3f}",
            f"{r['tokens_per_s']:.0f}",
            mfu,
            f"{r['peak_memory_bytes'] / 2**20:.0f}",
            f"{r['step_memory_bytes'] / 2**20:.0f}",
        )
    console.print(table)
    for r in doc["results"]:
        for p in r.get("profile", []):
            console.print(
                f"{r['algo']} {r['mode']}: {p['share']:6.1%} {p['self_s_per_step'] * 1e3:9.2f} ms "
                f"{p['calls_per_step']:7.0f} calls  {p['op']}",
                highlight=False,
            )
    console.print(
        f"peak: {doc['results'][0]['memory_measure']}; step: the peak above what was "
        "allocated before the timed steps",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add `bench step` to the `spo` app (registered after `train`, whose register gives the
    app's commands their help class: this group sets its own)."""
    from spo_cli.options import SpoCommand, SpoGroup

    bench_app = typer.Typer(
        help="Measure the training step (tokens/s, MFU, peak memory).",
        no_args_is_help=True,
        cls=SpoGroup,
    )
    bench_app.command("step", cls=SpoCommand)(step_cmd)
    app.add_typer(bench_app, name="bench")
