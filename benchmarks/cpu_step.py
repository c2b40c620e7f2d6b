"""Where a CPU train step's time goes: wall, user and system CPU time, and minor page faults, per step.

MobileNetV2, SGD with momentum, fp32, 224², steps run back to back as in a training loop; then the same for
PyTorch eager (channels_last) in the same process. Run it once as is and once with huge-page malloc:
    python benchmarks/cpu_step.py [--batch 16] [--steps 8] [--depthwise auto]
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/cpu_step.py
System time and faults are the cost of allocating each step's buffers afresh (see README, Speed / CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any


def per_step(step: Callable[[], Any], steps: int) -> list[tuple[float, float, float, int]]:
    """``(wall, user, system, minor faults)`` of each call of ``step`` (which must wait for its result)."""
    rows = []
    for _ in range(steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        rows.append((wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                     after.ru_minflt - before.ru_minflt))  # fmt: skip
    return rows


def report(name: str, rows: list[tuple[float, float, float, int]]) -> None:
    wall, user, system, faults = (statistics.median(column) for column in zip(*rows, strict=True))
    walls = ", ".join(f"{1e3 * row[0]:.0f}" for row in rows)
    print(f"{name:6s} median wall {1e3 * wall:6.0f} ms  user {1e3 * user:6.0f} ms  sys {1e3 * system:5.0f} ms  "
          f"faults {faults:8.0f}   (wall per step: {walls})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--depthwise", default="auto")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torchvision

    from flax_dsconv import from_torch, optim, train

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"jax {jax.__version__}, torch {torch.__version__}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    torch_model = torchvision.models.mobilenet_v2()
    module, variables = from_torch(torch_model)
    module = module.clone(depthwise=args.depthwise)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((args.batch, 224, 224, 3), dtype=np.float32)
    y_np = rng.integers(0, 1000, args.batch)

    state = [train.create_train_state(module, variables, optim.sgd(0.01, momentum=0.9))]
    jit_step, x, y, key = train.jit_train_step(), jnp.asarray(x_np), jnp.asarray(y_np), jax.random.key(0)

    def flax_step() -> None:
        state[0], metrics = jit_step(state[0], x, y, key)
        jax.block_until_ready(metrics)

    tx = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    ty = torch.from_numpy(y_np)
    torch_model = torch_model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(torch_model.parameters(), lr=0.01, momentum=0.9)

    def torch_step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(torch_model(tx), ty).backward()
        opt.step()

    for name, step in (("flax", flax_step), ("torch", torch_step)):
        step()  # compile (flax) and warm-up
        step()
        report(name, per_step(step, args.steps))


if __name__ == "__main__":
    main()
