"""Stochastic depth (Huang et al. 2016): drop a residual branch per example, as timm's ``DropPath`` and
torchvision's ``StochasticDepth(mode='row')`` do in training."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """``x`` with each example (the first axis) zeroed with probability ``rate`` and the kept ones scaled by
    ``1 / (1 - rate)``, so the expectation is ``x``; ``rate=1`` zeroes everything (nothing to scale).

    >>> y = drop_path(branch, 0.2, jax.random.key(0))
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop_path: rate is a probability in [0, 1], got {rate!r}")
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
