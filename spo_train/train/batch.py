"""Turn sampled lake rows into training tensors' inputs: token ids and reference log-probs.

Token ids and reference log-probs are taken, in order of preference, from the trajectory row
itself (when its `tokenizer_id` / `ref_model_id` match the ones in use), from the lake's
`token_cache` table (keyed by those identities, so a different tokenizer or reference model
never reads stale ids), or computed now and written to `token_cache` so the next run with the
same pi_0 skips the reference forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch

from spo_train.lm.logprobs import response_logprobs
from spo_train.lm.prompting import encode_prompt, encode_response, problem_prompt

if TYPE_CHECKING:  # the lake (Lance, DuckDB) loads only where a cache is used: `spo bench
    from spo_store.lake import Lake  # step` and the GPU check import this module without it


@dataclass
class PreparedBatch:
    traj_ids: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    ref_logprobs: list[list[float]]
    q0: torch.Tensor  # [B]
    reward: torch.Tensor  # [B]
    cache_hits: int = 0
    ref_forwards: int = 0


class ReferenceCache:
    """Token ids and pi_0 log-probs for trajectories, backed by the lake's `token_cache`.

    Rows without cached log-probs get one `no_grad` forward of `ref_model` with its step
    options (`spo_train.lm.fast_step.configure_model`; by default bf16 autocast on CUDA, float32
    on a CPU, log-probs in chunks). The cache is keyed by model identity, not precision
    (docs/gpu.md, "Tolerances")."""

    def __init__(
        self,
        lake: Lake,
        tokenizer: Any,
        tokenizer_id: str,
        ref_model: torch.nn.Module,
        ref_model_id: str,
        run_id: str,
        micro_batch_size: int | None = None,
    ) -> None:
        self.lake, self.tokenizer, self.tokenizer_id = lake, tokenizer, tokenizer_id
        self.ref_model, self.ref_model_id, self.run_id = ref_model, ref_model_id, run_id
        self.micro_batch_size = micro_batch_size
        self.ref_forward_rows = 0  # how many rows needed a reference forward (tests read this)

    def lookup(self, traj_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not traj_ids:
            return {}
        from spo_store.lake import sql_quote

        ids = ", ".join(sql_quote(t) for t in traj_ids)
        rows = (
            self.lake.dataset("token_cache")
            .to_table(
                filter=f"tokenizer_id = {sql_quote(self.tokenizer_id)} AND ref_model_id = {sql_quote(self.ref_model_id)} AND traj_id IN ({ids})",
                columns=["traj_id", "prompt_ids", "response_ids", "ref_logprobs"],
            )
            .to_pylist()
        )
        return {r["traj_id"]: r for r in rows}

    def prepare(self, rows: pa.Table, problems: Mapping[str, Mapping[str, Any]]) -> PreparedBatch:
        data = rows.to_pylist()
        prompt_ids: list[list[int] | None] = [None] * len(data)
        response_ids: list[list[int] | None] = [None] * len(data)
        ref_lp: list[list[float] | None] = [None] * len(data)
        for i, r in enumerate(data):
            if (
                r.get("tokenizer_id") == self.tokenizer_id
                and r.get("prompt_ids") is not None
                and r.get("response_ids") is not None
            ):
                prompt_ids[i], response_ids[i] = r["prompt_ids"], r["response_ids"]
                if r.get("ref_model_id") == self.ref_model_id and r.get("ref_logprobs") is not None:
                    ref_lp[i] = r["ref_logprobs"]
        missing = [i for i in range(len(data)) if ref_lp[i] is None]
        cached = self.lookup(sorted({data[i]["traj_id"] for i in missing}))
        hits = 0
        for i in missing:
            entry = cached.get(data[i]["traj_id"])
            if entry is not None:
                prompt_ids[i], response_ids[i], ref_lp[i] = (
                    entry["prompt_ids"],
                    entry["response_ids"],
                    entry["ref_logprobs"],
                )
                hits += 1
        todo = [i for i in range(len(data)) if ref_lp[i] is None]
        if todo:
            for i in todo:
                if prompt_ids[i] is None:
                    # the prompt the rollouts are sampled with (fn_name, starter code included)
                    problem = problems[data[i]["problem_id"]]
                    prompt_ids[i] = encode_prompt(
                        self.tokenizer, problem_prompt(problem, self.tokenizer)
                    )
                    # a response cut at max_new_tokens gets no eos it never generated
                    response_ids[i] = encode_response(
                        self.tokenizer, data[i]["response"], data[i].get("finish_reason")
                    )
            # One reference forward per distinct trajectory (a batch may repeat rows).
            unique = list({data[i]["traj_id"]: i for i in todo}.values())
            with torch.no_grad():
                lp, mask = response_logprobs(
                    self.ref_model,
                    [prompt_ids[i] for i in unique],
                    [response_ids[i] for i in unique],
                    pad_token_id=self.tokenizer.pad_token_id,
                    micro_batch_size=self.micro_batch_size,
                    requires_grad=False,
                )
            self.ref_forward_rows += len(unique)
            by_id = {}
            for row_idx, i in enumerate(unique):
                by_id[data[i]["traj_id"]] = lp[row_idx][mask[row_idx]].tolist()
            for i in todo:
                ref_lp[i] = by_id[data[i]["traj_id"]]
            from spo_store.lake import utc_now

            now = utc_now()
            self.lake.append(
                "token_cache",
                [
                    {
                        "traj_id": data[i]["traj_id"],
                        "tokenizer_id": self.tokenizer_id,
                        "ref_model_id": self.ref_model_id,
                        "prompt_ids": prompt_ids[i],
                        "response_ids": response_ids[i],
                        "ref_logprobs": ref_lp[i],
                        "run_id": self.run_id,
                        "created_at": now,
                    }
                    for i in unique
                ],
            )
        # NaN where the problem has no q0 (PPO and GRPO need none; SPO's rows always have one)
        q0 = torch.tensor(
            [
                math.nan
                if problems[r["problem_id"]].get("q0") is None
                else problems[r["problem_id"]]["q0"]
                for r in data
            ],
            dtype=torch.float32,
        )
        reward = torch.tensor([r["reward"] for r in data], dtype=torch.float32)
        return PreparedBatch(
            traj_ids=[r["traj_id"] for r in data],
            prompt_ids=[list(p) for p in prompt_ids],  # type: ignore[arg-type]
            response_ids=[list(p) for p in response_ids],  # type: ignore[arg-type]
            ref_logprobs=[list(p) for p in ref_lp],  # type: ignore[arg-type]
            q0=q0,
            reward=reward,
            cache_hits=hits,
            ref_forwards=len(todo),
        )


def pad_right(rows: list[list[float]], width: int) -> torch.Tensor:
    """`[B, width]` float32, each row right-padded with 0."""
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        n = min(len(r), width)
        if n:
            out[i, :n] = torch.tensor(r[:n], dtype=torch.float32)
    return out
