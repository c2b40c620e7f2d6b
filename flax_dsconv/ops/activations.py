"""Activations by name: configs hold names, so they stay JSON-serialisable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Activation = Literal["relu", "relu6", "hard_swish", "hard_sigmoid", "sigmoid", "silu", "gelu", "identity"]

# 1/6 as a float32 pair: XLA rewrites a division by a constant as a product with its rounded reciprocal, and
# float32(1/6) is 3e-8 (a quarter ulp) too large: every hard-swish and hard-sigmoid output came out biased the
# same way, and through LCNet-0.35's 26 activations the bias grew to 2.2x PyTorch's error (which divides).
# t * hi + t * lo is the correctly rounded t / 6 (checked on 1M float32 values).
_SIXTH_HI = float(np.float32(1 / 6))
_SIXTH_LO = float(np.float32(1 / 6 - _SIXTH_HI))


def _sixth(t: jax.Array) -> jax.Array:
    return t * _SIXTH_HI + t * _SIXTH_LO


# The activations are lax primitives rather than jax.nn's functions: each of those is a jitted custom_jvp, which
# costs about a millisecond per call to trace, and a MobileNet traces a few hundred of them on every init and
# compile. The gradients are jax.nn's and PyTorch's: 0 where the input is exactly at a kink (relu at 0, relu6 at
# 0 and 6; lax.clamp's), where lax.max would give 0.5. Bounds are scalars, not arrays of x's shape: an array built
# from a shape alone is a constant that flax_dsconv.nn.initializers.init would evaluate (and compile) eagerly.
def relu(x: jax.Array) -> jax.Array:
    return jax.lax.clamp(jnp.zeros((), x.dtype), x, jnp.full((), jnp.inf, x.dtype))


def relu6(x: jax.Array) -> jax.Array:
    return jax.lax.clamp(jnp.zeros((), x.dtype), x, jnp.full((), 6, x.dtype))


def sigmoid(x: jax.Array) -> jax.Array:
    return jax.lax.logistic(x)


def silu(x: jax.Array) -> jax.Array:
    return x * jax.lax.logistic(x)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``relu6(x + 3) / 6``, divided as PyTorch divides (correctly rounded, unbiased)."""
    return _sixth(relu6(x + 3.0))


def hard_swish(x: jax.Array) -> jax.Array:
    """``x · relu6(x + 3) / 6``, in PyTorch's order, divided as PyTorch divides (correctly rounded, unbiased)."""
    return _sixth(x * relu6(x + 3.0))


_SQRT_HALF = float(np.sqrt(0.5))


def gelu(x: jax.Array) -> jax.Array:
    """The exact GELU, ``x · Φ(x)`` through ``erf``: PyTorch's ``nn.GELU()`` default and timm's ``GELU``.
    ``jax.nn.gelu`` defaults to the tanh approximation, which differs by up to ~5e-4 (a parity trap); written in
    PyTorch's order, ``x · 0.5 · (1 + erf(x / √2))``, with lax's erf (see above on jax.nn)."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu,
    "relu6": relu6,
    "hard_swish": hard_swish,
    "hard_sigmoid": hard_sigmoid,
    "sigmoid": sigmoid,
    "silu": silu,
    "gelu": gelu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function registered under ``name``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
