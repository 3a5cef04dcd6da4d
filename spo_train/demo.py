"""`spo demo`: the whole loop on the embedded default, sized for 10 minutes on 2 CPU cores.

1. load the embedded problems into the lake (first use only);
2. estimate Q0 on a subset of train problems (fewer samples than the paper's 800);
3. evaluate pi_0 on two sets (pass@1, pass@10): `trained`, problems of the run's training set
   (train split, with the q0 estimate the run trains against: the problems the mixture and the
   online rollouts draw from), and `heldout`, test problems (held-out compositions);
4. train SPO half online / half offline for a fixed number of steps;
5. evaluate the trained policy the same way (same problems, same seed);
6. print a before/after table per set with the paired interval of the change, write
   `curves.png` and `summary.json`.

The budget (docs/demo-tuning.md) fits 10 minutes on 2 CPU cores.
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
from spo_store.q0_estimates import sampler_key
from spo_store.selection import RELIABLE, judge_issue_counts, left_out_line, split_predicate
from spo_train.config import DEFAULT_BETA, check_output_path, has_checkpoint
from spo_train.defaults import ensure_problems
from spo_train.evaluate import eval_notes, evaluate
from spo_train.generation import TransformersGenerator
from spo_train.metrics import paired_pass_at_k_difference
from spo_train.models import (
    context_length,
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)
from spo_train.progress import advance_with_rate, progress_display
from spo_train.q0 import estimate_q0, q0_sampler_key, q0_todo
from spo_train.rollout import SamplerSettings, check_context, load_problems
from spo_train.trainer import TrainConfig, train

SETS = ("trained", "heldout")
"""The two evaluated sets, in the order the summary, the table and the plot show them."""
SET_TITLES = {"trained": "trained-on (train)", "heldout": "held-out (test)"}


@dataclass
class DemoConfig:
    """The demo's budget; every number here was chosen to fit 10 minutes on 2 cores
    (docs/demo-tuning.md has the measurements)."""

    lake: str | None = None
    output: str = "runs/demo"
    model: str | None = None
    """pi_0 (default: the embedded tiny model)"""
    q0_problems: int = 512
    """train problems given a Q0 estimate: the run's training set (the mixture and the online
    rollouts draw only from problems with q0). Breadth of the offline data beat precision of
    q0 in the measured sweep; 128 problems x 8 samples lowered held-out pass@10 by 0.12
    (docs/demo-tuning.md)"""
    q0_samples: int = 4
    """pi_0 samples per problem for Q0 (paper: 800; coarse here, S0 in {0, 1/4, ..., 1})"""
    trained_problems: int = 50
    """problems of the run's training set evaluated before and after (`trained`)"""
    heldout_problems: int = 50
    """held-out test problems evaluated before and after (`heldout`); 50 + 50 keeps the
    evaluation at the 4000 samples of the earlier 100 held-out problems"""
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
            # SPO's (the paper's) rollout sampler, set here so the measured demo stays pinned
            rollout_temperature=(0.1, 0.8),
            rollout_top_p=0.95,
            max_new_tokens=self.max_new_tokens,
            checkpoint_every=max(1, self.steps),
            # The demo evaluates before and after itself (both sets, one seed for all), so
            # the training run's own start/end evaluation would only repeat that work.
            eval_problems=0,
            eval_train_problems=0,
            seed=self.seed,
            unsafe_no_sandbox=self.unsafe_no_sandbox,
        )

    def validate(self) -> None:
        """Every setting checked (one SpoError line) before the lake or a model is touched."""
        for name in ("q0_problems", "q0_samples", "trained_problems", "heldout_problems", "eval_n"):
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


def trained_set(lake: Lake, config: DemoConfig, model_id: str) -> list[dict[str, Any]]:
    """The first `config.trained_problems` (by id) of the problems the demo's run trains on.

    Selected as the trainer selects its training set: train split, judged reliably, with a q0
    estimate of pi_0 (`model_id`) under the run's q0 sampler (T 1, top-p 1, the run's
    max_new_tokens). A lake holding estimates for more problems (an earlier `spo estimate-q0`)
    widens the run's training set, and this set is drawn from that wider one.
    """
    train_cfg = config.train_config(lake.uri, None)
    key = sampler_key(
        train_cfg.q0_temperature,
        train_cfg.q0_top_p,
        train_cfg.q0_max_new_tokens or train_cfg.max_new_tokens,
    )
    where = f"{split_predicate(train_cfg.train_split)} AND {RELIABLE} AND p.q0 IS NOT NULL"
    return load_problems(lake, where, q0_of=(model_id, key))[: config.trained_problems]


def paired_change(
    before: dict[str, Any], after: dict[str, Any], seed: int
) -> dict[str, dict[str, Any]]:
    """`{"pass@k": {"diff", "ci95": [low, high]}}` for k in 1, 10: after minus before over the
    same problems, with the paired bootstrap 95% interval (how much of the change the problem
    draw and the sampling can explain). A problem enters pass@k only with k judged samples on
    both sides (n = its judged samples); a k no problem reaches is left out."""
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
        if pairs:
            diff, low, high = paired_pass_at_k_difference(
                [b for b, _ in pairs], [a for _, a in pairs], k, seed=seed
            )
            change[f"pass@{k}"] = {"diff": diff, "ci95": [low, high]}
    return change


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to output/summary.json).

    The summary holds `trained` and `heldout`, each `{"before": {"pass@1", "pass@10"}, "after":
    {...}, "change": {"pass@k": {"diff", "ci95"}}, "problems": N, "split", "problem_ids"}`,
    plus the run ids, `steps`, `q0_problems`, `timings` (seconds) and the config.
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
    subset = load_problems(lake, f"p.split = 'train' AND {RELIABLE}")[: config.q0_problems]
    ids = ", ".join(sql_quote(p["problem_id"]) for p in subset)
    q0_settings = SamplerSettings(config.q0_samples, 1.0, 1.0, config.max_new_tokens, config.seed)
    q0_where = f"p.problem_id IN ({ids})"
    todo = q0_todo(lake, q0_where, model_id=model_id, settings=q0_settings)
    with progress_display(console) as bar:
        task = bar.add_task("Q0 samples", total=len(todo) * config.q0_samples, rate="")
        q0 = estimate_q0(
            lake,
            TransformersGenerator(model, tok),
            tok,
            where=q0_where,
            settings=q0_settings,
            beta=config.beta,
            model_id=model_id,
            tokenizer_id=tok_id,
            on_samples=advance_with_rate(bar, task, "samples"),
            unsafe_no_sandbox=config.unsafe_no_sandbox,
        )
    timings["q0_s"] = time.perf_counter() - t0
    # S0 over every estimate of the subset, reused ones included (a rerun reuses them all)
    est = load_problems(lake, q0_where, q0_of=(model_id, q0_sampler_key(q0_settings)))
    n_all = sum(p["q0_samples"] or 0 for p in est)
    s0 = sum(p["q0_successes"] or 0 for p in est) / max(1, n_all)
    reused = f", {q0.already_done} estimated before (reused)" if q0.already_done else ""
    q0_count = sum(1 for p in est if p["q0_samples"])
    say(
        f"Q0: {q0_count} problems ({q0.problems} estimated now, "
        f"{q0.samples} new samples{reused}), mean S0 {s0:.3f} ({timings['q0_s']:.0f} s)"
    )
    # the subset was drawn from reliable problems already; this names any others in the split
    for line in (
        left_out_line(judge_issue_counts(lake, "p.split = 'train'"), "Q0 and training", ""),
        left_out_line(judge_issue_counts(lake, "p.split = 'test'"), "eval", ""),
    ):
        if line:
            say(line)

    # 3. pi_0 on both sets. Problems the judge cannot handle reliably are left out (their
    # pass rates mean nothing).
    sets = {
        "trained": trained_set(lake, config, model_id),
        "heldout": load_problems(lake, f"p.split = 'test' AND {RELIABLE}")[
            : config.heldout_problems
        ],
    }
    splits = {"trained": config.train_config(None, None).train_split, "heldout": "test"}
    check_context(
        tok,
        context_length(model.config),
        [*subset, *sets["trained"], *sets["heldout"]],
        config.max_new_tokens,
    )
    settings = SamplerSettings(
        config.eval_n, 0.4, 0.95, config.max_new_tokens, seed=config.seed + 1
    )
    run_id = lake.start_run("demo", asdict(config), model_id=model_id, tokenizer_id=tok_id)

    def evaluate_sets(generator: TransformersGenerator, eval_model_id: str, when: str) -> dict:
        """pass@k of one policy on both sets (same problems and seed before and after)."""
        results = {}
        with progress_display(console) as bar:
            for name in SETS:
                task = bar.add_task(
                    f"eval {when} {SET_TITLES[name]}",
                    total=len(sets[name]) * config.eval_n,
                    rate="",
                )
                results[name] = evaluate(
                    lake,
                    generator,
                    tok,
                    sets[name],
                    settings=settings,
                    run_id=run_id,
                    model_id=eval_model_id,
                    tokenizer_id=tok_id,
                    split=splits[name],
                    metric_prefix=f"demo/{when}",
                    on_samples=advance_with_rate(bar, task, "samples"),
                    unsafe_no_sandbox=config.unsafe_no_sandbox,
                )
        return results

    # pi_0's evaluation depends only on the model, the problems and the sampler: a rerun of the
    # demo (after a stop) reuses the one it finished instead of repeating it.
    before_key = {
        "model_id": model_id,
        "tokenizer_id": tok_id,
        "settings": asdict(settings),
        "problem_ids": {name: [p["problem_id"] for p in sets[name]] for name in SETS},
        "lake": lake.uri,
    }
    before_file = out / "pi0_eval.json"

    # whatever stops the demo ends its run (never left `running`)
    try:
        t0 = time.perf_counter()
        before = _reused_eval(before_file, before_key)
        if before is not None:
            timings["eval_before_s"] = 0.0
            note = f"reused from {before_file}: same model, problems and sampler"
        else:
            before = evaluate_sets(TransformersGenerator(model, tok), model_id, "before")
            timings["eval_before_s"] = time.perf_counter() - t0
            before_file.write_text(json.dumps({"key": before_key, "results": before}))
            note = f"{timings['eval_before_s']:.0f} s"
        say(
            "pi_0: "
            + "; ".join(
                f"{name} pass@1 {_fmt(before[name]['pass@1'])}, pass@10 {_fmt(before[name]['pass@10'])}"
                for name in SETS
            )
            + f" ({note})"
        )

        # 4. SPO training
        t0 = time.perf_counter()
        train_cfg = config.train_config(lake.uri, str(pi0_path))
        train_dir = Path(train_cfg.output)
        if train_dir.exists():
            # The demo owns output/train: a rerun is a new demo, not a resume of the last one.
            say(f"replacing the previous demo's training run in {train_dir}")
            shutil.rmtree(train_dir)
        with progress_display(console) as bar:
            steps_task = bar.add_task("training SPO (steps)", total=config.steps, rate="")
            result = train(
                train_cfg,
                on_step=lambda s, m: bar.update(
                    steps_task,
                    completed=s + 1,
                    rate=f"loss {m.get('train/loss', float('nan')):.4f} "
                    f"|Q_T-r| {m.get('train/terminal_abs_error', float('nan')):.3f}",
                ),
                # the demo turned the run's own evaluation off on purpose (it evaluates both
                # sets itself); the trainer's note about that would only confuse here
                on_event=lambda msg: None if msg.startswith("--eval-problems 0") else say(msg),
            )
        timings["train_s"] = time.perf_counter() - t0

        # 5. the trained policy on the same problems with the same seed
        trained, _ = load_model_and_tokenizer(
            train_dir / (train_dir / "latest").read_text().strip()
        )
        t0 = time.perf_counter()
        after = evaluate_sets(
            TransformersGenerator(trained, tok), f"{result.run_id}@{result.steps_done}", "after"
        )
        timings["eval_after_s"] = time.perf_counter() - t0
    except BaseException as exc:
        lake.end_run(run_id, run_status(exc))
        raise
    lake.end_run(run_id, "completed")
    timings["total_s"] = time.perf_counter() - t_start

    # 6. report
    report: dict[str, dict[str, Any]] = {}
    for name in SETS:
        report[name] = {
            "before": {k: before[name][k] for k in ("pass@1", "pass@10")},
            "after": {k: after[name][k] for k in ("pass@1", "pass@10")},
            "change": paired_change(before[name], after[name], config.seed),
            "problems": len(sets[name]),
            "split": splits[name],
            "problem_ids": [p["problem_id"] for p in sets[name]],
        }
    console.print(report_table(report, result.steps_done, config))
    for name in SETS:
        for note in eval_notes(before[name]) + eval_notes(after[name]):
            say(f"{name}: {note}")
        for k in ("pass@1", "pass@10"):
            if k not in report[name]["change"]:
                say(f"{name} {k} change: no problem has {k[5:]} judged samples before and after")
    plot = out / "curves.png"
    write_plot(result.metrics, report, plot)
    summary = {
        **report,
        "train_run_id": result.run_id,
        "demo_run_id": run_id,
        "steps": result.steps_done,
        "q0_problems": q0_count,
        "lake": lake.uri,
        "plot": str(plot),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "config": asdict(config),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"plot: {plot}; summary: {out / 'summary.json'}; total {timings['total_s']:.0f} s")
    return summary


def _reused_eval(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation results stored in `path` if they were made under `key` (same model,
    tokenizer, sampler, problems and lake), else None."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != json.loads(json.dumps(key)):
        return None
    return doc.get("results")


def report_table(report: dict[str, dict[str, Any]], steps: int, config: DemoConfig) -> Table:
    """Before, after, the paired change and its 95% interval for both sets (fits 80 columns)."""
    table = Table(
        title=f"SPO demo: pass@k before and after {steps} steps "
        f"(n={config.eval_n}, T=0.4, top-p 0.95)"
    )
    for col in ("problems", "", "pass@1", "pass@10"):
        table.add_column(col)
    ks = ("pass@1", "pass@10")
    for i, name in enumerate(SETS):
        r = report[name]
        table.add_row(
            f"{SET_TITLES[name]}, {r['problems']}",
            "pi_0 (before)",
            *(_fmt(r["before"][k]) for k in ks),
        )
        table.add_row("", "SPO (after)", *(_fmt(r["after"][k]) for k in ks))
        table.add_row("", "change", *(_fmt_diff(r["change"].get(k)) for k in ks))
        table.add_row(
            "",
            "95% interval",
            *(_fmt_interval(r["change"].get(k)) for k in ks),
            end_section=i < len(SETS) - 1,
        )
    table.caption = "change: after - before; interval: paired bootstrap over the problems"
    return table


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fmt_diff(change: dict[str, Any] | None) -> str:
    return "n/a" if change is None else f"{change['diff']:+.3f}"


def _fmt_interval(change: dict[str, Any] | None) -> str:
    if change is None:
        return "n/a"
    low, high = change["ci95"]
    return f"{low:+.3f} to {high:+.3f}"


def write_plot(
    metrics: list[dict[str, float]], report: dict[str, dict[str, Any]], path: Path
) -> None:
    """Training curves and, per set, the before/after pass@k bars (the after bar carries the
    paired 95% interval of the change) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.2))
    axes = axes.ravel()
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
    for ax, name in zip(axes[4:], SETS, strict=True):
        r = report[name]
        before = [r["before"][k] or 0.0 for k in ks]
        after = [r["after"][k] or 0.0 for k in ks]
        # the interval of the change, drawn around the after bar (before + diff = after)
        err = [
            [
                after[i] - (before[i] + r["change"][k]["ci95"][0]) if k in r["change"] else 0.0,
                (before[i] + r["change"][k]["ci95"][1]) - after[i] if k in r["change"] else 0.0,
            ]
            for i, k in enumerate(ks)
        ]
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="pi_0")
        ax.bar(
            [x + 0.2 for x in xs],
            after,
            width=0.4,
            label="SPO",
            yerr=[[e[0] for e in err], [e[1] for e in err]],
            capsize=4,
        )
        ax.set_xticks(list(xs), ks)
        ax.set_ylim(0, 1)
        ax.set_title(f"{SET_TITLES[name]}, {r['problems']} problems")
        ax.set_xlabel("error bar: paired 95% interval of the change")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
