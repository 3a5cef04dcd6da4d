#!/usr/bin/env python
"""Lake benchmark: append throughput, compaction, mixture sampling vs one naive DuckDB query.

Builds a synthetic lake of `--rows` trajectories (default 1M) of about 512 tokens each
(`response_ids` list<int32> ~512, `ref_logprobs` list<float32> ~512, `prompt_ids` ~100, a
response of ~1.5 KB) over ~5000 problems with a q0 estimate each (split 'train'); sources mix human, pi0 and
online with rewards 0/-1. Then measures, in one run:

1. `Lake.append` throughput in batches of `--batch` rows (data generation not timed), fragments;
2. `spo lake compact` (the real CLI): time, fragments before/after, open and metadata-SQL times;
3. `MixtureSampler("online:0.5,offline:0.5").sample(128, columns=heavy+light)`: index cold
   start, steady-state p50/p95 (lake version unchanged) and p50/p95 right after an append
   (index refresh + candidate recompute);
4. the naive single query `SELECT <token columns> ... WHERE <predicate> ORDER BY random()
   LIMIT 128` through `Lake.sql_arrow`, p50 over `--naive-runs`;
5. candidate sets after one small append (`--small-append` online rows, a step's rollouts):
   kept and extended over the new rows vs recomputed whole, `--after-append` rounds, the two
   checked equal each round. `--only candidates` runs 1 (without timing it) and 5 alone;
6. (also at the end of a full run) a rollout worker's keyed commit (`Lake.insert_new` of `--insert-rows` new
   rows: lock, key check over the table's `traj_id`, write, commit) into the table as built,
   `--after-append` rounds, and its key check alone (the first call builds the key index,
   timed apart: `key_index_build_ms`). `--only insert` runs 1 (timed) and 6 alone;
   `--no-key-index` measures the scan of every key that keyed commits did before the index;
   `--light` writes ~200-byte rows (~16 tokens, ~100 characters) for 10M-row lakes.

Usage: python scripts/bench_lake.py [--rows 1000000] [--batch 10000] [--root /tmp/spo-bench-lake]
The lake is deleted at the end unless `--keep`. Needs about 6.5 KB x rows of disk, twice over
while compaction keeps the old version (about 13 GB at 1M rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from spo_schemas import table_schema

from spo_store.lake import Lake
from spo_store.maintenance import fragment_counts
from spo_store.mixture import (
    BASE_PREDICATE,
    BUILTIN_SOURCES,
    RELIABLE_PREDICATE,
    MixtureSampler,
)
from spo_store.q0_estimates import estimate_row, problems_with_q0_sql, sampler_key

BYTES_PER_ROW = 6_500  # ~512*4*2 token/logprob bytes + ~400 prompt bytes + ~1.5 KB text + meta
LIGHT_BYTES_PER_ROW = 600  # --light: ~16 tokens, ~12 prompt ids, ~100 chars of text + meta
LIGHT = False  # set by --light
N_PROBLEMS = 5_000
N_POLICY_VERSIONS = 100
POLICY_VERSION = N_POLICY_VERSIONS - 1  # the trainer's current step when sampling
STALENESS = 10
RUN_ID = "rollout-bench"
SAMPLE_COLUMNS = [
    "traj_id",
    "problem_id",
    "source",
    "policy_version",
    "reward",
    "num_response_tokens",
    "prompt_ids",
    "response_ids",
    "ref_logprobs",
    "response",
]
TEXT_POOL = np.frombuffer(
    (b"for i in range(n):\n    total += a[i] * b[i]  # accumulate\nprint(total)\n" * 2000),
    dtype=np.uint8,
)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _list_array(rng: np.random.Generator, lengths: np.ndarray, kind: str) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if kind == "ids":
        values = pa.array(rng.integers(0, 50_000, total, dtype=np.int32))
    else:
        values = pa.array(-rng.exponential(1.0, total).astype(np.float32))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _string_array(chunks: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets.tobytes()), pa.py_buffer(chunks.tobytes())
    )


def make_batch(
    rng: np.random.Generator,
    start: int,
    n: int,
    problem_ids: np.ndarray,
    source: str | None = None,
    policy_version: int | None = None,
) -> pa.Table:
    """`n` synthetic trajectories with ids `t-<start>...`, in the exact lake schema."""
    schema = table_schema("trajectories")
    now = dt.datetime.now(dt.UTC)
    if source is None:
        src = rng.choice(np.array(["human", "pi0", "online"]), n, p=[0.3, 0.3, 0.4])
    else:
        src = np.full(n, source)
    is_online, is_human = src == "online", src == "human"
    pv = (
        rng.integers(0, N_POLICY_VERSIONS, n)
        if policy_version is None
        else np.full(n, policy_version)
    )
    pv = np.where(is_online, pv, 0)
    run_ids = np.where(is_online, RUN_ID, np.where(is_human, "ingest-bench", "pi0-bench"))
    resp_len = rng.integers(60, 140, n) if LIGHT else rng.integers(1200, 1800, n)
    text_start = rng.integers(0, len(TEXT_POOL) - 1800, n)
    idx = np.concatenate([np.arange(s, s + ln) for s, ln in zip(text_start, resp_len, strict=True)])
    tok_len = (rng.integers(8, 24, n) if LIGHT else rng.integers(400, 625, n)).astype(np.int32)
    hashes = rng.integers(0, 16, (n, 64), dtype=np.uint8)
    dup = rng.random(n) < 0.05  # some responses repeat (exercises the offline dedup)
    dup[0] = False
    hashes[dup] = hashes[np.flatnonzero(dup) - 1]
    hex_chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[hashes].reshape(-1)
    cols = {
        "traj_id": pa.array([f"t-{i:09d}" for i in range(start, start + n)]),
        "problem_id": pa.array(problem_ids[rng.integers(0, len(problem_ids), n)]),
        "run_id": pa.array(run_ids),
        "source": pa.array(src),
        "policy_version": pa.array(np.where(is_human, None, pv).tolist(), pa.int64()),
        "model_id": pa.array(np.where(is_human, None, "pi0-bench").tolist(), pa.string()),
        "temperature": pa.array(
            np.where(is_human, np.nan, 1.0).astype(np.float32), from_pandas=True
        ),
        "top_p": pa.array(np.where(is_human, np.nan, 1.0).astype(np.float32), from_pandas=True),
        "language": pa.array(np.where(rng.random(n) < 0.95, "python3", "cpp")),
        "response": _string_array(TEXT_POOL[idx], resp_len),
        "response_chars": pa.array(resp_len.astype(np.int32)),
        "reward": pa.array(np.where(rng.random(n) < 0.5, 0.0, -1.0).astype(np.float32)),
        "reward_source": pa.array(np.where(is_human, "label", "judge")),
        "content_hash": _string_array(hex_chars, np.full(n, 64)),
        "tokenizer_id": pa.array(np.full(n, "bench-tok")),
        "prompt_ids": _list_array(
            rng, rng.integers(*((8, 17) if LIGHT else (80, 121)), n).astype(np.int32), "ids"
        ),
        "response_ids": _list_array(rng, tok_len, "ids"),
        "num_response_tokens": pa.array(tok_len),
        "ref_model_id": pa.array(np.full(n, "pi0-bench")),
        "ref_logprobs": _list_array(rng, tok_len, "logprobs"),
        "created_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }
    arrays = [cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def make_problems(rng: np.random.Generator) -> pa.Table:
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "problem_id": f"bench-{i:05d}",
            "name": f"bench problem {i}",
            "source_dataset": "bench",
            "split": "train",
            "statement": f"Read n numbers and print their sum ({i}).",
            "num_tests": 10,
            "time_limit_s": 2.0,
            "memory_limit_mb": 256,
            "ingest_run_id": "ingest-bench",
            "created_at": now,
        }
        for i in range(N_PROBLEMS)
    ]
    return pa.Table.from_pylist(rows)


Q0_KEY = sampler_key(1.0, 1.0, 256)


def make_q0_estimates(rng: np.random.Generator) -> list[dict]:
    """One q0 estimate of the bench's pi_0 per problem (800 samples, random successes)."""
    return [
        estimate_row(
            f"bench-{i:05d}",
            "pi0-bench",
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=256,
            samples=800,
            successes=int(rng.integers(0, 800)),
            beta=0.1,
            run_id="estimate-q0-bench",
        )
        for i in range(N_PROBLEMS)
    ]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def open_and_query(root: Path) -> tuple[float, float]:
    """Seconds to open the lake, and to run a metadata-only SQL aggregate over trajectories."""
    t_open, lake = timed(Lake.open, root, create=False)
    t_sql, _ = timed(
        lake.sql_arrow,
        "SELECT source, reward, count(*), avg(num_response_tokens) FROM trajectories GROUP BY ALL",
    )
    return t_open, t_sql


def new_sampler(lake: Lake) -> MixtureSampler:
    return MixtureSampler(
        lake,
        "online:0.5,offline:0.5",
        run_id=RUN_ID,
        staleness=STALENESS,
        split="train",
        ref_model_id="pi0-bench",
        q0_sampler_key=Q0_KEY,
    )


def steady_state(sampler: MixtureSampler, batches: int, step0: int) -> tuple[float, float]:
    """p50 and p95 seconds of `sample(128)` with token columns while the lake does not move."""
    times = []
    for i in range(batches):
        t, batch = timed(
            sampler.sample,
            128,
            step=step0 + i,
            policy_version=POLICY_VERSION,
            columns=SAMPLE_COLUMNS,
        )
        assert batch.table.num_rows == 128
        times.append(t)
    return pct(times, 50), pct(times, 95)


def candidates_section(
    lake: Lake, rounds: int, small: int, rng: np.random.Generator, problem_ids, next_id: int
) -> dict[str, object]:
    """Seconds to bring both sources' candidate sets up to date after an append of `small`
    online rows: extended (the sampler's kept sets) vs recomputed whole (kept sets dropped),
    alternating each round on the same lake version; also a policy-version change."""
    sampler = new_sampler(lake)
    sampler.sample(128, policy_version=POLICY_VERSION, columns=SAMPLE_COLUMNS)  # warm
    names = ("online", "offline")
    extend, full, refresh = [], [], []
    for _ in range(rounds):
        lake.append(
            "trajectories",
            make_batch(rng, next_id, small, problem_ids, "online", POLICY_VERSION),
        )
        next_id += small
        t_ref, _ = timed(sampler.index.refresh)
        before = dict(sampler.stats)
        t_ext, kept = timed(lambda: [sampler.candidates(n, POLICY_VERSION) for n in names])
        assert sampler.stats["incremental"] - before["incremental"] == len(names)
        sampler._candidates.clear()
        t_full, whole = timed(lambda: [sampler.candidates(n, POLICY_VERSION) for n in names])
        assert all(np.array_equal(a, b) for a, b in zip(kept, whole, strict=True))
        extend.append(t_ext)
        full.append(t_full)
        refresh.append(t_ref)
    t_pv, _ = timed(sampler.candidates, "online", POLICY_VERSION + 1)
    return {
        "small_append_rows": small,
        "rounds": rounds,
        "candidates": {n: int(len(sampler.candidates(n, POLICY_VERSION))) for n in names},
        "index_refresh_p50_ms": ms(pct(refresh, 50)),
        "candidates_extended_p50_ms": ms(pct(extend, 50)),
        "candidates_extended_p95_ms": ms(pct(extend, 95)),
        "candidates_full_p50_ms": ms(pct(full, 50)),
        "candidates_full_p95_ms": ms(pct(full, 95)),
        "online_new_policy_version_ms": ms(t_pv),
    }


def insert_section(
    lake: Lake, rounds: int, rows: int, rng: np.random.Generator, problem_ids, next_id: int
) -> dict[str, object]:
    """Seconds of one rollout worker's keyed commit (`Lake.insert_new` of `rows` new online
    trajectories) into the table as it stands, and of its key check alone (the scan of
    `traj_id` for the batch's keys), `rounds` times: the cost every worker batch pays."""
    commit, check = [], []
    t_index, did = timed(lake.ensure_key_index, "trajectories")  # once per table, not per commit
    for _ in range(rounds):
        table = make_batch(rng, next_id, rows, problem_ids, "online", POLICY_VERSION)
        next_id += rows
        keys = table.column("traj_id").to_pylist()
        t_check, found = timed(lake._existing_keys, "trajectories", "traj_id", keys)
        assert not found
        t_commit, (_, inserted) = timed(lake.insert_new, "trajectories", table)
        assert inserted == rows
        commit.append(t_commit)
        check.append(t_check)
    return {
        "key_index": did
        or ("present" if lake.dataset("trajectories").describe_indices() else "none"),
        "key_index_build_ms": ms(t_index),
        "insert_rows": rows,
        "insert_rounds": rounds,
        "insert_new_p50_ms": ms(pct(commit, 50)),
        "insert_new_p95_ms": ms(pct(commit, 95)),
        "key_check_p50_ms": ms(pct(check, 50)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per Lake.append")
    ap.add_argument("--root", type=Path, default=Path("/tmp/spo-bench-lake"))
    ap.add_argument("--batches", type=int, default=200, help="steady-state sample() calls")
    ap.add_argument("--after-append", type=int, default=20, help="sample() calls after an append")
    ap.add_argument("--append-rows", type=int, default=1_000, help="rows of each of those appends")
    ap.add_argument(
        "--naive-runs", type=int, default=3, help="runs of the naive query (0: skip it)"
    )
    ap.add_argument("--small-append", type=int, default=16, help="rows of section 5's appends")
    ap.add_argument(
        "--only", choices=["all", "candidates", "insert"], default="all", help="sections to run"
    )
    ap.add_argument("--insert-rows", type=int, default=64, help="rows of a worker's keyed commit")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic lake")
    ap.add_argument(
        "--light",
        action="store_true",
        help="light rows (~600 B: ~16 tokens, ~100 chars) for 10M-row lakes on a small disk",
    )
    ap.add_argument(
        "--no-key-index",
        action="store_true",
        help="keyed commits scan every key (the behaviour before the key index), for comparison",
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()

    global LIGHT
    LIGHT = args.light
    if args.no_key_index:
        import spo_store.lake as lake_mod

        lake_mod.KEY_INDEX_MIN_ROWS = 1 << 62
    root: Path = args.root
    if root.exists():
        sys.exit(f"{root} exists; remove it or pass another --root")
    root.parent.mkdir(parents=True, exist_ok=True)
    need = 2.2 * (LIGHT_BYTES_PER_ROW if LIGHT else BYTES_PER_ROW) * args.rows
    free = shutil.disk_usage(root.parent).free
    if free < need:
        sys.exit(f"{root.parent}: {free / 1e9:.1f} GB free, need about {need / 1e9:.1f} GB")
    print(f"disk: {free / 1e9:.0f} GB free under {root.parent}, need ~{need / 1e9:.1f} GB")

    res: dict[str, object] = {
        "rows": args.rows,
        "batch": args.batch,
        "light": LIGHT,
        "key_index": not args.no_key_index,
    }
    rng = np.random.default_rng(0)
    try:
        lake = Lake.open(root)
        lake.append("problems", make_problems(rng))
        lake.insert_new("q0_estimates", make_q0_estimates(rng))
        problem_ids = np.array([f"bench-{i:05d}" for i in range(N_PROBLEMS)])

        # 1. appends
        append_s, gen_s, done = 0.0, 0.0, 0
        t_wall = time.perf_counter()
        while done < args.rows:
            n = min(args.batch, args.rows - done)
            g, table = timed(make_batch, rng, done, n, problem_ids)
            a, _ = timed(lake.append, "trajectories", table)
            gen_s, append_s, done = gen_s + g, append_s + a, done + n
            if (done // n) % 10 == 0:
                print(f"  appended {done:,} rows, {done / append_s:,.0f} rows/s", flush=True)
        res["append_rows_per_s"] = round(done / append_s)
        res["append_s"] = round(append_s, 1)
        res["append_wall_s_incl_generation"] = round(time.perf_counter() - t_wall, 1)
        res["fragments_after_appends"] = fragment_counts(lake)["trajectories"]
        res["lake_bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(json.dumps(res), flush=True)
        if args.only == "insert":
            res.update(
                insert_section(lake, args.after_append, args.insert_rows, rng, problem_ids, done)
            )
            print(json.dumps(res, indent=2), flush=True)
            if args.json:
                args.json.write_text(json.dumps(res, indent=2) + "\n")
            return
        if args.only == "candidates":
            res.update(
                candidates_section(
                    lake, args.after_append, args.small_append, rng, problem_ids, done
                )
            )
            print(json.dumps(res, indent=2), flush=True)
            if args.json:
                args.json.write_text(json.dumps(res, indent=2) + "\n")
            return

        # steady-state sampling on the uncompacted lake (one fragment per append)
        pre = new_sampler(lake)
        pre.sample(128, policy_version=POLICY_VERSION, columns=SAMPLE_COLUMNS)  # warm the index
        p50, p95 = steady_state(pre, args.batches // 4, 1)
        res["sample_steady_uncompacted_p50_ms"] = ms(p50)
        res["sample_steady_uncompacted_p95_ms"] = ms(p95)
        del pre

        # 2. compaction through the real CLI
        o, q = open_and_query(root)
        res["open_ms_before_compact"], res["meta_sql_ms_before_compact"] = ms(o), ms(q)
        t_compact, proc = timed(
            subprocess.run,
            [sys.executable, "-m", "spo_cli.main", "lake", "compact", "--lake", str(root)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"spo lake compact failed: {proc.stderr}")
        res["compact_s"] = round(t_compact, 1)
        lake = Lake.open(root, create=False)
        res["fragments_after_compact"] = fragment_counts(lake)["trajectories"]
        o, q = open_and_query(root)
        res["open_ms_after_compact"], res["meta_sql_ms_after_compact"] = ms(o), ms(q)
        print(json.dumps(res), flush=True)

        # 3. mixture sampling
        lake = Lake.open(root, create=False)
        sampler = new_sampler(lake)
        t_cold, _ = timed(sampler.index.refresh)
        t_first, batch = timed(
            sampler.sample, 128, step=0, policy_version=POLICY_VERSION, columns=SAMPLE_COLUMNS
        )
        assert batch.table.num_rows == 128 and batch.counts == {"online": 64, "offline": 64}
        res["index_cold_start_ms"] = ms(t_cold)
        res["first_batch_ms_incl_candidates"] = ms(t_first)
        res["candidates"] = {
            name: int(len(sampler.candidates(name, POLICY_VERSION)))
            for name in ("online", "offline")
        }
        p50, p95 = steady_state(sampler, args.batches, 1)
        res["sample_steady_p50_ms"], res["sample_steady_p95_ms"] = ms(p50), ms(p95)
        after = []
        next_id = args.rows
        for i in range(args.after_append):
            new = make_batch(rng, next_id, args.append_rows, problem_ids, "online", POLICY_VERSION)
            lake.append("trajectories", new)
            next_id += args.append_rows
            t, batch = timed(
                sampler.sample,
                128,
                step=10_000 + i,
                policy_version=POLICY_VERSION,
                columns=SAMPLE_COLUMNS,
            )
            after.append(t)
        res["sample_after_append_p50_ms"], res["sample_after_append_p95_ms"] = (
            ms(pct(after, 50)),
            ms(pct(after, 95)),
        )
        # breakdown of one after-append sample: refresh, candidates, take
        lake.append(
            "trajectories",
            make_batch(rng, next_id, args.append_rows, problem_ids, "online", POLICY_VERSION),
        )
        t_ref, _ = timed(sampler.index.refresh)
        t_cand, _ = timed(
            lambda: [sampler.candidates(s, POLICY_VERSION) for s in ("online", "offline")]
        )
        t_take, _ = timed(
            sampler.sample, 128, step=99_999, policy_version=POLICY_VERSION, columns=SAMPLE_COLUMNS
        )
        res["after_append_breakdown_ms"] = {
            "index_refresh": ms(t_ref),
            "candidates": ms(t_cand),
            "draw_and_take": ms(t_take),
        }
        p50, p95 = steady_state(sampler, args.batches // 4, 20_000)
        res["fragments_at_end"] = fragment_counts(lake)["trajectories"]
        res["sample_steady_at_end_p50_ms"] = ms(p50)
        res["sample_steady_at_end_p95_ms"] = ms(p95)
        print(json.dumps(res), flush=True)

        # 4. the naive single query, same lake, same run
        online = BUILTIN_SOURCES["online"].format(
            run_id=f"'{RUN_ID}'", policy_version=POLICY_VERSION, staleness=STALENESS
        )
        offline = BUILTIN_SOURCES["offline"].format(run_id=f"'{RUN_ID}'")
        cols = ", ".join(f"t.{c}" for c in SAMPLE_COLUMNS)
        naive_sql = (
            f"SELECT {cols} FROM trajectories t "
            f"JOIN ({problems_with_q0_sql('pi0-bench', Q0_KEY)}) p USING (problem_id) "
            f"WHERE ({BASE_PREDICATE}) AND ({RELIABLE_PREDICATE}) AND p.split = 'train' "
            f"AND (({online}) OR ({offline})) "
            "ORDER BY random() LIMIT 128"
        )
        naive = []  # --naive-runs 0 skips it (minutes per run at 10M rows)
        for _ in range(args.naive_runs):
            t, out = timed(lake.sql_arrow, naive_sql)
            assert out.num_rows == 128
            naive.append(t)
        res.update(
            candidates_section(
                lake, args.after_append, args.small_append, rng, problem_ids, next_id + 10**7
            )
        )
        if naive:
            res["naive_sql_p50_ms"] = ms(statistics.median(naive))
            res["naive_sql_runs_ms"] = [ms(t) for t in naive]
            res["naive_sql"] = naive_sql
        print(json.dumps(res), flush=True)
        # 6. keyed commits into the compacted table (section 6 of --only insert)
        res.update(
            insert_section(
                lake, args.after_append, args.insert_rows, rng, problem_ids, next_id + 2 * 10**7
            )
        )
        print(json.dumps(res, indent=2), flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root}")


if __name__ == "__main__":
    main()
