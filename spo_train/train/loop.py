"""`spo train`: the learner loop shared by SPO, PPO, GRPO and TOPR, around the lake.

Reads top to bottom (CleanRL style) in `_train_locked`, with no branch on the algorithm or on
where rollouts come from; the decisions live behind four seams:
- rollout sources (`spo_train.rollouts.sources`: local `spo_train.rollouts.local`, Ray
  `spo_train.rollouts.ray_rollouts`) sample, judge and commit rows to the lake with keyed writes;
- batch sources (`spo_train.train.batch_sources`), chosen by the algorithm's rules, read the batch
  back from the lake (SPO: the SQL mixture; PPO/GRPO: whole fresh groups);
- one learner builder (`spo_train.train.learner.build_learner`), shared with the data-parallel
  followers and `spo bench step`;
- one metric sink (`spo_train.train.metric_sink`: lake, TensorBoard, W&B, relogging on resume).
Setup is `spo_train.train.plan.plan_run` (problems, evaluation sets, batch source, all checked
before the run is recorded); an algorithm's rules are `spo_train.algorithm_rules`.

Each step:
1. every `model_update_interval` steps the rollout source takes the current weights
   (policy version = that step);
2. it samples online rollouts from its (slightly stale) copy, judges them in the sandbox and
   commits them to the lake with their policy version and sampler settings (with
   `rollout_workers`, Ray actors do this all the time and the step waits until the lake holds
   its data: docs/rollouts.md);
3. the batch source reads the batch from the lake, logged as `(lake version, trajectory ids)`
   in `batches`;
4. token ids and pi_0 log-probs come from the rows or the lake's cache (`spo_train.train.batch`);
5. the algorithm (`spo_train.algorithms.<algo>`) computes its loss and takes its optimizer
   step(s) through `PolicyLearner`;
6. metrics go to the lake, the console, TensorBoard and W&B; checkpoints are Hugging Face
   directories plus optimizer, RNG, step, lake version and the algorithm's own state (PPO's
   value model), so `--resume` continues after a `kill -9` with the same data order; the
   metrics and batches the killed process logged after its last checkpoint are deleted first,
   and TensorBoard purges them, so each (run, step, name) holds one value.
Settings: `spo_train.config.TrainConfig` (`resolved()` fills what the algorithm chooses).

SPO trains against the q0 estimates of *this* `--model` (its `model_identity`) under the q0
sampler settings (`spo_train.train.setup.q0_sampler_key`), recomputed at the training beta;
without them it refuses with the `spo estimate-q0` command to run. PPO, GRPO and TOPR need no
q0.
The policy is evaluated before the first step (step 0) and after the last (always;
`eval_every` adds evaluations in between) on the held-out `eval_split` and, with
`eval_train_problems`, on problems of its own training set, with the paper's settings by
default (n=20, T=0.4, top-p 0.95, pass@1 and pass@10).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spo_store.errors import SpoError
from spo_store.lake import Lake, run_status, sql_quote, utc_now
from spo_store.maintenance import maybe_compact
from spo_store.mixture_pins import save_pins
from spo_store.stopping import deferred_stop, stop_requested
from spo_train.config import (
    PATH_SETTINGS,
    TrainConfig,
    absolute_path,
    check_output_dir,
    make_output_dir,
)
from spo_train.lm.fast_step import configure_model, step_options
from spo_train.lm.models import context_length, load_model_and_tokenizer, tokenizer_identity
from spo_train.rollouts.sampling import check_context
from spo_train.rollouts.sources import RolloutSource, open_rollouts
from spo_train.train import distributed
from spo_train.train.batch import ReferenceCache
from spo_train.train.batch_sources import Batch
from spo_train.train.checkpoint import (
    latest_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from spo_train.train.follower import Follower
from spo_train.train.learner import build_learner, to_train_batch
from spo_train.train.metric_sink import MetricSink
from spo_train.train.plan import plan_run
from spo_train.train.policy_eval import PolicyEvaluation
from spo_train.train.setup import lock_output, preflight, set_seed, write_config


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
    (`spo_train.train.distributed`); a follower returns a TrainResult with an empty run_id."""
    dp = distributed.setup(config)
    if dp is not None and config.nproc != dp.world_size:  # torchrun: the record says how many
        config = dataclasses.replace(config, nproc=dp.world_size)
    if dp is not None and not dp.is_main:
        follower = Follower(config.resolved(), dp)
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
    make_output_dir(config.output)
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
    output = Path(config.output)
    lake = Lake.open(config.lake)
    # --- what it trains and evaluates on, and its batch source; notes said once all passed
    plan = plan_run(lake, config, pi0_path, sources)
    for line in plan.notes:
        say(line)
    problems_by_id = plan.problems_by_id

    # --- models: reference pi_0 (frozen), the learner (policy, optimizer, algorithm)
    set_seed(config.seed)
    ref_model, tokenizer = load_reference(pi0_path, config, plan.prompted)
    tokenizer_id = tokenizer_identity(tokenizer)
    output.mkdir(parents=True, exist_ok=True)
    ckpt = resume_checkpoint(output, config, dp, say)
    parts = build_learner(config, pi0_path, ckpt, dist=dp, keep_full=True, say=say)
    learner, algorithm = parts.learner, parts.algorithm

    def weights() -> torch.nn.Module:  # rank 0's whole policy (FSDP: gathered into `full`)
        return learner.policy if dp is None else dp.full_policy(learner.policy, parts.full)

    start_step, run_id = 0, ""
    if ckpt is not None:
        restore_rng(parts.state)
        start_step, run_id = parts.state["step"], parts.state["run_id"]
        say(f"resumed run {run_id} from {ckpt.name} (step {start_step})")
        lake.resume_run(run_id)  # the same run is running again, in this process
    else:
        # the lake records paths absolute, as eval and estimate-q0 do: a relative --model read
        # back from `runs` later, from another folder, would name another model or none
        recorded = dataclasses.asdict(config)
        recorded.update({k: absolute_path(recorded[k]) for k in PATH_SETTINGS if recorded.get(k)})
        if plan.batches.pinned:  # the ids themselves are in OUTPUT/pinned_sources.json
            recorded["pinned_sources"] = {n: p.summary() for n, p in plan.batches.pinned.items()}
        run_id = lake.start_run(
            "train", recorded, model_id=plan.ref_model_id, tokenizer_id=tokenizer_id
        )
    # From here the run is recorded: whatever stops it ends it (run_status), never `running`.
    rollouts: RolloutSource | None = None
    sink: MetricSink | None = None
    ckpt_step = start_step  # the step of the newest checkpoint this run can resume from
    mid_update = False  # inside a step's optimizer update (a checkpoint then is inconsistent)
    result = TrainResult(run_id=run_id, steps_done=start_step, output=output, algo=config.algo)

    def checkpoint(step: int) -> None:
        state = {"step": step, "run_id": run_id, "lake_versions": lake.versions()}
        state |= {"config": dataclasses.asdict(config), "algorithm": algorithm.state_dict()}
        state["skipped_optimizer_steps"] = learner.skipped_steps
        opt = (learner.optimizer, learner.scheduler)
        save_checkpoint(output, step, weights(), tokenizer, *opt, state)

    try:
        if dp is not None:  # the other ranks load the same weights and state now
            dp.start(pi0_path, ckpt, start_step)
        sink = MetricSink(
            lake, config, run_id, output, start_step=start_step, resumed=ckpt is not None, say=say
        )
        # Saved resolved: the lake $SPO_LAKE named, the output and the sources file as absolute
        # paths (`spo train --config OUTPUT/config.toml` works from any folder).
        saved = dataclasses.replace(
            config,
            lake=lake.uri,
            output=str(output.resolve()),
            sources_file=absolute_path(config.sources_file) if config.sources_file else None,
        )
        write_config(output, saved, run_id, say, resumed=ckpt is not None)
        if ckpt is None:  # a resume keeps the file it started with
            save_pins(output, plan.batches.pinned)
        plan.batches.bind(run_id)
        rollouts = open_rollouts(
            lake,
            weights(),
            tokenizer,
            config=config,
            pi0_path=pi0_path,
            problems=plan.problems,
            run_id=run_id,
            tokenizer_id=tokenizer_id,
            ref_model_id=plan.ref_model_id,
            rows_per_step=plan.batches.rows_per_step,
            version=start_step,  # the rollout policy starts with the weights it was loaded with
            say=say,
        )
        ref_cache = ReferenceCache(
            lake,
            tokenizer,
            tokenizer_id,
            ref_model,
            plan.ref_model_id,
            run_id,
            config.micro_batch_size,
        )
        evaluate_at = PolicyEvaluation(
            lake,
            config,
            plan.eval_sets,
            run_id=run_id,
            tokenizer=tokenizer,
            tokenizer_id=tokenizer_id,
            sink=sink,
            resumed=ckpt is not None,
            say=say,
        )
        if start_step == 0:
            result.evals += evaluate_at(0, weights())  # the policy it starts from
        for step in range(start_step, config.steps):
            t0 = time.perf_counter()
            # 1. the rollout policy takes new weights every model_update_interval steps
            if step % config.model_update_interval == 0 and step != rollouts.version:
                rollouts.sync(weights(), step)
            # 2. online rollouts judged into the lake (sampled now, or waited for)
            rollouts.wait_for(step, plan.batches.ready)
            t_rollout = time.perf_counter() - t0
            # 3. the batch, read from the lake and logged as (lake version, ids)
            batch = plan.batches.draw(step, rollouts.version)
            lake.append("batches", [batch_row(run_id, step, batch, config.seed)])
            # 4. token ids and reference log-probs (rows, cache, or one reference forward)
            prepared = ref_cache.prepare(batch.table, problems_by_id)
            train_batch = to_train_batch(prepared, batch.table, batch.sources, batch.groups)
            if config.mc_weight > 0:  # S_t targets of the rows `spo pts` annotated
                from spo_train.pts import attach_mc_targets

                attach_mc_targets(
                    train_batch, lake, ref_model_id=plan.ref_model_id, tokenizer_id=tokenizer_id
                )
            # 5. the algorithm's loss and optimizer step(s)
            mid_update = True  # until the step is counted done below
            # Ctrl-C inside the step stops after it (single process: the ranks of --nproc
            # stop together through the launcher instead); a second Ctrl-C stops at once.
            with deferred_stop(enabled=dp is None):
                if dp is not None:  # every rank steps on this same global batch
                    dp.broadcast(("update", (step, train_batch)))
                metrics = parts.step(train_batch)
                # 6. metrics, checkpoints, evaluation
                dt = time.perf_counter() - t0
                metrics |= rollouts.metrics()
                metrics |= {
                    "train/tokens_per_s": int(train_batch.mask.sum()) / max(dt - t_rollout, 1e-9),
                    "train/step_s": dt,
                    "train/rollout_s": t_rollout,
                    "train/ref_forward_rows": float(prepared.ref_forwards),
                }
                metrics = sink.log(step, metrics)
                result.metrics.append({"step": step, **metrics})
                result.steps_done = step + 1
                mid_update = False
                if on_step:
                    on_step(step, metrics)
            if config.eval_every and (step + 1) % config.eval_every == 0:
                result.evals += evaluate_at(step + 1, weights())
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                checkpoint(step + 1)
                ckpt_step = step + 1
                prune_checkpoints(output, config.keep_checkpoints)
                maybe_compact(lake)
        # The policy it ends with, always (after its checkpoint, so a kill here loses no
        # training; a resumed run evaluates it if this did not finish).
        result.evals += evaluate_at(config.steps, weights())
        if dp is not None:
            drift = dp.finish(learner.policy)
            if drift:
                say(drift)
    except BaseException as exc:
        if dp is not None and not mid_update:
            dp.abort()  # the followers wait for the next step: they return, rank 0 reports
        # A signal that lands in native code (DuckDB's "Query interrupted") raises another
        # type: whether the run was stopped is the process's record, not the exception.
        if isinstance(exc, KeyboardInterrupt) or stop_requested():
            stopped(result.steps_done, ckpt_step, mid_update, dp, checkpoint, say)
        lake.end_run(run_id, run_status(exc))
        raise
    finally:
        if rollouts is not None:
            rollouts.close()  # rollout workers and the Ray this run started, on every exit
        if sink is not None:
            sink.close()
    lake.end_run(run_id, "completed")
    result.fill_from_lake(lake)
    return result


def load_reference(
    pi0_path: Path, config: TrainConfig, prompted: list[dict[str, Any]]
) -> tuple[torch.nn.Module, Any]:
    """pi_0 frozen, for the reference forward of rows without cached log-probs, and its
    tokenizer; refuses (SpoError) a `max_new_tokens` that a prompt of `prompted` (every
    problem the run samples) leaves no room for."""
    ref_model, tokenizer = load_model_and_tokenizer(pi0_path, device=config.device)
    check_context(tokenizer, context_length(ref_model.config), prompted, config.max_new_tokens)
    ref_model.eval().requires_grad_(False)
    # The reference forward runs at the run's --precision; no gradient flows through it, so
    # neither checkpointing nor compile is worth applying.
    configure_model(
        ref_model,
        dataclasses.replace(step_options(config), activation_checkpointing=False, compile=False),
    )
    return ref_model, tokenizer


def resume_checkpoint(
    output: Path,
    config: TrainConfig,
    dp: distributed.Distributed | None,
    say: Callable[[str], None],
) -> Path | None:
    """The checkpoint `--resume` continues from (None: fresh); SpoError for FSDP."""
    ckpt = latest_checkpoint(output) if config.resume else None
    if config.resume and ckpt is None:
        say(f"no checkpoint in {output}: starting fresh")
    if ckpt is not None and dp is not None and dp.fsdp:
        raise SpoError(  # its checkpoints hold rank 0's optimizer shard only (docs/distributed.md)
            f"--resume of {output} with SPO_FSDP=1: not supported yet; resume without SPO_FSDP"
        )
    return ckpt


def batch_row(run_id: str, step: int, batch: Batch, seed: int) -> dict[str, Any]:
    """The `batches` row of a step: (lake version, ids, sources), enough to reproduce it."""
    return {
        "run_id": run_id,
        "step": step,
        "trajectories_version": batch.version,
        "traj_ids": batch.traj_ids,
        "sources": batch.sources,
        "seed": seed,
        "created_at": utc_now(),
    }


def stopped(
    steps_done: int,
    ckpt_step: int,
    mid_update: bool,
    dp: distributed.Distributed | None,
    checkpoint: Callable[[int], None],
    say: Callable[[str], None],
) -> None:
    """Ctrl-C / SIGTERM: keep the steps done since the last checkpoint (--resume continues
    from there; a small model saves in seconds), unless it came inside an optimizer update
    (the weights are then half-stepped) or FSDP (gathering its weights needs every rank)."""
    if not mid_update and steps_done > ckpt_step and not (dp is not None and dp.fsdp):
        checkpoint(steps_done)
        say(f"interrupted: checkpoint-{steps_done:06d} saved; --resume continues")
    elif mid_update or steps_done > ckpt_step:
        since = f"checkpoint-{ckpt_step:06d}" if ckpt_step else "the start"
        say(
            f"interrupted inside a step: no checkpoint saved; --resume continues from {since} "
            f"(steps after it run again)"
        )
