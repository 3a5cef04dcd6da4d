"""One module per training algorithm, all driven by the same learner loop (`spo_train.train.loop`).

An algorithm owns its loss, its extra models (PPO's value model) and its metrics; the learner
owns the policy, its optimizer and learning-rate schedule, the batch and everything around a
step (rollouts, lake, checkpoints, logging, evaluation). The contract:

- `Algorithm.update(batch, learner)` runs this step's optimisation on `batch` (a `TrainBatch`):
  it computes the policy's log-probs through `learner.policy_logprobs(rows)` (gradients on),
  takes optimizer steps through `learner.optimize(loss)` (one or several: PPO and GRPO do
  `update_epochs x minibatches`), or counts one it leaves out through `learner.skip_step()`
  when the rows carry no learning signal (GRPO: no advantage; PPO: one reward for the whole
  batch; SFT: no success), and returns the step's metrics (`train/...` names).
- its rules (`rules`: defaults, checks, `needs_q0`, `online_only`, progress line) live in
  `spo_train.algorithm_rules`, torch-free, so settings and the CLI read them without torch;
- `state_dict()` / `load_state_dict()`: what a checkpoint must keep besides the policy (the
  value model and its optimizer), so `--resume` continues exactly.

`make_algorithm(config, ...)` picks the module by `config.algo` through the rules' registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from spo_train.algorithm_rules import AlgorithmRules, rules_of
from spo_train.config import TrainConfig


@dataclass
class TrainBatch:
    """One step's training rows, as tensors (B rows, T = the longest response).

    `ref_logprobs`, `model_logprobs`, `behaviour_logprobs`: `[B, T]` float32, 0 on padding;
    `model_logprobs` are the sampling model's own temperature-1 log-probs (PPO's pi_old),
    `behaviour_logprobs` those of the distribution that drew each token (mu: temperature and
    top-p applied); either is NaN on the rows that lack it (offline rows: GRPO's reference
    rows) and None when no row has it.
    `behaviour_seq_logprob` `[B]` float32: log mu(tau) = the sum of a row's behaviour log-probs,
    NaN for a row without them (TOPR's per-sequence ratio; None when the table has no such
    column). `mask` `[B, T]` bool,
    True on real response tokens. `reward` `[B]` (0 success, -1 failure); `q0` `[B]` (NaN for
    algorithms that need none). `group` `[B]` long: rows with the same value are samples of one
    problem drawn in one step (GRPO's groups). `mc_positions` `[B, K]` long and `mc_targets`
    `[B, K]` float: Monte-Carlo targets S_t of annotated rows in `spo_train.algorithms.losses.spo_loss`'s
    layout (prefix lengths, -1 for an empty slot), None when the run uses none (`mc_weight` 0)
    or no row of the batch has one (`spo_train.pts.attach_mc_targets`).
    """

    traj_ids: list[str]
    problem_ids: list[str]
    sources: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    ref_logprobs: Tensor
    mask: Tensor
    reward: Tensor
    q0: Tensor
    group: Tensor
    model_logprobs: Tensor | None = None
    behaviour_logprobs: Tensor | None = None
    behaviour_seq_logprob: Tensor | None = None
    mc_positions: Tensor | None = None
    mc_targets: Tensor | None = None

    def __len__(self) -> int:
        return len(self.traj_ids)


class Learner(Protocol):
    """What the learner loop gives an algorithm (see `spo_train.train.learner.PolicyLearner`)."""

    policy: torch.nn.Module
    device: str

    def policy_logprobs(self, batch: TrainBatch, rows: Sequence[int] | None = None) -> Tensor:
        """`[b, T]` log-probs of the taken tokens of `rows` (all when None) under the policy,
        with gradients; padded to the batch's T."""
        ...

    def optimize(self, loss: Tensor) -> float:
        """Backward, clip the policy's gradient norm, one optimizer step; returns the norm."""
        ...

    def skip_step(self) -> None:
        """Count an optimizer step left out because its rows carry no learning signal."""
        ...


class Algorithm:
    """Base of the algorithm modules (see the module docstring)."""

    name = ""

    def __init__(
        self,
        config: TrainConfig,
        *,
        pi0_path: object = None,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        """`config` the run's settings; `pi0_path` the reference model (algorithms that load
        one: PPO's value model); `say` prints a line to the user."""
        self.config = config

    @property
    def rules(self) -> AlgorithmRules:
        """Its rules (`spo_train.algorithm_rules`): defaults, checks, needs_q0, online_only."""
        return rules_of(self.name)

    def update(self, batch: TrainBatch, learner: Learner) -> dict[str, float]:
        raise NotImplementedError

    def configure_policy(self, learner: Learner) -> None:
        """Apply the run's step options (precision, log-prob chunks, activation checkpointing,
        compile: `spo_train.lm.fast_step`) to the learner's policy; once, idempotent. Called at
        the top of every `update`, so any learner's policy gets them."""
        import dataclasses

        from spo_train.lm.fast_step import configure_model, step_options

        options = step_options(self.config)
        if getattr(getattr(learner, "dist", None), "fsdp", False) and options.logprob_chunk_size:
            # FSDP2 shards at the root module too; the chunked path calls the decoder directly
            # and would skip the root's all-gather (docs/gpu.md, "Limits"): the plain path.
            options = dataclasses.replace(options, logprob_chunk_size=0)
        configure_model(learner.policy, options)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def extra_parameters(self) -> int:
        """Parameters this algorithm trains besides the policy (PPO: the value model)."""
        return 0


def make_algorithm(
    config: TrainConfig,
    *,
    pi0_path: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> Algorithm:
    """The algorithm module of `config.algo` (`config` already resolved), with its extra
    models loaded from `pi0_path` (PPO's value model is initialised from pi_0). The module is
    the one its rules name (`spo_train.algorithm_rules.RULES`)."""
    import importlib

    rules = rules_of(config.algo)
    module, _, name = rules.implementation.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(config, pi0_path=pi0_path, say=say)


def minibatch_rows(group: Tensor, minibatches: int, generator: torch.Generator) -> list[list[int]]:
    """Split row indices into `minibatches` shuffled parts of whole groups (a group's rows stay
    together, so GRPO's group statistics and PPO's per-problem rollouts are never split)."""
    groups = torch.unique(group).tolist()
    order = torch.randperm(len(groups), generator=generator).tolist()
    parts: list[list[int]] = [[] for _ in range(minibatches)]
    for i, g in enumerate(order):
        parts[i % minibatches].extend(torch.nonzero(group == groups[g]).flatten().tolist())
    return [p for p in parts if p]


def old_logprobs_and_weights(
    batch: TrainBatch, learner: Learner, cap: float
) -> tuple[Tensor, Tensor | None]:
    """PPO's and GRPO's pi_old and importance weights, `[B, T]` each.

    pi_old = the rows' `model_logprobs` (the sampling model's own temperature-1 log-probs), or,
    for rows without them (offline rows, NaN there), the policy now (detached). The per-token
    weight pi_old / mu corrects rollouts not drawn from pi_old itself (mu =
    `behaviour_logprobs`: temperature, top-p), truncated at `cap` (truncated importance
    sampling), 1 on rows without mu; None when no row carries mu.
    """
    old = batch.model_logprobs
    missing = torch.ones(len(batch), dtype=torch.bool) if old is None else old.isnan().any(1)
    if old is None:
        old = learner.policy_logprobs(batch).detach().cpu()
    elif bool(missing.any()):  # one forward of those rows only
        rows = torch.nonzero(missing).flatten()
        old = old.clone()
        old[rows] = learner.policy_logprobs(batch, rows.tolist()).detach().cpu().to(old.dtype)
    if batch.behaviour_logprobs is None:
        return old, None
    mu = batch.behaviour_logprobs
    mu = torch.where(mu.isnan(), old, mu)  # no mu: weight 1
    log_w = torch.where(batch.mask, old - mu, torch.zeros_like(old))
    return old, log_w.exp().clamp(max=cap)
