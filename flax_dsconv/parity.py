"""The parity check: build torch models, make their BatchNorm non-trivial, convert, compare outputs.

Used by ``flax-dsconv parity`` and by the test suite. torch, timm and torchvision are imported inside
the functions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_dsconv.convert import from_torch
from flax_dsconv.counting import count_params

ATOL = 1e-5  # fp32 on CPU, eval mode, logits


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
    ]


@dataclasses.dataclass(frozen=True)
class Result:
    label: str
    source: str
    torch_params: int
    flax_params: int
    max_abs_diff: float
    max_abs_output: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.torch_params == self.flax_params and self.max_abs_diff <= ATOL


def check(case: Case, seed: int = 0) -> Result:
    """Build, randomise, convert and compare one case (jit-compiled Flax vs eager torch, fp32, eval)."""
    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(seed + 1))
    model = randomize_batchnorm(case.build(), x, seed)
    with torch.no_grad():
        expected = model(x).numpy()
    module, variables = from_torch(model)
    got = to_nchw(jax.jit(module.apply)(variables, to_nhwc(x)))
    return Result(
        case.label,
        case.source,
        sum(p.numel() for p in model.parameters()),
        count_params(variables),
        float(np.abs(got - expected).max()),
        float(np.abs(expected).max()),
        time.perf_counter() - start,
    )


def format_table(results: list[Result]) -> str:
    header = (
        f"{'model':<26} {'source':<12} {'torch params':>13} {'flax params':>13} {'max |Δ|':>9} {'max |out|':>9} "
        f"{'time':>6}  status"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.label:<26} {r.source:<12} {r.torch_params:>13,} {r.flax_params:>13,} {r.max_abs_diff:>9.1e} "
            f"{r.max_abs_output:>9.2f} {r.seconds:>5.1f}s  {'ok' if r.ok else 'FAIL'}"
        )
    lines.append(f"tolerance: max |Δ| ≤ {ATOL:g} (fp32, CPU, eval mode, BatchNorm randomised) and equal params")
    return "\n".join(lines)
