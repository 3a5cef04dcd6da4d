"""`spo train`: the learner loop shared by SPO, PPO and GRPO, around the lake.

Reads top to bottom (CleanRL style). Each step:
1. every `model_update_interval` steps the rollout producer takes the current weights
   (policy version = that step; `spo_train.producer`);
2. the producer samples online rollouts from its (slightly stale) copy, judges them in the
   sandbox and appends them to the lake with their policy version and sampler settings;
3. the batch: SPO draws it from the lake by the SQL mixture (`online` = this run's rollouts
   within the staleness bound); PPO and GRPO take exactly this step's rollouts (whole groups);
   either way it is logged as `(lake version, trajectory ids)` in `batches`;
   (with `rollout_workers`, steps 1-2 run on Ray actors all the time and the step waits until
   the lake holds its data: `spo_train.async_producer`, docs/rollouts.md)
4. token ids and pi_0 log-probs come from the rows or the lake's cache (`spo_train.batch`);
5. the algorithm (`spo_train.algorithms.<algo>`) computes its loss and takes its optimizer
   step(s) through `PolicyLearner`;
6. metrics go to the lake, the console, TensorBoard and W&B; checkpoints are Hugging Face
   directories plus optimizer, RNG, step, lake version and the algorithm's own state (PPO's
   value model), so `--resume` continues after a `kill -9` with the same data order; the
   metrics and batches the killed process logged after its last checkpoint are deleted first,
   and TensorBoard purges them, so each (run, step, name) holds one value.
Settings: `spo_train.config.TrainConfig` (`resolved()` fills what the algorithm chooses).

SPO trains against the q0 estimates of *this* `--model` (its `model_identity`) under the q0
sampler settings (`spo_train.train_setup.q0_sampler_key`), recomputed at the training beta;
without them it refuses with the `spo estimate-q0` command to run. PPO and GRPO need no q0.
The policy is evaluated before the first step (step 0) and after the last (always;
`eval_every` adds evaluations in between) on the held-out `eval_split` and, with
`eval_train_problems`, on problems of its own training set, with the paper's settings by
default (n=20, T=0.4, top-p 0.95, pass@1 and pass@10).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote, utc_now
from spo_store.maintenance import maybe_compact
from spo_store.mixture import MixtureSampler
from spo_store.stopping import deferred_stop
from spo_train import distributed
from spo_train.algorithms import Algorithm, make_algorithm
from spo_train.algorithms.spo import (  # noqa: F401 - re-exported
    DEFAULT_CE_CLIP_EPS,
    effective_ce_clip_eps,
)
from spo_train.batch import ReferenceCache
from spo_train.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from spo_train.config import (  # noqa: F401 - LOSS_VARIANTS, WANDB_MODES: re-exported
    LOSS_VARIANTS,
    PATH_SETTINGS,
    WANDB_MODES,
    TrainConfig,
    absolute_path,
    check_output_dir,
)
from spo_train.evaluate import eval_notes, evaluate
from spo_train.fast_step import configure_model, step_options
from spo_train.generation import TransformersGenerator
from spo_train.learner import (  # noqa: F401 - re-exported
    PolicyLearner,
    policy_logprobs,
    to_train_batch,
)
from spo_train.models import (
    context_length,
    load_model_and_tokenizer,
    model_identity,
    tokenizer_identity,
)
from spo_train.producer import RolloutProducer
from spo_train.rollout import (
    RELIABLE,
    SamplerSettings,
    check_context,
    judge_issue_counts,
    left_out_line,
    load_problems,
    split_predicate,
)
from spo_train.train_setup import (  # noqa: F401 - re-exported (tests, CLI)
    check_device,
    check_split,
    drop_after,
    estimate_q0_command,
    lock_output,
    mc_weight_note,
    preflight,
    q0_sampler_key,
    rebase_q0,
    relog_evals,
    set_seed,
    splits_present_suffix,
    start_wandb,
    write_config,
)
from spo_train.train_setup import train_problems as train_problems_of


@dataclass
class TrainResult:
    run_id: str
    steps_done: int
    output: Path
    algo: str = "spo"
    metrics: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """`spo train --json`: run_id, algo, steps, the last step's metrics and the final
        evaluation's pass@k per evaluated set (`{"<set>": {"pass@1": ..., ...}}`)."""
        last = dict(self.metrics[-1]) if self.metrics else {}
        last.pop("step", None)
        final: dict[str, Any] = {}
        end = max((e["step"] for e in self.evals), default=None)
        for e in self.evals:
            if e["step"] == end:
                final[e["set"]] = {
                    k: v for k, v in e.items() if k.startswith("pass@") and "_" not in k
                }
        return {
            "run_id": self.run_id,
            "algo": self.algo,
            "steps": self.steps_done,
            "output": str(self.output),
            "metrics": last,
            "eval": final,
            "eval_step": end,
        }

    def fill_from_lake(self, lake: Lake) -> None:
        """A resumed run that had nothing left to do (its steps and evaluations were all
        done before) reports what the lake holds: the last step's metrics, the last
        evaluation's pass@k."""
        rid = sql_quote(self.run_id)
        if not self.metrics:
            rows = lake.sql_arrow(
                f"SELECT step, name, value FROM metrics WHERE run_id = {rid} "
                "AND name NOT LIKE 'eval/%' AND step = (SELECT max(step) FROM metrics "
                f"WHERE run_id = {rid} AND name NOT LIKE 'eval/%')"
            ).to_pylist()
            if rows:
                self.metrics = [{"step": rows[0]["step"], **{r["name"]: r["value"] for r in rows}}]
        if not self.evals:
            rows = lake.sql_arrow(
                f"SELECT step, name, value FROM metrics WHERE run_id = {rid} "
                "AND name LIKE 'eval/%/pass@%' AND step = (SELECT max(step) FROM metrics "
                f"WHERE run_id = {rid} AND name LIKE 'eval/%/pass@%')"
            ).to_pylist()
            sets: dict[str, dict[str, Any]] = {}
            for r in rows:
                _, name, k = r["name"].split("/")
                sets.setdefault(name, {"step": r["step"], "set": name})[k] = r["value"]
            self.evals = list(sets.values())


def train(
    config: TrainConfig,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train as configured (`config.algo`); see the module docstring for the loop.

    Holds `output/.lock` for the whole run (a second `spo train` on the same --output is
    refused); an --output this call created is removed again when the run is refused before
    it wrote anything. Raises SpoError (one line) for a refusal.

    Launched as one of a data-parallel group (RANK/WORLD_SIZE set: `spo train --nproc N`,
    torchrun), rank 0 runs the loop below and the other ranks follow it
    (`spo_train.distributed`); a follower returns a TrainResult with an empty run_id."""
    dp = distributed.setup(config)
    if dp is not None and config.nproc != dp.world_size:  # torchrun: the record says how many
        config = dataclasses.replace(config, nproc=dp.world_size)
    if dp is not None and not dp.is_main:
        follower = distributed.Follower(config.resolved(), dp)
        try:
            steps = follower.serve()
        finally:
            dp.close(sync=follower.ended)
        return TrainResult(run_id="", steps_done=max(steps, 0), output=Path(config.output))
    clean = False
    try:
        result = _train_main(config, dp, on_step=on_step, on_event=on_event)
        clean = True
        return result
    except BaseException:
        if dp is not None and not dp.started:
            dp.abort()  # refused before the followers started: they return at once
        raise
    finally:
        if dp is not None:
            dp.close(sync=clean)


def _train_main(
    config: TrainConfig,
    dp: distributed.Distributed | None,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> TrainResult:
    # another run's output, a resume that changes settings, a bad model/mixture: one line
    pi0_path, sources = preflight(config)
    config = config.resolved()
    output = Path(config.output)
    created = not output.exists()
    top = output  # the outermost directory this call creates (removed again on a refusal)
    while not top.parent.exists():
        top = top.parent
    output.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_output(output)
    except SpoError:
        if created:
            shutil.rmtree(top, ignore_errors=True)
        raise
    try:
        # Checked again under the lock: the holder may have written its checkpoint since.
        check_output_dir(config)
        return _train_locked(config, pi0_path, sources, on_step=on_step, on_event=on_event, dp=dp)
    except BaseException:
        if created and {p.name for p in output.iterdir()} <= {".lock"}:
            shutil.rmtree(top, ignore_errors=True)  # a refusal leaves no empty --output
        raise
    finally:
        lock.close()


def _train_locked(
    config: TrainConfig,
    pi0_path: Path,
    sources: dict[str, str],
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    dp: distributed.Distributed | None = None,
) -> TrainResult:
    say = on_event or (lambda _msg: None)
    # Notes found while checking are said only once every check passed: a refusal is the
    # command's only output.
    pending: list[str] = []
    note = pending.append
    output = Path(config.output)
    lake = Lake.open(config.lake)
    check_split(lake, config.train_split, "--train-split")

    # --- the problems it trains on (SPO: those with q0 of this pi_0 and q0 sampler)
    ref_model_id = model_identity(pi0_path)
    q0_key = q0_sampler_key(config)
    train_problems, restrict = train_problems_of(lake, config, (ref_model_id, q0_key), note)
    reliable = "TRUE" if config.include_unreliable else RELIABLE
    if not config.include_unreliable:
        line = left_out_line(
            judge_issue_counts(lake, split_predicate(config.train_split)),
            f"train ({config.train_split})",
        )
        if line:
            note(line)
    problems_by_id = {p["problem_id"]: p for p in train_problems}

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
        eval_sets[config.train_split] = train_problems[: config.eval_train_problems]

    # --- the mixture (SPO): a source with nothing to draw is a refusal, before the run exists
    sampler = None
    if config.algo == "spo":
        sampler = MixtureSampler(
            lake,
            config.mix,
            sources=sources,
            run_id=None,  # set once the run is recorded (only `online` reads it)
            staleness=config.staleness,
            split=config.train_split,
            seed=config.seed,
            ref_model_id=ref_model_id,
            q0_sampler_key=q0_key,
            beta=config.beta,
            include_unreliable=config.include_unreliable,
            problem_where=restrict,
        )
        try:
            sampler.check_sources()
        except SpoError as exc:
            raise SpoError(f"--mix {config.mix}: {exc}") from None
        online_per_step = sampler.spec.counts(config.batch_size).get("online", 0)
    else:
        online_per_step = config.batch_size
    line = mc_weight_note(lake, config, ref_model_id)
    if line:
        note(line)
    for line in pending:
        say(line)

    # --- models: policy (trained), reference pi_0 (frozen), the algorithm's own
    set_seed(config.seed)
    ref_model, tokenizer = load_model_and_tokenizer(pi0_path, device=config.device)
    # every prompt it samples (rollouts, evaluation) must leave room for max_new_tokens
    check_context(
        tokenizer,
        context_length(ref_model.config),
        [*train_problems, *(p for probs in eval_sets.values() for p in probs)],
        config.max_new_tokens,
    )
    ref_model.eval().requires_grad_(False)
    # The reference forward (rows without cached log-probs) runs at the run's --precision;
    # no gradient flows through it, so neither checkpointing nor compile is worth applying.
    configure_model(
        ref_model,
        dataclasses.replace(step_options(config), activation_checkpointing=False, compile=False),
    )
    tokenizer_id = tokenizer_identity(tokenizer)
    output.mkdir(parents=True, exist_ok=True)
    ckpt = latest_checkpoint(output) if config.resume else None
    if config.resume and ckpt is None:
        say(f"no checkpoint in {output}: starting fresh")
    if ckpt is not None and dp is not None and dp.fsdp:
        raise SpoError(  # its checkpoints hold rank 0's optimizer shard only (docs/distributed.md)
            f"--resume of {output} with SPO_FSDP=1: not supported yet; resume without SPO_FSDP"
        )
    policy, _ = load_model_and_tokenizer(ckpt or pi0_path, device=config.device)
    # Dropout stays off: the loss forward is deterministic (see `policy_logprobs`).
    policy.eval()
    # Data-parallel: FSDP2 shards the trained policy, rank 0 keeps an unsharded copy for
    # rollouts, evaluation and checkpoints (`weights()`); replicated, the policy is its own.
    full = copy.deepcopy(policy) if dp is not None and dp.fsdp else None
    if dp is not None:
        policy = dp.prepare_policy(policy)

    def weights() -> torch.nn.Module:
        return policy if dp is None else dp.full_policy(policy, full)

    learner = PolicyLearner(policy, config, tokenizer.pad_token_id, dist=dp)
    algorithm: Algorithm = make_algorithm(config, pi0_path=pi0_path, say=say)
    start_step = 0
    state: dict[str, Any] = {}
    if ckpt is not None:
        state = load_trainer_state(ckpt, learner, algorithm)
        restore_rng(state)
        start_step, run_id = state["step"], state["run_id"]
        say(f"resumed run {run_id} from {ckpt.name} (step {start_step})")
        lake.resume_run(run_id)  # the same run is running again, in this process
    else:
        # the lake records paths absolute, as eval and estimate-q0 do: a relative --model read
        # back from `runs` later, from another folder, would name another model or none
        recorded = dataclasses.asdict(config)
        recorded.update({k: absolute_path(recorded[k]) for k in PATH_SETTINGS if recorded.get(k)})
        run_id = lake.start_run("train", recorded, model_id=ref_model_id, tokenizer_id=tokenizer_id)
    # From here the run is recorded: whatever stops it ends it (run_status), never `running`.
    writer = wandb_run = producer = None
    ckpt_step = start_step  # the step of the newest checkpoint this run can resume from
    mid_update = False  # inside a step's optimizer update (a checkpoint then is inconsistent)
    result = TrainResult(run_id=run_id, steps_done=start_step, output=output, algo=config.algo)

    def checkpoint(step: int) -> None:
        save_checkpoint(
            output,
            step,
            weights(),
            tokenizer,
            learner.optimizer,
            learner.scheduler,
            {
                "step": step,
                "run_id": run_id,
                "lake_versions": lake.versions(),
                "config": dataclasses.asdict(config),
                "algorithm": algorithm.state_dict(),
            },
        )

    try:
        if dp is not None:  # the other ranks load the same weights and state now
            dp.start(pi0_path, ckpt, start_step)
        if ckpt is not None:
            # Steps after the checkpoint ran before the crash and run again now: drop what
            # they logged, so each (run, step, name) holds one value.
            dropped = drop_after(lake, run_id, start_step)
            if dropped:
                say(
                    f"dropped {dropped} metric and batch rows of steps >= {start_step} logged before"
                )
        # Saved resolved: the lake $SPO_LAKE named, the output as an absolute path.
        saved = dataclasses.replace(config, lake=lake.uri, output=str(output.resolve()))
        write_config(output, saved, run_id, say, resumed=ckpt is not None)
        if sampler is not None:
            sampler.run_id = run_id
        if config.rollout_workers:  # Ray actors; the trainer reads their rows from the lake
            from spo_train.async_producer import RayRolloutProducer

            producer = RayRolloutProducer(
                lake,
                weights(),
                config=config,
                model_path=pi0_path,
                problems=train_problems,
                run_id=run_id,
                tokenizer_id=tokenizer_id,
                ref_model_id=ref_model_id,
                online_per_step=online_per_step,
                version=start_step,
                sampler=sampler,
                say=say,
            )
        else:
            producer = RolloutProducer(
                lake,
                weights(),
                tokenizer,
                config=config,
                problems=train_problems,
                run_id=run_id,
                tokenizer_id=tokenizer_id,
                ref_model_id=ref_model_id,
                online_per_step=online_per_step,
                version=start_step,  # the rollout policy starts with the weights it was loaded with
            )
        ref_cache = ReferenceCache(
            lake, tokenizer, tokenizer_id, ref_model, ref_model_id, run_id, config.micro_batch_size
        )
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides events of steps >= the resume step from earlier
            # files (the killed run's steps after its checkpoint), as the lake rows are dropped.
            tb_dir = output / "tb"
            purge = start_step if (ckpt is not None or tb_dir.exists()) else None
            writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
            if ckpt is not None:
                relog_evals(lake, writer, run_id, start_step)
        wandb_run = start_wandb(config, run_id, output)
        # Steps already evaluated by this run (a resumed run never repeats step 0 or the end).
        evaluated: set[int] = set()
        if ckpt is not None:
            evaluated = set(
                lake.sql_arrow(
                    f"SELECT DISTINCT step FROM metrics WHERE run_id = {sql_quote(run_id)} "
                    f"AND name LIKE 'eval/%/unjudged'"
                )
                .column(0)
                .to_pylist()
            )

        def run_eval(step: int, name: str, problems: list[dict[str, Any]]) -> dict[str, Any]:
            gen = TransformersGenerator(weights().eval(), tokenizer, device=config.device)
            settings = SamplerSettings(
                config.eval_n,
                config.eval_temperature,
                config.eval_top_p,
                config.max_new_tokens,
                seed=config.seed + 7,
            )
            res = evaluate(
                lake,
                gen,
                tokenizer,
                problems,
                settings=settings,
                ks=config.eval_k,
                run_id=run_id,
                model_id=f"{run_id}@{step}",
                tokenizer_id=tokenizer_id,
                step=step,
                policy_version=step,
                split=name,
                workers=config.workers,
                unsafe_no_sandbox=config.unsafe_no_sandbox,
            )
            evals = {
                f"eval/{name}/pass@{k}": res[f"pass@{k}"]
                for k in config.eval_k
                if res[f"pass@{k}"] is not None
            }
            if writer:
                for k, v in evals.items():
                    writer.add_scalar(k, v, step)
            if wandb_run:
                wandb_run.log(evals, step=step)
            shown = ", ".join(
                f"pass@{k} {res[f'pass@{k}']:.3f}"
                if res[f"pass@{k}"] is not None
                else f"pass@{k} n/a"
                for k in config.eval_k
            )
            what = "held out" if name == config.eval_split else "trained on"
            say(
                f"eval step {step} ({name}, {what}, {len(problems)} problems, "
                f"n={config.eval_n}, T={config.eval_temperature:g}, top-p {config.eval_top_p:g}): {shown}"
            )
            for line in eval_notes(res):
                say(line)
            return res

        def maybe_eval(step: int) -> None:
            if eval_sets and step not in evaluated:
                for name, problems in eval_sets.items():
                    res = run_eval(step, name, problems)
                    result.evals.append({"step": step, "set": name, **res})
                evaluated.add(step)

        if start_step == 0:
            maybe_eval(0)  # the policy it starts from
        for step in range(start_step, config.steps):
            t0 = time.perf_counter()
            # 1. the rollout policy takes new weights every model_update_interval steps
            if step % config.model_update_interval == 0 and step != producer.version:
                producer.sync(weights(), step)
            # 2. online rollouts from the (slightly stale) rollout policy, judged, into the lake
            online_rows = producer.produce(step)
            t_rollout = time.perf_counter() - t0
            # 3. the batch, logged as (lake version, ids)
            if sampler is not None:
                batch = sampler.sample(
                    config.batch_size, step=step, policy_version=producer.version
                )
                table, traj_ids, labels = batch.table, batch.traj_ids, batch.sources
                version = batch.version
                groups = list(range(len(traj_ids)))
            else:
                # this step's rollouts, judged ones only (not judged is not a reward), in groups
                judged = [r for r in online_rows if r["reward"] is not None]
                if not judged:
                    raise SpoError(
                        f"step {step}: none of the {len(online_rows)} rollouts was judged "
                        "(sandbox trouble: see `spo judge --help`)"
                    )
                traj_ids = [r["traj_id"] for r in judged]
                labels = ["online"] * len(judged)
                version = lake.dataset("trajectories").version
                table = pa.Table.from_pylist(judged)
                group_of: dict[str, int] = {}
                groups = [group_of.setdefault(r["problem_id"], len(group_of)) for r in judged]
            lake.append(
                "batches",
                [
                    {
                        "run_id": run_id,
                        "step": step,
                        "trajectories_version": version,
                        "traj_ids": traj_ids,
                        "sources": labels,
                        "seed": config.seed,
                        "created_at": utc_now(),
                    }
                ],
            )
            # 4. token ids and reference log-probs (rows, cache, or one reference forward)
            prepared = ref_cache.prepare(table, problems_by_id)
            train_batch = to_train_batch(prepared, table, labels, groups)
            if config.mc_weight > 0:  # S_t targets of the rows `spo pts` annotated
                from spo_train.pts import attach_mc_targets

                attach_mc_targets(
                    train_batch, lake, ref_model_id=ref_model_id, tokenizer_id=tokenizer_id
                )
            # 5. the algorithm's loss and optimizer step(s)
            mid_update = True  # until the step is counted done below
            # Ctrl-C inside the step stops after it (single process: the ranks of --nproc
            # stop together through the launcher instead); a second Ctrl-C stops at once.
            with deferred_stop(enabled=dp is None):
                if dp is not None:  # every rank steps on this same global batch
                    dp.broadcast(("update", (step, train_batch)))
                metrics = algorithm.update(train_batch, learner)
                lr = learner.scheduler.get_last_lr()[0]  # the rate this step trained at
                learner.scheduler.step()
                # 6. metrics, checkpoints, evaluation
                dt = time.perf_counter() - t0
                judged_rewards = [r["reward"] for r in online_rows if r["reward"] is not None]
                metrics.update(
                    {
                        "train/lr": lr,
                        "rollout/reward_mean": float(np.mean(judged_rewards))
                        if judged_rewards
                        else float("nan"),
                        "rollout/unjudged": float(sum(r["reward"] is None for r in online_rows)),
                        "rollout/samples_per_s": len(online_rows) / t_rollout
                        if online_rows and t_rollout > 0
                        else 0.0,
                        "train/tokens_per_s": int(train_batch.mask.sum())
                        / max(dt - t_rollout, 1e-9),
                        "train/step_s": dt,
                        "train/rollout_s": t_rollout,
                        "train/ref_forward_rows": float(prepared.ref_forwards),
                    }
                )
                if hasattr(producer, "metrics"):  # rollout workers: idle time, commits, staleness
                    metrics.update(producer.metrics())
                metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
                lake.log_metrics(run_id, step, metrics)
                if writer:
                    for k, v in metrics.items():
                        writer.add_scalar(k, v, step)
                if wandb_run:
                    wandb_run.log(metrics, step=step)
                result.metrics.append({"step": step, **metrics})
                result.steps_done = step + 1
                mid_update = False
                if on_step:
                    on_step(step, metrics)
            if config.eval_every and (step + 1) % config.eval_every == 0:
                maybe_eval(step + 1)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                checkpoint(step + 1)
                ckpt_step = step + 1
                prune_checkpoints(output, config.keep_checkpoints)
                maybe_compact(lake)
        # The policy it ends with, always (after its checkpoint, so a kill here loses no
        # training; a resumed run evaluates it if this did not finish).
        maybe_eval(config.steps)
        if dp is not None:
            drift = dp.finish(policy)
            if drift:
                say(drift)
    except BaseException as exc:
        if dp is not None and not mid_update:
            dp.abort()  # the followers wait for the next step: they return, rank 0 reports
        if (
            isinstance(exc, KeyboardInterrupt)
            and not mid_update
            and result.steps_done > ckpt_step
            and not (dp is not None and dp.fsdp)  # gathering FSDP weights needs every rank
        ):
            # Ctrl-C / SIGTERM: keep the steps done since the last checkpoint (--resume
            # continues from here; a small model saves in seconds).
            checkpoint(result.steps_done)
            say(f"interrupted: checkpoint-{result.steps_done:06d} saved; --resume continues")
        elif isinstance(exc, KeyboardInterrupt) and (mid_update or result.steps_done > ckpt_step):
            since = f"checkpoint-{ckpt_step:06d}" if ckpt_step else "the start"
            say(
                f"interrupted inside a step: no checkpoint saved; --resume continues from {since} "
                f"(steps after it run again)"
            )
        lake.end_run(run_id, run_status(exc))
        raise
    finally:
        if producer is not None and hasattr(producer, "close"):
            producer.close()  # rollout workers and the Ray this run started, on every exit
        if writer:
            writer.close()
        if wandb_run:
            wandb_run.finish()
    lake.end_run(run_id, "completed")
    result.fill_from_lake(lake)
    return result
