"""A rank > 0 of a data-parallel group (`spo train --nproc N`, torchrun): it builds the same
learner as rank 0 (`spo_train.train.learner.build_learner`) and steps on the batches rank 0
broadcasts (`spo_train.train.distributed`: the communications; docs/distributed.md)."""

from __future__ import annotations

from pathlib import Path

from spo_train.config import TrainConfig
from spo_train.train.distributed import Distributed
from spo_train.train.learner import build_learner
from spo_train.train.setup import set_seed


class Follower:
    """A rank > 0: the policy, optimizer, schedule and algorithm, stepping on the batches rank 0
    broadcasts. Never opens the lake for writing."""

    def __init__(self, config: TrainConfig, ctx: Distributed) -> None:
        self.config, self.ctx = config, ctx
        self.ended = False

    def serve(self) -> int:
        """Follow rank 0 until it says "end" or "abort" (returns the last step; -1 when rank 0
        refused the run before starting it)."""
        kind, start = self.ctx.broadcast()
        if kind == "abort":
            return -1
        c = self.config
        set_seed(c.seed)
        ckpt = Path(start["checkpoint"]) if start["checkpoint"] else None
        parts = build_learner(
            c, Path(start["pi0_path"]), ckpt, dist=self.ctx, device=self.ctx.device
        )
        policy = parts.learner.policy
        step = start["step"]
        while True:
            kind, payload = self.ctx.broadcast()
            if kind == "update":
                step, batch = payload
                parts.step(batch)
            elif kind == "full_policy":
                self.ctx.full_policy(policy, None)
            elif kind == "end":
                self.ctx.replica_check(policy)
                self.ended = True  # a clean end: every rank leaves the group together
                return step
            elif kind == "abort":  # rank 0 failed or stopped between steps: it reports
                return step
            else:  # pragma: no cover - a protocol bug
                raise RuntimeError(f"unknown message {kind!r} from rank 0")
