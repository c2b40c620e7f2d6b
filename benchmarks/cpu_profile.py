"""Where a jitted MobileNetV2 CPU train step spends its kernel time: XLA's own kernel names, grouped by kind.

Traces a few steps with ``jax.profiler`` (``--xla_cpu_enable_xprof_traceme=true`` makes XLA:CPU record each
kernel) and prints milliseconds per step by kernel kind (``ynn_fusion``: YNNPACK matrix products, i.e. 1x1
convs; ``multiply_reduce_fusion``: BatchNorm sums and depthwise kernel gradients; ...) and the largest kernels.
Run it once as is and once on one core to see which kinds use the second core:
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/cpu_profile.py --out /tmp/two.json
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 taskset -c 0 python benchmarks/cpu_profile.py --out /tmp/one.json
    python benchmarks/cpu_profile.py --compare /tmp/two.json /tmp/one.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

# Trace events that are not kernels: the executor, thread-pool bookkeeping, Python frames, PjRt plumbing.
_NOT_KERNELS = ("ThunkExecutor", "ThreadpoolListener", "Pjit", "$", "Wait", "PjRt", "Tfrt", "CommonPjRt",
                "ParseArguments", "Handle inputs", "SlinkyThreadPool", "end: ")  # fmt: skip


def trace_step(batch: int, steps: int) -> dict[str, float]:
    """Milliseconds per step of each kernel (by XLA's name) over ``steps`` traced train steps."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flax_dsconv import mobilenet_v2, optim, train

    module = mobilenet_v2()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 224, 224, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 1000, batch))
    state = train.create_train_state(module, jax.jit(module.init)(jax.random.key(0), x[:1]), optim.sgd(0.01, 0.9))
    step, key = train.jit_train_step(), jax.random.key(0)
    for _ in range(2):  # compile and warm up
        state, metrics = step(state, x, y, key)
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = step(state, x, y, key)
                jax.block_until_ready(metrics)
        (path,) = glob.glob(f"{out}/**/*perfetto_trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_kernel: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_NOT_KERNELS):
            per_kernel[e["name"]] += e.get("dur", 0) / 1e3 / steps
    return dict(per_kernel)


def by_kind(per_kernel: dict[str, float]) -> dict[str, float]:
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, ms in per_kernel.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    return dict(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="also write the per-kernel milliseconds here (JSON), for --compare")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two --out files: kinds side by side")
    args = parser.parse_args()
    if args.compare:
        a, b = (by_kind(json.load(open(f))) for f in args.compare)
        print(f"{'kernel kind':32s} {'A ms':>8s} {'B ms':>8s} {'B/A':>6s}")
        for kind in sorted(a.keys() | b.keys(), key=lambda k: -(a.get(k, 0) + b.get(k, 0)))[:20]:
            ratio = b.get(kind, 0) / a[kind] if a.get(kind) else float("nan")
            print(f"{kind[:32]:32s} {a.get(kind, 0):8.1f} {b.get(kind, 0):8.1f} {ratio:6.2f}")
        print(f"{'total':32s} {sum(a.values()):8.1f} {sum(b.values()):8.1f} {sum(b.values()) / sum(a.values()):6.2f}")
        return
    per_kernel = trace_step(args.batch, args.steps)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(per_kernel, f)
    cpus = len(os.sched_getaffinity(0))
    print(f"{sum(per_kernel.values()):.0f} ms of kernels per step (batch {args.batch}, {cpus} CPUs)")
    for kind, ms in sorted(by_kind(per_kernel).items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {ms:7.1f} ms  {kind}")
    print("largest kernels:")
    for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {ms:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
