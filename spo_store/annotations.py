"""Annotations: sparse per-token success probabilities of trajectories (no torch).

`spo pts` (pivotal token search, `spo_train.pts`) writes one `annotations` row per (trajectory,
reference model, tokenizer, sampler, rollouts per estimate, threshold): the positions it
estimated and, at each, `S_t`, the judged rollouts behind it and their successes. Keyed by
`annotation_id` (`Lake.insert_new`), so a rerun or a concurrent run stores each once.

Positions (the one convention everywhere): position `t` is the 0-based index of a token in the
response's token ids (`spo_train.lm.logprobs.response_logprobs` column `t`), and `S_t` is the
success probability after emitting tokens `0..t`. Position -1 is the prompt alone. `S` after
the whole response (position `T - 1`) is 1 for a successful trajectory and is not stored.
`spo_train.algorithms.losses.spo_loss` counts prefix lengths instead: position `t` is its `t + 1`.

The rollouts behind an estimate are `trajectories` rows (source `pts`) with deterministic ids
`pts-<rollout_key>@<position>#<k>` (`rollout_traj_id`), so a rerun finds and reuses them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake, sql_quote, utc_now

ROLLOUT_SOURCE = "pts"
_ROLLOUT_ID = re.compile(r"^pts-([0-9a-f]+)@(-?\d+)#(\d+)$")


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()


def rollout_key(traj_id: str, ref_model_id: str, tokenizer_id: str, sampler_key: str) -> str:
    """The key of a trajectory's rollouts under one model, tokenizer and sampler (16 hex
    digits): the same prefix continued by the same sampler reuses its rollouts whatever the
    threshold or the number of rollouts asked."""
    return _digest("spo-pts-rollouts-v1", traj_id, ref_model_id, tokenizer_id, sampler_key)[:16]


def rollout_traj_id(key: str, position: int, k: int) -> str:
    """`pts-<key>@<position>#<k>`: rollout `k` continuing the response after token `position`
    (-1: from the prompt alone)."""
    return f"pts-{key}@{int(position)}#{int(k)}"


def parse_rollout_traj_id(traj_id: str) -> tuple[str, int, int] | None:
    """`(rollout_key, position, k)` of a rollout id, None for any other id."""
    m = _ROLLOUT_ID.match(traj_id)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def annotation_id(
    traj_id: str,
    ref_model_id: str,
    tokenizer_id: str,
    sampler_key: str,
    rollouts_per_estimate: int,
    threshold: float,
    method: str = "pts",
) -> str:
    """The key of one annotation (32 hex digits): what was annotated, with what, how."""
    return _digest(
        "spo-annotation-v1",
        traj_id,
        ref_model_id,
        tokenizer_id,
        sampler_key,
        int(rollouts_per_estimate),
        repr(float(threshold)),
        method,
    )[:32]


def annotation_row(
    *,
    traj_id: str,
    run_id: str,
    ref_model_id: str,
    tokenizer_id: str,
    sampler_key: str,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    rollouts_per_estimate: int,
    threshold: float,
    response_tokens: int,
    estimates: Mapping[int, tuple[int, int]],
    rollout_key_: str,
    tokens: Sequence[str] | None = None,
    method: str = "pts",
) -> dict[str, Any]:
    """An `annotations` row from `estimates`: position -> (judged rollouts n, successes c),
    positions in `-1 .. response_tokens - 2`, `n >= 1`, `0 <= c <= n`; `tokens`: the text of
    each response token. Raises SpoError for anything else (a bug upstream must not store
    targets at the wrong tokens)."""
    positions = sorted(estimates)
    if tokens is not None and len(tokens) != response_tokens:
        raise SpoError(
            f"annotation of {traj_id}: {len(tokens)} token texts for {response_tokens} tokens"
        )
    for p in positions:
        n, c = estimates[p]
        if not -1 <= p < max(response_tokens - 1, 0) or n < 1 or not 0 <= c <= n:
            raise SpoError(
                f"annotation of {traj_id}: estimate ({n}, {c}) at position {p} is not valid for "
                f"a response of {response_tokens} tokens"
            )
    return {
        "annotation_id": annotation_id(
            traj_id,
            ref_model_id,
            tokenizer_id,
            sampler_key,
            rollouts_per_estimate,
            threshold,
            method,
        ),
        "traj_id": traj_id,
        "run_id": run_id,
        "tokenizer_id": tokenizer_id,
        "positions": positions,
        "s_t": [estimates[p][1] / estimates[p][0] for p in positions],
        "samples": [estimates[p][0] for p in positions],
        "successes": [estimates[p][1] for p in positions],
        "method": method,
        "ref_model_id": ref_model_id,
        "sampler_key": sampler_key,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "rollouts_per_estimate": int(rollouts_per_estimate),
        "threshold": float(threshold),
        "response_tokens": int(response_tokens),
        "rollout_key": rollout_key_,
        "tokens": list(tokens) if tokens is not None else None,
        "created_at": utc_now(),
    }


def write_annotations(lake: Lake, rows: Sequence[Mapping[str, Any]]) -> int:
    """Store the annotations whose key is new (one atomic commit); returns how many."""
    return lake.insert_new("annotations", rows)[1]


def existing_annotation_ids(lake: Lake, ids: Iterable[str]) -> set[str]:
    """Which of `ids` are already stored."""
    wanted = sorted(set(ids))
    found: set[str] = set()
    ds = lake.dataset("annotations")
    for start in range(0, len(wanted), 2000):
        chunk = ", ".join(sql_quote(i) for i in wanted[start : start + 2000])
        table = ds.to_table(columns=["annotation_id"], filter=f"annotation_id IN ({chunk})")
        found.update(table.column(0).to_pylist())
    return found


def rollout_rewards(lake: Lake, traj_ids: Sequence[str]) -> dict[str, float | None]:
    """traj_id -> reward (None: not judged) of the rollouts among `traj_ids` already stored."""
    out: dict[str, float | None] = {}
    ds = lake.dataset("trajectories")
    ids = sorted(set(traj_ids))
    for start in range(0, len(ids), 2000):
        chunk = ", ".join(sql_quote(i) for i in ids[start : start + 2000])
        table = ds.to_table(columns=["traj_id", "reward"], filter=f"traj_id IN ({chunk})")
        for t, r in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
            out[t] = r
    return out


def pooled_targets(
    lake: Lake,
    traj_ids: Sequence[str],
    *,
    ref_model_id: str,
    tokenizer_id: str,
    method: str = "pts",
) -> dict[str, tuple[int, dict[int, tuple[int, int]]]]:
    """The stored estimates of `traj_ids` under one reference model and tokenizer, pooled:
    traj_id -> (response_tokens, {position: (judged rollouts, successes)}).

    Annotations of one trajectory made with the same sampler (other thresholds or rollouts per
    estimate) share their rollouts: rollout `k` of a position is the same trajectory row
    (`pts-<rollout_key>@<position>#<k>`) for every K, so adding their counts would count it
    twice. At each position the estimate with the most judged rollouts is kept (it contains the
    others' rollouts). Annotations made with different samplers (temperature, top-p,
    max_new_tokens) estimate different `S_t` and are never mixed: the sampler with the most
    judged rollouts over the trajectory is used (ties: the smaller `sampler_key`). Rows that
    disagree on the response length (another tokenisation) are left out."""
    if not traj_ids:
        return {}
    ids = ", ".join(sql_quote(t) for t in sorted(set(traj_ids)))
    rows = (
        lake.dataset("annotations")
        .to_table(
            columns=[
                "traj_id",
                "sampler_key",
                "positions",
                "samples",
                "successes",
                "response_tokens",
            ],
            filter=(
                f"traj_id IN ({ids}) AND ref_model_id = {sql_quote(ref_model_id)} "
                f"AND tokenizer_id = {sql_quote(tokenizer_id)} AND method = {sql_quote(method)}"
            ),
        )
        .to_pylist()
    )
    # traj_id -> sampler_key -> (response_tokens, {position: (n, c)})
    per_sampler: dict[str, dict[str, tuple[int, dict[int, tuple[int, int]]]]] = {}
    for r in sorted(rows, key=lambda r: (r["traj_id"], r["sampler_key"] or "")):
        if r["successes"] is None or r["response_tokens"] is None:
            continue
        by_sampler = per_sampler.setdefault(r["traj_id"], {})
        length, pooled = by_sampler.setdefault(r["sampler_key"] or "", (r["response_tokens"], {}))
        if length != r["response_tokens"]:
            continue
        for p, n, c in zip(r["positions"], r["samples"], r["successes"], strict=True):
            if n > pooled.get(p, (-1, 0))[0]:
                pooled[p] = (n, c)
    out: dict[str, tuple[int, dict[int, tuple[int, int]]]] = {}
    for traj_id, by_sampler in per_sampler.items():
        best = min(
            by_sampler,
            key=lambda k: (-sum(n for n, _c in by_sampler[k][1].values()), k),
        )
        out[traj_id] = by_sampler[best]
    return out
