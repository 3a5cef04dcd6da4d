"""`spo train --rollout-workers N`: the trainer's side of asynchronous rollout workers.

`RayRolloutProducer` is a `spo_train.rollouts.sources.RolloutSource` (`version`,
`sync(policy, version)`, `wait_for(step, ready)`, `metrics()`, `close()`), as the local
`spo_train.rollouts.local.RolloutProducer` is:
- `sync` publishes the trainer's weights (`ray.put` of the state dict, or a file under
  `output/weights` with `--weight-sync checkpoint`) and queues `set_weights` on every worker,
  behind the batches it is sampling: weights change between batches, never inside one. The
  trainer is the only place that decides weights; a restarted worker is sent the latest again.
- `wait_for(step, ready)` returns once the lake holds enough data for this step (`ready`, the
  step's batch source, says), waiting (and measuring the trainer's idle time) when it does
  not. It never hands rows to the trainer: the batch source reads them from the lake (SPO's
  mixture, PPO/GRPO's whole fresh groups: `spo_train.train.batch_sources`), so the batch is
  `(lake version, ids)`, reproducible by `spo lake batch`.
- a background thread keeps pumping the workers (results, restarts, queues) while the
  trainer trains;
- `close` kills the actors and shuts down the Ray it started (`ray_session`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spo_store.errors import SpoError
from spo_store.lake import Lake
from spo_train.config import TrainConfig
from spo_train.rollouts.tally import RolloutTally
from spo_train.rollouts.worker_spec import worker_decodings
from spo_train.rollouts.workers import (
    PoolStats,
    WorkerPool,
    WorkerSetup,
    ray_session,
    remote_worker_class,
)

POLL_S = 0.5
"""How long one wait for a worker's result lasts before the lake is looked at again."""
MAX_WAIT_S = float(os.environ.get("SPO_ROLLOUT_MAX_WAIT_S", "1800"))
"""A step that finds too little fresh data for this long fails with one line (workers that
commit nothing usable: every rollout unjudged, problems without q0, ...)."""


class RayRolloutProducer:
    """Rollout workers for one training run (see the module docstring)."""

    def __init__(
        self,
        lake: Lake,
        policy: torch.nn.Module,
        *,
        config: TrainConfig,
        model_path: str | os.PathLike[str],
        problems: Sequence[Mapping[str, Any]],
        run_id: str,
        tokenizer_id: str,
        ref_model_id: str,
        online_per_step: int,
        version: int,
        say: Any = None,
    ) -> None:
        c = config
        self.lake, self.config, self.run_id = lake, c, run_id
        self.online_per_step = online_per_step
        self.say = say or (lambda _m: None)
        self.version = version
        self.stats = PoolStats()
        self._step_stats = PoolStats()
        # A background thread pumps the pool while the trainer trains (collects results,
        # restarts and re-weights dead workers, tops queues up): workers never wait on a long
        # training step. Every pool access holds this lock.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._tally = RolloutTally()  # the rows workers committed since the last step
        self.idle_s = 0.0
        self._last_step_at = time.perf_counter()
        self._session = ray_session(c.ray_address, num_workers=c.rollout_workers)
        self._session.__enter__()
        self.pool: WorkerPool | None = None
        self._weights: tuple[Any, int] | None = None
        self._weights_dir = Path(c.output) / "weights"
        try:
            setup = WorkerSetup(
                model_path=str(model_path),
                lake_uri=lake.uri,
                run_id=run_id,
                tokenizer_id=tokenizer_id,
                ref_model_id=ref_model_id,
                max_new_tokens=c.max_new_tokens,
                seed=c.seed,
                judge_workers=c.workers or 1,
                unsafe_no_sandbox=c.unsafe_no_sandbox,
                # Actors ask Ray for no GPU (Ray then hides the GPUs from them): they sample on
                # CPU whatever --device the trainer uses (docs/rollouts.md, "Not yet").
                device="cpu",
            )
            decodings = worker_decodings(
                c.rollout_worker_decoding,
                c.rollout_workers,
                tuple(c.rollout_temperature),
                c.rollout_top_p,
            )
            self.decodings = decodings
            problem_ids = [p["problem_id"] for p in problems]  # workers read them from the lake
            cls = remote_worker_class()
            actors = [
                cls.remote(setup, i, d, problem_ids, max(1, online_per_step), c.rollout_n)
                for i, d in enumerate(decodings)
            ]
            self.pool = WorkerPool(
                actors,
                next_call=lambda _i: ("produce", ()),
                on_result=self._on_result,
                on_restart=self._send_weights,
            )
            self._publish(policy, version)
            self._thread = threading.Thread(
                target=self._background, name="spo-rollout-pump", daemon=True
            )
            self._thread.start()
            shown = ", ".join(f"w{i} {d.describe()}" for i, d in enumerate(decodings))
            where = c.ray_address or "a local Ray"
            self.say(f"rollout workers on {where}: {shown}")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ weights
    def _publish(self, policy: torch.nn.Module, version: int) -> None:
        import ray

        state = {k: v.detach().to("cpu").clone() for k, v in policy.state_dict().items()}
        if self.config.weight_sync == "checkpoint":
            self._weights_dir.mkdir(parents=True, exist_ok=True)
            path = self._weights_dir / f"version-{version:06d}.pt"
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)  # a worker never reads a half-written file
            payload: Any = str(path.resolve())
            # keep the previous file: a worker may still be loading it
            for old in sorted(self._weights_dir.glob("version-*.pt"))[:-2]:
                with contextlib.suppress(OSError):
                    old.unlink()
        else:
            payload = ray.put(state)
        with self._lock:
            self._weights = (payload, version)
            for i in range(len(self.pool.actors)):
                self._send_weights(i)

    def _send_weights(self, index: int) -> None:
        if self._weights is not None and self.pool is not None:
            self.pool.call(index, "set_weights", *self._weights)

    def sync(self, policy: torch.nn.Module, version: int) -> None:
        """Publish the trainer's weights as policy `version` (workers take them between
        batches)."""
        self._publish(policy, version)
        self.version = version

    # ------------------------------------------------------------------ results
    def _on_result(self, index: int, result: Any) -> None:
        if not isinstance(result, dict) or "need_weights" in result:
            if isinstance(result, dict):
                self._send_weights(index)  # a restarted worker: weights before more work
            return
        for st in (self.stats, self._step_stats):
            st.batches += 1
            st.rows += result["rows"]
            st.commit_s.append(result["commit_s"])
            st.sample_s.append(result["sample_s"])
            if result["version"] is not None:
                st.versions.append(result["version"])
        self._tally.add(result["tally"])

    def _background(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                with self._lock:
                    if self.pool is None:
                        return
                    self.pool.pump(0.0)
            except BaseException as exc:  # noqa: BLE001 - raised in the trainer's thread
                self._error = exc
                return

    def _pump(self, sleep_s: float = 0.0) -> None:
        """Pump once in this thread (re-raising what the background thread met), then sleep."""
        if self._error is not None:
            raise self._error
        with self._lock:
            self.pool.pump(0.0)
        if sleep_s:
            time.sleep(sleep_s)

    # ------------------------------------------------------------------ waiting for data
    def wait_for(self, step: int, ready: Callable[[int], tuple[bool, str]]) -> None:
        """Return once `ready(version)` (the step's batch source) finds this step's data in the
        lake; SpoError after `MAX_WAIT_S` without it, naming what is missing."""
        assert self.pool is not None
        t0 = time.perf_counter()
        self._pump()
        ok, missing = ready(self.version)
        while not ok:
            if time.perf_counter() - t0 > MAX_WAIT_S:
                raise SpoError(
                    f"step {step}: waited {MAX_WAIT_S:.0f} s for rollout workers and the lake "
                    f"still holds {missing} (policy version {self.version}, --staleness "
                    f"{self.config.staleness}); see the Ray logs under /tmp/ray"
                )
            self._pump(POLL_S)
            ok, missing = ready(self.version)
        self.idle_s = time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """This step's rollout-side metrics: of the rows workers committed since the last step,
        their tally (`spo_train.rollouts.tally`: mean reward, unjudged, verdict rates, sampler
        entropy); trainer idle time, worker
        batches and rows since the last step, commit latency, staleness (trainer versions) of
        the committed rows, worker restarts so far."""
        with self._lock:
            st, self._step_stats = self._step_stats, PoolStats()
            tally, self._tally = self._tally, RolloutTally()
        now = time.perf_counter()
        wall, self._last_step_at = now - self._last_step_at, now
        out = tally.metrics() | {
            "rollout/idle_s": self.idle_s,
            "rollout/samples_per_s": st.rows / wall if wall > 0 else 0.0,
            "rollout/worker_batches": float(st.batches),
            "rollout/worker_rows": float(st.rows),
            "rollout/worker_restarts": float(sum(self.pool.restarts)) if self.pool else 0.0,
        }
        if st.commit_s:
            out["rollout/commit_s"] = float(np.mean(st.commit_s))
        if st.versions:
            out["rollout/staleness"] = float(self.version - np.mean(st.versions))
        return out

    def close(self) -> None:
        """Kill the workers and shut down the Ray this producer started (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
        if self._session is not None:
            session, self._session = self._session, None
            session.__exit__(None, None, None)
