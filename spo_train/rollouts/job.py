"""`spo rollout`: rollout workers without a trainer, growing the lake from any model.

Each problem matching `--where` (or `--split`) gets `--n` responses of `--model`, sampled at a
temperature drawn per sample from `--temperature LOW,HIGH` and `--top-p`, judged in the
sandbox and committed by the rollout workers (`spo_train.rollouts.workers`, Ray actors) in
chunks of `--chunk-problems` problems, one keyed commit each. Rows are `source='rollout'`,
`model_id` the model's identity, with behaviour, model and reference log-probs (the model is
its own reference: a later `spo train --model` of the same model reuses them) and
`worker_id`.

Resumable: the run id is a hash of the settings that decide what is sampled (model, selection,
n, limit, sampler, seed), so the same command again continues the same run, skipping the
problems it committed; trajectory ids depend only on the run and the chunk, so a chunk redone
after a crash adds nothing twice. No torch at import (the CLI validates first).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spo_store.errors import SpoError
from spo_train.config import (
    at_least,
    parse_floats,
    seed_check,
    setting,
    temperature_range_check,
    top_p_check,
    validate_fields,
)


@dataclass
class RolloutConfig:
    """`spo rollout`: sample --model on lake problems with rollout workers (Ray actors)."""

    model: str | None = setting(None, metavar="DIR")
    """Hugging Face model directory to sample (default: the embedded pi_0)"""
    lake: str | None = setting(None, metavar="URI")
    """lake URI (default: $SPO_LAKE, else ./spo-lake)"""
    split: str | None = setting(None)
    """problem split (used when --where is not given; default train)"""
    where: str | None = setting(None, metavar="SQL")
    """SQL predicate over problems (alias p) instead of --split"""
    limit: int | None = setting(None, check=at_least(1))
    """the first N selected problems by problem_id, done or not: the same N on every run (a
    rerun skips the done ones)"""
    n: int = setting(4, short="-n", aliases=("--samples",), check=at_least(1))
    """responses per problem"""
    temperature: tuple[float, float] = setting(
        (1.0, 1.0), parse=parse_floats, check=temperature_range_check, metavar="LOW,HIGH"
    )
    """per-sample temperature drawn from U(LOW, HIGH) (one value: fixed)"""
    top_p: float = setting(1.0, check=top_p_check)
    """nucleus sampling top-p"""
    max_new_tokens: int = setting(256, check=at_least(1))
    """response length bound"""
    seed: int = setting(0, check=seed_check)
    """sampling seed"""
    rollout_workers: int = setting(1, check=at_least(1))
    """rollout workers (Ray actors) sampling in parallel"""
    chunk_problems: int = setting(4, check=at_least(1))
    """problems per worker commit (the unit a crash can lose and a rerun redoes)"""
    ray_address: str | None = setting(None, metavar="ADDR")
    """Ray cluster to run on (e.g. ray://head:10001 or auto); not set: a local Ray started and
    shut down by the command"""
    workers: int | None = setting(
        None, flag="--judge-workers", aliases=("--workers",), check=at_least(1)
    )
    """judge processes per rollout worker (default: 1)"""
    include_unreliable: bool = setting(False)
    """keep problems with a judge_issue"""
    unsafe_no_sandbox: bool = setting(False)
    """run programs without bubblewrap (trusted code only)"""

    def validate(self) -> None:
        validate_fields(self)
        if self.where is not None and not self.where.strip():
            raise SpoError("--where is empty: give an SQL predicate over p, or leave it out")
        if self.split is not None and self.where is not None:
            raise SpoError("--split and --where given together: give one")
        if self.where is not None:
            from spo_store.predicates import check_predicate

            check_predicate(self.where, "--where")
        from spo_train.rollouts.workers import check_ray_address

        check_ray_address(self.ray_address)

    def run_key(self, model_id: str, predicate: str) -> str:
        """What decides the samples: the same key is the same (resumed) run."""
        what = {
            "model_id": model_id,
            "where": predicate,
            "limit": self.limit,
            "n": self.n,
            "temperature": list(self.temperature),
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "include_unreliable": self.include_unreliable,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RolloutReport:
    run_id: str
    resumed: bool
    problems: int  # selected
    already_done: int  # committed by an earlier attempt of the run
    rows: int = 0  # sampled now
    inserted: int = 0
    passed: int = 0
    unjudged: int = 0
    restarts: int = 0
    seconds: float = 0.0
    commit_s: float = 0.0
    workers: int = 0
    startup_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        judged = self.rows - self.unjudged
        return {
            "run_id": self.run_id,
            "resumed": self.resumed,
            "problems": self.problems,
            "already_done": self.already_done,
            "rows": self.rows,
            "inserted": self.inserted,
            "pass_rate": self.passed / judged if judged else None,
            "unjudged": self.unjudged,
            "workers": self.workers,
            "worker_restarts": self.restarts,
            "startup_s": round(self.startup_s, 3),
            "seconds": round(self.seconds, 3),
            "rollouts_per_s": round(self.rows / self.seconds, 3) if self.seconds else None,
            "commit_s_mean": round(self.commit_s, 4),
        }


def run_rollout(
    cfg: RolloutConfig,
    lake: Any,
    predicate: str,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> RolloutReport:
    """Sample, judge and commit (see the module docstring). `on_start(todo problems, total
    rows)` once, `on_rows(n)` per committed chunk. Raises SpoError for a selection with no
    problem; Ctrl-C marks the run interrupted (rerun the command to resume)."""
    import numpy as np

    from spo_store.lake import run_status, sql_quote
    from spo_store.selection import RELIABLE, judge_issue_counts, left_out_line
    from spo_train.lm.models import (
        check_model_dir,
        context_length,
        load_config,
        load_tokenizer,
        model_identity,
        tokenizer_identity,
    )
    from spo_train.rollouts.sampling import check_context, load_problems
    from spo_train.rollouts.worker_spec import Decoding
    from spo_train.rollouts.workers import (
        WorkerPool,
        WorkerSetup,
        ray_session,
        remote_worker_class,
        wait_started,
    )

    say = say or (lambda _m: None)
    path = check_model_dir(cfg.model)
    model_id = model_identity(path)
    tokenizer = load_tokenizer(path)
    tokenizer_id = tokenizer_identity(tokenizer)
    reliable = "TRUE" if cfg.include_unreliable else RELIABLE
    problems = load_problems(lake, f"({predicate}) AND {reliable}")[: cfg.limit or None]
    left_out = left_out_line(
        {} if cfg.include_unreliable else judge_issue_counts(lake, predicate), "rollout"
    )
    if not problems:
        raise SpoError(
            f"{left_out}, and no other problem matches: nothing to sample"
            if left_out
            else f"no problem matches {predicate!r}"
        )
    check_context(tokenizer, context_length(load_config(path)), problems, cfg.max_new_tokens)
    if left_out:
        say(left_out)
    key = cfg.run_key(model_id, predicate)
    run_id = f"rollout-{key}"
    exists = lake.sql_arrow(f"SELECT 1 FROM runs WHERE run_id = {sql_quote(run_id)}").num_rows
    done = {
        r["problem_id"]
        for r in lake.sql_arrow(
            "SELECT problem_id FROM trajectories "
            f"WHERE run_id = {sql_quote(run_id)} GROUP BY 1 HAVING count(*) >= {cfg.n}"
        ).to_pylist()
    }
    todo = [p["problem_id"] for p in problems if p["problem_id"] not in done]
    report = RolloutReport(run_id, bool(exists), len(problems), len(problems) - len(todo))
    report.workers = cfg.rollout_workers
    if exists:
        lake.resume_run(run_id)
    else:
        config = {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "key": key}
        lake.start_run(
            "rollout", config, model_id=model_id, tokenizer_id=tokenizer_id, run_id=run_id
        )
    chunks = [todo[i : i + cfg.chunk_problems] for i in range(0, len(todo), cfg.chunk_problems)]
    if on_start:
        on_start(len(todo), len(todo) * cfg.n)
    t0 = time.perf_counter()
    commit_s: list[float] = []
    try:
        if chunks:
            setup = WorkerSetup(
                model_path=str(path),
                lake_uri=lake.uri,
                run_id=run_id,
                tokenizer_id=tokenizer_id,
                ref_model_id=model_id,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
                judge_workers=cfg.workers or 1,
                unsafe_no_sandbox=cfg.unsafe_no_sandbox,
                source="rollout",
                model_id=model_id,
                fixed=True,
            )
            decoding = Decoding("current", tuple(cfg.temperature), cfg.top_p)
            n_workers = min(cfg.rollout_workers, len(chunks))
            queue = list(chunks)

            def seed_of(ids: list[str]) -> int:
                digest = hashlib.sha256((f"{cfg.seed}\0" + "\0".join(ids)).encode()).hexdigest()
                return int(digest[:8], 16)

            def next_call(_i: int) -> tuple[str, tuple] | None:
                if not queue:
                    return None
                ids = queue.pop(0)
                return "run_chunk", (ids, cfg.n, seed_of(ids))

            def on_result(_i: int, res: dict[str, Any]) -> None:
                report.rows += res["rows"]
                report.inserted += res["inserted"]
                report.passed += sum(r == 0 for r in res["rewards"])
                report.unjudged += sum(r is None for r in res["rewards"])
                commit_s.append(res["commit_s"])
                if on_rows:
                    on_rows(res["rows"])

            def on_lost(_i: int, _method: str, args: tuple) -> None:
                queue.insert(0, list(args[0]))  # redo it (same ids: a commit it made is kept)

            with ray_session(cfg.ray_address, num_workers=n_workers):
                cls = remote_worker_class()
                actors = [cls.remote(setup, i, decoding) for i in range(n_workers)]
                wait_started(actors)  # models loaded (a worker that cannot start: one line)
                report.startup_s = time.perf_counter() - t0
                t0 = time.perf_counter()  # rollouts/s counts sampling, not start-up
                pool = WorkerPool(actors, next_call=next_call, on_result=on_result, on_lost=on_lost)
                say(f"{n_workers} rollout workers on {cfg.ray_address or 'a local Ray'}")
                try:
                    while queue or pool.pending:
                        pool.pump(0.5)
                finally:
                    report.restarts = sum(pool.restarts)
                    pool.close()
    except BaseException as exc:
        lake.end_run(run_id, run_status(exc))
        raise
    report.seconds = time.perf_counter() - t0
    report.commit_s = float(np.mean(commit_s)) if commit_s else 0.0
    lake.end_run(run_id, "completed")
    return report
