#!/usr/bin/env bash
# Threads benchmark (BENCHMARKS.md, "Threads"): `spo eval` wall time on the embedded default
# with torch threads (OMP_NUM_THREADS) 1 vs 2 and judge workers 1 vs 2, alternated in rounds so
# background load hits every setting alike; prints each run and the medians.
# Usage: scripts/bench_threads.sh [ROUNDS] [extra spo eval flags]
set -euo pipefail
rounds=${1:-5}
shift || true
lake=$(mktemp -d)/lake
python -c "from spo_store.lake import Lake; from spo_train.embedded.defaults import ensure_problems; ensure_problems(Lake.open('$lake'))"
out=$(mktemp)
for r in $(seq "$rounds"); do
  for threads in 1 2; do
    for workers in 1 2; do
      start=$(date +%s.%N)
      OMP_NUM_THREADS=$threads spo eval --lake "$lake" --split test --n 8 --k 1 --limit 16 \
        --workers "$workers" "$@" >/dev/null 2>&1
      end=$(date +%s.%N)
      s=$(echo "$end - $start" | bc)
      echo "round $r threads $threads workers $workers: $s s"
      echo "$threads $workers $s" >>"$out"
    done
  done
done
python - "$out" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    t, w, s = line.split()
    runs.setdefault((t, w), []).append(float(s))
for (t, w), v in sorted(runs.items()):
    print(f"threads {t} workers {w}: median {statistics.median(v):.1f} s of {len(v)} "
          f"({', '.join(f'{x:.1f}' for x in v)})")
PY
rm -rf "$(dirname "$lake")" "$out"
