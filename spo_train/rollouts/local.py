"""The local rollout source: sample from the rollout policy in this process, judge in the
sandbox, commit to the lake.

A `spo_train.rollouts.sources.RolloutSource`: the learner loop (`spo_train.train.loop`) calls
`wait_for(step, ready)` once per step (this source samples the step's rollouts then) and
`sync(policy, version)` every `model_update_interval` steps. The producer holds its own copy of
the policy (the rollout policy: stale by up to `model_update_interval - 1` steps, as the paper's
workers are). `spo train --rollout-workers N` uses `spo_train.rollouts.ray_rollouts.RayRolloutProducer`
instead (Ray actors sample while the trainer trains, docs/rollouts.md). Either way rows are
written with keyed writes in groups (`spo_train.rollouts.sampling.grouped_traj_ids`) and carry the
rollout policy's version, the sampler settings and the log-probs of both the sampling
distribution and the sampling model (see `spo_train.rollouts.sampling`); nothing but the lake passes them
to the learner.
"""

from __future__ import annotations

import copy
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from spo_store.lake import Lake
from spo_train.config import TrainConfig
from spo_train.lm.generation import TransformersGenerator
from spo_train.rollouts.sampling import SamplerSettings, sample_and_judge
from spo_train.rollouts.tally import RolloutTally


class RolloutProducer:
    """Online rollouts of one run (`config` resolved: temperatures and top-p filled in).

    `problems`: the run's training problems (rows of `spo_train.rollouts.sampling.load_problems`); each
    step draws `ceil(online_per_step / rollout_n)` of them, seeded by `(seed, step)`, and
    samples `rollout_n` responses of each (whole groups: GRPO's and PPO's batches are exactly
    these rows)."""

    def __init__(
        self,
        lake: Lake,
        policy: torch.nn.Module,
        tokenizer: Any,
        *,
        config: TrainConfig,
        problems: Sequence[Mapping[str, Any]],
        run_id: str,
        tokenizer_id: str,
        ref_model_id: str,
        online_per_step: int,
        version: int,
    ) -> None:
        self.lake, self.tokenizer, self.config = lake, tokenizer, config
        self.problems = list(problems)
        self.run_id, self.tokenizer_id, self.ref_model_id = run_id, tokenizer_id, ref_model_id
        self.online_per_step = online_per_step
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self.generator = TransformersGenerator(self.model, tokenizer, device=config.device)
        self.version = version  # the trainer step whose weights the rollout policy holds
        self._rows: list[dict[str, Any]] = []  # this step's rows (metrics)
        self._busy_s = 0.0  # weight transfers and sampling since the last metrics()

    def sync(self, policy: torch.nn.Module, version: int) -> None:
        """The rollout policy takes the trainer's current weights (a weight transfer)."""
        t0 = time.perf_counter()
        self.model.load_state_dict(policy.state_dict())
        self.version = version
        self._busy_s += time.perf_counter() - t0

    def wait_for(self, step: int, ready: Any = None) -> None:
        """Sample, judge and commit this step's rollouts (`ready` is not asked: the step's
        batch source reads what this wrote, and refuses a step without judged data)."""
        t0 = time.perf_counter()
        self._rows = self.produce(step)
        self._busy_s += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """This step's rollout metrics: mean reward of the judged rows, rows not judged,
        verdict rates and the sampler's entropy (`spo_train.rollouts.tally`), samples per
        second (weight transfer included)."""
        rows, busy = self._rows, self._busy_s
        self._rows, self._busy_s = [], 0.0
        return RolloutTally().add_rows(rows).metrics() | {
            "rollout/samples_per_s": len(rows) / busy if rows and busy > 0 else 0.0,
        }

    def close(self) -> None:
        """Nothing to release (the rollout policy is this process's memory)."""

    def produce(self, step: int) -> list[dict[str, Any]]:
        """Sample, judge and commit this step's rollouts (keyed, in groups); returns the rows
        written (none when the run draws no online data)."""
        c = self.config
        if self.online_per_step <= 0:
            return []
        rng = np.random.default_rng([c.seed, step, 1])
        n_problems = max(1, math.ceil(self.online_per_step / c.rollout_n))
        picks = rng.choice(
            len(self.problems), size=n_problems, replace=len(self.problems) < n_problems
        )
        settings = SamplerSettings(
            c.rollout_n,
            tuple(c.rollout_temperature),  # U(low, high) per sample (low == high: fixed)
            c.rollout_top_p,
            c.max_new_tokens,
            seed=c.seed * 100003 + step,
        )
        rows = sample_and_judge(
            self.generator,
            self.tokenizer,
            [self.problems[i] for i in picks],
            settings,
            source="online",
            run_id=self.run_id,
            model_id=f"{self.run_id}@{self.version}",
            tokenizer_id=self.tokenizer_id,
            policy_version=self.version,
            ref_model_id=self.ref_model_id if self.version == 0 else None,
            workers=c.workers,
            unsafe_no_sandbox=c.unsafe_no_sandbox,
            # grouped ids, new for every call (a resumed run samples a step again)
            id_prefix=f"onl-{uuid.uuid4().hex[:12]}-s{step:06d}",
        )
        self.lake.insert_new("trajectories", rows)
        return rows
