"""`spo demo`: SPO where it should win, on the embedded default, sized for 10 minutes on 2 CPU cores.

The off-policy regime (issue 22, the science review's pilot): hard train problems that the
shipped pi_0 never solved, each with 3-4 correct reference solutions in the lake.

1. load the embedded problems into the lake (first use only);
2. read the shipped hard set (`embedded/assets/hard_problems.json`, selected once on pi_0
   samples by `scripts/select_hard_problems.py`) and estimate Q0 on those problems;
3. evaluate pi_0 on two sets (pass@1, pass@10) with fresh samples (another seed than the
   selection): `trained`, the hard problems the runs train on, and `heldout`, test problems
   (held-out compositions);
4. train SPO half online / half reference solutions (`online:0.5,human:0.5`) on the hard set,
   and GRPO (on-policy, no reference solutions) on the same problems at the same budget;
5. evaluate both trained policies the same way (same problems, same seed);
6. print a before/after table per set with the paired interval of each change and of SPO minus
   GRPO, write `curves.png` and `summary.json`.

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
from spo_store.selection import RELIABLE, judge_issue_counts, left_out_line
from spo_train.config import (
    DEFAULT_BETA,
    check_output_owner,
    check_output_path,
    has_checkpoint,
    mark_output_dir,
)
from spo_train.embedded.defaults import ASSETS, ensure_problems
from spo_train.evaluate import eval_notes, evaluate
from spo_train.lm.generation import TransformersGenerator
from spo_train.lm.models import (
    context_length,
    load_model_and_tokenizer,
    model_identity,
    resolve_model_path,
    tokenizer_identity,
)
from spo_train.metrics import paired_pass_at_k_difference
from spo_train.progress import advance_with_rate, progress_display
from spo_train.q0 import estimate_q0, q0_sampler_key, q0_todo
from spo_train.rollouts.sampling import SamplerSettings, check_context, load_problems
from spo_train.train.loop import TrainConfig, train

SETS = ("trained", "heldout")
"""The two evaluated sets, in the order the summary, the table and the plot show them."""
SET_TITLES = {"trained": "hard (train)", "heldout": "held-out (test)"}
HARD_PROBLEMS = ASSETS / "hard_problems.json"
"""The shipped hard set: train problems the shipped pi_0 never solved in 16 samples at T = 1
(scripts/select_hard_problems.py wrote it; its `selection` names the seed and the command)."""
ARMS = {"spo": "SPO half-online", "grpo": "GRPO"}
OUTPUT_MARKER = "spo-demo.json"
"""The file the demo writes first into its --output: a directory without it (and not empty) is
not a demo's, and is refused (the demo replaces output/train and output/train-grpo)."""
PRE_MARKER_OUTPUT = (
    "pi0_eval.json",
    frozenset({"pi0_eval.json", "summary.json", "curves.png", "train", "train-grpo"}),
)
"""A demo's --output written before OUTPUT_MARKER existed: pi0_eval.json and only these names."""


@dataclass
class DemoConfig:
    """The demo's budget; every number here was chosen to fit 10 minutes on 2 cores
    (docs/demo-tuning.md has the measurements)."""

    lake: str | None = None
    output: str = "runs/demo"
    model: str | None = None
    """pi_0 (default: the embedded tiny model)"""
    hard_file: str | None = None
    """the hard set's JSON (default: the shipped HARD_PROBLEMS, selected on the shipped pi_0)"""
    hard_problems: int = 32
    """train on the first N hard problems (by id) that the lake's train split holds; both runs
    train on exactly these and `trained` evaluates them"""
    q0_samples: int = 8
    """pi_0 samples per hard problem for Q0 (paper: 800; the problems were picked for S0 = 0)"""
    heldout_problems: int = 50
    """held-out test problems evaluated before and after SPO (`heldout`)"""
    eval_n: int = 20
    """samples per problem (paper: 20)"""
    steps: int = 30
    batch_size: int = 16
    lr: float = 3e-4
    loss: str = "terminal_ce"
    mix: str = "online:0.5,human:0.5"
    """SPO's mixture: half its own rollouts, half the lake's reference (human) solutions"""
    model_update_interval: int = 10
    rollout_n: int = 4
    max_new_tokens: int = 192
    beta: float = DEFAULT_BETA
    seed: int = 0
    grpo: bool = True
    """also train GRPO at the same budget on the same problems (`offpolicy`)"""
    unsafe_no_sandbox: bool = False

    def train_config(
        self, lake_uri: str | None, model: str | None, algo: str = "spo", where: str | None = None
    ) -> TrainConfig:
        """The settings of one of the demo's training runs (checkpoints in output/train for
        SPO, output/train-grpo for GRPO); `where` keeps it to the hard set (train_where)."""
        common = dict(
            model=model,
            lake=lake_uri,
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.lr,
            rollout_n=self.rollout_n,
            max_new_tokens=self.max_new_tokens,
            train_where=where,
            checkpoint_every=max(1, self.steps),
            # The demo evaluates before and after itself (both sets, one seed for all), so
            # the training run's own start/end evaluation would only repeat that work.
            eval_problems=0,
            eval_train_problems=0,
            seed=self.seed,
            unsafe_no_sandbox=self.unsafe_no_sandbox,
        )
        if algo == "grpo":
            # GRPO's own sampler (T 1, top-p 1) and one weight update per step: its defaults
            return TrainConfig(output=str(Path(self.output) / "train-grpo"), algo="grpo", **common)
        return TrainConfig(
            output=str(Path(self.output) / "train"),
            mix=self.mix,
            loss=self.loss,
            beta=self.beta,
            model_update_interval=self.model_update_interval,
            # SPO's (the paper's) rollout sampler, set here so the measured demo stays pinned
            rollout_temperature=(0.1, 0.8),
            rollout_top_p=0.95,
            **common,
        )

    @property
    def eval_seed(self) -> int:
        """Seed of every evaluation (pi_0 and the trained policies)."""
        return self.seed + 1

    def validate(self) -> None:
        """Every setting checked (one SpoError line) before the lake or a model is touched."""
        for name in ("hard_problems", "q0_samples", "heldout_problems", "eval_n"):
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
        check_output_owner(self.output, OUTPUT_MARKER, "spo demo", legacy=PRE_MARKER_OUTPUT)
        hard = load_hard_set(self.hard_file)
        selection_seed = hard["selection"]["seed"]
        if selection_seed in (self.seed, self.eval_seed):
            # Q0 (seed) and evaluation (seed + 1) must draw fresh samples: the selection kept
            # problems whose samples all failed, so reusing them would show a bias, not pi_0.
            raise SpoError(
                f"--seed {self.seed}: the hard set was selected with seed {selection_seed}; "
                "the demo's Q0 (seed) and evaluation (seed + 1) must use other seeds"
            )
        for algo in ("spo", "grpo") if self.grpo else ("spo",):
            self.train_config(self.lake, self.model, algo).validate()


def load_hard_set(path: str | Path | None) -> dict[str, Any]:
    """The hard set's JSON (`HARD_PROBLEMS` when `path` is None): `problem_ids` (list of str),
    `pi0_model_id`, `selection` (`seed`, `samples`, `command`, ...), `per_problem`.
    Raises SpoError (one line naming the file) for a missing or malformed file."""
    file = Path(path) if path is not None else HARD_PROBLEMS
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise SpoError(f"hard problems file {file}: cannot read it ({exc})") from None
    ids = doc.get("problem_ids") if isinstance(doc, dict) else None
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) for i in ids)
        or not isinstance(doc.get("selection"), dict)
        or not isinstance(doc["selection"].get("seed"), int)
    ):
        raise SpoError(
            f"hard problems file {file}: expected problem_ids (a non-empty list of ids) and "
            "selection.seed (an integer)"
        )
    return doc


def missing_hard_problems(lake: Lake, ids: list[str], held: list[dict[str, Any]]) -> str:
    """Why the hard set's `ids` not in `held` (the reliably judged train problems of the lake)
    are missing, in words: `missing 3: 2 not in the lake, 1 flagged by the judge; e.g. a, b, c`
    (flagged: `problems.judge_issue` set; another split names it)."""
    have = {p["problem_id"] for p in held}
    gone = sorted(set(ids) - have)
    listed = ", ".join(sql_quote(i) for i in gone)
    rows = lake.sql_arrow(
        f"SELECT problem_id, split, judge_issue FROM problems WHERE problem_id IN ({listed})"
    ).to_pylist()
    reasons: dict[str, int] = {}
    for row in rows:
        why = f"in split {row['split']}" if row["split"] != "train" else "flagged by the judge"
        reasons[why] = reasons.get(why, 0) + 1
    absent = len(gone) - len(rows)
    if absent:
        reasons = {"not in the lake": absent, **reasons}
    shown = ", ".join(gone[:3]) + (", ..." if len(gone) > 3 else "")
    return (
        f"missing {len(gone)}: "
        + ", ".join(f"{n} {why}" for why, n in reasons.items())
        + f"; e.g. {shown}"
    )


def hard_where(problems: list[dict[str, Any]]) -> str:
    """The train_where predicate naming exactly `problems`."""
    return "p.problem_id IN (" + ", ".join(sql_quote(p["problem_id"]) for p in problems) + ")"


def paired_change(
    before: dict[str, Any], after: dict[str, Any], seed: int
) -> dict[str, dict[str, Any]]:
    """`{"pass@k": {"diff", "ci95": [low, high]}}` for k in 1, 10: after minus before over the
    same problems, with the paired bootstrap 95% interval (how much of the change the problem
    draw and the sampling can explain). A problem enters pass@k only with k judged samples on
    both sides (n = its judged samples); a k no problem reaches is left out. `before` and
    `after` may be two policies evaluated at one time (SPO minus GRPO: before = GRPO)."""
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


def _passes(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("pass@1", "pass@10")}


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary (also written to output/summary.json).

    The summary holds `trained` (the hard problems both runs train on; SPO's change) and
    `heldout`, each `{"before": {"pass@1", "pass@10"}, "after": {...}, "change": {"pass@k":
    {"diff", "ci95"}}, "problems": N, "split", "problem_ids"}`; `offpolicy` with `spo` and
    `grpo` (each `before`, `after`, `change` on the hard set), `spo_minus_grpo` (per k: `diff`,
    `ci95`, paired over the problems), `problems` and `hard_set` (the selection); plus the run
    ids, `steps`, `q0_problems`, `timings` (seconds) and the config. Without `config.grpo`,
    `offpolicy` has no `grpo` and no `spo_minus_grpo`.
    A rerun in the same output reuses Q0 and pi_0's evaluation and replaces the previous
    demo's training runs (output/train, output/train-grpo), and says so. Raises SpoError for a
    bad setting before any work.
    """
    config.validate()
    hard_doc = load_hard_set(config.hard_file)
    console = console or Console(stderr=True)
    say = lambda msg: console.print(msg, highlight=False)  # noqa: E731
    t_start = time.perf_counter()
    lake = Lake.open(config.lake)
    ensure_problems(lake, say=say)

    # 2. the hard set (its ids in the lake's train split, judged reliably) and its Q0; a lake
    # without them (other problems) is refused before a model loads or anything is written
    listed = ", ".join(sql_quote(i) for i in hard_doc["problem_ids"])
    hard = load_problems(lake, f"p.split = 'train' AND {RELIABLE} AND p.problem_id IN ({listed})")
    hard_file = config.hard_file or str(HARD_PROBLEMS)
    listed_n = len(set(hard_doc["problem_ids"]))
    if not hard:
        raise SpoError(
            f"hard problems file {hard_file}: none of its {listed_n} "
            f"problems is a reliably judged train problem of the lake {lake.uri}"
        )
    if len(hard) < listed_n:
        # Part of the set: enough to train on `hard_problems` of them is a note (the problems
        # differ from the shipped demo's); fewer is refused, since a smaller set is another
        # experiment (wider intervals, numbers not comparable with the README's).
        missing = missing_hard_problems(lake, hard_doc["problem_ids"], hard)
        held = f"{len(hard)} of the {listed_n} problems"
        if len(hard) < config.hard_problems:
            raise SpoError(
                f"hard problems file {hard_file}: the lake {lake.uri} holds only {held} as "
                f"reliably judged train problems ({missing}), fewer than the "
                f"{config.hard_problems} the demo trains on; give --lake a new lake (the demo "
                "loads the embedded problems into it)"
            )
        say(
            f"note: the lake holds {held} of {hard_file} as reliably judged train problems "
            f"({missing}); the demo trains on the first {config.hard_problems} it holds"
        )
    hard = hard[: config.hard_problems]
    out = Path(config.output)
    mark_output_dir(config.output, OUTPUT_MARKER, "spo demo")
    pi0_path = resolve_model_path(config.model)
    model, tok = load_model_and_tokenizer(pi0_path)
    model_id, tok_id = model_identity(pi0_path), tokenizer_identity(tok)
    timings: dict[str, float] = {}
    if hard_doc.get("pi0_model_id") != model_id:
        say(
            f"note: the hard set ({hard_file}) was selected on another pi_0 "
            f"({hard_doc.get('pi0_model_id')}); its problems may not be hard for {model_id}"
        )
    t0 = time.perf_counter()
    q0_settings = SamplerSettings(config.q0_samples, 1.0, 1.0, config.max_new_tokens, config.seed)
    q0_where = hard_where(hard)
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
    # S0 over every estimate of the set, reused ones included (a rerun reuses them all)
    est = load_problems(lake, q0_where, q0_of=(model_id, q0_sampler_key(q0_settings)))
    n_all = sum(p["q0_samples"] or 0 for p in est)
    s0 = sum(p["q0_successes"] or 0 for p in est) / max(1, n_all)
    reused = f", {q0.already_done} estimated before (reused)" if q0.already_done else ""
    q0_count = sum(1 for p in est if p["q0_samples"])
    selection = hard_doc["selection"]
    say(
        f"hard set: {len(hard)} train problems pi_0 never solved in "
        f"{selection.get('samples', '?')} samples at T=1 (selection seed {selection['seed']})"
    )
    say(
        f"Q0: {q0_count} problems ({q0.problems} estimated now, "
        f"{q0.samples} new samples{reused}), mean S0 {s0:.3f} ({timings['q0_s']:.0f} s)"
    )
    line = left_out_line(judge_issue_counts(lake, "p.split = 'test'"), "eval", "")
    if line:
        say(line)

    # 3. pi_0 on both sets. Problems the judge cannot handle reliably are left out (their
    # pass rates mean nothing).
    sets = {
        "trained": hard,
        "heldout": load_problems(lake, f"p.split = 'test' AND {RELIABLE}")[
            : config.heldout_problems
        ],
    }
    splits = {"trained": "train", "heldout": "test"}
    check_context(
        tok,
        context_length(model.config),
        [*sets["trained"], *sets["heldout"]],
        config.max_new_tokens,
    )
    settings = SamplerSettings(
        config.eval_n, 0.4, 0.95, config.max_new_tokens, seed=config.eval_seed
    )
    run_id = lake.start_run("demo", asdict(config), model_id=model_id, tokenizer_id=tok_id)

    def evaluate_sets(
        generator: TransformersGenerator, eval_model_id: str, when: str, names=SETS
    ) -> dict:
        """pass@k of one policy on `names` (same problems and seed before and after)."""
        results = {}
        with progress_display(console) as bar:
            for name in names:
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

    def train_arm(algo: str) -> tuple[Any, Any]:
        """Train one arm on the hard set; returns (TrainResult, the trained model)."""
        train_cfg = config.train_config(lake.uri, str(pi0_path), algo, hard_where(hard))
        train_dir = Path(train_cfg.output)
        if train_dir.exists():
            # The demo owns its train dirs: a rerun is a new demo, not a resume of the last one.
            say(f"replacing the previous demo's {algo} training run in {train_dir}")
            shutil.rmtree(train_dir)
        with progress_display(console) as bar:
            steps_task = bar.add_task(f"training {ARMS[algo]} (steps)", total=config.steps, rate="")
            result = train(
                train_cfg,
                on_step=lambda s, m: bar.update(
                    steps_task, completed=s + 1, rate=_step_line(algo, m)
                ),
                # the demo turned the run's own evaluation off on purpose (it evaluates both
                # sets itself); the trainer's note about that would only confuse here
                on_event=lambda msg: None if msg.startswith("--eval-problems 0") else say(msg),
            )
        trained, _ = load_model_and_tokenizer(
            train_dir / (train_dir / "latest").read_text().strip()
        )
        return result, trained

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

        # 4-5. SPO, then GRPO, each trained on the hard set and evaluated with the same seed
        t0 = time.perf_counter()
        result, trained = train_arm("spo")
        timings["train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        after = evaluate_sets(
            TransformersGenerator(trained, tok), f"{result.run_id}@{result.steps_done}", "after"
        )
        timings["eval_after_s"] = time.perf_counter() - t0
        grpo_result, grpo_after = None, None
        if config.grpo:
            t0 = time.perf_counter()
            grpo_result, grpo_model = train_arm("grpo")
            timings["train_grpo_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            grpo_after = evaluate_sets(
                TransformersGenerator(grpo_model, tok),
                f"{grpo_result.run_id}@{grpo_result.steps_done}",
                "after-grpo",
                names=("trained",),
            )["trained"]
            timings["eval_after_grpo_s"] = time.perf_counter() - t0
    except BaseException as exc:
        lake.end_run(run_id, run_status(exc))
        raise
    lake.end_run(run_id, "completed")
    timings["total_s"] = time.perf_counter() - t_start

    # 6. report
    report: dict[str, dict[str, Any]] = {}
    for name in SETS:
        report[name] = {
            "before": _passes(before[name]),
            "after": _passes(after[name]),
            "change": paired_change(before[name], after[name], config.seed),
            "problems": len(sets[name]),
            "split": splits[name],
            "problem_ids": [p["problem_id"] for p in sets[name]],
        }
    offpolicy: dict[str, Any] = {
        "problems": len(hard),
        "spo": {k: report["trained"][k] for k in ("before", "after", "change")},
        "hard_set": {
            "file": hard_file,
            "selection_seed": selection["seed"],
            "selection_samples": selection.get("samples"),
            "selected_on_this_pi0": hard_doc.get("pi0_model_id") == model_id,
        },
    }
    if grpo_after is not None:
        offpolicy["grpo"] = {
            "before": report["trained"]["before"],
            "after": _passes(grpo_after),
            "change": paired_change(before["trained"], grpo_after, config.seed),
        }
        # SPO minus GRPO after training, paired over the same problems
        offpolicy["spo_minus_grpo"] = paired_change(grpo_after, after["trained"], config.seed)
    steps_done = result.steps_done
    console.print(report_table(report, offpolicy, steps_done, config))
    for name in SETS:
        for note in eval_notes(before[name]) + eval_notes(after[name]):
            say(f"{name}: {note}")
        for k in ("pass@1", "pass@10"):
            if k not in report[name]["change"]:
                say(f"{name} {k} change: no problem has {k[5:]} judged samples before and after")
    if grpo_after is not None:
        for note in eval_notes(grpo_after):
            say(f"trained (GRPO): {note}")
    plot = out / "curves.png"
    write_plot(
        result.metrics,
        report,
        plot,
        grpo_metrics=grpo_result.metrics if grpo_result is not None else None,
        offpolicy=offpolicy,
    )
    summary = {
        **report,
        "offpolicy": offpolicy,
        "train_run_id": result.run_id,
        "grpo_run_id": grpo_result.run_id if grpo_result is not None else None,
        "demo_run_id": run_id,
        "steps": steps_done,
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


def report_table(
    report: dict[str, dict[str, Any]], offpolicy: dict[str, Any], steps: int, config: DemoConfig
) -> Table:
    """Before, after, the paired change and its 95% interval for both sets, GRPO's and SPO
    minus GRPO on the hard set (fits 80 columns)."""
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
        rows = [("95% interval", *(_fmt_interval(r["change"].get(k)) for k in ks))]
        if name == "trained" and "grpo" in offpolicy:
            g, d = offpolicy["grpo"], offpolicy["spo_minus_grpo"]
            rows += [
                ("GRPO (after)", *(_fmt(g["after"][k]) for k in ks)),
                ("GRPO change", *(_fmt_diff(g["change"].get(k)) for k in ks)),
                ("95% interval", *(_fmt_interval(g["change"].get(k)) for k in ks)),
                ("SPO - GRPO", *(_fmt_diff(d.get(k)) for k in ks)),
                ("95% interval", *(_fmt_interval(d.get(k)) for k in ks)),
            ]
        for j, row in enumerate(rows):
            table.add_row("", *row, end_section=j == len(rows) - 1 and i < len(SETS) - 1)
    table.caption = (
        "change: after - before; SPO - GRPO: after training; "
        "interval: paired bootstrap over the problems"
    )
    return table


def _step_line(algo: str, metrics: dict[str, float]) -> str:
    """The progress bar's note on one training step: the online reward, and SPO's loss or how
    many of GRPO's groups carried no signal (all rewards equal: GRPO learns nothing from them)."""
    nan = float("nan")
    line = f"reward {metrics.get('rollout/reward_mean', nan):.2f}"
    if algo == "grpo":
        return (
            f"{line}, groups without signal {metrics.get('train/groups_without_signal', nan):.0f}"
        )
    return f"{line}, loss {metrics.get('train/loss', nan):.4f}"


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
    metrics: list[dict[str, float]],
    report: dict[str, dict[str, Any]],
    path: Path,
    grpo_metrics: list[dict[str, float]] | None = None,
    offpolicy: dict[str, Any] | None = None,
) -> None:
    """Training curves (SPO; GRPO's reward beside SPO's) and, per set, the before/after pass@k
    bars (each after bar carries the paired 95% interval of its change) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.2))
    axes = axes.ravel()
    steps = [m["step"] for m in metrics]
    for ax, keys, title in (
        (axes[0], {"train/loss": None}, "SPO loss"),
        (axes[1], {"train/terminal_abs_error": None}, "SPO |Q_T - r| (batch)"),
        (
            axes[2],
            {"train/success_log_ratio": "successes", "train/failure_log_ratio": "failures"},
            "SPO sum log(pi/pi_0) (batch)",
        ),
        (axes[3], {"rollout/reward_mean": "SPO"}, "online reward (0 = pass)"),
    ):
        for key, label in keys.items():
            ax.plot(steps, [m.get(key, float("nan")) for m in metrics], label=label)
        if len(keys) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
    if grpo_metrics:
        axes[3].plot(
            [m["step"] for m in grpo_metrics],
            [m.get("rollout/reward_mean", float("nan")) for m in grpo_metrics],
            label="GRPO",
        )
        axes[3].legend()
    ks = ["pass@1", "pass@10"]
    xs = range(len(ks))
    for ax, name in zip(axes[4:], SETS, strict=True):
        r = report[name]
        bars = [("pi_0", [r["before"][k] or 0.0 for k in ks], None)]
        bars.append(("SPO", [r["after"][k] or 0.0 for k in ks], r["change"]))
        if name == "trained" and offpolicy and "grpo" in offpolicy:
            g = offpolicy["grpo"]
            bars.append(("GRPO", [g["after"][k] or 0.0 for k in ks], g["change"]))
        before = bars[0][1]
        width = 0.8 / len(bars)
        for b, (label, values, change) in enumerate(bars):
            # the interval of the change, drawn around the after bar (before + diff = after)
            err = None
            if change is not None:
                err = [
                    [
                        values[i] - (before[i] + change[k]["ci95"][0]) if k in change else 0.0
                        for i, k in enumerate(ks)
                    ],
                    [
                        (before[i] + change[k]["ci95"][1]) - values[i] if k in change else 0.0
                        for i, k in enumerate(ks)
                    ],
                ]
            offset = (b - (len(bars) - 1) / 2) * width
            ax.bar([x + offset for x in xs], values, width=width, label=label, yerr=err, capsize=4)
        ax.set_xticks(list(xs), ks)
        ax.set_ylim(0, 1)
        ax.set_title(f"{SET_TITLES[name]}, {r['problems']} problems")
        ax.set_xlabel("error bar: paired 95% interval of the change")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
