"""What ``flax-dsconv bench`` runs: the settings, and each workload as a pair of Flax and PyTorch callables.

The layer workloads (a depthwise layer, a pointwise layer and a depthwise separable block, forward and the
gradient with respect to input and weights) and, per MobileNet, inference and an SGD train step; PyTorch runs
with ``channels_last`` tensors, optionally also under ``torch.compile``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flax_dsconv
from flax_dsconv import train

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
class Workload:
    name: str
    batch: int
    flax: Callable[[], Any]
    torch: Callable[[], Any]
    torch_compiled: Callable[[], Any] | None = None
    bytes_per_call: int | None = None


def torch_device() -> str:
    """Where PyTorch runs: CUDA when JAX's default backend is the GPU and torch sees one, else the CPU."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_setup(settings: Settings) -> tuple[Any, Any, Any]:
    import torch

    device = torch.device(torch_device())
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[settings.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return device, dtype, sync


def to_torch(a: Any, device: Any, dtype: Any = None) -> Any:
    """An NHWC array as the NCHW, channels_last tensor PyTorch's fast CPU/GPU kernels take."""
    import torch

    t = torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).to(device, dtype)
    return t.contiguous(memory_format=torch.channels_last)


def layer_workloads(settings: Settings, device: Any, tdtype: Any) -> list[Workload]:
    import torch

    jdtype = jnp.dtype(settings.dtype)
    n, h, w, c = settings.layer_shape
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((n, h, w, c), dtype=np.float32)
    x = jnp.asarray(x_np, jdtype)
    tx = to_torch(x_np, device, tdtype)

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
    t_cotangent = to_torch(cotangent, tx.device, tx.dtype)

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
        Workload(
            f"{name} fwd",
            x.shape[0],
            lambda: fwd(params, x),
            torch_forward(torch_layer),
            torch_forward(compiled) if compiled is not None else None,
            nbytes if name.startswith("depthwise") else None,
        ),
        Workload(
            f"{name} grad",
            x.shape[0],
            lambda: grad(params, x, cotangent),
            torch_grad(torch_layer),
            torch_grad(compiled) if compiled is not None else None,
        ),
    ]


def _torch_model(arch: str) -> Any:
    """The PyTorch twin of ``create_model(arch)``: torch_ref's MobileNetV1 and torchvision's V2/V3 for the
    builders' names, timm's model for every other name (all of them timm's)."""
    import torchvision

    import torch_ref

    if arch == "mobilenet_v1":
        return torch_ref.MobileNetV1()
    if arch in MODELS:
        return getattr(torchvision.models, arch)()
    import timm

    return timm.create_model(arch)


def model_workloads(settings: Settings, arch: str, device: Any, tdtype: Any) -> list[Workload]:
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
    infer_x, infer_tx = jnp.asarray(infer_x_np), to_torch(infer_x_np, device)
    infer = jax.jit(module.apply)
    infer_model = copy.deepcopy(torch_model).eval()

    def torch_infer(m):
        def run():
            with torch.no_grad(), autocast:
                return m(infer_tx)

        return run

    compiled = torch.compile(infer_model) if settings.torch_compile else None
    out.append(
        Workload(
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
    tx = to_torch(x_np, device)
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
    out.append(Workload(f"{arch} train step", b, flax_train, torch_train(torch_model), compiled_train))
    return out
