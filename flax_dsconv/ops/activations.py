"""Activations by name: configs hold names, so they stay JSON-serialisable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
from flax import linen as nn

Activation = Literal["relu", "relu6", "hard_swish", "hard_sigmoid", "sigmoid", "silu", "identity"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "hard_swish": nn.hard_swish,
    "hard_sigmoid": nn.hard_sigmoid,
    "sigmoid": nn.sigmoid,
    "silu": nn.silu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function registered under ``name``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
