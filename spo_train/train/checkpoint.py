"""Checkpoints of `spo train`: a Hugging Face directory per checkpoint plus `trainer_state.pt`
(optimizer, scheduler, RNG states, step, run id, lake versions, the algorithm's own state such as
PPO's value model), written atomically; `output/latest` names the newest complete one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spo_store.errors import SpoError
from spo_train.lm.models import latest_checkpoint

__all__ = [
    "latest_checkpoint",
    "load_trainer_state",
    "prune_checkpoints",
    "restore_rng",
    "save_checkpoint",
]


def save_checkpoint(
    output: Path,
    step: int,
    policy: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Write checkpoint-<step> atomically (temp dir, rename, then the `latest` marker)."""
    name = f"checkpoint-{step:06d}"
    final, tmp = output / name, output / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            **state,
        },
        tmp / "trainer_state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    marker_tmp = output / ".latest.tmp"
    marker_tmp.write_text(name)
    marker_tmp.replace(output / "latest")
    return final


def load_trainer_state(ckpt: Path, learner: Any, algorithm: Any) -> dict[str, Any]:
    """Restore the optimizer, schedule and algorithm state saved with `ckpt` into `learner`
    (`PolicyLearner`) and `algorithm`; returns the whole saved state (step, run id, RNG, ...).
    Raises SpoError when the checkpoint was written by another `--algo` (a config.toml edited
    between runs: its optimizer and algorithm state are another algorithm's)."""
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    saved_algo = (state.get("config") or {}).get("algo")
    if saved_algo is not None and saved_algo != algorithm.name:
        raise SpoError(
            f"--resume: {ckpt} was trained with --algo {saved_algo}, but this run asks for "
            f"--algo {algorithm.name} (was its config.toml edited?): resume with --algo "
            f"{saved_algo}, or train --algo {algorithm.name} into another --output"
        )
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    if "algorithm" in state:
        algorithm.load_state_dict(state["algorithm"])
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states a checkpoint saved (same data order after `--resume`)."""
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])


def prune_checkpoints(output: Path, keep: int | None) -> list[str]:
    """Delete all but the newest `keep` checkpoint directories (never the latest one)."""
    if keep is None:
        return []
    latest = (output / "latest").read_text().strip() if (output / "latest").exists() else None
    ckpts = sorted(p for p in output.glob("checkpoint-*") if p.is_dir())
    removed = []
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old.name)
    return removed
