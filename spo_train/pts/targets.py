"""What training and analysis take from PTS annotations: Monte-Carlo targets for a training
batch (`attach_mc_targets`), the largest jump of S and a plot of S_t along a response."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spo_store.annotations import (
    pooled_targets,
)
from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote


# ------------------------------------------------------------------------------------ training
def attach_mc_targets(batch: Any, lake: Lake, *, ref_model_id: str, tokenizer_id: str) -> int:
    """Set `batch.mc_positions` / `batch.mc_targets` (`spo_train.algorithms.losses.pad_mc_targets` layout)
    from the lake's PTS annotations of the batch's trajectories under this reference model and
    tokenizer; returns the number of targets. A stored position t becomes `spo_loss`'s prefix
    length t + 1 (Q after token t); position -1 (`Q_0 = q0`, no gradient) is left out, and so
    is an annotation whose response length differs from the batch row's (other token ids)."""
    from spo_train.algorithms.losses import pad_mc_targets

    pooled = pooled_targets(
        lake, list(batch.traj_ids), ref_model_id=ref_model_id, tokenizer_id=tokenizer_id
    )
    per_row: list[tuple[list[int], list[float]] | None] = []
    count = 0
    for traj_id, response in zip(batch.traj_ids, batch.response_ids, strict=True):
        entry = pooled.get(traj_id)
        if entry is None or entry[0] != len(response):
            per_row.append(None)
            continue
        positions = [p for p in sorted(entry[1]) if 0 <= p < len(response)]
        per_row.append(
            ([p + 1 for p in positions], [entry[1][p][1] / entry[1][p][0] for p in positions])
        )
        count += len(positions)
    if count == 0:
        batch.mc_positions = batch.mc_targets = None
        return 0
    batch.mc_positions, batch.mc_targets = pad_mc_targets(per_row)
    return count


# ------------------------------------------------------------------------------------ analysis
def largest_jump_annotation(lake: Lake, annotation_ids: Sequence[str]) -> str | None:
    """The annotation among `annotation_ids` with the largest jump of S between adjacent
    stored positions (S = 1 after the last token included); None when there is none."""
    if not annotation_ids:
        return None
    ids = ", ".join(sql_quote(i) for i in annotation_ids)
    rows = lake.sql_arrow(
        "SELECT annotation_id, positions, s_t, response_tokens FROM annotations "
        f"WHERE annotation_id IN ({ids})"
    ).to_pylist()
    best, best_jump = None, -1.0
    for r in rows:
        s = dict(zip(r["positions"], r["s_t"], strict=True))
        s[r["response_tokens"] - 1] = 1.0
        ps = sorted(s)
        jump = max((abs(s[b] - s[a]) for a, b in zip(ps, ps[1:], strict=False)), default=0.0)
        if jump > best_jump:
            best, best_jump = r["annotation_id"], jump
    return best


def plot_annotation(lake: Lake, annotation: str, path: str | Path, tokenizer: Any) -> Path:
    """Draw S_t along the response of one annotation to a PNG: S at each estimated position
    (and 1 after the last token) as a step line (S is flat between estimates as far as the
    search knows), each estimate's 95% Wilson interval, pivotal tokens (adjacent positions
    with a jump above the threshold) labelled with their text. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = lake.sql_arrow(
        "SELECT a.*, t.problem_id, p.name, t.tokenizer_id AS row_tokenizer, t.response_ids, "
        "t.response, t.finish_reason FROM annotations a JOIN trajectories t USING (traj_id) "
        f"JOIN problems p USING (problem_id) WHERE a.annotation_id = {sql_quote(annotation)}"
    ).to_pylist()
    if not rows:
        raise SpoError(f"no annotation {annotation!r} in lake {lake.uri}")
    a = rows[0]
    length = a["response_tokens"]
    if a["row_tokenizer"] == a["tokenizer_id"] and a["response_ids"] is not None:
        ids = list(a["response_ids"])
    else:
        from spo_train.lm.prompting import encode_response

        ids = encode_response(tokenizer, a["response"], a["finish_reason"])
    xs = [*a["positions"], length - 1]
    ys = [*a["s_t"], 1.0]
    fig = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.step(xs, ys, where="post", color="#1f77b4", lw=1.5, label="S_t (flat between estimates)")
    if a["positions"]:
        bounds = [_wilson(c, n) for c, n in zip(a["successes"], a["samples"], strict=True)]
        below = [s - b[0] for s, b in zip(a["s_t"], bounds, strict=True)]
        above = [b[1] - s for s, b in zip(a["s_t"], bounds, strict=True)]
        ax.errorbar(
            a["positions"],
            a["s_t"],
            yerr=[below, above],
            fmt="o",
            ms=4,
            color="#1f77b4",
            ecolor="#9ecae1",
            capsize=2,
            label=f"estimate ({a['rollouts_per_estimate']} rollouts each, 95% Wilson interval)",
        )
    s_at = dict(zip(xs, ys, strict=True))
    for p in sorted(s_at):
        jump = p - 1 in s_at and abs(s_at[p] - s_at[p - 1]) > (a["threshold"] or 0.0)
        if jump and 0 <= p < len(ids):
            token = tokenizer.decode([ids[p]]).replace("\n", "\\n")
            ax.annotate(
                repr(token)[1:-1],
                (p, s_at[p]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
                color="#d62728",
            )
            ax.axvline(p, color="#d62728", lw=0.6, ls=":")
    ax.set_xlim(-1.5, length - 0.5)
    ax.set_ylim(-0.05, 1.12)
    ax.set_xlabel("response token position t (-1: the prompt alone)")
    ax.set_ylabel("S_t = P(success | a_<=t) under pi_0")
    ax.set_title(
        f"{a['name']}: {a['traj_id']} ({length} tokens, threshold {a['threshold']:g})",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _wilson(c: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion c/n."""
    if n == 0:
        return 0.0, 1.0
    p = c / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
