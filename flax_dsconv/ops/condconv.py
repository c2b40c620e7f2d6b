"""Conditionally parameterised convolution (CondConv, Yang et al. 2019) as pure functions: each example's kernel is
its own mixture of expert kernels, weighted by its routing weights.

Expert kernels are ``(experts, kh, kw, in // groups, out)`` (Flax's HWIO layout per expert); routing weights are
``(batch, experts)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flax_dsconv.ops.padding import ResolvedPadding

Array = jax.Array


def mix_experts(routing: Array, experts: Array, precision: Any = None) -> Array:
    """Per example, the routing-weighted sum of the expert tensors: ``(batch, experts) x (experts, ...)`` →
    ``(batch, ...)``."""
    if routing.ndim != 2 or routing.shape[1] != experts.shape[0]:
        raise ValueError(f"routing weights must be (batch, {experts.shape[0]}) for {experts.shape[0]} experts, got "
                         f"shape {routing.shape}")  # fmt: skip
    mixed = jnp.tensordot(routing, experts.reshape(experts.shape[0], -1), axes=1, precision=precision)
    return mixed.reshape(routing.shape[0], *experts.shape[1:])


def conv_per_example(
    x: Array,
    kernels: Array,
    strides: tuple[int, int],
    padding: ResolvedPadding,
    dilation: tuple[int, int],
    groups: int = 1,
    precision: Any = None,
) -> Array:
    """NHWC ``x`` convolved example by example, example ``b`` with ``kernels[b]`` (``(batch, kh, kw, in // groups,
    out)``) in ``groups`` groups.

    One convolution of a single image whose channels are the examples' side by side (``b·C + c``), grouped ``batch ·
    groups`` ways, the kernels laid out to match (output channel ``b·out + o``): what ``vmap`` of the conv lowers
    to, written out, which compiles and runs faster on XLA:CPU. With a symbolic batch (``jax.export``), where a
    convolution's group count must be static, a ``lax.map`` of one convolution per example."""
    batch, height, width, channels = x.shape
    if kernels.shape[0] != batch:
        raise ValueError(f"one kernel per example expected: {batch} examples, {kernels.shape[0]} kernels")
    _, kh, kw, cin, cout = kernels.shape
    if not isinstance(batch, int):
        def one(example: tuple[Array, Array]) -> Array:
            image, kernel = example
            return jax.lax.conv_general_dilated(image[None], kernel, window_strides=strides, padding=padding,
                                                rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                feature_group_count=groups, precision=precision)[0]  # fmt: skip

        return jax.lax.map(one, (x, kernels))
    images = x.transpose(1, 2, 0, 3).reshape(1, height, width, batch * channels)
    stacked = kernels.transpose(1, 2, 3, 0, 4).reshape(kh, kw, cin, batch * cout)
    y = jax.lax.conv_general_dilated(images, stacked, window_strides=strides, padding=padding, rhs_dilation=dilation,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=batch * groups,
                                     precision=precision)  # fmt: skip
    return y.reshape(*y.shape[1:3], batch, cout).transpose(2, 0, 1, 3)
