"""First-step compile time vs step time of the MobileNetV2 train step under XLA:GPU autotuning settings.

Each setting runs in its own process (XLA_FLAGS are read once per process). bf16, batch 256, 224², SGD.
    python benchmarks/gpu_compile.py [--batch 256] [--steps 10]
Prints one line per setting: first call (compile + one step) and the median step after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "default": "",
    "autotune_level=1": "--xla_gpu_autotune_level=1",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "autotune_level=1,no_triton_gemm": "--xla_gpu_autotune_level=1 --xla_gpu_enable_triton_gemm=false",
}


def measure(batch: int, steps: int, depthwise: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torchvision

    from flax_dsconv import from_torch, optim, train

    module, variables = from_torch(torchvision.models.mobilenet_v2())
    module = module.clone(dtype=jnp.bfloat16, depthwise=depthwise)
    state = train.create_train_state(module, variables, optim.sgd(0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 224, 224, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 1000, batch))
    step, key = train.jit_train_step(), jax.random.key(0)
    start = time.perf_counter()
    state, metrics = step(state, x, y, key)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, x, y, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "median_step_ms": 1e3 * statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--depthwise", default="xla")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.batch, args.steps, args.depthwise)))
        return
    cache = tempfile.mkdtemp()
    runs = [(name, SETTINGS[name], None) for name in args.settings]
    runs.append(("default, 2nd process, persistent cache", "", cache))  # after a first run that filled the cache
    runs.insert(0, ("default, filling the cache", "", cache))
    for name, flags, cache_dir in runs:
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
        if cache_dir:
            env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        cmd = [sys.executable, __file__, "--child", "1", "--batch", str(args.batch), "--steps", str(args.steps)]
        cmd += ["--depthwise", args.depthwise]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<40} first call {r['first_call_s']:6.1f} s   step {r['median_step_ms']:6.2f} ms", flush=True)


if __name__ == "__main__":
    main()
