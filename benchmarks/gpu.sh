#!/usr/bin/env bash
# GPU benchmark: Flax (jit, bf16) vs PyTorch eager and torch.compile on one GPU, in one process.
# Layers at N256·56²·C144, MobileNetV2 train step at batch 256 and inference at batch 1024 (the defaults
# `flax-dsconv bench` picks on a GPU). Writes the table to stdout and bench_gpu.json next to it.
#   bash benchmarks/gpu.sh            # needs jax[cuda] and a CUDA torch in the environment
set -euo pipefail
out="${1:-bench_gpu.json}"
# The whole run is bounded: compile included it must fit in 5 minutes on one H100.
timeout 300 flax-dsconv bench --compile --models mobilenet_v2 --json > "$out"
python - "$out" <<'PY'
import json, sys
from flax_dsconv.bench import Result, format_table
report = json.load(open(sys.argv[1]))
print(report["machine"])
print(format_table([Result(**r) for r in report["results"]]))
PY
