"""`spo report`: pass@k against step over seeds, to PNG, one static HTML page, JSON and markdown.

`build_report` is the entry: `spo_train.experiment.report_data` finds the runs (run and experiment
directories), reads their evaluations from their lakes and computes the statistics (its public
names are re-exported here); this module renders them: `pass_at_k.png`, `report.html`,
`summary.json` and `results.md`. docs/experiments.md, "Reports", describes the outputs; no torch
is imported here.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_train.experiment.report_data import (
    BOOTSTRAP_SEED,
    HEADLINE_SEEDS,
    MIN_SEEDS,
    NO_SPLIT_SET,
    NOT_GROUPING,
    PASS_METRIC,
    UNJUDGED_METRIC,
    Comparison,
    GroupSet,
    ReportInputs,
    ReportRun,
    RunEvals,
    collect_inputs,
    compare_groups,
    group_difference,
    group_plain_runs,
    paired_interval,
    read_evaluations,
    seed_change,
    settings_label,
)

__all__ = [  # this module's names and those of spo_train.experiment.report_data
    "BOOTSTRAP_SEED",
    "CAPTION",
    "FEW_SEEDS_MARK",
    "FEW_SEEDS_NOTE",
    "HEADLINE_SEEDS",
    "HTML_FILE",
    "MARKDOWN_FILE",
    "MIN_SEEDS",
    "NOT_GROUPING",
    "NO_SPLIT_SET",
    "PASS_METRIC",
    "PLOT_FILE",
    "SUMMARY_FILE",
    "TABLE_NOTE",
    "UNJUDGED_METRIC",
    "Comparison",
    "GroupSet",
    "ReportInputs",
    "ReportRun",
    "RunEvals",
    "build_report",
    "collect_inputs",
    "compare_groups",
    "few_seeds_note",
    "group_difference",
    "group_plain_runs",
    "paired_interval",
    "read_evaluations",
    "render_html",
    "render_markdown",
    "render_plot",
    "seed_change",
    "set_title",
    "settings_label",
    "table_columns",
    "table_rows",
    "write_report",
]

PLOT_FILE = "pass_at_k.png"
HTML_FILE = "report.html"
SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "results.md"
CAPTION = (
    "Lines: mean over the group's seeds of each seed's pass@k at that step; shaded band: "
    "min to max over the seeds (the spread of seeds, not a confidence interval). A dotted "
    "line continues past the last step all seeds of the group reached, over fewer seeds."
)


def set_title(eval_set: str) -> str:
    """An evaluation set's name in headings and panel titles (held-out or trained-on)."""
    if eval_set == "train":
        return "trained-on problems (train)"
    if eval_set == NO_SPLIT_SET:
        return "evaluation (no split recorded)"
    return f"held-out problems ({eval_set})"


def build_report(
    paths: Sequence[str | Path],
    *,
    output: str | Path | None = None,
    reference: str | None = None,
    only: Sequence[str] | None = None,
    title: str | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read the runs under `paths`, write the report files to `output` and return the summary.

    Writes `pass_at_k.png`, `report.html` (self-contained: the PNG as a data URI, no scripts,
    no external URLs), `summary.json` and `results.md` into `output` (default: the first
    path's `report/` folder). A run without evaluation metrics is left out with a warning
    while others remain. Raises SpoError (one line) for a path that is neither a run nor an
    experiment directory, a lake that cannot be opened, no evaluated run at all, or an
    unknown `reference` group; nothing is written then. `only` keeps these groups (experiment
    arms or run labels; an unknown one is a SpoError naming the groups), in the order given;
    `title` replaces the experiment's name as the report's title.
    """
    say = say or (lambda _msg: None)
    inputs = collect_inputs(paths, reference)
    if only:
        unknown = [g for g in only if g not in inputs.groups]
        if unknown:
            raise SpoError(
                f"--only {','.join(unknown)}: not a group of these runs; groups: "
                + ", ".join(inputs.groups)
            )
        inputs.runs = [r for r in inputs.runs if r.group in only]
        inputs.groups = [g for g in only if g in inputs.groups]
        if reference is None and inputs.reference not in inputs.groups:
            inputs.reference = None  # the experiment's reference arm was left out
    if title:
        inputs.title = title
    evals = read_evaluations(inputs.runs)
    warnings = list(inputs.warnings)
    kept: list[ReportRun] = []
    for run in inputs.runs:
        if any(evals[run.run_id].values.values()):
            kept.append(run)
        else:
            warnings.append(
                f"{run.run_dir}: run {run.run_id} has no evaluation metrics (eval/<set>/pass@k) "
                f"in lake {run.lake_uri}; left out"
            )
    if not kept:
        if len(inputs.runs) == 1:
            run = inputs.runs[0]
            raise SpoError(
                f"{run.run_dir}: run {run.run_id} has no evaluation metrics (eval/<set>/pass@k) "
                f"in lake {run.lake_uri}: train with --eval-problems > 0"
            )
        raise SpoError(
            "no run has evaluation metrics (eval/<set>/pass@k): "
            + ", ".join(str(r.run_dir) for r in inputs.runs)
        )
    groups = [g for g in inputs.groups if any(r.group == g for r in kept)]
    ref = inputs.reference
    if ref is not None and ref not in groups:
        given = "--reference" if reference is not None else "experiment.json reference_arm"
        raise SpoError(
            f"{given} {ref!r} is not a group of this report; groups: {', '.join(groups)}"
        )
    members = {g: [r for r in kept if r.group == g] for g in groups}
    stats = compare_groups(members, evals, ref)
    summary = {
        "title": inputs.title,
        "description": inputs.description,
        "inputs": [str(p) for p in paths],
        "reference": ref,
        "sets": stats.sets,
        "ks": stats.ks,
        "groups": [
            {
                "label": g,
                "seeds": len(members[g]),
                "runs": [
                    {
                        "run_id": r.run_id,
                        "run_dir": str(r.run_dir),
                        "seed": r.seed,
                        "lake": r.lake_uri,
                        "last_step": {
                            s: max(evals[r.run_id].steps[s]) for s in evals[r.run_id].steps
                        },
                    }
                    for r in members[g]
                ],
            }
            for g in groups
        ],
        "tables": stats.tables,
        "curves": stats.curves,
        "caption": CAPTION,
        "warnings": warnings,
    }
    for w in warnings:
        say(f"warning: {w}")
    out = Path(output) if output is not None else inputs.default_output
    summary["output"] = str(out)
    summary["files"] = write_report(summary, out)
    return summary


# ----------------------------------------------------------------------------- writing
def write_report(summary: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the four files into `out` (each written whole, then renamed into place)."""
    if out.exists() and not out.is_dir():
        raise SpoError(f"--output {out} is a file; the report is a folder of files")
    out.mkdir(parents=True, exist_ok=True)
    png = render_plot(summary)
    files = {
        "plot": out / PLOT_FILE,
        "html": out / HTML_FILE,
        "summary": out / SUMMARY_FILE,
        "markdown": out / MARKDOWN_FILE,
    }
    shown = {k: str(v) for k, v in files.items()}
    contents: dict[str, bytes] = {
        "plot": png,
        "html": render_html(summary, png).encode("utf-8"),
        "summary": (
            json.dumps({**summary, "files": shown}, indent=2, default=str, sort_keys=False) + "\n"
        ).encode("utf-8"),
        "markdown": render_markdown(summary).encode("utf-8"),
    }
    for key, path in files.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(contents[key])
        tmp.replace(path)
    return shown


def render_plot(summary: Mapping[str, Any]) -> bytes:
    """The PNG: one panel per (eval set, k), rows = sets, columns = k; x step, y pass@k."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    sets, ks = summary["sets"], summary["ks"]
    labels = [g["label"] for g in summary["groups"]]
    seeds = {g["label"]: g["seeds"] for g in summary["groups"]}
    fig = Figure(figsize=(4.6 * len(ks), 3.4 * len(sets) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no global pyplot state
    axes = fig.subplots(len(sets), len(ks), squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for i, eval_set in enumerate(sets):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            for label, color in zip(labels, colors, strict=True):
                pts = summary["curves"].get(label, {}).get(eval_set, {}).get(str(k))
                if not pts:
                    continue
                # Steps every seed that evaluated this set reached (solid line).
                full = [p for p in pts if p["n"] == max(q["n"] for q in pts)]
                last_full = full[-1]["step"] if full else None
                steps = [p["step"] for p in pts]
                ax.fill_between(
                    steps, [p["min"] for p in pts], [p["max"] for p in pts], color=color, alpha=0.18
                )
                solid = [p for p in pts if last_full is not None and p["step"] <= last_full]
                rest = [p for p in pts if last_full is None or p["step"] >= last_full]
                n = seeds[label]
                ax.plot(
                    [p["step"] for p in solid] or [pts[0]["step"]],
                    [p["mean"] for p in solid] or [pts[0]["mean"]],
                    color=color,
                    marker="o",
                    markersize=3,
                    label=f"{label} (n={n} seed{'s' if n != 1 else ''})",
                )
                if len(rest) > 1:
                    ax.plot(
                        [p["step"] for p in rest],
                        [p["mean"] for p in rest],
                        color=color,
                        linestyle=":",
                        marker="o",
                        markersize=2,
                    )
            ax.set_title(f"{set_title(eval_set)}: pass@{k}", fontsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("step")
            ax.set_ylabel(f"pass@{k}")
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            for h, nm in zip(*ax.get_legend_handles_labels(), strict=True):
                if nm not in names:
                    handles.append(h)
                    names.append(nm)
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(3, len(names)), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _fmt_mean(stats: Mapping[str, Any], compact: bool = False) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    std = f" ± {stats['std']:.3f}" if stats.get("std") is not None else ""
    return f"{stats['mean']:.3f}{std}" + ("" if compact else f" (n={stats['n']})")


FEW_SEEDS_MARK = "†"
"""Marks an interval from fewer than `MIN_SEEDS` seeds in an arm (`few_seeds`)."""


def _fmt_seeds(cmp: Mapping[str, Any]) -> str:
    seeds = cmp.get("seeds") or []
    if not seeds:
        return ""
    return ", " + " vs ".join(map(str, seeds)) + (" seed" if seeds == [1] else " seeds")


def _fmt_interval(cmp: Mapping[str, Any] | None, compact: bool = False) -> str:
    if not cmp or cmp.get("diff") is None:
        return "n/a" if compact else "n/a (no eval samples in the lake)"
    low, high = cmp["ci95"]
    mark = f" {FEW_SEEDS_MARK}" if cmp.get("few_seeds") else ""
    if compact:
        return f"{cmp['diff']:+.3f} [{low:+.3f}, {high:+.3f}] {cmp['noise']}{mark}"
    return (
        f"{cmp['diff']:+.3f} [{low:+.3f}, {high:+.3f}], {cmp['noise']} noise "
        f"({cmp['problems']} problems{_fmt_seeds(cmp)}){mark}"
    )


def _fmt_last_step(row: Mapping[str, Any], compact: bool = False) -> str:
    if row["last_step"] is None:
        return "none common to all seeds"
    text = str(row["last_step"])
    if row["steps_differ"]:
        stops = ", ".join(map(str, row["seed_last_steps"]))
        text += f" (seeds stopped at {stops}" + (")" if compact else ": last step all reached)")
    return text


def _fmt_change(row: Mapping[str, Any], compact: bool = False) -> str:
    if row["last_step"] is None:
        return "n/a"
    if row["first_step"] == row["last_step"]:
        return "n/a (one step evaluated)"
    return _fmt_interval(row["change"], compact)


def _fmt_reference(row: Mapping[str, Any], ref: str | None, compact: bool = False) -> str:
    vs = row.get("vs_reference")
    if ref is None or vs is None:
        return ""
    if vs.get("reference"):
        return "(reference)"
    if vs.get("step") is None:
        return "n/a (no step evaluated by all seeds of both)"
    return f"step {vs['step']}: {_fmt_interval(vs, compact)}"


def table_columns(summary: Mapping[str, Any]) -> list[str]:
    cols = ["group", "seeds", "first step", "pass@k at first", "last step", "pass@k at last"]
    cols.append("change last - first [95% CI]")
    if summary.get("reference"):
        cols.append(f"vs {summary['reference']} at last step [95% CI]")
    return cols


def table_rows(
    summary: Mapping[str, Any], eval_set: str, k: int, *, compact: bool = False
) -> list[list[str]]:
    """The cells of the table of one (set, k), one row per group (`compact`: shorter cells
    for a terminal; the files have the full ones)."""
    rows = []
    for row in summary["tables"]:
        if row["set"] != eval_set or row["k"] != k:
            continue
        cells = [
            row["group"],
            str(row["seeds"])
            if row.get("group_seeds", row["seeds"]) == row["seeds"]
            else f"{row['seeds']} of {row['group_seeds']}",
            "n/a" if row["first_step"] is None else str(row["first_step"]),
            _fmt_mean(row["first"], compact),
            _fmt_last_step(row, compact),
            _fmt_mean(row["last"], compact),
            _fmt_change(row, compact),
        ]
        if summary.get("reference"):
            cells.append(_fmt_reference(row, summary["reference"], compact))
        rows.append(cells)
    return rows


TABLE_NOTE = (
    "pass@k at first/last: mean ± sample standard deviation over seeds (n seeds) of each seed's "
    "pass@k from the lake's metrics. Change: pass@k at last minus pass@k at first, each seed's "
    "own change per problem averaged over the seeds and the problems, so it equals the "
    "difference of those two columns (up to rounding; problems with fewer than k judged "
    "samples at either step are left out of it). Reference column: the group's pass@k minus "
    "the reference group's, per problem over each group's seeds. Both with a two-level "
    "bootstrap 95% interval (2000 resamples): each resample draws the problems (one draw for "
    "both steps and both groups, so they stay paired) and each group's seeds, so the interval "
    "covers the problem draw, the sampling and the spread between seeds; with one seed per "
    "group it is the bootstrap over problems alone. 'outside noise' means the interval "
    "excludes 0."
)

FEW_SEEDS_NOTE = (
    f"{FEW_SEEDS_MARK} from fewer than {MIN_SEEDS} seeds in a group: resampling so few seeds "
    "cannot show their spread, so the interval is too narrow (with one seed it leaves the "
    f"training noise out). Use at least {MIN_SEEDS} seeds, {HEADLINE_SEEDS} for a headline "
    "claim."
)


def few_seeds_note(summary: Mapping[str, Any]) -> str | None:
    """`FEW_SEEDS_NOTE` when some interval of the tables is marked `few_seeds`, else None."""
    for row in summary["tables"]:
        for cmp in (row.get("change"), row.get("vs_reference")):
            if cmp and cmp.get("diff") is not None and cmp.get("few_seeds"):
                return FEW_SEEDS_NOTE
    return None


def _notes(summary: Mapping[str, Any]) -> list[str]:
    """The notes under the tables: unjudged evaluation samples, then the report's warnings."""
    notes = []
    for row in summary["tables"]:
        if row["k"] == summary["ks"][0] and row.get("unjudged_last"):
            notes.append(
                f"{row['group']}, {row['set']}: {int(row['unjudged_last'])} evaluation samples at "
                f"step {row['last_step']} could not be judged (pass@k counts judged samples only)"
            )
    few = few_seeds_note(summary)
    return ([few] if few else []) + notes + list(summary.get("warnings", []))


def _tables(summary: Mapping[str, Any]) -> Iterator[tuple[str, list[str], list[list[str]]]]:
    """Each table of the files, one per (set, k) with rows: its heading, its column names
    (pass@k spelled with its k) and its rows of full cells."""
    cols = table_columns(summary)
    for eval_set in summary["sets"]:
        for k in summary["ks"]:
            rows = table_rows(summary, eval_set, k)
            if rows:
                head = [c.replace("pass@k", f"pass@{k}") for c in cols]
                yield f"{set_title(eval_set)}: pass@{k}", head, rows


def render_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown tables ready to paste into docs/RESULTS.md (image path relative to them)."""
    lines = [f"## {summary['title']}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += [f"![pass@k against step]({PLOT_FILE})", "", f"*{summary['caption']}*", ""]
    for title, head, rows in _tables(summary):
        lines += [f"### {title}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for cells in rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    lines += [TABLE_NOTE, ""]
    for note in _notes(summary):
        lines.append(f"- {note}")
    lines.append("")
    lines += ["Runs:", ""]
    for g in summary["groups"]:
        ids = ", ".join(f"{r['run_id']} (seed {r['seed']})" for r in g["runs"])
        lines.append(f"- {g['label']}: {ids}")
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
img { max-width: 100%; }
.caption, .note { color: #555; font-size: 0.9em; }
.warn { color: #8a4b00; }
"""


def render_html(summary: Mapping[str, Any], png: bytes) -> str:
    """One static page: the PNG inline as a data URI, the tables as HTML; no scripts, no links."""
    esc = html.escape
    data = base64.b64encode(png).decode("ascii")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(summary['title'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(summary['title'])}</h1>",
    ]
    if summary.get("description"):
        parts.append(f"<p>{esc(summary['description'])}</p>")
    parts += [
        f'<img src="data:image/png;base64,{data}" alt="pass@k against step, mean over seeds '
        'with a min-max band">',
        f'<p class="caption">{esc(summary["caption"])}</p>',
    ]
    for title, head, rows in _tables(summary):
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append("<table><tr>")
        parts += [f"<th>{esc(c)}</th>" for c in head]
        parts.append("</tr>")
        for cells in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append(f'<p class="note">{esc(TABLE_NOTE)}</p>')
    notes = _notes(summary)
    if notes:
        parts.append("<ul>" + "".join(f'<li class="warn">{esc(n)}</li>' for n in notes) + "</ul>")
    parts.append(
        "<h2>Runs</h2><table><tr><th>group</th><th>seed</th><th>run</th>"
        "<th>directory</th><th>lake</th></tr>"
    )
    for g in summary["groups"]:
        for r in g["runs"]:
            parts.append(
                "<tr>"
                + "".join(
                    f"<td>{esc(str(v))}</td>"
                    for v in (g["label"], r["seed"], r["run_id"], r["run_dir"], r["lake"])
                )
                + "</tr>"
            )
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"
