"""Rollout workers as Ray actors: sample, judge in the sandbox, commit whole batches to the lake.

Used by `spo train --rollout-workers N` (through `spo_train.rollouts.ray_rollouts`) and by `spo
rollout` (`spo_train.rollouts.job`); docs/rollouts.md has the design. In short:
- `ray_session` starts a local Ray (or joins `--ray-address`) and shuts it down on every exit
  path; a Ray the caller already started (tests) is used and left running.
- `RolloutWorker` (one actor per worker, `num_cpus=0.5`, restarted by Ray after a crash) holds
  its own copy of the model. Calls on an actor run in submission order, so a weight update
  (`set_weights`) queued behind a `produce` call lands between two batches. A restarted
  actor has no trained weights (`version` None) and answers `produce` with `need_weights`
  until the trainer sends the latest again: it never samples with weights it cannot name.
- Every batch is one keyed commit (`Lake.insert_new`) with deterministic trajectory ids
  (`<source>-<run tag>-w<index>-b<batch>-p<problem>-<sample>`): a killed worker loses at most
  the batch it had not committed, and a retried batch cannot store a row twice.
- `WorkerPool` keeps every actor busy (a queue of `QUEUE_DEPTH` calls each), notices dead
  actors (Ray restarts them), re-sends weights and resubmits lost work.

No spo_store write bypasses `Lake` here: workers append through `Lake.insert_new`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spo_store.errors import SpoError
from spo_train.rollouts.tally import RolloutTally
from spo_train.rollouts.worker_spec import Decoding

RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
"""The logger of Ray's token-authentication notices (Ray 2.5x), quieted while Ray starts."""
WORKER_CPUS = 0.5
"""Ray CPUs an actor asks for: generation runs one torch thread, the judge's sandboxes are
separate processes; half a CPU lets two workers and the trainer share 2 cores."""
QUEUE_DEPTH = 2
"""`produce` calls queued per actor: while one runs, the next waits, so a worker never idles
while the trainer trains; a weight update queued behind them lands between batches."""
MAX_RESTARTS = 5
"""Crashes per worker before the command gives up (a worker that always dies is a bug or a
broken node, not bad luck)."""


def run_tag(run_id: str) -> str:
    """8 hex characters naming a run inside trajectory ids."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


def check_ray_address(address: str | None) -> None:
    """Refuse (one SpoError line, before anything is written) a `--ray-address HOST:PORT` or
    `ray://HOST:PORT` where nothing accepts a TCP connection within 5 s: `ray.init` would
    otherwise retry for many minutes. `auto` and no address are left to Ray."""
    import socket

    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SpoError(f"--ray-address {address}: give HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SpoError(
            f"--ray-address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
            "start the cluster (`ray start --head`) or leave --ray-address out for a local Ray"
        ) from None


@contextlib.contextmanager
def ray_session(address: str | None, *, num_workers: int) -> Iterator[None]:
    """Ray for the duration of the block: an already initialised Ray is used as is (and left
    running); else `ray.init(address)` joins a cluster, or a local Ray is started with enough
    CPUs for `num_workers` actors. On exit (normal, error, Ctrl-C) what was started here is
    shut down, so no raylet or gcs_server outlives the command. `ray.init` replaces the
    SIGTERM handler (Ray's docs): spo's own (stop like Ctrl-C) is put back."""
    import ray

    if ray.is_initialized():
        yield
        return
    term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    cpus = max(os.cpu_count() or 1, math.ceil(num_workers * WORKER_CPUS) + 1)
    guard = _start_guard()
    # A new local Ray turns token authentication on by default (kept) and logs a notice about
    # it on every start: not news for a command's user, so that one logger is quieted here.
    auth_log = logging.getLogger(RAY_AUTH_LOGGER)
    auth_level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Ray starts its processes with Popen(preexec_fn=...), which runs lance's at-fork
            # warning; each child execs a Ray binary at once and never touches lance.
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(
                    num_cpus=cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()
        _stop_guard(guard)
        if not isinstance(exc, Exception):
            raise
        where = f"--ray-address {address}" if address else "a local Ray"
        raise SpoError(f"could not start {where}: {type(exc).__name__}: {exc}") from None
    finally:
        auth_log.setLevel(auth_level)
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, term)
            signal.signal(signal.SIGINT, intr)
    # Ray's processes have the mark now (the actors inherit it from the raylet); what this
    # process starts later (the W&B service, evaluation's sandboxes) must not, or the guard
    # would kill it with Ray.
    _restore_mark(guard)
    try:
        yield
    finally:
        try:
            ray.shutdown()
        finally:
            _stop_guard(guard)


def _start_guard() -> tuple[Any, int, str | None]:
    """Mark the Ray about to start (`SPO_RAY_SESSION`) and start `spo_train.rollouts.ray_reaper`,
    which kills every marked process once this process ends or calls `_stop_guard`."""
    import secrets
    import subprocess
    import sys

    from spo_train.rollouts.ray_reaper import VAR

    token = secrets.token_hex(8)
    read_fd, write_fd = os.pipe()  # not inherited by Ray's processes (O_CLOEXEC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo_train.rollouts.ray_reaper", token, str(read_fd)],
        pass_fds=(read_fd,),
        start_new_session=True,  # a Ctrl-C or killpg of the command does not reach it
        env={k: v for k, v in os.environ.items() if k != VAR},
    )
    os.close(read_fd)
    previous = os.environ.get(VAR)
    os.environ[VAR] = token
    return proc, write_fd, previous


def _restore_mark(guard: tuple[Any, int, str | None]) -> None:
    """This process's `SPO_RAY_SESSION` as it was before `_start_guard`."""
    from spo_train.rollouts.ray_reaper import VAR

    previous = guard[2]
    if previous is None:
        os.environ.pop(VAR, None)
    else:
        os.environ[VAR] = previous


def _stop_guard(guard: tuple[Any, int, str | None]) -> None:
    """Close the guard's pipe (it sweeps what `ray.shutdown` left) and wait for it."""
    import subprocess

    proc, write_fd, _previous = guard
    _restore_mark(guard)
    with contextlib.suppress(OSError):
        os.close(write_fd)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@dataclass
class WorkerSetup:
    """What every worker of one command shares (sent once to each actor)."""

    model_path: str
    lake_uri: str
    run_id: str
    tokenizer_id: str
    ref_model_id: str
    max_new_tokens: int
    seed: int
    judge_workers: int | None = None
    unsafe_no_sandbox: bool = False
    device: str = "cpu"
    source: str = "online"  # rows of the current policy; reference workers write 'pi0'
    model_id: str | None = None  # current-policy rows: None -> '<run_id>@<version>'
    fixed: bool = False  # `spo rollout`: sample the loaded model as is (no trainer, no version)


class RolloutWorker:
    """One rollout worker (a Ray actor; see the module docstring). `index` names it in the
    lake (`worker_id = '<run_id>/w<index>'`)."""

    def __init__(
        self,
        setup: WorkerSetup,
        index: int,
        decoding: Decoding,
        problem_ids: Sequence[str] = (),
        rows_per_batch: int = 0,
        rollout_n: int = 1,
    ) -> None:
        import torch

        from spo_store.lake import Lake
        from spo_train.lm.generation import TransformersGenerator
        from spo_train.lm.models import load_model_and_tokenizer

        torch.set_num_threads(1)  # the trainer and the other workers share the cores
        self.setup, self.index, self.decoding = setup, index, decoding
        self.worker_id = f"{setup.run_id}/w{index}"
        self.lake = Lake.open(setup.lake_uri)
        # Problems by id, read from the lake here (not shipped through Ray's object store).
        self.problems = _load_by_ids(self.lake, problem_ids) if problem_ids else []
        self.rows_per_batch, self.rollout_n = rows_per_batch, rollout_n
        self.model, self.tokenizer = load_model_and_tokenizer(setup.model_path, device=setup.device)
        self.model.eval().requires_grad_(False)
        self.generator = TransformersGenerator(self.model, self.tokenizer, device=setup.device)
        # A current-policy worker samples only weights it was sent (None: none yet, e.g.
        # after a restart); a reference worker keeps pi_0, version 0.
        self.version: int | None = 0 if (decoding.policy == "reference" or setup.fixed) else None
        self.tag = run_tag(setup.run_id)
        self.seq = self._next_seq()
        # Names this life of the actor in every answer: a crash that no pending call saw
        # (Ray restarted the actor between two calls) still shows up as a new incarnation.
        self.incarnation = uuid.uuid4().hex

    def pid(self) -> int:
        return os.getpid()

    def _prefix(self) -> str:
        src = "pi0" if self.decoding.policy == "reference" else self.setup.source[:3]
        return f"{src}-{self.tag}-w{self.index}"

    def _next_seq(self) -> int:
        """The batch number after the last one this worker id committed (0: none): a
        restarted worker continues the numbering, never reusing a committed batch's ids."""
        from spo_store.lake import sql_quote

        got = (
            self.lake.sql_arrow(
                "SELECT max(TRY_CAST(NULLIF(regexp_extract(traj_id, '-b([0-9]+)-p', 1), '') AS BIGINT)) "
                f"FROM trajectories WHERE worker_id = {sql_quote(self.worker_id)}"
            )
            .column(0)[0]
            .as_py()
        )
        return 0 if got is None else int(got) + 1

    def set_weights(self, weights: Any, version: int) -> int | None:
        """Load the trainer's weights (a state dict, or the path of a saved one) as policy
        `version`; a reference worker keeps pi_0. Returns the version it now samples."""
        if self.decoding.policy == "reference" or self.setup.fixed:
            return self.version
        if isinstance(weights, str):
            import torch

            try:
                weights = torch.load(weights, map_location=self.setup.device, weights_only=True)
            except FileNotFoundError:
                # The trainer keeps the two newest files: this one was pruned because two newer
                # versions were published, and their set_weights calls wait behind this one.
                return self.version
        self.model.load_state_dict(weights)
        self.version = int(version)
        return self.version

    def produce(self) -> dict[str, Any]:
        """Sample one batch (`rows_per_batch` rows in whole groups of `rollout_n`), judge it
        and commit it; returns a summary (no rows: the trainer reads them from the lake)."""
        if self.version is None:
            return {"worker": self.index, "need_weights": True, "incarnation": self.incarnation}
        seq = self.seq
        rng = np.random.default_rng([self.setup.seed, self.index, seq])
        n_problems = max(1, math.ceil(self.rows_per_batch / self.rollout_n))
        picks = rng.choice(
            len(self.problems), size=n_problems, replace=len(self.problems) < n_problems
        )
        problems = [self.problems[i] for i in picks]
        seed = int(rng.integers(0, 2**31 - 1))
        out = self.sample(problems, self.rollout_n, seed, f"{self._prefix()}-b{seq:06d}")
        self.seq = seq + 1
        return {**out, "seq": seq}

    def run_chunk(self, problem_ids: Sequence[str], n: int, seed: int) -> dict[str, Any]:
        """`spo rollout`: `n` responses to each problem of `problem_ids`, committed as one
        batch whose ids depend only on the run and the chunk (a chunk redone after a crash
        that had committed adds nothing)."""
        problems = _load_by_ids(self.lake, list(problem_ids))
        key = hashlib.sha256("\0".join(problem_ids).encode()).hexdigest()[:10]
        # no worker index in the ids: a chunk redone on another worker gets the same ones
        out = self.sample(problems, n, seed, f"{self.setup.source[:3]}-{self.tag}-c{key}")
        return {**out, "problems": len(problems)}

    def sample(
        self, problems: Sequence[Mapping[str, Any]], n: int, seed: int, id_prefix: str
    ) -> dict[str, Any]:
        """`n` responses to each problem, judged, committed as one keyed append with ids
        `<id_prefix>-p<j>-<k>`; returns counts, rewards, timings and the policy version."""
        from spo_train.rollouts.sampling import SamplerSettings, sample_and_judge

        s = self.setup
        reference = self.decoding.policy == "reference"
        version = self.version
        low, high = self.decoding.temperature
        settings = SamplerSettings(n, (low, high), self.decoding.top_p, s.max_new_tokens, seed=seed)
        t0 = time.perf_counter()
        rows = sample_and_judge(
            self.generator,
            self.tokenizer,
            problems,
            settings,
            source="pi0" if reference else s.source,
            run_id=s.run_id,
            model_id=s.ref_model_id if reference else (s.model_id or f"{s.run_id}@{version}"),
            tokenizer_id=s.tokenizer_id,
            policy_version=None if s.fixed else version,
            # the sampling model is pi_0 itself (or, for `spo rollout`, the model named as
            # ref_model_id): its log-probs are that model's reference log-probs
            ref_model_id=s.ref_model_id if (reference or s.fixed or version == 0) else None,
            workers=s.judge_workers,
            unsafe_no_sandbox=s.unsafe_no_sandbox,
            id_prefix=id_prefix,  # grouped ids (`spo_train.rollouts.sampling.grouped_traj_ids`)
        )
        t1 = time.perf_counter()
        for row in rows:
            row["worker_id"] = self.worker_id
        _, inserted = self.lake.insert_new("trajectories", rows)
        t2 = time.perf_counter()
        return {
            "worker": self.index,
            "incarnation": self.incarnation,
            "rows": len(rows),
            "inserted": inserted,
            "rewards": [r["reward"] for r in rows],
            "tally": RolloutTally().add_rows(rows).as_dict(),
            "version": version,
            "sample_s": t1 - t0,
            "commit_s": t2 - t1,
            "committed_at": time.time(),
        }


def _load_by_ids(lake: Any, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Problem rows (`spo_train.rollouts.sampling.load_problems` columns) of `ids`, in that order."""
    from spo_store.lake import sql_quote
    from spo_train.rollouts.sampling import load_problems

    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 2000):
        chunk = ", ".join(sql_quote(i) for i in ids[start : start + 2000])
        for r in load_problems(lake, f"p.problem_id IN ({chunk})"):
            rows[r["problem_id"]] = r
    missing = [i for i in ids if i not in rows]
    if missing:
        raise SpoError(f"rollout worker: problems not in lake {lake.uri}: {missing[:3]}")
    return [rows[i] for i in ids]


def remote_worker_class() -> Any:
    """`RolloutWorker` as a Ray actor class (restarted by Ray after a crash)."""
    import ray

    return ray.remote(num_cpus=WORKER_CPUS, max_restarts=-1, max_task_retries=0)(RolloutWorker)


def _last_line(exc: BaseException) -> str:
    """The last line of a Ray error's text (the remote exception, not Ray's preamble)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def wait_started(actors: Sequence[Any]) -> None:
    """Block until every actor has run its constructor; SpoError naming the first that could
    not (its exception's last line)."""
    import ray

    for i, actor in enumerate(actors):
        try:
            ray.get(actor.pid.remote())
        except Exception as exc:  # noqa: BLE001 - Ray wraps the constructor's error
            raise SpoError(f"rollout worker {i} could not start: {_last_line(exc)}") from None


RESTART_RETRY_S = 2.0
"""Seconds before calls go again to an actor that answered "restarting" (its model reloads)."""


def _is_restarting(exc: BaseException) -> bool:
    """Ray answered that the actor is being restarted (after a crash already counted)."""
    import ray.exceptions as rex

    return isinstance(exc, rex.ActorUnavailableError)


def _is_actor_death(exc: BaseException) -> bool:
    import ray.exceptions as rex

    return isinstance(exc, rex.RayActorError | rex.ActorUnavailableError | rex.WorkerCrashedError)


@dataclass
class PoolStats:
    """What the workers reported: batches, rows, commit latencies, restarts."""

    batches: int = 0
    rows: int = 0
    commit_s: list[float] = field(default_factory=list)
    sample_s: list[float] = field(default_factory=list)
    restarts: int = 0
    versions: list[int] = field(default_factory=list)


class WorkerPool:
    """N actors, each kept busy with calls from `next_call(index)` (None: nothing to do for
    it now). `pump` collects finished calls, passes their results to `on_result`, notices
    dead workers (Ray restarts them: `on_restart(index)` re-sends what a fresh actor needs,
    the lost call's `args` are handed back through `on_lost`) and tops the queues up."""

    def __init__(
        self,
        actors: list[Any],
        *,
        next_call: Callable[[int], tuple[str, tuple] | None],
        on_result: Callable[[int, Any], None],
        on_restart: Callable[[int], None] | None = None,
        on_lost: Callable[[int, str, tuple], None] | None = None,
        depth: int = QUEUE_DEPTH,
    ) -> None:
        self.actors = actors
        self.next_call, self.on_result = next_call, on_result
        self.on_restart, self.on_lost = on_restart, on_lost
        self.depth = depth
        self.pending: dict[Any, tuple[int, str, tuple, int]] = {}
        self.restarts = [0] * len(actors)  # also each actor's incarnation as the pool knows it
        # An actor Ray is still restarting answers ActorUnavailableError: not a new death; its
        # calls wait until `retry_at`, and then it gets the weights again first.
        self.retry_at = [0.0] * len(actors)
        self.resend = [False] * len(actors)
        self.restarting = [False] * len(actors)  # its restart was counted, no answer since
        # Each actor's life as its last answer named it (None: none since its last counted
        # death), and the lives known dead: an answer of a dead life read late counts nothing.
        self.incarnations: list[str | None] = [None] * len(actors)
        self.dead_lives: set[str] = set()

    def call(self, index: int, method: str, *args: Any) -> Any:
        """Queue `method(*args)` on actor `index` (after what is queued there already)."""
        ref = getattr(self.actors[index], method).remote(*args)
        self.pending[ref] = (index, method, args, self.restarts[index])
        return ref

    def queued(self, index: int) -> int:
        return sum(1 for i, m, *_ in self.pending.values() if i == index and m != "set_weights")

    def fill(self) -> None:
        now = time.monotonic()
        for i in range(len(self.actors)):
            if now < self.retry_at[i]:
                continue  # restarting: try again later
            if self.resend[i]:
                self.resend[i] = False
                if self.on_restart:
                    self.on_restart(i)
            while self.queued(i) < self.depth:
                nxt = self.next_call(i)
                if nxt is None:
                    break
                self.call(i, nxt[0], *nxt[1])

    def pump(self, timeout: float = 0.0) -> int:
        """Collect finished calls (waiting up to `timeout` s for the first), then refill;
        returns how many finished. Raises SpoError when a worker's call failed with an error
        (a bug or bad input, not a crash) or a worker crashed more than MAX_RESTARTS times."""
        import ray

        self.fill()
        if not self.pending:
            if timeout:
                time.sleep(timeout)
            return 0
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if ready:  # and whatever else finished meanwhile
            more, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        for ref in ready:
            index, method, args, incarnation = self.pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - sorted below
                if not _is_actor_death(exc):
                    cause = getattr(exc, "cause", None) or exc
                    raise SpoError(
                        f"rollout worker {index}: {method} failed: {type(cause).__name__}: "
                        f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
                    ) from None
                if _is_restarting(exc):  # Ray is restarting it: wait, then weights again
                    if incarnation == self.restarts[index] and not self.restarting[index]:
                        self._count_restart(index, exc)  # the first news of this death
                    self.restarting[index] = True
                    self.retry_at[index] = time.monotonic() + RESTART_RETRY_S
                    self.resend[index] = True
                    if self.on_lost and method != "set_weights":
                        self.on_lost(index, method, args)
                    continue
                if incarnation == self.restarts[index]:  # a new death, not its queue's echo
                    self.restarting[index] = True
                    self._count_restart(index, exc)
                    if self.on_restart:
                        self.on_restart(index)
                if self.on_lost and method != "set_weights":
                    self.on_lost(index, method, args)
                continue
            self._check_incarnation(index, result)
            self.restarting[index] = False
            self.on_result(index, result)
        self.fill()
        return len(ready)

    def _check_incarnation(self, index: int, result: Any) -> None:
        """Count a restart no failed call reported: Ray restarted the actor while nothing was
        queued on it, and this answer comes from its next life (which has no trained weights
        yet: it answers `produce` with `need_weights`, and gets them)."""
        life = result.get("incarnation") if isinstance(result, dict) else None
        if life is None or life in self.dead_lives:
            return
        before = self.incarnations[index]
        if before is not None and life != before:
            self._count_restart(index, RuntimeError("restarted between two calls"))
        self.incarnations[index] = life

    def _count_restart(self, index: int, exc: BaseException) -> None:
        """One death of actor `index`: the life its last answer named is over (the next
        life's first answer sets the baseline again, and is no second restart)."""
        if self.incarnations[index] is not None:
            self.dead_lives.add(self.incarnations[index])
            self.incarnations[index] = None
        self.restarts[index] += 1
        if self.restarts[index] > MAX_RESTARTS:
            raise SpoError(
                f"rollout worker {index} died {self.restarts[index]} times "
                f"(last: {type(exc).__name__}: {_last_line(exc)}); see the Ray logs "
                "under /tmp/ray"
            ) from None

    def close(self) -> None:
        """Kill every actor (their sandboxes die with them: bubblewrap --die-with-parent)."""
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.pending.clear()
