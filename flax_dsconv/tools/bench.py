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

import copy
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flax_dsconv
from flax_dsconv import train

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

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to run. :meth:`for_backend` gives the defaults the README's numbers use."""

    dtype: str = "float32"
    layer_shape: tuple[int, int, int, int] = (32, 56, 56, 144)  # N, H, W, C of the layer workloads
    train_batch: int = 16
    infer_batch: int = 16
    resolution: int = 224
    models: tuple[str, ...] = MODELS
    layers: bool = True
    torch_compile: bool = False
    depthwise: str = "auto"  # DepthwiseConv implementation for every Flax workload
    repeats: int = 10
    peak_gbps: float | None = None

    @classmethod
    def for_backend(cls, backend: str, **overrides: Any) -> Settings:
        if backend == "cpu":
            return cls(**overrides)
        gpu = dict(dtype="bfloat16", layer_shape=(256, 56, 56, 144), train_batch=256, infer_batch=1024, repeats=20)
        return cls(**{**gpu, **overrides})


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


@dataclasses.dataclass
class _Workload:
    name: str
    batch: int
    flax: Callable[[], Any]
    torch: Callable[[], Any]
    torch_compiled: Callable[[], Any] | None = None
    bytes_per_call: int | None = None


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


def _torch_device() -> str:
    """Where PyTorch runs: CUDA when JAX's default backend is the GPU and torch sees one, else the CPU."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_setup(settings: Settings) -> tuple[Any, Any, Any]:
    import torch

    device = torch.device(_torch_device())
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[settings.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return device, dtype, sync


def _to_torch(a: Any, device: Any, dtype: Any = None) -> Any:
    """An NHWC array as the NCHW, channels_last tensor PyTorch's fast CPU/GPU kernels take."""
    import torch

    t = torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).to(device, dtype)
    return t.contiguous(memory_format=torch.channels_last)


def _layer_workloads(settings: Settings, device: Any, tdtype: Any) -> list[_Workload]:
    import torch

    jdtype = jnp.dtype(settings.dtype)
    n, h, w, c = settings.layer_shape
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((n, h, w, c), dtype=np.float32)
    x = jnp.asarray(x_np, jdtype)
    tx = _to_torch(x_np, device, tdtype)

    specs = {
        "depthwise 3x3": (
            flax_dsconv.DepthwiseConv(3, dtype=jdtype, param_dtype=jdtype, implementation=settings.depthwise),
            torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        ),
        "pointwise 1x1": (
            flax_dsconv.PointwiseConv(c, dtype=jdtype, param_dtype=jdtype),
            torch.nn.Conv2d(c, c, 1, bias=False),
        ),
        "separable block": (
            flax_dsconv.DepthwiseSeparableConv(c, dtype=jdtype, depthwise=settings.depthwise),
            torch.nn.Sequential(
                torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(),
                torch.nn.Conv2d(c, c, 1, bias=False),
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(),
            ),
        ),
    }
    out = []
    for name, (flax_layer, torch_layer) in specs.items():
        torch_layer = torch_layer.to(device, tdtype).to(memory_format=torch.channels_last)
        out += _layer_pair(name, flax_layer, torch_layer, x, tx, settings)
    return out


def _layer_pair(name: str, flax_layer: Any, torch_layer: Any, x: jax.Array, tx: Any, settings: Settings) -> list:
    """Forward and gradient (w.r.t. input and weights) workloads for one layer in both frameworks."""
    import torch

    variables = flax_layer.init(jax.random.key(0), x)
    params = variables["params"]
    train_mode = "batch_stats" in variables  # the block: train-mode BatchNorm, as in a training step

    def forward(params: Any, x: jax.Array) -> jax.Array:
        if train_mode:
            return flax_layer.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])[0]
        return flax_layer.apply({"params": params}, x)

    fwd = jax.jit(forward)
    # Random, and an argument: a constant cotangent would be folded into the compiled gradient.
    # (its shape from eval_shape: calling fwd here would compile it before its first call is timed)
    cotangent = jax.random.normal(jax.random.key(1), jax.eval_shape(forward, params, x).shape, x.dtype)
    grad = jax.jit(lambda p, x, ct: jax.vjp(forward, p, x)[1](ct))
    torch_layer.train(train_mode)
    tx_grad = tx.detach().requires_grad_(True)
    t_cotangent = _to_torch(cotangent, tx.device, tx.dtype)

    def torch_forward(layer: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return layer(tx)

        return run

    def torch_grad(layer: Any) -> Callable[[], Any]:
        def run() -> Any:
            torch_layer.zero_grad(set_to_none=True)
            tx_grad.grad = None
            layer(tx_grad).backward(t_cotangent)
            return tx_grad.grad

        return run

    compiled = torch.compile(torch_layer) if settings.torch_compile else None
    nbytes = (x.size + cotangent.size + sum(p.size for p in jax.tree.leaves(params))) * x.dtype.itemsize
    return [
        _Workload(
            f"{name} fwd",
            x.shape[0],
            lambda: fwd(params, x),
            torch_forward(torch_layer),
            torch_forward(compiled) if compiled is not None else None,
            nbytes if name.startswith("depthwise") else None,
        ),
        _Workload(
            f"{name} grad",
            x.shape[0],
            lambda: grad(params, x, cotangent),
            torch_grad(torch_layer),
            torch_grad(compiled) if compiled is not None else None,
        ),
    ]


def _torch_model(arch: str) -> Any:
    import torchvision

    import torch_ref

    if arch == "mobilenet_v1":
        return torch_ref.MobileNetV1()
    return getattr(torchvision.models, arch)()


def _model_workloads(settings: Settings, arch: str, device: Any, tdtype: Any) -> list[_Workload]:
    import torch

    from flax_dsconv import from_torch, optim

    torch_model = _torch_model(arch)
    module, variables = from_torch(torch_model)
    module = module.clone(depthwise=settings.depthwise)
    if settings.dtype != "float32":
        module = module.clone(dtype=jnp.dtype(settings.dtype))  # bf16 compute, fp32 params and BN statistics
    torch_model = torch_model.to(device).to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=tdtype, enabled=settings.dtype != "float32")
    r = settings.resolution
    rng = np.random.default_rng(0)
    out = []

    # Inference: eval mode, running statistics, on its own copy of the torch model (the train step below puts
    # torch_model in train mode before anything is timed) and its own batch (names the train step rebinds
    # must not be read by these closures when they run).
    infer_x_np = rng.standard_normal((settings.infer_batch, r, r, 3), dtype=np.float32)
    infer_x, infer_tx = jnp.asarray(infer_x_np), _to_torch(infer_x_np, device)
    infer = jax.jit(module.apply)
    infer_model = copy.deepcopy(torch_model).eval()

    def torch_infer(m):
        def run():
            with torch.no_grad(), autocast:
                return m(infer_tx)

        return run

    compiled = torch.compile(infer_model) if settings.torch_compile else None
    out.append(
        _Workload(
            f"{arch} inference",
            settings.infer_batch,
            lambda: infer(variables, infer_x),
            torch_infer(infer_model),
            torch_infer(compiled) if compiled is not None else None,
        )
    )

    # Train step: SGD with momentum, train-mode BatchNorm, cross-entropy.
    b = settings.train_batch
    x_np = rng.standard_normal((b, r, r, 3), dtype=np.float32)
    y_np = rng.integers(0, 1000, b)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    tx = _to_torch(x_np, device)
    ty = torch.from_numpy(y_np).to(device)
    state = [train.create_train_state(module, variables, optim.sgd(0.01, momentum=0.9))]
    step = train.jit_train_step()
    key = jax.random.key(0)

    def flax_train():
        state[0], metrics = step(state[0], x, y, key)
        return metrics["loss"]

    def torch_train(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def run():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(m(tx), ty)
            loss.backward()
            opt.step()
            return loss

        return run

    torch_model.train()
    compiled = torch.compile(torch_model) if settings.torch_compile else None
    compiled_train = torch_train(compiled) if compiled is not None else None
    out.append(_Workload(f"{arch} train step", b, flax_train, torch_train(torch_model), compiled_train))
    return out


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
    device, tdtype, torch_sync = _torch_setup(settings)
    unknown = set(settings.models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; expected some of {list(MODELS)}")
    workloads: list[Callable[[], list[_Workload]]] = []
    if settings.layers:
        workloads.append(lambda: _layer_workloads(settings, device, tdtype))
    workloads += [functools.partial(_model_workloads, settings, arch, device, tdtype) for arch in settings.models]
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
        f"{_torch_device()}, "
        f"{cpu}, torch threads {torch.get_num_threads()}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
