"""Helpers for the lake reliability tests: deterministic rows and child-process entry points.

Child processes are started with the `spawn` context (Lance is not fork-safe), so every
function they run lives at module level here and takes only picklable arguments.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

TRAJ_BATCH = 50


def _seed(traj_id: str) -> int:
    return zlib.crc32(traj_id.encode())


def traj_row(traj_id: str, problem_id: str = "p-bench", source: str = "online") -> dict[str, Any]:
    """A trajectories row whose every column is a function of `traj_id` (see `row_is_whole`)."""
    seed = _seed(traj_id)
    length = 16 + seed % 48
    response = f"print({traj_id!r})  # " + "x" * (seed % 200)
    return {
        "traj_id": traj_id,
        "problem_id": problem_id,
        "run_id": "reliability",
        "source": source,
        "policy_version": seed % 1000,
        "response": response,
        "response_chars": len(response),
        "reward": 0.0 if seed % 2 else -1.0,
        "content_hash": f"{seed:08x}-{traj_id}",
        "prompt_ids": [seed % 997 + i for i in range(8)],
        "response_ids": [(seed + 7 * i) % 50_000 for i in range(length)],
        "num_response_tokens": length,
        "ref_logprobs": [-((seed + i) % 97) / 10.0 for i in range(length)],
    }


def row_is_whole(row: dict[str, Any]) -> bool:
    """True when a row read back equals the row `traj_row` builds from its id."""
    want = traj_row(row["traj_id"], row["problem_id"], row["source"])
    for key, value in want.items():
        got = row[key]
        if key == "ref_logprobs":
            if got is None or len(got) != len(value):
                return False
            if any(abs(a - b) > 1e-5 for a, b in zip(got, value, strict=True)):
                return False
        elif got != value:
            return False
    return True


def batch_rows(prefix: str, n: int = TRAJ_BATCH, source: str = "online") -> list[dict[str, Any]]:
    return [traj_row(f"{prefix}-{j:04d}", source=source) for j in range(n)]


# ----------------------------------------------------------------------------- child processes
def concurrent_appender(lake_uri: str, worker: int, appends: int, start: Any) -> None:
    """Open the (fresh) lake, wait for the common start, then append `appends` batches."""
    from spo_store.lake import Lake

    lake = Lake.open(lake_uri)
    start.wait(60)
    for i in range(appends):
        lake.append("trajectories", batch_rows(f"w{worker}-{i:03d}"))


def append_forever(lake_uri: str, batch: int, progress_file: str) -> None:
    """Append batches of `batch` rows until killed; writes the number of committed batches."""
    from spo_store.lake import Lake

    lake = Lake.open(lake_uri)
    i = 0
    while True:
        lake.append("trajectories", batch_rows(f"k-{i:05d}", batch))
        i += 1
        # Atomic: a kill between write_text's truncate and write would read back as 0.
        tmp = Path(f"{progress_file}.tmp")
        tmp.write_text(str(i))
        tmp.replace(progress_file)


def snapshot_writer(lake_uri: str, batches: int, batch: int, pause_s: float, start: Any) -> None:
    """Append `batches` batches of `batch` rows, pausing between them (for readers to interleave)."""
    from spo_store.lake import Lake

    lake = Lake.open(lake_uri)
    start.wait(60)
    for i in range(batches):
        lake.append("trajectories", batch_rows(f"s-{i:04d}", batch))
        time.sleep(pause_s)


# ----------------------------------------------------------------------------- ingest inputs
def write_ingest_files(
    folder: Path, files: int, problems_per_file: int, solutions: int
) -> list[Path]:
    """Generic-JSONL inputs: problem `f{i}-p{j}` with `solutions` correct and 1 incorrect each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        lines = []
        for j in range(problems_per_file):
            name = f"f{i:03d}-p{j:03d}"
            lines.append(
                json.dumps(
                    {
                        "name": name,
                        "statement": f"Statement of {name}: " + "read n, print n. " * 20,
                        "tests": [{"input": f"{k}\n", "output": f"{k}\n"} for k in range(3)],
                        "solutions": [f"print(input())  # {name} v{k}" for k in range(solutions)],
                        "incorrect_solutions": [f"print(0)  # {name}"],
                        "split": "train",
                    }
                )
            )
        path = folder / f"part-{i:03d}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- q0 estimates
def q0_writer(lake_uri: str, worker: int, keys: int, rounds: int, start: Any) -> None:
    """Write estimates for problems q-000..q-{keys-1} of one model, `rounds` times with growing
    sample counts (first an insert, then updates), racing the other workers."""
    from spo_store.lake import Lake
    from spo_store.q0_estimates import estimate_row, write_estimates

    lake = Lake.open(lake_uri)
    start.wait(60)
    for r in range(rounds):
        n = 4 * (r + 1) + worker
        rows = [
            estimate_row(
                f"q-{i:03d}",
                "model-A",
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=64,
                samples=n,
                successes=i % (n + 1),
                beta=0.1,
                run_id=f"w{worker}-r{r}",
            )
            for i in range(keys)
        ]
        write_estimates(lake, rows)
