"""Data-parallel training (`spo train --nproc N`, or under `torchrun`): N processes, one policy
replica each (gloo on CPU, NCCL on CUDA), the same optimizer steps as one process on the same
global batch.

Design (docs/distributed.md):
- **Rank 0 drives, the others follow.** Rank 0 runs the whole learner loop of
  `spo_train.train.loop` and alone touches the lake as a writer (run record, online rollouts,
  `batches`, reference cache, metrics, checkpoints, evaluation). Each step it draws the global
  batch exactly as one process would and broadcasts the prepared `TrainBatch`
  (`spo_train.train.follower.Follower.serve`'s "update" message); every rank then runs the same `algorithm.update` on
  that same batch. The other ranks never open the lake for writing and need no reference
  model, producer or judge.
- **Each rank forwards a contiguous shard of rows.** Every `learner.policy_logprobs(batch,
  rows)` call splits `rows` into `world_size` contiguous runs (`shard_bounds`: sizes differ by at
  most one; a rank may get none), runs the policy on its own run only, and all-gathers the
  `[rows, T]` log-probs (`gather_rows`), so the algorithm computes its loss on the whole batch,
  bit-identical on every rank: whole-batch statistics (GRPO's groups, PPO's advantage
  whitening, sequence or token means over unequal shards) need no change. The gather's
  backward hands each rank the gradient of its own rows only, so each rank's parameter
  gradient is its rows' share of the global loss's gradient.
- **Gradients are summed across ranks before clipping** (`all_reduce_grads`, one all-reduce
  per bucket of ~25M elements, in `PolicyLearner.optimize`): the sum of the shares is the
  one-process gradient, so clipping, AdamW and the schedule see the same numbers on every rank
  and the replicas stay equal without a weight broadcast. Why not `DistributedDataParallel`:
  it averages each rank's gradient of its *own* loss, while here the loss is global and
  replicated; it also all-reduces in every backward (an algorithm calls `policy_logprobs`
  several times per step: PPO and GRPO minibatches x epochs, micro-batches within) and expects
  the same number of forwards per rank, which unequal shards break.
- **PPO's value model** is not sharded: every rank runs it on the whole batch (identical inputs
  and weights, identical steps); only the policy's forward and backward are divided.
- **FSDP2** (`SPO_FSDP=1`): `fully_shard` per decoder layer and the root, its reduce-scatter
  (an average, so the shares are scaled by the world size) instead of the all-reduce; rank 0
  gathers a full copy for rollouts, evaluation and checkpoints (`Distributed.full_policy`, a
  collective all ranks join). Run on CPU with gloo (tests/train/test_distributed.py); not yet on
  GPUs with NCCL (no GPU was available when it was written).
- **Failures end every rank.** `spo_train.train.launch` (the `--nproc` parent) watches its
  children: when one exits non-zero the others get SIGTERM (rank 0 then checkpoints if it can
  and ends the run record `interrupted`), then SIGKILL after a grace period; a run record left
  `running` by a killed rank 0 is ended `failed` by the parent. Under torchrun its agent does
  the killing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from spo_store.errors import SpoError

# Followers wait in a broadcast while rank 0 samples rollouts, judges and evaluates: the
# collective timeout must outlast the longest of those (a dead peer is noticed at once anyway).
TIMEOUT = timedelta(hours=3)
# Gradient all-reduce bucket, elements (DDP's default bucket is 25 MiB).
BUCKET_ELEMENTS = 25 * 2**20


@contextmanager
def peer_errors(rank: int) -> Iterator[None]:
    """A collective that fails because another rank is gone (gloo/NCCL raise RuntimeError
    subclasses) becomes one SpoError line naming this rank."""
    try:
        yield
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpoError(
            f"rank {rank}: a collective with the other training processes failed (another "
            f"process ended?): {first}"
        ) from exc


def world_from_env() -> tuple[int, int, int] | None:
    """`(rank, world_size, local_rank)` when this process is one of a launched group (torchrun or
    `launch`: RANK and WORLD_SIZE set, WORLD_SIZE > 1), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def env_rank() -> int:
    """This process's rank (0 when not launched as a group)."""
    w = world_from_env()
    return 0 if w is None else w[0]


def check_world(nproc: int, batch_size: int) -> None:
    """`--nproc` against the batch and the launcher: one SpoError line when they disagree.

    Raises SpoError when `nproc` > `batch_size` (a rank would never have a row), or when
    torchrun's WORLD_SIZE differs from an `--nproc` given."""
    w = world_from_env()
    if w is not None and nproc not in (1, w[1]):
        raise SpoError(
            f"--nproc {nproc} but this process is one of WORLD_SIZE={w[1]} (torchrun): give "
            f"--nproc {w[1]} or leave --nproc out under torchrun"
        )
    world = w[1] if w is not None else nproc
    if world > batch_size:
        raise SpoError(
            f"--nproc {world} is more than --batch-size {batch_size}: every process needs at "
            "least one row of the batch; lower --nproc or raise --batch-size"
        )


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous run `[lo, hi)` of `n` rows that `rank` of `world` forwards: sizes differ
    by at most one, earlier ranks hold the larger ones; empty when `n < world` for late ranks."""
    return (n * rank) // world, (n * (rank + 1)) // world


class _GatherRows(torch.autograd.Function):
    """All-gather of per-rank `[rows_r, T]` blocks into `[sum rows_r, T]` (rank order). The
    loss built on the result is the same on every rank, so the gradient arriving here is too,
    and each rank's share is its own block's slice: no communication in backward."""

    @staticmethod
    def forward(
        ctx: Any, local: torch.Tensor, n: int, world: int, rank: int, scale: float
    ) -> torch.Tensor:
        sizes = [hi - lo for lo, hi in (shard_bounds(n, world, r) for r in range(world))]
        most = max(sizes)
        buf = local.new_zeros((most, *local.shape[1:]))
        buf[: local.shape[0]] = local
        parts = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(parts, buf.contiguous())
        ctx.lo, ctx.hi = shard_bounds(n, world, rank)
        ctx.scale = scale
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        block = grad[ctx.lo : ctx.hi]
        return (block * ctx.scale if ctx.scale != 1.0 else block), None, None, None, None


def gather_rows(
    local: torch.Tensor, n: int, world: int, rank: int, grad_scale: float = 1.0
) -> torch.Tensor:
    """`[n, T]` from each rank's `[hi - lo, T]` block (`shard_bounds`); differentiable: the
    gradient of a loss computed identically on every rank flows back to each rank's block,
    times `grad_scale` (FSDP2's reduce-scatter averages over ranks: `world` undoes that)."""
    return _GatherRows.apply(local, n, world, rank, grad_scale)


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum `.grad` of `params` over all ranks, in buckets of `BUCKET_ELEMENTS` (a parameter a
    rank did not use this step, e.g. no rows, counts as a zero gradient)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in [*params, None]:
        if p is not None and (not bucket or size + p.numel() <= BUCKET_ELEMENTS):
            bucket.append(p)
            size += p.numel()
            continue
        if bucket:
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset : offset + q.numel()].view_as(q.grad))
                offset += q.numel()
        bucket, size = ([p], p.numel()) if p is not None else ([], 0)


@dataclass
class Distributed:
    """This process's place in the group: rank, world size, the device it trains on, whether
    the policy is FSDP2-sharded. Created by `setup`."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    fsdp: bool = False
    started: bool = False  # rank 0 has sent "start" (a refusal before it sends "abort")
    stopped: bool = False  # rank 0 has sent "abort" or "end"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- rank 0 -> all: the follower protocol (`spo_train.train.follower.Follower.serve`)
    def broadcast(self, message: Any = None) -> Any:
        """Rank 0's `message` on every rank (pickled; tensors travel on CPU)."""
        box = [message if self.is_main else None]
        with peer_errors(self.rank):
            dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def start(self, pi0_path: Path, checkpoint: Path | None, step: int) -> None:
        """Rank 0: the followers load the same weights, optimizer and algorithm state (from
        `checkpoint`, or initialised from `pi0_path` as rank 0 did: the algorithms' own
        initialisation is deterministic, e.g. PPO's zero value head, GRPO's seeded generator)."""
        self.broadcast(
            (
                "start",
                {
                    "pi0_path": str(pi0_path),
                    "checkpoint": str(checkpoint) if checkpoint else None,
                    "step": step,
                },
            )
        )
        self.started = True

    def abort(self) -> None:
        """Rank 0, failed or stopped while the followers wait for its next message (before
        "start", or between steps): they return at once and quietly, so the run's error is
        said once, by rank 0. Best effort: a follower already gone is not waited for. Not
        under FSDP once started (a follower may be inside a weight gather)."""
        if not self.is_main or self.stopped or (self.fsdp and self.started):
            return
        self.stopped = True
        try:
            self.broadcast(("abort", None))
        except SpoError:
            pass

    def _comm_device(self) -> torch.device | None:
        return torch.device(self.device) if self.device.startswith("cuda") else None

    def shard(self, rows: list[int]) -> list[int]:
        lo, hi = shard_bounds(len(rows), self.world_size, self.rank)
        return rows[lo:hi]

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        with peer_errors(self.rank):
            scale = float(self.world_size) if self.fsdp else 1.0
            return gather_rows(local, n, self.world_size, self.rank, scale)

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        with peer_errors(self.rank):
            all_reduce_grads(params)

    def prepare_policy(self, policy: torch.nn.Module) -> torch.nn.Module:
        """The policy as this rank trains it: itself (replicated), or FSDP2-sharded."""
        if not self.fsdp:
            return policy
        return fsdp_shard(policy)

    def full_policy(self, policy: torch.nn.Module, full: torch.nn.Module | None) -> Any:
        """Rank 0: an unsharded module holding `policy`'s current weights (rollouts,
        evaluation, checkpoints); the replicated policy itself without FSDP. With FSDP every
        rank must call it at the same point (rank 0 asks the followers first)."""
        if not self.fsdp:
            return policy
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        if self.is_main:
            self.broadcast(("full_policy", None))
        state = get_model_state_dict(
            policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.is_main and full is not None:
            full.load_state_dict(state)
        return full

    def finish(self, policy: torch.nn.Module) -> str | None:
        """Rank 0: tell the followers the run is over; every rank then compares its replica
        (`replica_check`). Returns a warning line when the replicas drifted apart, else None."""
        if self.is_main:
            self.broadcast(("end", None))
            self.stopped = True
        return self.replica_check(policy)

    def replica_check(self, policy: torch.nn.Module) -> str | None:
        """Every rank: the replicas should be bit-identical (same gathered loss, same summed
        gradients, same AdamW); a float64 sum of the weights per rank says whether they are.
        None under FSDP (no replicas) or when they agree."""
        if self.fsdp:
            return None
        with torch.no_grad():
            mine = sum(p.detach().double().sum() for p in policy.parameters()).reshape(1)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        with peer_errors(self.rank):
            dist.all_gather(parts, mine.to(self._comm_device() or "cpu"))
        sums = [float(p[0]) for p in parts]
        spread = max(sums) - min(sums)
        if spread > 1e-6 * max(1.0, abs(sums[0])):
            return (
                f"data-parallel replicas drifted apart: weight sums per rank {sums} (a bug: the "
                "checkpoint holds rank 0's weights)"
            )
        return None

    def close(self, *, sync: bool = False) -> None:
        """Leave the group. `sync` (a clean end on every rank): wait for the others first, so
        no rank tears its communicator down while a peer still talks to it (a follower was
        seen aborting at exit, "terminate called without an active exception", under
        torchrun). After an error no rank waits: a peer may be gone."""
        if not dist.is_initialized():
            return
        if sync:
            with contextlib.suppress(Exception):
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=timedelta(seconds=60))
                else:
                    dist.barrier()
        dist.destroy_process_group()


def setup(config: Any) -> Distributed | None:
    """Join the process group when launched as one (`world_from_env`), else None.

    Backend gloo for a CPU `config.device`, NCCL for CUDA (rank r trains on cuda:LOCAL_RANK).
    FSDP2 with `SPO_FSDP=1` (run on CPU/gloo; not yet on GPUs). Raises SpoError when `config.nproc` > 1 but this
    process was not launched as one of a group (the Python API runs one rank per process)."""
    w = world_from_env()
    if w is None:
        if config.nproc > 1:
            raise SpoError(
                f"--nproc {config.nproc} needs {config.nproc} processes: run `spo train --nproc "
                f"{config.nproc} ...` (it launches them) or torchrun; train() runs one process"
            )
        return None
    rank, world, local = w
    check_world(config.nproc, config.batch_size)
    cuda = config.device.startswith("cuda")
    device = f"cuda:{local}" if cuda else config.device
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    fsdp = os.environ.get("SPO_FSDP") == "1"
    return Distributed(rank=rank, world_size=world, local_rank=local, device=device, fsdp=fsdp)


def fsdp_shard(policy: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) on each decoder layer, then the root. Its
    reduce-scatter averages over ranks while each rank's gradient is already its share of the
    global one (module docstring), so `gather_rows` scales the shares by the world size (a
    divide factor of 1 would need ReduceOp.PREMUL_SUM, which gloo lacks)."""
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(policy, "model", policy), "layers", None)
    for layer in layers or []:
        fully_shard(layer)
    fully_shard(policy)
    return policy
