"""What a training run trains and evaluates on, decided and checked before any model loads or the
run is recorded (`spo_train.train.loop` then only runs it).

`plan_run` gathers: the training problems (an algorithm that needs q0 keeps those with a q0
estimate of this pi_0 and q0 sampler), the evaluation sets (held-out `eval_split`, and with
`eval_train_problems` problems of its own training set), the batch source its algorithm
chooses (`spo_train.train.batch_sources`: a mixture with nothing to draw is refused here), and the
notes to say once every check has passed (a refusal is the command's only output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_store.mixture_pins import load_pins
from spo_store.selection import RELIABLE, judge_issue_counts, left_out_line, split_predicate
from spo_train.config import TrainConfig
from spo_train.lm.models import latest_checkpoint, model_identity
from spo_train.rollouts.sampling import load_problems
from spo_train.train.batch_sources import BatchSource, make_batches
from spo_train.train.setup import (
    check_split,
    mc_weight_note,
    q0_sampler_key,
    splits_present_suffix,
    train_problems,
)


@dataclass
class RunPlan:
    """A run's data, decided before it starts (see the module docstring)."""

    ref_model_id: str
    """`model_identity` of pi_0."""
    problems: list[dict[str, Any]]
    """The training problems (rows of `spo_train.rollouts.sampling.load_problems`), by id."""
    eval_sets: dict[str, list[dict[str, Any]]]
    """Evaluated problems per set name (the split's name)."""
    batches: BatchSource
    notes: list[str] = field(default_factory=list)

    @property
    def problems_by_id(self) -> dict[str, dict[str, Any]]:
        return {p["problem_id"]: p for p in self.problems}

    @property
    def prompted(self) -> list[dict[str, Any]]:
        """Every problem the run prompts (rollouts and evaluation)."""
        return [*self.problems, *(p for probs in self.eval_sets.values() for p in probs)]


def plan_run(lake: Lake, config: TrainConfig, pi0_path: Path, sources: dict[str, str]) -> RunPlan:
    """The run's problems, evaluation sets and batch source (`config` resolved). Raises
    SpoError (one line) for a split without problems, missing q0 estimates, an empty
    evaluation set or a mixture source with nothing to draw."""
    notes: list[str] = []
    note = notes.append
    check_split(lake, config.train_split, "--train-split")

    # --- the problems it trains on (needs_q0: those with q0 of this pi_0 and q0 sampler)
    ref_model_id = model_identity(pi0_path)
    q0_key = q0_sampler_key(config)
    problems, restrict = train_problems(lake, config, (ref_model_id, q0_key), note)
    reliable = "TRUE" if config.include_unreliable else RELIABLE
    if not config.include_unreliable:
        line = left_out_line(
            judge_issue_counts(lake, split_predicate(config.train_split)),
            f"train ({config.train_split})",
        )
        if line:
            note(line)

    # --- evaluation sets (checked before anything is started or written)
    eval_sets: dict[str, list[dict[str, Any]]] = {}
    if config.eval_problems != 0:
        eval_where = split_predicate(config.eval_split)
        held_out = load_problems(lake, f"{eval_where} AND {reliable}")[: config.eval_problems]
        if not config.include_unreliable:
            line = left_out_line(
                judge_issue_counts(lake, eval_where), f"eval ({config.eval_split})"
            )
            if line:
                note(line)
        if not held_out:
            raise SpoError(
                f"no {config.eval_split!r} problems to evaluate on in lake {lake.uri}: choose "
                "another --eval-split, or --eval-problems 0 to train without evaluation"
                + splits_present_suffix(lake)
            )
        eval_sets[config.eval_split] = held_out
    else:
        note(
            "--eval-problems 0: the trainer evaluates no held-out problems"
            + ("" if config.eval_train_problems else " (nor trained-on ones): no evaluation")
        )
    if config.eval_train_problems:
        eval_sets[config.train_split] = problems[: config.eval_train_problems]

    # --- the batch source its algorithm chooses: nothing to draw is a refusal, before the run.
    # A resume draws pinned sources from the ids the run kept, never resolved again.
    output = Path(config.output)
    resuming = config.resume and output.is_dir() and latest_checkpoint(output) is not None
    batches = make_batches(
        lake,
        config,
        sources=sources,
        ref_model_id=ref_model_id,
        q0_sampler_key=q0_key,
        problem_where=restrict,
        pinned=(load_pins(output) or {}) if resuming else None,
    )
    for name, pin in batches.pinned.items():
        note(
            f"source {name!r}: {'kept' if resuming else 'resolved once'} over trajectories "
            f"version {pin.trajectories_version}: {len(pin.traj_ids)} ids (sha256 "
            f"{pin.sha256[:12]}; rows added later do not join it)"
        )
    line = mc_weight_note(lake, config, ref_model_id)
    if line:
        note(line)
    return RunPlan(ref_model_id, problems, eval_sets, batches, notes)
