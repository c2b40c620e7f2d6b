"""``flax-dsconv bench``: Flax (``jit``) against PyTorch in one process, on the same machine and inputs.

Each workload runs in Flax (jit-compiled, the first call timed separately: that is compile plus one step),
PyTorch eager with ``channels_last`` tensors, and optionally ``torch.compile``. Times are medians over
``repeats`` calls after a warm-up call, each synchronised (``block_until_ready`` / ``cuda.synchronize``).
Ratios are throughput ratios, Flax over PyTorch (above 1: Flax is faster).

Workloads: a depthwise layer, a pointwise layer and a depthwise separable block (forward, and the gradient
with respect to input and weights), then each MobileNet's inference and SGD train step. On GPU the depthwise
forward also reports achieved memory throughput (input + output + weight bytes per call) against the
device's HBM bandwidth.

>>> results = run(Settings.for_backend("cpu", models=("mobilenet_v2",)))
>>> print(format_table(results))
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from flax_dsconv import list_models
from flax_dsconv.tools.bench_workloads import (
    MODELS,
    Settings,
    Workload,
    layer_workloads,
    model_workloads,
    torch_device,
    torch_setup,
)

__all__ = ["MODELS", "PEAK_GBPS", "Result", "Settings", "describe_machine", "format_table", "peak_gbps", "run"]

# Peak HBM bandwidth in GB/s (vendor data sheets), matched against the device name; --peak-gbps overrides.
# The first key contained in the device name wins, so variants come before the plain model name.
PEAK_GBPS = {
    "H200": 4800.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,  # SXM, "NVIDIA H100 80GB HBM3"
    "A100-SXM4-80GB": 2039.0,
    "A100": 1555.0,
}


@dataclasses.dataclass
class Result:
    """One workload in one framework."""

    workload: str
    framework: str  # 'flax', 'torch', 'torch.compile'
    batch: int
    median_s: float | None  # None when the row failed (see error)
    first_call_s: float | None
    images_per_s: float
    gbps: float | None = None
    peak_fraction: float | None = None
    error: str | None = None


def _time(fn: Callable[[], Any], sync: Callable[[Any], None], repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    sync(fn())  # warm-up: allocator, caches, and any lazy second compilation (donated buffers)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


def _peak_gbps(settings: Settings) -> float | None:
    if settings.peak_gbps:
        return settings.peak_gbps
    if jax.default_backend() != "gpu":
        return None
    return peak_gbps(jax.devices()[0].device_kind)


def peak_gbps(device_kind: str) -> float | None:
    """The data-sheet HBM bandwidth of the GPU named ``device_kind`` (``jax.Device.device_kind``), if known."""
    return next((v for k, v in PEAK_GBPS.items() if k in device_kind), None)


def run(settings: Settings, log: Callable[[str], None] = lambda _: None) -> list[Result]:
    """Run every workload ``settings`` names; one :class:`Result` per workload and framework."""
    device, tdtype, torch_sync = torch_setup(settings)
    unknown = sorted(set(settings.models) - set(list_models()))
    if unknown:
        raise ValueError(f"unknown models {unknown}; expected names of flax_dsconv.list_models(), e.g. {list(MODELS)}")
    workloads: list[Callable[[], list[Workload]]] = []
    if settings.layers:
        workloads.append(lambda: layer_workloads(settings, device, tdtype))
    workloads += [functools.partial(model_workloads, settings, arch, device, tdtype) for arch in settings.models]
    peak = _peak_gbps(settings)
    results = []
    for build in workloads:
        try:
            built = build()
        except Exception as e:  # e.g. an implementation this backend lacks: report it, keep the other rows
            log(f"building workloads failed: {e!r}")
            results.append(Result("(building workloads)", "flax", 0, None, None, 0.0, error=repr(e)))
            continue
        for w in built:
            runs = [("flax", w.flax, jax.block_until_ready), ("torch", w.torch, torch_sync)]
            if w.torch_compiled is not None:
                runs.append(("torch.compile", w.torch_compiled, torch_sync))
            for framework, fn, sync in runs:
                log(f"{w.name}: {framework}")
                try:
                    median, first = _time(fn, sync, settings.repeats)
                except Exception as e:  # a torch.compile toolchain failure must not hide the other rows
                    log(f"{w.name}: {framework} failed: {e!r}")
                    results.append(Result(w.name, framework, w.batch, None, None, 0.0, error=repr(e)))
                    continue
                gbps = w.bytes_per_call / median / 1e9 if w.bytes_per_call else None
                results.append(
                    Result(
                        w.name,
                        framework,
                        w.batch,
                        median,
                        first,
                        w.batch / median,
                        gbps,
                        gbps / peak if gbps and peak else None,
                    )
                )
    return results


def _median(result: Result | None) -> float | None:
    """A row's median seconds, or None where the framework did not run or failed."""
    return None if result is None or result.error else result.median_s


def format_table(results: Sequence[Result]) -> str:
    """One row per workload: medians, Flax's throughput ratio to each PyTorch mode, first-call times."""
    by_workload: dict[str, dict[str, Result]] = {}
    for r in results:
        by_workload.setdefault(r.workload, {})[r.framework] = r
    frameworks = [f for f in ("flax", "torch", "torch.compile") if any(f in v for v in by_workload.values())]
    head = ["workload", "batch"] + [f"{f} ms" for f in frameworks]
    head += [f"flax/{f}" for f in frameworks[1:]] + ["flax img/s", "flax 1st s"]
    if "torch.compile" in frameworks:
        head.append("compile 1st s")
    if any(r.gbps for r in results):
        head += ["flax GB/s", "torch GB/s"]
    rows = [head]
    for name, runs in by_workload.items():
        flax = runs.get("flax")
        row = [name, str(flax.batch if flax else "")]
        medians = {f: _median(runs.get(f)) for f in frameworks}
        row += [f"{m * 1e3:.1f}" if (m := medians[f]) is not None else "error" for f in frameworks]
        for f in frameworks[1:]:
            mine, theirs = medians.get("flax"), medians[f]
            row.append(f"{theirs / mine:.2f}x" if mine is not None and theirs is not None else "-")
        if flax is not None and flax.first_call_s is not None and not flax.error:
            row += [f"{flax.images_per_s:,.0f}", f"{flax.first_call_s:.1f}"]
        else:
            row += ["-", "-"]
        if "torch.compile" in frameworks:
            compiled = runs.get("torch.compile")
            row.append(f"{compiled.first_call_s:.1f}" if compiled and not compiled.error else "-")
        if len(head) > len(row):
            for f in ("flax", "torch"):
                result = runs.get(f)
                pct = f" ({result.peak_fraction:.0%})" if result and result.peak_fraction else ""
                row.append(f"{result.gbps:,.0f}{pct}" if result and result.gbps else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def describe_machine() -> str:
    """The backend, device, library versions and malloc tunables, for the table's caption.

    The tunables matter on CPU: both frameworks allocate their large buffers afresh for every step, and
    whether glibc backs them with huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) moves the times by
    up to 2x (see the README's Speed section).
    """
    import os
    import platform

    import torch

    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return (
        f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind}), torch {torch.__version__} on "
        f"{torch_device()}, "
        f"{cpu}, torch threads {torch.get_num_threads()}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
