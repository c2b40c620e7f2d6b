"""The depthwise convolution and its dispatch over implementations.

``'xla'`` is XLA's grouped ``conv_general_dilated`` (the reference, fast on GPU/TPU); ``'shifted'`` sums k²
strided slices times per-channel weights (:mod:`~flax_dsconv.ops.shifted`, fast on CPU); ``'pallas'`` runs the
Triton kernels of :mod:`~flax_dsconv.ops.pallas` on a GPU; ``'auto'`` picks ``'shifted'`` on the CPU backend and
``'xla'`` elsewhere. All compute the same function of the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from flax_dsconv.ops.padding import (
    Axis,
    PaddingLike,
    as_pair,
    explicit_pads,
    past_reach,
    resolve_padding,
    window_axes,
)
from flax_dsconv.ops.shifted import depthwise_shifted

Array = jax.Array
Implementation = Literal["auto", "xla", "shifted", "pallas"]
DEPTHWISE_IMPLEMENTATIONS: tuple[Implementation, ...] = ("auto", "xla", "shifted", "pallas")


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def resolve_depthwise(implementation: str) -> str:
    """``'xla'``, ``'shifted'`` or ``'pallas'``: what ``implementation`` means on the current default backend."""
    if implementation not in DEPTHWISE_IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {DEPTHWISE_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return "shifted" if on_cpu() else "xla"
    if implementation == "pallas" and jax.default_backend() != "gpu":
        raise ValueError(
            f"implementation 'pallas' runs Triton kernels on a GPU; the default backend is "
            f"{jax.default_backend()!r} (use 'auto')"
        )
    return implementation


def _pad_beyond_reach(x: Array, kernel_size: Sequence[int], strides: Any, padding: Any, dilation: Any) -> tuple:
    """``(x, padding)`` for ``conv_general_dilated``, with padding past the kernel's reach (see
    :func:`~flax_dsconv.ops.padding.past_reach`) applied to ``x`` first (one copy; only explicit pairs can do that)."""
    pads = explicit_pads(x.shape, kernel_size, strides, padding, dilation)
    beyond = past_reach(pads, kernel_size, dilation)
    if not any(lo or hi for lo, hi in beyond):
        return x, padding
    within = tuple((lo - extra_lo, hi - extra_hi) for (lo, hi), (extra_lo, extra_hi) in zip(pads, beyond, strict=True))
    return jnp.pad(x, ((0, 0), *beyond, (0, 0))), within


def pallas_serves(x: Array, axes: tuple[Axis, Axis], multiplier: int) -> bool:
    """Whether the Pallas kernels serve this conv (else ``'xla'`` does): depth multiplier 1, a float32/bf16/fp16
    input (they accumulate in float32), and :func:`flax_dsconv.ops.pallas.fits`."""
    from flax_dsconv.ops import pallas

    return multiplier == 1 and pallas.fits(x.shape, *axes, x.dtype)


def depthwise(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: Any,
    dilation: tuple[int, int],
    *,
    multiplier: int = 1,
    implementation: str = "auto",
    precision: Any = None,
) -> Array:
    """Depthwise conv of NHWC ``x`` (C channels) with ``kernel`` ``(kh, kw, 1, C·multiplier)``: output channel
    ``c·multiplier + j`` reads input channel ``c``, as PyTorch's ``groups=C``. ``padding`` is resolved (pairs,
    ``'SAME'``, ``'VALID'``: see :func:`~flax_dsconv.ops.padding.resolve_padding`); ``precision`` applies to
    ``'xla'`` only."""
    kernel_size = kernel.shape[:2]
    implementation = resolve_depthwise(implementation)
    if implementation == "shifted":
        return depthwise_shifted(x, kernel, strides, padding, dilation, multiplier)
    axes = window_axes(x.shape, kernel_size, strides, padding, dilation)
    if implementation == "pallas" and pallas_serves(x, axes, multiplier):
        from flax_dsconv.ops import pallas

        return pallas.depthwise(x, kernel, *axes)
    x, padding = _pad_beyond_reach(x, kernel_size, strides, padding, dilation)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        precision=precision,
    )


def pad_for_depthwise(
    x: Array,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int],
    padding: PaddingLike,
    dilation: int | Sequence[int],
    implementation: str,
) -> tuple[Array, PaddingLike]:
    """``(x, padding)`` to give a DepthwiseConv in place of the originals, for the same result: on the
    ``'shifted'`` path, ``x`` zero-padded here and ``padding=0``; otherwise both unchanged.

    For blocks that have just computed ``x``: XLA then writes the padded activation in the same pass that
    computes it, and compiles the block as one pass per layer. Given unpadded input, ``'shifted'`` sums its
    edge regions separately and never copies ``x``, which is what a lone layer wants; inside a block that
    lets XLA fuse the BatchNorm and activation into every tap, which runs faster but compiles much slower
    (docs/performance.md).
    """
    if resolve_depthwise(implementation) != "shifted":
        return x, padding
    kernel_size, dilation = as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation")
    resolved = resolve_padding(padding, kernel_size, dilation)
    pads = explicit_pads(x.shape, kernel_size, as_pair(strides, "strides"), resolved, dilation)
    if pads == ((0, 0), (0, 0)):
        return x, padding
    return jnp.pad(x, ((0, 0), *pads, (0, 0))), 0
