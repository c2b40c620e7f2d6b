"""Parameter initializers whose cost does not grow with the number of parameter shapes.

``jax.nn.initializers`` draws each parameter with ``jax.random.normal(key, shape)``: outside ``jit`` that is one
XLA compilation per distinct shape (a MobileNetV2 has about fifty), and inside ``jit`` one threefry circuit per
parameter in the program. Here every random parameter is assembled from fixed-size blocks, block ``j`` drawn
with ``fold_in(key, j)``: eagerly one compiled sampler serves every shape and the blocks are put together on the
host; under a trace (``jax.jit(model.init)``, ``eval_shape``) the blocks are one ``vmap``-ed draw. Both give the
same values. The distributions are those of ``jax.nn.initializers.variance_scaling`` / ``normal`` / ``zeros`` /
``ones`` / ``constant`` (the schemes of torchvision and timm: He-normal over fan-out for convs, ``normal(0.01)``
for the classifier, BatchNorm ones and zeros); the draws differ from theirs for the same key.

>>> kernel = he_normal_fan_out()(jax.random.key(0), (3, 3, 1, 32))
>>> kernel.shape, bool(jnp.all(jnp.isfinite(kernel)))
((3, 3, 1, 32), True)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Shape = Sequence[int]
Initializer = Callable[..., Array]

# The size of one draw: large enough that a classifier takes tens of blocks, small enough that a bias's one block
# is cheap (the unused tail of the last block is thrown away).
BLOCK = 1 << 14


def _blocks(block: Callable[[Array, Array], Array], key: Array, size: int) -> Any:
    """The first ``size`` values of ``block(key, 0), block(key, 1), ...`` (flat)."""
    count = max(1, -(-size // BLOCK))
    if isinstance(key, jax.core.Tracer):
        drawn = jax.vmap(block, in_axes=(None, 0))(key, jnp.arange(count, dtype=jnp.uint32))
        # The barrier keeps XLA from folding the caller's scale into the sampler's own constants, which would
        # round differently from the eager path's product.
        return jax.lax.optimization_barrier(drawn).reshape(-1)[:size]
    # Eagerly: one compiled block for every block of every shape, joined on the host (no per-shape compile).
    blocks = [block(key, np.uint32(j)) for j in range(count)]  # type: ignore[arg-type]
    return np.concatenate(jax.device_get(blocks))[:size]


class _Capture:
    """While :func:`init` traces a module: initial values computed on the host, each standing behind the traced
    placeholder that the module's forward pass sees instead (so no operation on a parameter runs eagerly)."""

    def __init__(self, token: Array) -> None:
        self.token = token
        self.values: dict[int, tuple[Array, Array]] = {}

    def stand_in(self, value: Array) -> Array:
        placeholder = jnp.broadcast_to(self.token, value.shape).astype(value.dtype)
        self.values[id(placeholder)] = (placeholder, value)  # the placeholder is kept so that its id stays unique
        return placeholder

    def concrete(self, leaf: Any) -> Any:
        held = self.values.get(id(leaf))
        return leaf if held is None or held[0] is not leaf else held[1]


_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("_capture", default=None)


def _finish(value: Array) -> Array:
    capture = _capture.get()
    return value if capture is None else capture.stand_in(value)


def init(module: Any, rngs: Any, *args: Any, **kwargs: Any) -> Any:
    """``module.init(rngs, *args, **kwargs)`` with the same result, without running the forward pass eagerly.

    Flax's ``init`` runs the forward pass op by op outside ``jit``, one XLA compilation per operation and shape
    (seconds for a MobileNet). Here the forward pass is traced abstractly (``jax.eval_shape``) while the
    random keys and this module's initializers are evaluated concretely (``jax.ensure_compile_time_eval``); the
    pass sees traced placeholders for the initial values, so none of its operations is compiled. Where a
    variable depends on the input (an initializer from elsewhere, statistics from data), or the call is itself
    traced, it is Flax's ``init``.
    """
    from flax import linen as nn

    plain = functools.partial(nn.Module.init, module, rngs, *args, **kwargs)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((rngs, args, kwargs))):
        return plain()
    # Arrays among the arguments are traced; everything else (train=..., method=, mutable=) stays as given.
    leaves, treedef = jax.tree.flatten((args, kwargs))
    traced = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
    found: dict[str, Any] = {}

    def trace(token: Array, *arrays: Any) -> None:
        given = iter(arrays)
        rebuilt = [next(given) if t else leaf for leaf, t in zip(leaves, traced, strict=True)]
        inputs, options = jax.tree.unflatten(treedef, rebuilt)
        capture = _Capture(token)
        with jax.ensure_compile_time_eval(), _active(capture):
            variables = nn.Module.init(module, rngs, *inputs, **options)
        found["variables"] = jax.tree.map(capture.concrete, variables)

    jax.eval_shape(trace, jnp.zeros((), jnp.float32), *(leaf for leaf, t in zip(leaves, traced, strict=True) if t))
    variables = found["variables"]
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(variables)):
        return plain()
    return variables


@contextlib.contextmanager
def _active(capture: _Capture) -> Iterator[None]:
    reset = _capture.set(capture)
    try:
        yield
    finally:
        _capture.reset(reset)


def _scaled(block: Callable[[Array, Array], Array], key: Array, shape: Shape, dtype: Any,
            stddev: float) -> Array:  # fmt: skip
    shape = tuple(int(d) for d in shape)
    flat = _blocks(block, key, math.prod(shape))
    if isinstance(flat, np.ndarray):
        return _finish(jax.device_put((flat * np.float32(stddev)).reshape(shape).astype(dtype)))
    return (flat * jnp.float32(stddev)).reshape(shape).astype(dtype)


@jax.jit
def _standard_normal(key: Array, j: Array) -> Array:
    return jax.random.normal(jax.random.fold_in(key, j), (BLOCK,), jnp.float32)


@jax.jit
def _truncated_normal(key: Array, j: Array) -> Array:
    return jax.random.truncated_normal(jax.random.fold_in(key, j), -2.0, 2.0, (BLOCK,), jnp.float32)


# The standard deviation of N(0, 1) truncated to (-2, 2), which variance_scaling('truncated_normal') divides by.
_TRUNCATED_STD = 0.87962566103423978


def normal(stddev: float = 1e-2) -> Initializer:
    """``N(0, stddev²)`` (``jax.nn.initializers.normal``'s distribution)."""

    def init(key: Array, shape: Shape, dtype: Any = jnp.float32) -> Array:
        return _scaled(_standard_normal, key, shape, dtype, stddev)

    return init


def variance_scaling(scale: float, mode: str, distribution: str, in_axis: int = -2, out_axis: int = -1,
                     batch_axis: Sequence[int] = ()) -> Initializer:  # fmt: skip
    """``jax.nn.initializers.variance_scaling``'s distribution: variance ``scale / fan`` (``fan_in``,
    ``fan_out`` or ``fan_avg``), ``'normal'`` or ``'truncated_normal'``; the receptive field is every axis but
    ``in_axis``, ``out_axis`` and ``batch_axis``."""
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
    draws = {"normal": _standard_normal, "truncated_normal": _truncated_normal}
    if distribution not in draws:
        raise ValueError(f"variance_scaling: distribution must be one of {sorted(draws)}, got {distribution!r}")

    def init(key: Array, shape: Shape, dtype: Any = jnp.float32) -> Array:
        dims = tuple(shape)
        batch = math.prod(dims[a] for a in batch_axis)
        receptive = math.prod(dims) // (dims[in_axis] * dims[out_axis] * batch)
        fan_in, fan_out = dims[in_axis] * receptive, dims[out_axis] * receptive
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        stddev = math.sqrt(scale / fan) / (_TRUNCATED_STD if distribution == "truncated_normal" else 1.0)
        return _scaled(draws[distribution], key, shape, dtype, stddev)

    return init


def he_normal_fan_out(in_axis: int = -2, out_axis: int = -1, batch_axis: Sequence[int] = ()) -> Initializer:
    """He-normal over fan-out, ``N(0, 2 / (k·k·out))``: torchvision's and timm's conv init
    (``kaiming_normal_(mode='fan_out')``)."""
    return variance_scaling(2.0, "fan_out", "normal", in_axis, out_axis, batch_axis)


def lecun_normal() -> Initializer:
    """Truncated normal with variance ``1 / fan_in`` (Flax's default for ``nn.Dense``)."""
    return variance_scaling(1.0, "fan_in", "truncated_normal")


def full(shape: Shape, value: float, dtype: Any = jnp.float32, *, traced: bool = False) -> Array:
    """An array of ``value`` built on the host (no compilation per shape), or by ``jnp.full`` when ``traced``;
    the filler of variables without a key (BatchNorm's running statistics)."""
    shape = tuple(int(d) for d in shape)
    if traced:
        return jnp.full(shape, value, dtype)
    return _finish(jax.device_put(np.full(shape, value, dtype=dtype)))


def constant(value: float) -> Initializer:
    """Every entry ``value`` (``jax.nn.initializers.constant``)."""

    def init(key: Array, shape: Shape, dtype: Any = jnp.float32) -> Array:
        return full(shape, value, dtype, traced=isinstance(key, jax.core.Tracer))

    return init


zeros = constant(0.0)
ones = constant(1.0)
