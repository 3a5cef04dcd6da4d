"""The learner's side of a step: the policy, its optimizer and schedule as an algorithm sees
them (`PolicyLearner`, the `spo_train.algorithms.Learner` contract), their one assembly
(`build_learner`, used by the trainer, the data-parallel followers and the step benchmarks;
`LearnerParts.step` is one training step), and the batch as tensors (`to_train_batch`: token
ids, pi_0 log-probs, the sampler's log-probs, rewards, q0, groups). No lake here."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from spo_train.algorithms import Algorithm, TrainBatch
from spo_train.config import TrainConfig
from spo_train.lm.logprobs import response_logprobs
from spo_train.train.batch import pad_right
from spo_train.train.distributed import Distributed, shard_bounds


def policy_logprobs(
    policy: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_token_id: int,
    micro_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the taken response tokens under `policy`, with gradients, dropout off.

    The loss compares log pi_theta with log pi_0 token by token, so both must come from the
    deterministic network: the forward runs in eval mode (dropout off) while autograd records
    (as TRL does for its policy forward). Returns `([B, T] log-probs, [B, T] bool mask)`.
    """
    policy.eval()
    return response_logprobs(
        policy,
        prompt_ids,
        response_ids,
        pad_token_id=pad_token_id,
        micro_batch_size=micro_batch_size,
    )


class PolicyLearner:
    """The policy, its AdamW and its schedule, as an algorithm sees them (`algorithms.Learner`).

    With `dist` (data-parallel, `spo_train.train.distributed`): `policy_logprobs` forwards this
    rank's contiguous shard of the rows and returns all rows' log-probs (all-gathered, the
    gradient flowing back to this rank's shard), and `optimize` sums the gradients over the
    ranks before clipping, so every rank takes the one-process step on the global batch."""

    def __init__(
        self,
        policy: torch.nn.Module,
        config: TrainConfig,
        pad_token_id: int | None,
        *,
        dist: Distributed | None = None,
    ) -> None:
        self.policy, self.config, self.pad_token_id = policy, config, pad_token_id
        self.dist = dist
        self.device = dist.device if dist is not None else config.device
        self.optimizer = torch.optim.AdamW(
            policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
        )
        self.optimizer_steps = 0  # steps AdamW took (restored from its state on resume)
        self.skipped_steps = 0  # updates an algorithm skipped for want of signal (skip_step)

    def _forward(
        self, batch: TrainBatch, idx: list[int], width: int, micro: int | None
    ) -> torch.Tensor:
        """`[len(idx), width]` log-probs of rows `idx` (with gradients)."""
        lp, _mask = policy_logprobs(
            self.policy,
            [batch.prompt_ids[i] for i in idx],
            [batch.response_ids[i] for i in idx],
            pad_token_id=self.pad_token_id,
            micro_batch_size=micro,
        )
        lp = lp[:, :width]
        return lp if lp.shape[1] == width else torch.nn.functional.pad(lp, (0, width - lp.shape[1]))

    def policy_logprobs(self, batch: TrainBatch, rows: Sequence[int] | None = None) -> torch.Tensor:
        idx = list(range(len(batch))) if rows is None else list(rows)
        width = batch.mask.shape[1]
        micro = self.config.micro_batch_size
        if self.dist is None:
            return self._forward(batch, idx, width, micro)
        mine = self.dist.shard(idx)
        if self.dist.fsdp:
            local = self._forward_fsdp(batch, idx, mine, width)
        elif mine:
            local = self._forward(batch, mine, width, micro).float()
        else:  # no rows here this call: an empty block (the gather still needs one)
            local = torch.zeros(0, width, device=self.device, requires_grad=True)
        return self.dist.gather(local, len(idx))

    def _forward_fsdp(
        self, batch: TrainBatch, idx: list[int], mine: list[int], width: int
    ) -> torch.Tensor:
        """FSDP2: every rank runs the same number of forwards (each one all-gathers parameters),
        so a rank with fewer rows runs a one-token dummy forward, kept in the graph with weight
        0 so its backward (the reduce-scatter) runs too (run on CPU/gloo; not yet on GPUs)."""
        dist = self.dist
        assert dist is not None
        most = max(
            hi - lo
            for lo, hi in (
                shard_bounds(len(idx), dist.world_size, r) for r in range(dist.world_size)
            )
        )
        micro = self.config.micro_batch_size or most
        parts: list[torch.Tensor] = []
        for k in range(max(1, -(-most // micro))):
            chunk = mine[k * micro : (k + 1) * micro]
            if chunk:
                parts.append(self._forward(batch, chunk, width, None).float())
            else:
                ids = torch.tensor([[self.pad_token_id or 0]], device=self.device)
                dummy = self.policy(input_ids=ids).logits.float().sum() * 0.0
                parts.append(torch.zeros(0, width, device=self.device) + dummy)
        return torch.cat(parts)

    def optimize(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.dist is not None and not self.dist.fsdp:
            # Each rank holds its shard's share of the global gradient: their sum is the
            # one-process gradient, clipped and stepped identically on every rank.
            self.dist.all_reduce_grads(list(self.policy.parameters()))
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer_steps += 1
        return float(norm)

    def skip_step(self) -> None:
        """Count an optimizer step the algorithm left out because its rows carry no learning
        signal (nothing to backward: AdamW would still move every weight by about lr on a
        near-zero gradient, through its normalisation, momentum and weight decay)."""
        self.skipped_steps += 1


@dataclass
class LearnerParts:
    """What a process trains with (`build_learner`): the learner (policy, AdamW, schedule), the
    algorithm (its loss and extra models), the tokenizer, the trainer state read from the
    checkpoint it resumed from (`{}` when fresh), and, on rank 0 of an FSDP group, the
    unsharded copy of the policy it samples and saves with (`full`)."""

    learner: PolicyLearner
    algorithm: Algorithm
    tokenizer: Any
    state: dict[str, Any] = field(default_factory=dict)
    full: torch.nn.Module | None = None

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """One training step on `batch`: the algorithm's update (its optimizer step(s)), then
        the schedule's step. Returns the algorithm's metrics plus `train/lr`, the rate this
        step trained at, and the run's cumulative `train/optimizer_steps` (AdamW steps taken:
        PPO and GRPO take `update_epochs x minibatches` per training step) and
        `train/skipped_optimizer_steps` (updates left out for want of signal)."""
        metrics = self.algorithm.update(batch, self.learner)
        lr = self.learner.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():
            # An update may take no optimizer step (SFT on a batch without a success): the
            # schedule still follows the steps, which is what torch warns about here.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.learner.scheduler.step()
        return {
            **metrics,
            "train/lr": lr,
            "train/optimizer_steps": float(self.learner.optimizer_steps),
            "train/skipped_optimizer_steps": float(self.learner.skipped_steps),
        }


def build_learner(
    config: TrainConfig,
    pi0_path: Path,
    checkpoint: Path | None = None,
    *,
    dist: Distributed | None = None,
    device: str | None = None,
    keep_full: bool = False,
    say: Callable[[str], None] = lambda _m: None,
) -> LearnerParts:
    """The one assembly of a learner, used by the trainer, the data-parallel followers and the
    step benchmark: the policy from `checkpoint` (else pi_0 at `pi0_path`) on `device` (default
    `config.device`), dropout off (the loss forward is deterministic, see `policy_logprobs`),
    sharded or replicated by `dist`; `PolicyLearner`; the algorithm of `config.algo` (its extra
    models from pi_0); the checkpoint's optimizer, schedule and algorithm state. `keep_full`:
    keep an unsharded copy of the policy when `dist` shards it (FSDP, rank 0)."""
    from spo_train.algorithms import make_algorithm
    from spo_train.lm.models import load_model_and_tokenizer
    from spo_train.train.checkpoint import load_trainer_state

    policy, tokenizer = load_model_and_tokenizer(
        checkpoint or pi0_path, device=device or config.device
    )
    policy.eval()
    full = copy.deepcopy(policy) if keep_full and dist is not None and dist.fsdp else None
    if dist is not None:
        policy = dist.prepare_policy(policy)
    learner = PolicyLearner(policy, config, tokenizer.pad_token_id, dist=dist)
    algorithm = make_algorithm(config, pi0_path=pi0_path, say=say)
    state = load_trainer_state(checkpoint, learner, algorithm) if checkpoint is not None else {}
    if state:
        learner.optimizer_steps = adamw_steps(learner.optimizer)
        learner.skipped_steps = int(state.get("skipped_optimizer_steps", -1))
        if learner.skipped_steps < 0:
            # A checkpoint from before the count: only SFT skipped then (one step per training
            # step), so the training steps AdamW did not take are its skipped ones.
            per_step = (
                config.update_epochs * config.minibatches if config.algo in ("ppo", "grpo") else 1
            )
            done = int(state.get("step", 0)) * per_step
            learner.skipped_steps = max(0, done - learner.optimizer_steps)
    return LearnerParts(learner, algorithm, tokenizer, state, full)


def adamw_steps(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer steps AdamW's state has counted (its per-parameter `step`, the same for
    every parameter that had a gradient; 0 before the first step)."""
    steps = [
        int(st["step"]) for st in optimizer.state.values() if isinstance(st, dict) and "step" in st
    ]
    return max(steps, default=0)


def _row_logprobs(table: pa.Table, column: str, width: int) -> torch.Tensor | None:
    """`[B, width]` from a list<float> column, NaN on the rows that lack it (offline rows carry
    no sampler log-probs: GRPO's reference rows) or whose values are not all log-probabilities
    (`_are_logprobs`: a row written outside spo's sampler); None when the column is absent or no row has them all. PPO and GRPO take such a
    row's pi_old from the policy and weight it 1 (`algorithms.old_logprobs_and_weights`)."""
    if column not in table.column_names:
        return None
    values = table.column(column).to_pylist()
    unknown = [not _are_logprobs(v) for v in values]
    if all(unknown):
        return None
    out = pad_right([[] if u else v for v, u in zip(values, unknown, strict=True)], width)
    out[torch.tensor(unknown, dtype=torch.bool)] = float("nan")
    return out


SEQ_LOGPROB_SLACK = 1e-3
"""How far above 0 a token's log-prob, or a sequence's summed log-prob, may lie and still be a
log-probability (float rounding of per-token values that are 0 up to it, e.g. greedy tokens)."""


def _are_logprobs(values: list[float | None] | None) -> bool:
    """A row's per-token values are log-probabilities of a drawn response: present, no NULL,
    each finite and at most `SEQ_LOGPROB_SLACK`, and so is their sum (the one rule of
    `_row_logprobs` and `_row_logprob_sums`)."""
    if values is None or None in values:
        return False
    if not all(math.isfinite(x) and x <= SEQ_LOGPROB_SLACK for x in values):
        return False
    return float(sum(values)) <= SEQ_LOGPROB_SLACK


def _row_logprob_sums(table: pa.Table, column: str) -> torch.Tensor | None:
    """`[B]` float32: each row's sum of a list<float> column (a sequence's log-prob); NaN
    (unknown) for a row without it or whose values are no log-probabilities of a drawn
    sequence (`_are_logprobs`: a NULL, a token drawn with probability 0, a NaN, a probability
    above 1). None when the column is absent.
    Such rows are written outside spo's sampler; TOPR leaves a failure with an unknown mu out
    (`train/negatives_without_mu`) rather than weigh it by a made-up ratio."""
    if column not in table.column_names:
        return None
    sums = [
        float(sum(v)) if _are_logprobs(v) else math.nan for v in table.column(column).to_pylist()
    ]
    return torch.tensor(sums, dtype=torch.float32)


def to_train_batch(
    prepared: Any, table: pa.Table, sources: list[str], groups: list[int]
) -> TrainBatch:
    """The algorithms' view of a prepared batch (`spo_train.train.batch.PreparedBatch`)."""
    lengths = [len(r) for r in prepared.response_ids]
    width = max(lengths, default=0)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return TrainBatch(
        traj_ids=prepared.traj_ids,
        problem_ids=table.column("problem_id").to_pylist(),
        sources=sources,
        prompt_ids=prepared.prompt_ids,
        response_ids=prepared.response_ids,
        ref_logprobs=pad_right(prepared.ref_logprobs, width),
        mask=mask,
        reward=prepared.reward,
        q0=prepared.q0,
        group=torch.tensor(groups, dtype=torch.long),
        model_logprobs=_row_logprobs(table, "model_logprobs", width),
        behaviour_logprobs=_row_logprobs(table, "behaviour_logprobs", width),
        behaviour_seq_logprob=_row_logprob_sums(table, "behaviour_logprobs"),
    )
