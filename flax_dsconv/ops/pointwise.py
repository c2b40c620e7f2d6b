"""The 1x1 convolution as a channel contraction (``dot_general``), with a hand-written VJP for the CPU."""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array


def contract_channels(x: Array, kernel: Array, precision: Any) -> Array:
    """``x @ kernel`` over the channel axis: a 1x1 convolution."""
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


# The same contraction with a hand-written VJP (used on CPU, see _bwd).
_pointwise_vjp = jax.custom_vjp(contract_channels, nondiff_argnums=(2,))


def _fwd(x, kernel, precision):
    return contract_channels(x, kernel, precision), (x, kernel)


def _bwd(precision, residuals, g):
    # Autodiff's kernel gradient contracts a transposed cotangent, which XLA:CPU materialises channel-major
    # first (a full-size transpose per layer; docs/performance.md); here both operands are contracted over their
    # leading (pixel) axis as they lie in memory.
    x, kernel = residuals
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dk = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), precision=precision)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_pointwise_vjp.defvjp(_fwd, _bwd)


def pointwise(x: Array, kernel: Array, precision: Any = None) -> Array:
    """``x @ kernel`` over the last axis (``kernel``: ``(in, out)``); on the CPU backend through the VJP above."""
    return (_pointwise_vjp if jax.default_backend() == "cpu" else contract_channels)(x, kernel, precision)
