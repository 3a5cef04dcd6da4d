"""Benchmark the sandboxed judge: test-runs/s and programs/s for trivial programs.

Compares `judge_batch` (one bubblewrap sandbox per program, a driver inside that forks once
per test) with the naive design (one sandboxed `python3` process per test), in the same run.

    python scripts/bench_judge.py --programs 200 --tests 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table

from spo_train import sandbox
from spo_train.sandbox import JudgeJob, judge_batch, outputs_match


def make_jobs(programs: int, tests: int) -> list[JudgeJob]:
    """Echo-style programs (distinct sources) with `tests` tests each."""
    jobs = []
    for p in range(programs):
        src = f"# program {p}\nimport sys\nfor line in sys.stdin:\n    print(line.strip())\n"
        cases = [(f"{p} {t}\nhello {t}\n", f"{p} {t} hello {t}") for t in range(tests)]
        jobs.append(JudgeJob(src, cases, time_limit_s=2.0, memory_limit_mb=256))
    return jobs


def naive_one_sandbox_per_test(jobs: list[JudgeJob], workers: int) -> tuple[float, int]:
    """Every test in its own fresh sandbox: bwrap + /usr/bin/python3 -c SOURCE."""
    bwrap = sandbox._bwrap_path()
    binds = sandbox._layout(bwrap)
    base = sandbox._bwrap_argv(bwrap, binds, sandbox.FILE_LIMIT_BYTES)
    drop, kw = sandbox._drop_privileges()
    prefix = drop + base[: base.index("--") + 1] + [sandbox.PYTHON, "-I", "-c"]

    def run(job: JudgeJob) -> int:
        ok = 0
        for inp, expected in job.tests:
            r = subprocess.run(
                [*prefix, job.source],
                input=inp,
                capture_output=True,
                text=True,
                timeout=job.time_limit_s * 1.5 + 1,
                env={},
                cwd="/",
                start_new_session=True,
                **kw,
            )
            ok += r.returncode == 0 and outputs_match(r.stdout, expected)
        return ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(run, jobs))
    return time.perf_counter() - t0, passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--tests", type=int, default=10)
    ap.add_argument("--naive-programs", type=int, default=40, help="naive design is slow")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    jobs = make_jobs(args.programs, args.tests)
    judge_batch(jobs[:2], workers=args.workers)  # warm-up: layout probe, page cache
    load = os.getloadavg()[0]
    rows = []

    t0 = time.perf_counter()
    verdicts = judge_batch(jobs, workers=args.workers)
    secs = time.perf_counter() - t0
    assert all(v.passed for v in verdicts), [v for v in verdicts if not v.passed][:1]
    rows.append(("judge_batch (sandbox per program)", args.workers, len(jobs), secs))

    t0 = time.perf_counter()
    verdicts = judge_batch(jobs[: max(1, len(jobs) // 4)], workers=1)
    secs1 = time.perf_counter() - t0
    assert all(v.passed for v in verdicts)
    rows.append(("judge_batch, 1 worker", 1, len(verdicts), secs1))

    naive_jobs = jobs[: args.naive_programs]
    secs_n, passed = naive_one_sandbox_per_test(naive_jobs, args.workers)
    assert passed == len(naive_jobs) * args.tests, passed
    rows.append(("naive: sandbox per test", args.workers, len(naive_jobs), secs_n))

    console = Console()
    table = Table(
        title=(
            f"judge throughput: {args.tests} tests/program, {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}, load avg at start {load:.2f}"
        )
    )
    for col in ("design", "workers", "programs", "test-runs", "seconds", "test-runs/s", "prog/s"):
        table.add_column(col, justify="left" if col == "design" else "right")
    figures = []
    for name, workers, programs, seconds in rows:
        runs = programs * args.tests
        figures.append(
            {
                "design": name,
                "workers": workers,
                "programs": programs,
                "test_runs": runs,
                "seconds": round(seconds, 3),
                "test_runs_per_s": round(runs / seconds, 1),
                "programs_per_s": round(programs / seconds, 1),
            }
        )
        table.add_row(
            name,
            str(workers),
            str(programs),
            str(runs),
            f"{seconds:.2f}",
            f"{runs / seconds:.0f}",
            f"{programs / seconds:.1f}",
        )
    console.print(table)
    speedup = figures[0]["test_runs_per_s"] / figures[-1]["test_runs_per_s"]
    console.print(f"sandbox-per-program vs sandbox-per-test: {speedup:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_avg_start": load, "rows": figures}, fh, indent=2)


if __name__ == "__main__":
    main()
