#!/usr/bin/env bash
# The GPU measurements of issue 14 (docs/gpu.md, "What remains to measure"), in one command:
#
#     bash scripts/gpu_step_check.sh [OUTDIR]        # default OUTDIR: $OUT, else ./gpu-step-out
#
# Needs a CUDA GPU and python3 with torch, transformers, typer, rich and safetensors (the
# device image has them); spo itself is used from this checkout without installing it (cli/ is
# put on the path as `spo_cli`, as pyproject's package-dir does), and `spo bench step` loads
# neither Lance, DuckDB nor polars. Wheels carried in `.whl/` are installed to /tmp/site first.
# Each measurement is one `spo bench step --json` run, written to OUTDIR/<name>.json (its last
# line; stderr to OUTDIR/<name>.log) and limited by `timeout`, in order of priority, so a
# budget that runs out still leaves the first ones; the limits add up to under 600 s, one
# device command. Never run on a GPU yet: the limits are guesses. The random 1.1B model is
# built once under $TMPDIR.
#
#   0. 1b-fast-spo    SPO alone as in 1 (kept if the three together run out of time)
#   1. 1b-fast        random 1.1B Llama, 8 x 2048 (512 prompt + 1536 response tokens), bf16
#                     autocast, log-probs in 256-token chunks: SPO, PPO, GRPO (MFU, step-time
#                     and memory ratios against the targets)
#   2. 1b-fast-ckpt   the same with activation checkpointing (the memory targets)
#   3. 1b-plain-spo   the plain fp32 path, SPO (what the fast path gains)
#   4. tiny           the embedded default, fast and plain, all three (smoke test on CUDA)
#   5. 1b-profile     torch.profiler over one fast SPO step: the 15 costliest kernels
set -uo pipefail

OUTDIR="${1:-${OUT:-gpu-step-out}}"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"   # absolute: the script moves to the root
cd "$(dirname "$0")/.."
ROOT="$PWD"

if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "could not install the wheels in .whl/" >&2; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
SHIM="$(mktemp -d)"
ln -s "$ROOT/cli" "$SHIM/spo_cli" && ln -s "$ROOT/schemas" "$SHIM/spo_schemas"
export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'EOF' || exit 2
import importlib.util
import sys

need = ("torch", "transformers", "typer", "rich", "safetensors")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (carry their wheels in .whl/)")
import torch

if not torch.cuda.is_available():
    sys.exit("no CUDA device: this script measures the GPU path (on a CPU: spo bench step)")
print("gpu:", torch.cuda.get_device_name(0), "torch", torch.__version__)
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUTDIR/nvidia-smi.csv" 2>&1 || true

# the random 1.1B Llama, built once (4.4 GB, float32) outside OUTDIR, which may be sent back
MODEL_DIR="${TMPDIR:-/tmp}/spo-random-llama-1b"
if [ ! -f "$MODEL_DIR/config.json" ]; then
    timeout 120 python3 -c "import sys; from spo_train.train.bench_step import save_random_llama as s; s('1b', sys.argv[1], 'cuda')" \
        "$MODEL_DIR" 2> "$OUTDIR/build-1b.log" || { echo "could not build the 1B model: see $OUTDIR/build-1b.log" >&2; exit 2; }
fi
BIG=(--device cuda --model "$MODEL_DIR" --batch-size 8 --seq-len 2048 --prompt-len 512 --group-size 4)

bench() {  # name, timeout seconds, spo bench step arguments...
    local name=$1 limit=$2
    shift 2
    echo "== $name: spo bench step $*" >&2
    local start=$SECONDS
    # only `bench step` is registered: the full CLI would import the lake (Lance, DuckDB)
    if timeout "$limit" python3 -c 'import sys, typer; from spo_cli import bench_cmds
app = typer.Typer(); bench_cmds.register(app); app(args=sys.argv[1:], prog_name="spo")' \
        bench step --json "$@" \
        > "$OUTDIR/$name.stdout" 2> "$OUTDIR/$name.log"; then
        tail -n 1 "$OUTDIR/$name.stdout" > "$OUTDIR/$name.json"
        echo "   ok in $((SECONDS - start)) s" >&2
    else
        echo "   FAILED (exit $?) after $((SECONDS - start)) s: see $OUTDIR/$name.log" >&2
    fi
}

bench 1b-fast-spo 70 "${BIG[@]}" --modes fast --algos spo --steps 3   # SPO alone first
bench 1b-fast 150 "${BIG[@]}" --modes fast --steps 3                  # the three, with ratios
bench 1b-fast-ckpt 120 "${BIG[@]}" --modes fast --activation-checkpointing --steps 3
bench 1b-plain-spo 60 "${BIG[@]}" --modes plain --algos spo --steps 2
bench tiny 40 --device cuda --modes fast,plain --steps 3
bench 1b-profile 40 "${BIG[@]}" --modes fast --algos spo --steps 1 --profile 15

# one summary line per result: what docs/gpu.md and BENCHMARKS.md need
python3 - "$OUTDIR" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    doc = json.loads(f.read_text())
    for r in doc["results"]:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"{f.stem:14} {r['algo']:4} {r['mode']:5} ckpt={int(r['activation_checkpointing'])} "
              f"step {r['step_s'] * 1e3:7.0f} ms  {r['tokens_per_s']:9.0f} tok/s  MFU {mfu:>6}  "
              f"peak {r['peak_memory_bytes'] / 2**30:6.1f} GiB")
    for k, v in doc.get("ratios", {}).items():
        print(f"{f.stem:14} {k}: step {v['step_s']:.2f}, peak memory {v['peak_memory']:.2f}")
EOF
