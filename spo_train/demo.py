"""`spo demo`: the whole loop on the embedded default, sized for 10 minutes on 2 CPU cores.

1. load the embedded problems into the lake (first use only);
2. estimate Q0 on a subset of train problems (fewer samples than the paper's 800);
3. evaluate pi_0 on held-out test problems (pass@1, pass@10);
4. train SPO half online / half offline for a fixed number of steps;
5. evaluate the trained policy the same way (same problems, same seed);
6. print a before/after table, write `curves.png` and `summary.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote
from spo_train.config import DEFAULT_BETA, check_output_path, has_checkpoint
from spo_train.defaults import ensure_problems
from spo_train.evaluate import eval_notes, evaluate
from spo_train.generation import TransformersGenerator
from spo_train.metrics import paired_pass_at_k_difference
from spo_train.models import (
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)
from spo_train.q0 import estimate_q0
from spo_train.rollout import SamplerSettings, judge_issue_counts, left_out_line, load_problems
from spo_train.trainer import TrainConfig, train


@dataclass
class DemoConfig:
    """The demo's budget; every number here was chosen to fit 10 minutes on 2 cores."""

    lake: str | None = None
    output: str = "runs/demo"
    model: str | None = None
    """pi_0 (default: the embedded tiny model)"""
    q0_problems: int = 512
    """train problems given a Q0 estimate: breadth of the offline data beat precision of q0 in
    the measured sweep (docs/demo-tuning.md)"""
    q0_samples: int = 4
    """pi_0 samples per problem for Q0 (paper: 800; coarse here, S0 in {0, 1/4, ..., 1})"""
    eval_problems: int = 100
    """held-out test problems evaluated before and after"""
    eval_n: int = 20
    """samples per problem (paper: 20; n = 10 made pass@10 a noisy any-of-10)"""
    steps: int = 60
    batch_size: int = 32
    lr: float = 1e-4
    loss: str = "terminal_sq"
    mix: str = "online:0.5,offline:0.5"
    model_update_interval: int = 10
    rollout_n: int = 4
    max_new_tokens: int = 192
    beta: float = DEFAULT_BETA
    seed: int = 0
    unsafe_no_sandbox: bool = False

    def train_config(self, lake_uri: str | None, model: str | None) -> TrainConfig:
        """The settings of the demo's training run (checkpoints in output/train)."""
        return TrainConfig(
            model=model,
            lake=lake_uri,
            output=str(Path(self.output) / "train"),
            mix=self.mix,
            loss=self.loss,
            beta=self.beta,
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.lr,
            model_update_interval=self.model_update_interval,
            rollout_n=self.rollout_n,
            max_new_tokens=self.max_new_tokens,
            checkpoint_every=max(1, self.steps),
            # The demo evaluates before and after itself (test split, one seed for both), so
            # the training run's own start/end evaluation would only repeat that work.
            eval_problems=0,
            seed=self.seed,
            unsafe_no_sandbox=self.unsafe_no_sandbox,
        )

    def validate(self) -> None:
        """Every setting checked (one SpoError line) before the lake or a model is touched."""
        for name in ("q0_problems", "q0_samples", "eval_problems", "eval_n"):
            if getattr(self, name) < 1:
                raise SpoError(f"demo {name.replace('_', '-')} must be at least 1")
        check_output_path(self.output)
        if has_checkpoint(self.output):
            # A `spo train` run's directory (its checkpoints at the top; the demo keeps its
            # own under output/train): refused before anything loads, as train refuses it.
            raise SpoError(
                f"--output {self.output} holds a spo train run's checkpoints: the demo writes "
                "its own directory; choose another --output"
            )
        self.train_config(self.lake, self.model).validate()


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to output/summary.json).

    A rerun in the same output replaces the previous demo's training run (output/train),
    and says so. Raises SpoError for a bad setting before any work.
    """
    config.validate()
    console = console or Console(stderr=True)
    say = lambda msg: console.print(msg, highlight=False)  # noqa: E731
    t_start = time.perf_counter()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    lake = Lake.open(config.lake)
    ensure_problems(lake, say=say)
    pi0_path = resolve_model_path(config.model)
    model, tok = load_model_and_tokenizer(pi0_path)
    model_id, tok_id = model_identity(pi0_path), tokenizer_identity(tok)
    timings: dict[str, float] = {}

    # 2. Q0 on a fixed subset of train problems (resumable: done ones are skipped)
    t0 = time.perf_counter()
    subset = load_problems(lake, "p.split = 'train' AND p.judge_issue IS NULL")[
        : config.q0_problems
    ]
    ids = ", ".join(sql_quote(p["problem_id"]) for p in subset)
    with console.status(
        f"estimating Q0 on {len(subset)} train problems x {config.q0_samples} samples"
    ):
        q0 = estimate_q0(
            lake,
            TransformersGenerator(model, tok),
            tok,
            where=f"p.problem_id IN ({ids})",
            settings=SamplerSettings(
                config.q0_samples, 1.0, 1.0, config.max_new_tokens, config.seed
            ),
            beta=config.beta,
            model_id=model_id,
            tokenizer_id=tok_id,
            unsafe_no_sandbox=config.unsafe_no_sandbox,
        )
    timings["q0_s"] = time.perf_counter() - t0
    judged = sum(p["n"] for p in q0.per_problem)
    say(
        f"Q0: {q0.problems} problems, {q0.samples} new samples, mean S0 {q0.successes / max(1, judged):.3f} ({timings['q0_s']:.0f} s)"
    )
    # the subset was drawn from reliable problems already; this names any others in the split
    for line in (
        left_out_line(judge_issue_counts(lake, "p.split = 'train'"), "Q0 and training", ""),
        left_out_line(judge_issue_counts(lake, "p.split = 'test'"), "eval", ""),
    ):
        if line:
            say(line)

    # 3. pi_0 on held-out problems
    # Problems the judge cannot handle reliably are left out (their pass rates mean nothing).
    eval_set = load_problems(lake, "p.split = 'test' AND p.judge_issue IS NULL")[
        : config.eval_problems
    ]
    settings = SamplerSettings(
        config.eval_n, 0.4, 0.95, config.max_new_tokens, seed=config.seed + 1
    )
    run_id = lake.start_run("demo", asdict(config), model_id=model_id, tokenizer_id=tok_id)
    # whatever stops the demo ends its run (never left `running`)
    try:
        t0 = time.perf_counter()
        with console.status("evaluating pi_0 on the test split"):
            before = evaluate(
                lake,
                TransformersGenerator(model, tok),
                tok,
                eval_set,
                settings=settings,
                run_id=run_id,
                model_id=model_id,
                tokenizer_id=tok_id,
                split="test",
                metric_prefix="demo/before",
                unsafe_no_sandbox=config.unsafe_no_sandbox,
            )
        timings["eval_before_s"] = time.perf_counter() - t0
        say(
            f"pi_0: pass@1 {_fmt(before['pass@1'])}, pass@10 {_fmt(before['pass@10'])} ({timings['eval_before_s']:.0f} s)"
        )

        # 4. SPO training
        t0 = time.perf_counter()
        train_cfg = config.train_config(lake.uri, str(pi0_path))
        train_dir = Path(train_cfg.output)
        if train_dir.exists():
            # The demo owns output/train: a rerun is a new demo, not a resume of the last one.
            say(f"replacing the previous demo's training run in {train_dir}")
            shutil.rmtree(train_dir)
        with console.status("training SPO") as status:
            result = train(
                train_cfg,
                on_step=lambda s, m: status.update(
                    f"training SPO: step {s + 1}/{config.steps} loss {m.get('train/loss', float('nan')):.4f} "
                    f"|Q_T-r| {m.get('train/terminal_abs_error', float('nan')):.3f}"
                ),
                on_event=say,
            )
        timings["train_s"] = time.perf_counter() - t0

        # 5. the trained policy on the same problems with the same seed
        trained, _ = load_model_and_tokenizer(
            train_dir / (train_dir / "latest").read_text().strip()
        )
        t0 = time.perf_counter()
        with console.status("evaluating the trained policy on the test split"):
            after = evaluate(
                lake,
                TransformersGenerator(trained, tok),
                tok,
                eval_set,
                settings=settings,
                run_id=run_id,
                model_id=f"{result.run_id}@{result.steps_done}",
                tokenizer_id=tok_id,
                split="test",
                metric_prefix="demo/after",
                unsafe_no_sandbox=config.unsafe_no_sandbox,
            )
        timings["eval_after_s"] = time.perf_counter() - t0
    except BaseException as exc:
        lake.end_run(run_id, run_status(exc))
        raise
    lake.end_run(run_id, "completed")
    timings["total_s"] = time.perf_counter() - t_start

    # 6. report
    table = Table(
        title=f"SPO demo: held-out test problems ({len(eval_set)} problems, n={config.eval_n}, T=0.4, top-p 0.95)"
    )
    for col in ("", "pass@1", "pass@10"):
        table.add_column(col)
    table.add_row("pi_0 (before)", _fmt(before["pass@1"]), _fmt(before["pass@10"]))
    table.add_row(
        f"SPO, {result.steps_done} steps (after)", _fmt(after["pass@1"]), _fmt(after["pass@10"])
    )
    console.print(table)
    for note in eval_notes(before) + eval_notes(after):
        say(note)
    # Paired over the same problems: how much of the change the problem draw can explain.
    # Per problem n = its judged samples; a pair enters pass@k only with k judged on both sides.
    change = {}
    for k in (1, 10):
        pairs = [
            (
                (before["judged_by_problem"][p], before["correct_by_problem"][p]),
                (after["judged_by_problem"][p], after["correct_by_problem"][p]),
            )
            for p in before["correct_by_problem"]
            if min(before["judged_by_problem"][p], after["judged_by_problem"][p]) >= k
        ]
        if not pairs:
            say(f"pass@{k} change: no problem has {k} judged samples before and after")
            continue
        diff, low, high = paired_pass_at_k_difference(
            [b for b, _ in pairs], [a for _, a in pairs], k, seed=config.seed
        )
        change[f"pass@{k}"] = {"diff": diff, "ci95": [low, high]}
        say(
            f"pass@{k} change {diff:+.3f} (paired bootstrap 95% interval {low:+.3f} to {high:+.3f})"
        )
    plot = out / "curves.png"
    write_plot(result.metrics, before, after, plot)
    summary = {
        "before": {k: before[k] for k in ("pass@1", "pass@10")},
        "after": {k: after[k] for k in ("pass@1", "pass@10")},
        "improved_pass@10": None
        if before["pass@10"] is None or after["pass@10"] is None
        else after["pass@10"] > before["pass@10"],
        "change": change,
        "train_run_id": result.run_id,
        "demo_run_id": run_id,
        "steps": result.steps_done,
        "q0_problems": q0.problems,
        "eval_problems": len(eval_set),
        "lake": lake.uri,
        "plot": str(plot),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "config": asdict(config),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"plot: {plot}; summary: {out / 'summary.json'}; total {timings['total_s']:.0f} s")
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_plot(
    metrics: list[dict[str, float]], before: dict[str, Any], after: dict[str, Any], path: Path
) -> None:
    """Training curves and the before/after pass@k bars in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
    steps = [m["step"] for m in metrics]
    for ax, keys, title in (
        (axes[0], {"train/loss": None}, "loss"),
        (axes[1], {"train/terminal_abs_error": None}, "|Q_T - r| (batch)"),
        (
            axes[2],
            {"train/success_log_ratio": "successes", "train/failure_log_ratio": "failures"},
            "sum log(pi/pi_0) (batch)",
        ),
        (axes[3], {"rollout/reward_mean": None}, "online reward (0 = pass)"),
    ):
        for key, label in keys.items():
            ax.plot(steps, [m.get(key, float("nan")) for m in metrics], label=label)
        if len(keys) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
    ks = ["pass@1", "pass@10"]
    xs = range(len(ks))
    axes[4].bar([x - 0.2 for x in xs], [before[k] or 0.0 for k in ks], width=0.4, label="pi_0")
    axes[4].bar([x + 0.2 for x in xs], [after[k] or 0.0 for k in ks], width=0.4, label="SPO")
    axes[4].set_xticks(list(xs), ks)
    axes[4].set_title("held-out test")
    axes[4].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
