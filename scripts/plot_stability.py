"""Stability and diversity curves of an experiment's runs against step (issue 22 item 3).

Reads `DIR/experiment.json` and the metrics of its runs from the experiment's lake; draws one
figure (`OUT/stability.png`) and writes the numbers behind it (`OUT/stability.md`): per-step
metrics as means over windows of steps, evaluation metrics at each evaluated step.

    python scripts/plot_stability.py runs/experiments/stability --out docs/results/stability

KL to pi_0 is each algorithm's own estimate (SPO: `train/kl_estimate`, the batch's mean
per-sequence sum of log pi_theta - log pi_0 on its taken tokens, offline rows included; PPO and
GRPO: `train/kl_to_ref`, the same sum on their on-policy rows): comparable in size, not equal
in definition. `rollout/sampler_entropy` depends on the sampler (docs/rollouts.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spo_store.errors import SpoError  # noqa: E402
from spo_store.lake import Lake  # noqa: E402
from spo_train.config import TrainConfig  # noqa: E402
from spo_train.experiment.report_data import newest_metrics  # noqa: E402

STEP_PANELS = [  # (title, metric names tried in order, y label, y scale)
    ("KL to pi_0 (nats per sequence)", ["train/kl_estimate", "train/kl_to_ref"], "nats", "symlog"),
    ("sampler entropy (nats per token)", ["rollout/sampler_entropy"], "nats/token", "linear"),
    ("compile errors (share of rollouts)", ["rollout/compile_error_rate"], "share", "linear"),
    ("runtime errors (share of rollouts)", ["rollout/runtime_error_rate"], "share", "linear"),
    ("rollout reward (0 = pass)", ["rollout/reward_mean"], "mean reward", "linear"),
    ("gradient norm (before clipping)", ["train/grad_norm"], "norm", "log"),
]
EVAL_PANELS = [
    ("pass@1, trained problems", "pass@1"),
    ("pass@10, trained problems", "pass@10"),
    ("distinct correct programs per solved problem", "diversity/distinct_programs"),
    ("styles among correct programs", "diversity/styles"),
]
WINDOW = 25


def setting(spec: dict, name: str) -> object:
    """An arm's setting from experiment.json, else `spo train`'s default."""
    return spec.get("settings", {}).get(name, TrainConfig.__dataclass_fields__[name].default)


def load(exp_dir: Path) -> tuple[dict[str, dict[str, dict[int, float]]], list[str], dict]:
    """{arm: {metric: {step: value}}} over each arm's first run that started, finished or not
    (the evaluation of its trained problems as `eval/trained/...`), the arms, experiment.json."""
    meta = json.loads((exp_dir / "experiment.json").read_text())
    lake = Lake.open(meta["lake"], create=False)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for arm, spec in meta["arms"].items():
        rid = None
        for r in spec["runs"]:  # a run still going has its id in its own run.json only
            run_json = exp_dir / str(r.get("output", "")) / "run.json"
            rid = r.get("run_id") or (
                json.loads(run_json.read_text())["run_id"]
                if r.get("output") and run_json.is_file()
                else None
            )
            if rid:
                break
        if rid is None:
            continue
        rows = newest_metrics(lake, [rid])
        series: dict[str, dict[int, float]] = defaultdict(dict)
        # the trained problems' set is eval/<train_split>/; a held-out set is another split
        trained = f"eval/{setting(spec, 'train_split')}/"
        for r in rows:
            if r["value"] is not None and math.isfinite(r["value"]):
                name = r["name"]
                if name.startswith(trained):
                    name = "eval/trained/" + name.removeprefix(trained)
                series[name][int(r["step"])] = float(r["value"])
        out[arm] = dict(series)
    return out, list(out), meta


def pick(series: dict[str, dict[int, float]], names: list[str]) -> dict[int, float]:
    return next((series[n] for n in names if n in series), {})


def smooth(points: dict[int, float], window: int = 10) -> tuple[list[int], list[float]]:
    steps = sorted(points)
    vals = [points[s] for s in steps]
    out = []
    for i in range(len(vals)):
        part = vals[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return steps, out


def eval_series(series: dict[str, dict[int, float]], suffix: str) -> dict[int, float]:
    """The evaluations of the arm's trained problems (not a held-out set's)."""
    return series.get(f"eval/trained/{suffix}", {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exp_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if not (a.exp_dir / "experiment.json").is_file():
        print(f"error: {a.exp_dir}: no experiment.json (run spo experiment first)", file=sys.stderr)
        return 2
    try:
        data, arms, meta = load(a.exp_dir)
    except (SpoError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # a damaged experiment.json or a lake moved away: one line, not a traceback
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        print(f"error: {a.exp_dir}/experiment.json: {what}", file=sys.stderr)
        return 2
    temps = sorted({str(setting(s, "eval_temperature")) for s in meta["arms"].values()})
    a.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 5, figsize=(22, 8))
    for ax, (title, names, ylabel, scale) in zip(axes.flat[:6], STEP_PANELS, strict=True):
        for arm in arms:
            s, v = smooth(pick(data[arm], names))
            ax.plot(s, v, marker=".", label=arm)  # a marker: a 1-step run is one point
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.set_yscale(scale)  # a collapsing run is orders of magnitude above the others
    for ax, (title, suffix) in zip(axes.flat[6:], EVAL_PANELS, strict=True):
        for arm in arms:
            pts = eval_series(data[arm], suffix)
            ax.plot(sorted(pts), [pts[s] for s in sorted(pts)], marker="o", label=arm)
        ax.set(title=title, xlabel="step")
    if arms:
        axes.flat[0].legend()
    fig.suptitle(
        f"{a.exp_dir.name}: per-step metrics smoothed over 10 steps; evaluations at "
        f"T = {', '.join(temps)}"
    )
    fig.tight_layout()
    fig.savefig(a.out / "stability.png", dpi=80)

    lines = [f"# {a.exp_dir.name}: per-step metrics, means over windows of {WINDOW} steps", ""]
    for title, names, _, _ in STEP_PANELS:
        last = max((max(pick(data[x], names), default=0) for x in arms), default=0)
        edges = list(range(0, last + 1, WINDOW))
        lines += [
            f"## {title}",
            "",
            "| arm | " + " | ".join(f"{e}-{e + WINDOW - 1}" for e in edges) + " |",
        ]
        lines.append("| --- " * (len(edges) + 1) + "|")
        for arm in arms:
            pts = pick(data[arm], names)
            cells = []
            for e in edges:
                vals = [v for s, v in pts.items() if e <= s < e + WINDOW]
                cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    for title, suffix in EVAL_PANELS:
        steps = sorted({s for x in arms for s in eval_series(data[x], suffix)})
        if not steps:  # a table of no columns is no markdown table
            lines += [f"## {title}", "", "no values logged", ""]
            continue
        lines += [f"## {title}", "", "| arm | " + " | ".join(f"step {s}" for s in steps) + " |"]
        lines.append("| --- " * (len(steps) + 1) + "|")
        for arm in arms:
            pts = eval_series(data[arm], suffix)
            lines.append(
                f"| {arm} | "
                + " | ".join(f"{pts[s]:.3f}" if s in pts else "" for s in steps)
                + " |"
            )
        lines.append("")
    (a.out / "stability.md").write_text("\n".join(lines))
    print(f"wrote {a.out / 'stability.png'} and {a.out / 'stability.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
