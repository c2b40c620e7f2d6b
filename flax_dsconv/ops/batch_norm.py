"""Train-mode BatchNorm over the last axis with PyTorch's statistics, and its VJP.

The statistics are per-channel sums over every other axis, taken in float32 (float64 for float64 inputs under
x64); under ``jit`` with the batch sharded over devices, or with a named axis under ``shard_map``/``pmap``, they
are over the whole batch (synchronised BatchNorm).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def stat_dtype(*arrays: Array) -> Any:
    """Statistics and their gradients: float32, or float64 when an input is (``jax_enable_x64``)."""
    return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def _add_tuples(a: tuple[Array, ...], b: tuple[Array, ...]) -> tuple[Array, ...]:
    # One function object for every reduce: un-jitted calls hit lax.reduce's compilation cache.
    return tuple(u + v for u, v in zip(a, b, strict=True))


def channel_sums(*arrays: Array) -> tuple[Array, ...]:
    """Per-channel sums (in :func:`stat_dtype`) over every axis but the last, of same-shape arrays, one pass.

    One variadic reduce over a single axis, then a small sum: XLA:CPU emits it as one fused loop, where
    separate ``jnp.sum`` calls would each materialise their (elementwise) input, transposed, for a library
    reduction. Summing one axis first also keeps the float32 error at the level of a pairwise sum.
    """
    dtype = stat_dtype(*arrays)
    arrays = tuple(a.astype(dtype) for a in arrays)
    if arrays[0].ndim > 2:
        arrays = jax.lax.reduce(arrays, (jnp.zeros((), dtype),) * len(arrays), _add_tuples, (arrays[0].ndim - 2,))
    return tuple(jnp.sum(a, axis=tuple(range(a.ndim - 1))) for a in arrays)


def batch_count(x: Array, axis_name: str | None) -> int:
    """Values per channel in the (possibly cross-device) batch."""
    return math.prod(x.shape[:-1]) * (1 if axis_name is None else jax.lax.axis_size(axis_name))


def _global_mean(local_sum: Array, x: Array, axis_name: str | None) -> Array:
    total = local_sum if axis_name is None else jax.lax.psum(local_sum, axis_name)
    return total / batch_count(x, axis_name)


def normalise(x: Array, mean: Array, rstd: Array, scale: Array, bias: Array) -> Array:
    dtype = stat_dtype(x, mean, scale)
    return (x.astype(dtype) - mean) * (scale.astype(dtype) * rstd) + bias.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(
    x: Array, scale: Array, bias: Array, epsilon: float, axis_name: str | None, dtype: Any
) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm: ``(y, batch mean, biased batch variance)``, statistics in float32 (or float64)."""
    return _train_fwd(x, scale, bias, epsilon, axis_name, dtype)[0]


def _train_fwd(x, scale, bias, epsilon, axis_name, dtype):
    mean = _global_mean(*channel_sums(x), x, axis_name)
    # Two-pass variance, as PyTorch computes it; E[x²] - E[x]² loses digits at 1e-5 parity.
    var = _global_mean(*channel_sums(jnp.square(x.astype(mean.dtype) - mean)), x, axis_name)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = normalise(x, mean, rstd, scale, bias)
    return (y.astype(dtype), mean, var), (x, scale, mean, rstd)


def _train_bwd(epsilon, axis_name, dtype, residuals, cotangents):
    # The textbook BatchNorm gradient, with both of its per-channel sums taken in one pass; autodiff's version
    # takes them separately and, on XLA:CPU, transposes each cotangent to channel-major first. The mean and
    # variance outputs (used for the running statistics) get their cotangents' terms as well.
    x, scale, mean, rstd = residuals
    dy, dmean, dvar = (c.astype(mean.dtype) for c in cotangents)
    centred = x.astype(mean.dtype) - mean
    xhat = centred * rstd
    dbias, dscale = channel_sums(dy, dy * xhat)  # this device's sums: the parameters' gradients
    # dx sees the statistics of the whole (possibly cross-device) batch.
    dx = (scale.astype(mean.dtype) * rstd) * (
        dy - _global_mean(dbias, x, axis_name) - xhat * _global_mean(dscale, x, axis_name)
    )
    count = batch_count(x, axis_name)
    dx = dx + dmean / count + dvar * (2.0 / count) * centred
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_train_fwd, _train_bwd)
