"""What every layer checks on its input, and the residual add with its stochastic depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flax_dsconv.ops.drop_path import drop_path as drop_path_op


def check_nhwc(x: jax.Array, channels: int | None, where: str) -> None:
    """Reject what would otherwise be silently wrong: a torch tensor or list, non-4-D, non-float or mis-laid-out
    input."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        kind = f"{type(x).__module__}.{type(x).__qualname__}"
        hint = (
            " (a torch tensor: x.numpy(), then NCHW -> NHWC with .transpose(0, 2, 3, 1))"
            if kind.startswith("torch.")
            else ""
        )
        raise TypeError(f"{where}: expected a jax or numpy array, got {kind}; convert to a jax or numpy array{hint}")
    if x.ndim != 4:
        raise ValueError(
            f"{where}: expected a 4-D NHWC input (batch, height, width, channels), got shape {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{where}: expected a floating-point input, got dtype {x.dtype}; "
            "convert images first, e.g. x.astype(jnp.float32) / 255"
        )
    if channels is not None and x.shape[-1] != channels:
        hint = " — NCHW?" if x.shape[1] == channels else ""
        raise ValueError(
            f"{where}: expected NHWC input with {channels} channels in the last axis, got shape {tuple(x.shape)}{hint}"
        )


def bound_kernel_shape(module: nn.Module, path: tuple[str, ...] = ()) -> tuple[int, ...] | None:
    """Shape of the ``kernel`` param of ``module`` (or of its submodule at ``path``), or None while initialising."""
    tree = module.variables.get("params", {})
    for name in path:
        tree = tree.get(name, {})
    kernel = tree.get("kernel")
    return None if kernel is None else tuple(kernel.shape)


def where(module: nn.Module) -> str:
    """``"Type 'path/in/the/model'"``, for error messages."""
    path = module.scope.path if module.scope is not None else ()
    return f"{type(module).__name__} '{'/'.join(path)}'"


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: in training (``deterministic=False``) each example's branch is
    dropped with probability ``rate`` (the rng stream ``'dropout'``), the kept ones scaled by ``1 / (1 - rate)``;
    the identity otherwise (timm's ``DropPath``, torchvision's ``StochasticDepth(mode='row')``).

    >>> y = DropPath(0.1).apply({}, x, deterministic=False, rngs={"dropout": key})
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return drop_path_op(x, self.rate, self.make_rng("dropout"))


def add_residual(
    x: jax.Array, shortcut: jax.Array, skip: bool, drop_path: float = 0.0, train: bool = False
) -> jax.Array:
    """``x + shortcut`` when ``skip`` (else ``x``), the branch ``x`` first through :class:`DropPath` at rate
    ``drop_path`` (acting only when ``train``); call it inside a block's compact ``__call__``."""
    if not skip:
        return x
    if x.shape != shortcut.shape:
        raise ValueError(f"residual needs equal shapes, got block output {x.shape} and input {shortcut.shape}")
    if drop_path:
        x = DropPath(drop_path, name="drop_path")(x, deterministic=not train)
    return x + shortcut
