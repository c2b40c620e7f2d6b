"""The parity check: build torch models, make their BatchNorm non-trivial, convert, compare outputs.

Used by ``flax-dsconv parity`` and by the test suite. torch, timm and torchvision are imported inside
the functions.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_dsconv import count_params, from_torch

# The tolerance rule, float64-referenced (the README's "How parity is tested"): per tensor, Flax's fp32 error
# against the float64 result may be at most max(floor, FACTOR x PyTorch fp32's own error against it). A bound
# fitted to one machine's fp32-vs-fp32 difference fails on the next: XLA:CPU picks kernels by instruction set,
# so rounding moves.
# PyTorch's own error is the larger of its two memory formats' (contiguous NCHW and channels_last run different
# CPU kernels, and one run's error is itself a draw: the README's parity section has a measured pair);
# channels_last is the NHWC layout Flax computes in.
# Errors are ||got - exact|| relative to ||exact|| of the tensor (see relative_error). The floors, one per kind
# of tensor; the parity suite takes them from here, so `flax-dsconv parity` and the tests apply the same rule.
FACTOR = 2.0
FLOOR = {
    "output": 1e-6,  # logits, per-stage and per-layer outputs
    "gradient": 1e-5,  # parameter and input gradients
    "statistics": 1e-6,  # BatchNorm running mean / variance after train-mode steps
    "trajectory": 1e-5,  # parameters and statistics after several optimizer steps
}


def relative_error(got: Any, exact: Any, scale: float | None = None) -> float:
    """``||got - exact|| / ||exact||`` (Euclidean norms over the whole tensor; ``/ scale`` instead, for a tensor
    whose exact value is 0). A norm, not the largest element: two equally accurate fp32 computations that round
    differently differ in their worst element by a factor of several on small tensors, by far less in the norm."""
    got, exact = np.asarray(got, np.float64), np.asarray(exact, np.float64)
    if got.shape != exact.shape:
        raise ValueError(f"shapes differ: {got.shape} and {exact.shape}")
    denominator = float(np.linalg.norm(exact)) if scale is None else scale
    return float(np.linalg.norm(got - exact)) / max(denominator, 1e-300)


def bound(kind: str, torch_error: float) -> float:
    """The largest fp32 error the rule allows Flax on a tensor where PyTorch's fp32 error is ``torch_error``."""
    return max(FLOOR[kind], FACTOR * torch_error)


def randomize_batchnorm(model: Any, example: Any, seed: int = 0) -> Any:
    """Make a torch model's BatchNorm non-trivial yet well conditioned; return it in eval mode.

    Every BN gets random affine parameters (weight in [0.25, 0.75), bias ~ N(0, 0.1²)) and running
    statistics averaged over train-mode passes on ``example`` (a tensor, or a shape for random input), with
    a 0.05 floor on running_var. Linear layers are redrawn from N(0, 1/fan_in), which keeps the scale of
    their input, so logits are O(1) whichever library built the model (the table shows max |logit|).
    Why: with BN weights near 1.5, statistics from other inputs, or timm's O(40) logits, PyTorch's own
    fp32 result drifts 1e-5..1e-4 from float64, and a 1e-5 parity bound would measure rounding, not
    conversion.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    with torch.no_grad():
        for linear in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) / linear.in_features**0.5)
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) * 0.5 + 0.25)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        x = example if isinstance(example, torch.Tensor) else torch.randn(example, generator=g)
        model(x)
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.running_var.clamp_(min=0.05)  # type: ignore[union-attr]  # BatchNorm2d tracks statistics
    return model.eval()


def to_nhwc(x: Any) -> jax.Array:
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def to_nchw(y: Any) -> np.ndarray:
    y = np.asarray(y)
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


@dataclasses.dataclass(frozen=True)
class Case:
    """A torch model to check: a label, how to build it and the NCHW input it takes."""

    label: str
    source: str
    build: Callable[[], Any]
    input_shape: tuple[int, int, int, int] = (2, 3, 224, 224)


# One timm model per family of timm's EfficientNet builder and padding rule (every model: parity_tests/test_zoo.py).
ZOO_ROWS = (
    "mobilenetv4_conv_small", "mnasnet_100", "fbnetv3_b", "lcnet_100", "hardcorenas_a", "efficientnet_b0",
    "tf_efficientnet_b0", "tinynet_e", "efficientnet_lite0", "efficientnetv2_rw_t", "tf_efficientnetv2_b0",
    "mobilenet_edgetpu_v2_xs", "mixnet_s", "tf_mixnet_s", "efficientnet_b0_gn", "test_efficientnet_evos",
    "test_efficientnet_ln", "gc_efficientnetv2_rw_t", "efficientnet_cc_b0_4e", "efficientnet_blur_b0",
    "mobilenetv4_conv_aa_medium", "efficientnet_x_b3", "mobilenetv4_hybrid_medium",
)  # fmt: skip


def default_cases() -> list[Case]:
    """Every supported model family and source, at its default configuration."""
    import timm
    import torchvision

    import torch_ref

    tv = torchvision.models
    return [
        Case("DSConv (seed)", "torch_ref", lambda: torch_ref.DSConv(32, 128), (2, 32, 64, 64)),
        Case(
            "DepthwiseSeparableConv",
            "torch_ref",
            lambda: torch_ref.DepthwiseSeparableConv(32, 64, stride=2),
            (2, 32, 65, 65),
        ),
        Case("mobilenet_v1", "torch_ref", lambda: torch_ref.MobileNetV1()),
        Case("mobilenetv1_100", "timm", lambda: timm.create_model("mobilenetv1_100")),
        Case("mobilenet_v2", "torchvision", lambda: tv.mobilenet_v2()),
        Case("mobilenet_v3_large", "torchvision", lambda: tv.mobilenet_v3_large()),
        Case("mobilenet_v3_small", "torchvision", lambda: tv.mobilenet_v3_small()),
        Case("mobilenetv2_100", "timm", lambda: timm.create_model("mobilenetv2_100")),
        Case("mobilenetv2_120d", "timm", lambda: timm.create_model("mobilenetv2_120d")),
        Case("mobilenetv3_large_100", "timm", lambda: timm.create_model("mobilenetv3_large_100")),
        Case("mobilenetv3_small_100", "timm", lambda: timm.create_model("mobilenetv3_small_100")),
        Case("mobilenetv3_rw", "timm", lambda: timm.create_model("mobilenetv3_rw")),
        Case("tf_mobilenetv3_large_100", "timm", lambda: timm.create_model("tf_mobilenetv3_large_100")),
        Case("tf_mobilenetv3_small_100", "timm", lambda: timm.create_model("tf_mobilenetv3_small_100")),
        *(Case(name, "timm", functools.partial(timm.create_model, name)) for name in ZOO_ROWS),
        Case("efficientnet_b0 (tv)", "torchvision", lambda: tv.efficientnet_b0()),
        Case("efficientnet_v2_s (tv)", "torchvision", lambda: tv.efficientnet_v2_s()),
        Case("mnasnet1_0", "torchvision", lambda: tv.mnasnet1_0()),
    ]


@dataclasses.dataclass(frozen=True)
class Result:
    label: str
    source: str
    torch_params: int
    flax_params: int
    max_abs_diff: float  # |Flax - PyTorch|, both fp32
    max_abs_output: float
    flax_error: float  # each fp32 result against the float64 one, relative (see relative_error)
    torch_error: float  # the larger of PyTorch's two memory formats'
    seconds: float

    @property
    def ok(self) -> bool:
        return self.torch_params == self.flax_params and self.flax_error <= bound("output", self.torch_error)


def check(case: Case, seed: int = 0) -> Result:
    """Build, randomise, convert and compare one case: jit-compiled Flax and eager PyTorch, both fp32 in eval mode,
    against the same PyTorch model in float64."""
    import copy

    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(seed + 1))
    model = randomize_batchnorm(case.build(), x, seed)
    with torch.no_grad():
        expected = model(x).numpy()
        channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        expected_cl = channels_last(x.to(memory_format=torch.channels_last)).numpy()
        exact = copy.deepcopy(model).double()(x.double()).numpy()
    module, variables = from_torch(model)
    got = to_nchw(jax.jit(module.apply)(variables, to_nhwc(x)))
    return Result(
        case.label,
        case.source,
        sum(p.numel() for p in model.parameters()),
        count_params(variables),
        float(np.abs(got - expected).max()),
        float(np.abs(expected).max()),
        relative_error(got, exact),
        max(relative_error(expected, exact), relative_error(expected_cl, exact)),
        time.perf_counter() - start,
    )


def format_table(results: list[Result]) -> str:
    header = (
        f"{'model':<26} {'source':<12} {'torch params':>13} {'flax params':>13} {'max |Δ|':>9} {'max |out|':>9} "
        f"{'flax err':>9} {'torch err':>9} {'time':>6}  status"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.label:<26} {r.source:<12} {r.torch_params:>13,} {r.flax_params:>13,} {r.max_abs_diff:>9.1e} "
            f"{r.max_abs_output:>9.2f} {r.flax_error:>9.1e} {r.torch_error:>9.1e} {r.seconds:>5.1f}s  "
            f"{'ok' if r.ok else 'FAIL'}"
        )
    lines.append(
        f"max |Δ|: Flax fp32 against PyTorch fp32 (NCHW). err: against PyTorch float64, ||error|| / ||logits|| "
        "(torch: the larger of NCHW and channels_last). "
        f"ok: flax err ≤ max({FLOOR['output']:g}, {FACTOR:g} × torch err) and equal params "
        "(CPU, eval mode, BatchNorm randomised)"
    )
    return "\n".join(lines)
