#!/usr/bin/env bash
# GPU benchmark: Flax (jit, bf16) vs PyTorch eager and torch.compile on one GPU, in one process per row group.
# MobileNetV2 train step at batch 256 and inference at batch 1024 (the defaults `flax-dsconv bench` picks on a
# GPU) with the Pallas and the XLA depthwise conv, then layers at N256·56²·C144; with GPU_PARITY=1, then the
# parity table. GPU_STEPS picks steps by name (default: all four).
#   bash benchmarks/gpu.sh [OUTDIR]     # needs jax[cuda] and a CUDA torch
# Measured on one H200 (earlier steps): the four bench steps took 296 s together, compiles included; parity
# adds ~3 minutes.
# Every step is bounded by `timeout` and a failed step does not stop the rest. Results: OUTDIR/*.json, *.txt.
set -uo pipefail
out="${1:-bench_gpu}"
mkdir -p "$out"
# JAX and torch share the GPU in one process: keep JAX from taking 75% of its memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
fd="${FLAX_DSCONV:-python3 -m flax_dsconv}"
extra="${BENCH_ARGS:-}"  # e.g. "--train-batch 2 --resolution 64" for a quick dry run on a CPU

steps="${GPU_STEPS:-v2_pallas v2_xla layers_pallas layers_xla}"

step() {  # step NAME SECONDS ARGS...: run `flax-dsconv ARGS` under a time limit, JSON to OUTDIR/NAME.json
  local name=$1 limit=$2
  shift 2
  case " $steps " in *" $name "*) ;; *) return ;; esac
  local t0=$SECONDS
  timeout "$limit" $fd "$@" $extra > "$out/$name.json" 2> "$out/$name.log"
  echo "== $name: exit $? in $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
step v2_pallas 200 bench --no-layers --models mobilenet_v2 --depthwise pallas --compile --json
step v2_xla 150 bench --no-layers --models mobilenet_v2 --depthwise xla --json
step layers_pallas 80 bench --models --depthwise pallas --json
step layers_xla 100 bench --models --depthwise xla --json
if [ "${GPU_PARITY:-0}" = 1 ]; then
  t0=$SECONDS
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 300 $fd parity ${PARITY_ARGS:-} > "$out/parity.txt" 2> "$out/parity.log"
  echo "== parity: exit $? in $((SECONDS - t0)) s"
fi
python3 - "$out" <<'PY'
import json, pathlib, sys
from flax_dsconv.tools.bench import Result, format_table
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError:
        print(f"{path.name}: no result"); continue
    print(f"\n## {path.stem}: {report['machine']}; depthwise {report['settings']['depthwise']!r}")
    print(format_table([Result(**r) for r in report["results"]]))
PY
if [ -f "$out/parity.txt" ]; then cat "$out/parity.txt"; fi
