"""Normalisations without running statistics, on NHWC arrays: GroupNorm, LayerNorm over channels, and EvoNorm-S0's
group standard deviation.

Moments are taken in float32 (float64 for float64 inputs), two-pass (mean, then the mean squared deviation), with
the biased variance, as PyTorch's ``group_norm`` / ``layer_norm`` and timm's ``group_std`` compute them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax_dsconv.ops.batch_norm import stat_dtype

Array = jax.Array


def _grouped(x: Array, groups: int) -> Array:
    """``x`` (N, H, W, C) as (N, H, W, groups, C // groups); channel ``c`` in group ``c // (C // groups)``, as
    torch splits NCHW channels."""
    channels = x.shape[-1]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or channels % groups:
        raise ValueError(f"{channels} channels do not split into groups={groups!r}")
    return x.reshape(*x.shape[:-1], groups, channels // groups)


def _moments(x: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    x = x.astype(stat_dtype(x))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    return mean, jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)


def group_norm(x: Array, groups: int, epsilon: float) -> Array:
    """``x`` normalised per example and channel group over the spatial axes and the group's channels (no affine).

    >>> group_norm(jnp.ones((2, 8, 8, 32)), 4, 1e-5).shape
    (2, 8, 8, 32)
    """
    g = _grouped(x, groups)
    axes = (*range(1, x.ndim - 1), x.ndim)  # every spatial axis and the channels within a group
    mean, var = _moments(g, axes)
    y = (g.astype(mean.dtype) - mean) * jax.lax.rsqrt(var + epsilon)
    return y.reshape(x.shape).astype(x.dtype)


def layer_norm(x: Array, epsilon: float) -> Array:
    """``x`` normalised over its channels (the last axis) at every position (no affine): timm's ``LayerNorm2d``,
    which permutes NCHW to channels-last for ``F.layer_norm``."""
    mean, var = _moments(x, (x.ndim - 1,))
    return ((x.astype(mean.dtype) - mean) * jax.lax.rsqrt(var + epsilon)).astype(x.dtype)


def group_std(x: Array, groups: int, epsilon: float) -> Array:
    """The standard deviation ``sqrt(var + epsilon)`` of each example's channel group (over the spatial axes and
    the group's channels), broadcast back to ``x``'s shape: EvoNorm-S0's divisor (timm's ``group_std``)."""
    g = _grouped(x, groups)
    _, var = _moments(g, (*range(1, x.ndim - 1), x.ndim))
    return jnp.broadcast_to(jnp.sqrt(var + epsilon), g.shape).reshape(x.shape).astype(x.dtype)
