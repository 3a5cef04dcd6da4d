"""Benchmark the sandboxed judge: test-runs/s and programs/s for trivial programs.

Compares `judge_batch` (warm bubblewrap sandboxes reused across programs, a fresh program
driver forked per program and a test process forked per test; `--cold`: also one sandbox per
program, SPO_JUDGE_WARM=0) with the naive design (one sandboxed `python3` process per test), in the same run.
With `--compare-ref REF` it also times the judge of git revision REF (its sandbox.py and
sandbox_driver.py, loaded from git into a temporary module) on the same jobs, alternating
old/new runs so that both see the same machine load. `--features` adds call-based and checker
workloads (one extra sandbox session per program for the checker).

    python scripts/bench_judge.py --programs 200 --tests 10
    python scripts/bench_judge.py --programs 200 --tests 10 --compare-ref e45fbf2~1 --repeats 2

`--old-tree DIR` times the judge of another checkout (e.g. `git worktree add /tmp/old main`)
instead: `spo_train.judge` imported from DIR in a subprocess, alternating with this tree's runs,
on the same jobs; only the `judge_batch` call is timed on each side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.table import Table

from spo_train.judge import JudgeJob, judge_batch, outputs_match, sandbox

ROOT = Path(__file__).resolve().parents[1]


def make_jobs(programs: int, tests: int) -> list[JudgeJob]:
    """Echo-style programs (distinct sources) with `tests` tests each."""
    jobs = []
    for p in range(programs):
        src = f"# program {p}\nimport sys\nfor line in sys.stdin:\n    print(line.strip())\n"
        cases = [(f"{p} {t}\nhello {t}\n", f"{p} {t} hello {t}") for t in range(tests)]
        jobs.append(JudgeJob(src, cases, time_limit_s=2.0, memory_limit_mb=256))
    return jobs


def make_call_jobs(programs: int, tests: int) -> list[JudgeJob]:
    """Call-based (TACO Codewars style) programs: `fn_name` called with JSON arguments."""
    jobs = []
    for p in range(programs):
        src = f"# program {p}\ndef echo(a, b):\n    return [a, b]\n"
        cases = [(json.dumps([p, f"t{t}"]), json.dumps([p, f"t{t}"])) for t in range(tests)]
        jobs.append(JudgeJob(src, cases, fn_name="echo"))
    return jobs


CHECKER = """import sys
out, ans = (open(p).read().split() for p in sys.argv[2:4])
sys.exit(0 if sorted(out) == sorted(ans) else 1)
"""


def make_checker_jobs(programs: int, tests: int) -> list[JudgeJob]:
    """The echo programs judged by a checker (any order of the tokens is accepted)."""
    return [JudgeJob(j.source, j.tests, checker=CHECKER) for j in make_jobs(programs, tests)]


def load_old_judge(ref: str) -> ModuleType:
    """spo_train/judge/sandbox.py of git revision `ref` (the judge before the split) as a module."""
    tmp = Path(tempfile.mkdtemp(prefix="spo-bench-old-"))
    for name in ("sandbox.py", "sandbox_driver.py"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:spo_train/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (tmp / name).write_text(text)
    spec = importlib.util.spec_from_file_location("spo_old_sandbox", tmp / "sandbox.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["spo_old_sandbox"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


OLD_TREE_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from spo_train.judge import JudgeJob, judge_batch
import spo_train.judge
assert spo_train.judge.__file__.startswith(sys.argv[1]), spo_train.judge.__file__
programs, tests, workers = map(int, sys.argv[2:5])
jobs = []
for p in range(programs):
    src = f"# program {p}\\nimport sys\\nfor line in sys.stdin:\\n    print(line.strip())\\n"
    cases = [(f"{p} {t}\\nhello {t}\\n", f"{p} {t} hello {t}") for t in range(tests)]
    jobs.append(JudgeJob(src, cases, time_limit_s=2.0, memory_limit_mb=256))
judge_batch(jobs[:2], workers=workers)
import resource
def cpu():
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF,
               resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
from spo_train.judge import sandbox
close = getattr(sandbox, "close_warm_sandboxes", lambda: None)
close()  # as timed_batch: the timed run starts its sandboxes and closes them (CPU reaped)
c0, t0 = cpu(), time.perf_counter()
verdicts = judge_batch(jobs, workers=workers)
secs = time.perf_counter() - t0
close()
assert all(v.passed for v in verdicts)
print(json.dumps([secs, cpu() - c0]))
"""


def cpu_s() -> float:
    """CPU seconds used so far by this process and its reaped descendants (the sandboxes)."""
    return sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )


def timed_batch(jobs: list[JudgeJob], workers: int) -> tuple[float, float]:
    """(seconds, CPU seconds of everything involved) of `judge_batch` on `jobs` in this tree.

    Warm sandboxes are closed at the end so that their CPU time is counted (their start is
    then part of every run: ~30 ms of CPU each); idle ones are closed before it starts."""
    sandbox.close_warm_sandboxes()
    c0, t0 = cpu_s(), time.perf_counter()
    verdicts = judge_batch(jobs, workers=workers)
    secs = time.perf_counter() - t0
    sandbox.close_warm_sandboxes()
    assert all(v.passed for v in verdicts), [v for v in verdicts if not v.passed][:1]
    return secs, cpu_s() - c0


def time_old_tree(tree: str, programs: int, tests: int, workers: int) -> tuple[float, float]:
    """(seconds, CPU seconds) `judge_batch` of the checkout `tree` takes on the echo jobs (a
    subprocess)."""
    res = subprocess.run(
        [sys.executable, "-c", OLD_TREE_RUN, tree, str(programs), str(tests), str(workers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    secs, cpu = json.loads(res.stdout.strip().splitlines()[-1])
    return secs, cpu


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
    ap.add_argument("--compare-ref", help="git revision whose judge to time on the same jobs")
    ap.add_argument("--old-tree", help="another checkout whose judge to time (subprocess)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating old/new runs")
    ap.add_argument("--features", action="store_true", help="also call-based and checker")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="also this tree with SPO_JUDGE_WARM=0 (a new sandbox per program), alternating",
    )
    args = ap.parse_args()

    jobs = make_jobs(args.programs, args.tests)
    judge_batch(jobs[:2], workers=args.workers)  # warm-up: layout probe, page cache
    old = load_old_judge(args.compare_ref) if args.compare_ref else None
    if old is not None:
        old_jobs = [old.JudgeJob(j.source, j.tests) for j in jobs]
        old.judge_batch(old_jobs[:2], workers=args.workers)
    load = os.getloadavg()[0]
    rows = []

    for _ in range(args.repeats):
        if args.old_tree:
            secs, cpu = time_old_tree(args.old_tree, len(jobs), args.tests, args.workers)
            rows.append((f"judge_batch of {args.old_tree}", args.workers, len(jobs), secs, cpu))
        if old is not None:
            t0 = time.perf_counter()
            verdicts = old.judge_batch(old_jobs, workers=args.workers)
            secs = time.perf_counter() - t0
            assert all(v.passed for v in verdicts)
            rows.append((f"judge_batch of {args.compare_ref}", args.workers, len(jobs), secs, None))
        if args.cold:
            os.environ["SPO_JUDGE_WARM"] = "0"
            try:
                secs, cpu = timed_batch(jobs, args.workers)
            finally:
                del os.environ["SPO_JUDGE_WARM"]
            rows.append(("judge_batch, SPO_JUDGE_WARM=0", args.workers, len(jobs), secs, cpu))
        secs, cpu = timed_batch(jobs, args.workers)
        warm = "warm sandboxes" if sandbox.warm_sandboxes_enabled() else "sandbox per program"
        rows.append((f"judge_batch ({warm})", args.workers, len(jobs), secs, cpu))

    if args.features:
        for name, make in (
            ("judge_batch, call-based (fn_name)", make_call_jobs),
            ("judge_batch, with a checker", make_checker_jobs),
        ):
            feature_jobs = make(max(1, args.programs // 2), args.tests)
            t0 = time.perf_counter()
            verdicts = judge_batch(feature_jobs, workers=args.workers)
            secs = time.perf_counter() - t0
            assert all(v.passed for v in verdicts), [v for v in verdicts if not v.passed][:1]
            rows.append((name, args.workers, len(feature_jobs), secs, None))

    t0 = time.perf_counter()
    verdicts = judge_batch(jobs[: max(1, len(jobs) // 4)], workers=1)
    secs1 = time.perf_counter() - t0
    assert all(v.passed for v in verdicts)
    rows.append(("judge_batch, 1 worker", 1, len(verdicts), secs1, None))

    naive_jobs = jobs[: args.naive_programs]
    if naive_jobs:  # --naive-programs 0 skips the naive design
        secs_n, passed = naive_one_sandbox_per_test(naive_jobs, args.workers)
        assert passed == len(naive_jobs) * args.tests, passed
        rows.append(("naive: sandbox per test", args.workers, len(naive_jobs), secs_n, None))

    console = Console(width=200)
    table = Table(
        title=(
            f"judge throughput: {args.tests} tests/program, {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}, load avg at start {load:.2f}"
        )
    )
    cols = ("design", "workers", "programs", "test-runs", "seconds", "test-runs/s", "prog/s")
    # CPU per test-run (all processes: host, sandboxes, tests) is what the load does not
    # change much: 2 idle cores could run at most 2 / that many test-runs per second.
    for col in (*cols, "CPU ms/run", "2 cores / CPU"):
        table.add_column(col, justify="left" if col == "design" else "right")
    figures = []
    for name, workers, programs, seconds, cpu in rows:
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
                "cpu_ms_per_run": None if cpu is None else round(1000 * cpu / runs, 3),
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
            "" if cpu is None else f"{1000 * cpu / runs:.2f}",
            "" if cpu is None else f"{2 * runs / cpu:.0f}",
        )
    console.print(table)
    new = [f for f in figures if f["design"].startswith("judge_batch (")]
    if naive_jobs:
        speedup = new[0]["test_runs_per_s"] / figures[-1]["test_runs_per_s"]
        console.print(f"sandbox-per-program vs sandbox-per-test: {speedup:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_avg_start": load, "rows": figures}, fh, indent=2)


if __name__ == "__main__":
    main()
