"""Layers: depthwise and pointwise convs, a torch-faithful BatchNorm, and the depthwise separable block.

Everything is NHWC with Flax's kernel layout ``(kh, kw, in // groups, out)``, so the weights are plain
Flax params. Sub-module names (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``, ``se``) are the conversion keys:
they mirror timm's attribute names and never depend on Flax's automatic naming.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from flax_dsconv.padding import Axis as _Axis
from flax_dsconv.padding import PaddingLike, int_index, resolve_padding
from flax_dsconv.padding import output_size as _out_size

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "hard_swish": nn.hard_swish,
    "hard_sigmoid": nn.hard_sigmoid,
    "sigmoid": nn.sigmoid,
    "silu": nn.silu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function registered under ``name`` (names keep configs JSON-serialisable)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


# torchvision's MobileNet init: He-normal over fan-out for convs.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(v: int | Sequence[int], name: str = "value") -> tuple[int, int]:
    """``v`` as a pair of positive ints (kernel sizes, strides, dilations), or a ValueError naming ``name``."""
    try:
        t = (int_index(v),) * 2 if not isinstance(v, Sequence) else tuple(int_index(x) for x in v)
    except TypeError:
        t = ()
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t[0], t[1]


def _vary_like(x: Array, *arrays: Array) -> tuple[Array, ...]:
    """Under ``shard_map``, mark ``arrays`` (parameters) as varying over ``x``'s manual axes, as JAX's own ops do
    implicitly: a custom VJP's per-device gradients then type-check, and autodiff sums them over the devices.
    Elsewhere (and for arrays already varying) a no-op."""
    varying = jax.typeof(x).manual_axis_type.varying
    out = []
    for a in arrays:
        missing = tuple(varying - jax.typeof(a).manual_axis_type.varying)
        out.append(jax.lax.pcast(a, missing, to="varying") if missing else a)
    return tuple(out)


def check_nhwc(x: Array, channels: int | None, where: str) -> None:
    """Reject what would otherwise be silently wrong: non-4-D, non-float or mis-laid-out input."""
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


def _existing_kernel_shape(module: nn.Module) -> tuple[int, ...] | None:
    """Shape of the module's bound kernel, or None while initialising."""
    if not module.has_variable("params", "kernel"):
        return None
    return module.get_variable("params", "kernel").shape


def _where(module: nn.Module) -> str:
    path = module.scope.path if module.scope is not None else ()
    return f"{type(module).__name__} '{'/'.join(path)}'"


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """BatchNorm settings shared by every norm in a model.

    ``momentum`` uses Flax's convention (``ra = momentum * ra + (1 - momentum) * batch``): PyTorch's
    ``momentum=0.1`` is ``0.9`` here, torchvision MobileNetV3's ``0.01`` is ``0.99``.
    ``torch_running_var=True`` updates the running variance with the unbiased batch variance as
    PyTorch does; ``False`` keeps ``flax.linen.BatchNorm``'s biased update.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    torch_running_var: bool = True


def _stat_dtype(*arrays: Array) -> Any:
    """Statistics and their gradients: float32, or float64 when an input is (``jax_enable_x64``)."""
    return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def _add_tuples(a: tuple[Array, ...], b: tuple[Array, ...]) -> tuple[Array, ...]:
    # One function object for every reduce: un-jitted calls hit lax.reduce's compilation cache.
    return tuple(u + v for u, v in zip(a, b, strict=True))


def _channel_sums(*arrays: Array) -> tuple[Array, ...]:
    """Per-channel sums (in :func:`_stat_dtype`) over every axis but the last, of same-shape arrays, one pass.

    One variadic reduce over a single axis, then a small sum: XLA:CPU emits it as one fused loop, where
    separate ``jnp.sum`` calls would each materialise their (elementwise) input, transposed, for a library
    reduction. Summing one axis first also keeps the float32 error at the level of a pairwise sum.
    """
    dtype = _stat_dtype(*arrays)
    arrays = tuple(a.astype(dtype) for a in arrays)
    if arrays[0].ndim > 2:
        arrays = jax.lax.reduce(arrays, (jnp.zeros((), dtype),) * len(arrays), _add_tuples, (arrays[0].ndim - 2,))
    return tuple(jnp.sum(a, axis=tuple(range(a.ndim - 1))) for a in arrays)


def _count(x: Array, axis_name: str | None) -> int:
    """Values per channel in the (possibly cross-device) batch."""
    return math.prod(x.shape[:-1]) * (1 if axis_name is None else jax.lax.axis_size(axis_name))


def _global_mean(local_sum: Array, x: Array, axis_name: str | None) -> Array:
    total = local_sum if axis_name is None else jax.lax.psum(local_sum, axis_name)
    return total / _count(x, axis_name)


def _normalise(x: Array, mean: Array, rstd: Array, scale: Array, bias: Array) -> Array:
    dtype = _stat_dtype(x, mean, scale)
    return (x.astype(dtype) - mean) * (scale.astype(dtype) * rstd) + bias.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_train(
    x: Array, scale: Array, bias: Array, epsilon: float, axis_name: str | None, dtype: Any
) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm: ``(y, batch mean, biased batch variance)``, statistics in float32 (or float64)."""
    return _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, dtype):
    mean = _global_mean(*_channel_sums(x), x, axis_name)
    # Two-pass variance, as PyTorch computes it; E[x²] - E[x]² loses digits at 1e-5 parity.
    var = _global_mean(*_channel_sums(jnp.square(x.astype(mean.dtype) - mean)), x, axis_name)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = _normalise(x, mean, rstd, scale, bias)
    return (y.astype(dtype), mean, var), (x, scale, mean, rstd)


def _batch_norm_train_bwd(epsilon, axis_name, dtype, residuals, cotangents):
    # The textbook BatchNorm gradient, with both of its per-channel sums taken in one pass; autodiff's version
    # takes them separately and, on XLA:CPU, transposes each cotangent to channel-major first. The mean and
    # variance outputs (used for the running statistics) get their cotangents' terms as well.
    x, scale, mean, rstd = residuals
    dy, dmean, dvar = (c.astype(mean.dtype) for c in cotangents)
    centred = x.astype(mean.dtype) - mean
    xhat = centred * rstd
    dbias, dscale = _channel_sums(dy, dy * xhat)  # this device's sums: the parameters' gradients
    # dx sees the statistics of the whole (possibly cross-device) batch.
    dx = (scale.astype(mean.dtype) * rstd) * (
        dy - _global_mean(dbias, x, axis_name) - xhat * _global_mean(dscale, x, axis_name)
    )
    count = _count(x, axis_name)
    dx = dx + dmean / count + dvar * (2.0 / count) * centred
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's train-mode semantics available.

    Variables are named as in ``flax.linen.BatchNorm`` (params ``scale``/``bias``, batch_stats
    ``mean``/``var``). Normalisation uses the biased batch variance in both frameworks; PyTorch updates
    ``running_var`` with the unbiased one (``n / (n - 1)``), which ``torch_running_var`` reproduces.
    Statistics are computed in float32 whatever ``dtype`` is (float64 for float64 inputs under x64). Under
    ``jit`` with a batch sharded over devices, the means are global (synchronised BN); under
    ``shard_map``/``pmap`` name the axis and differentiate inside the mapped function (under ``vmap`` with an
    axis name, a ``jax.grad`` taken outside the ``vmap`` fails: JAX runs the custom backward unbound).

    >>> bn = BatchNorm(use_running_average=False)
    >>> y, updates = bn.apply(bn.init(key, x), x, mutable=["batch_stats"])
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    torch_running_var: bool = True
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

        if use_ra:
            y = _normalise(x, ra_mean.value, jax.lax.rsqrt(ra_var.value + self.epsilon), scale, bias)
            return y.astype(self.dtype or x.dtype)
        n = _count(x, self.axis_name)
        if n < 2:
            raise ValueError(
                f"BatchNorm in train mode needs more than 1 value per channel, got input shape "
                f"{tuple(x.shape)} (PyTorch raises here too)"
            )
        scale, bias = _vary_like(x, scale, bias)
        y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon, self.axis_name, jnp.dtype(self.dtype or x.dtype))
        if not self.is_initializing():  # the statistics keep their dtype (float32) whatever they were computed in
            update = var * (n / (n - 1)) if self.torch_running_var else var
            new_mean = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
            new_var = self.momentum * ra_var.value + (1.0 - self.momentum) * update
            ra_mean.value, ra_var.value = new_mean.astype(ra_mean.value.dtype), new_var.astype(ra_var.value.dtype)
        return y

    @classmethod
    def partial(cls, config: BatchNormConfig, **kwargs: Any) -> Callable[..., BatchNorm]:
        """A constructor with ``config`` and ``kwargs`` bound; call it with ``name=...`` per norm."""
        return functools.partial(cls, **dataclasses.asdict(config), **kwargs)


def _shifted_taps(x: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
    """``Σ_ij x[:, i·dh + s·h, j·dw + s·w, c] · kernel[i, j, 0, c]`` over an already padded ``x``, summed in at
    least float32 (bf16 taps summed in bf16 had 1.6-3x XLA's error at k = 3-7) and returned in the inputs' type."""
    kh, kw = kernel.shape[:2]
    out_h = _out_size(x.shape[1], (kh, strides[0], dilation[0], 0, 0))
    out_w = _out_size(x.shape[2], (kw, strides[1], dilation[1], 0, 0))
    dtype, acc = jnp.result_type(x, kernel), jnp.promote_types(jnp.result_type(x, kernel), jnp.float32)
    terms = (
        _tap(x, i * dilation[0], j * dilation[1], out_h, out_w, strides).astype(acc) * kernel[i, j, 0].astype(acc)
        for i in range(kh)
        for j in range(kw)
    )
    return functools.reduce(jnp.add, terms).astype(dtype)


def _tap(x: Array, row: int, col: int, out_h: int, out_w: int, strides: tuple[int, int]) -> Array:
    """The strided window of ``x`` that kernel tap ``(row, col)`` multiplies."""
    sh, sw = strides
    return x[:, row : row + (out_h - 1) * sh + 1 : sh, col : col + (out_w - 1) * sw + 1 : sw]


def _output_runs(size: int, axis: _Axis) -> list[tuple[int, int, bool]]:
    """The output positions along one axis as up to three ``(start, stop, inside)`` runs: the ``inside`` run's
    windows lie wholly within the input; the others reach into the zero padding."""
    k, s, d, lo, _ = axis
    out = _out_size(size, axis)
    first = min(max(-(-lo // s), 0), out)  # the first o with o·s - lo >= 0
    stop = min(max((size - 1 - (k - 1) * d + lo) // s + 1, first), out)  # past the last o whose window fits
    runs = ((0, first, False), (first, stop, True), (stop, out, False))
    return [run for run in runs if run[0] < run[1]]


def _window_slab(x: Array, dim: int, run: tuple[int, int, bool], axis: _Axis) -> Array:
    """The input positions that the outputs in ``run`` read along ``dim``, zero where they fall outside ``x``."""
    k, s, d, lo, _ = axis
    start, stop = run[0] * s - lo, (run[1] - 1) * s + (k - 1) * d - lo + 1
    a, b = max(start, 0), min(stop, x.shape[dim])
    if a >= b:
        return jnp.zeros((*x.shape[:dim], stop - start, *x.shape[dim + 1 :]), x.dtype)
    x = jax.lax.slice_in_dim(x, a, b, axis=dim)
    if (a, b) == (start, stop):
        return x
    pads = [(0, 0, 0)] * x.ndim
    pads[dim] = (a - start, stop - b, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), pads)


def _regions(x: Array, rows: _Axis, cols: _Axis) -> Iterator[tuple[slice, slice, Array]]:
    """The output plane piece by piece, as ``(output rows, output cols, input slab)``: the edge rows at full width,
    the inside rows split into edge columns and the interior, whose slab is a plain slice of ``x``.

    Only the edge pieces copy (and zero-pad) their few input rows or columns, so a padded depthwise conv reads
    its input once, where padding ``x`` first writes a full-size copy of it. Pieces come row band by row band,
    left to right.
    """
    col_runs, full_width = _output_runs(x.shape[2], cols), [(0, _out_size(x.shape[2], cols), False)]
    for row_run in _output_runs(x.shape[1], rows):
        slab = _window_slab(x, 1, row_run, rows)
        for col_run in col_runs if row_run[2] else full_width:
            yield slice(*row_run[:2]), slice(*col_run[:2]), _window_slab(slab, 2, col_run, cols)


def _concat(parts: list[Array], axis: int) -> Array:
    return jnp.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


def _correlate(x: Array, kernel: Array, rows: _Axis, cols: _Axis) -> Array:
    """Depthwise correlation of an unpadded ``x`` (zero padding implied by ``rows``/``cols``), summed region by
    region (see :func:`_regions`)."""
    strides, dilation = (rows[1], cols[1]), (rows[2], cols[2])
    bands = [
        _concat([_shifted_taps(slab, kernel, strides, dilation) for _, _, slab in band], axis=2)
        for _, band in itertools.groupby(_regions(x, rows, cols), key=lambda region: region[0])
    ]
    return _concat(bands, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: Array, kernel: Array, rows: _Axis, cols: _Axis) -> Array:
    return _correlate(x, kernel, rows, cols)


def _depthwise_fwd(x, kernel, rows, cols):
    return _correlate(x, kernel, rows, cols), (x, kernel)


def _cotangent_pads(size: int, out: int, axis: _Axis) -> tuple[int, int, int]:
    """``lax.pad`` config spreading ``out`` cotangent positions to stride 1 and padding them to ``size + (k-1)·d``.

    Negative amounts crop: outputs whose windows read only padding touch neither gradient.
    """
    k, s, d, lo, _ = axis
    before = (k - 1) * d - lo
    return before, size + (k - 1) * d - before - (out - 1) * s - 1, s - 1


def _kernel_grad(x: Array, g: Array, rows: _Axis, cols: _Axis) -> Array:
    """``dk[i, j, c] = Σ g[n, o, p, c] · x[n, o·sh + i·dh - top, p·sw + j·dw - left, c]``, region by region (see
    :func:`_regions`): per region, all k² products summed in one pass (see :func:`_channel_sums`)."""
    (kh, sh, dh, _, _), (kw, sw, dw, _, _) = rows, cols
    sums = []
    for out_rows, out_cols, slab in _regions(x, rows, cols):
        window = g[:, out_rows, out_cols]
        out_h, out_w = window.shape[1], window.shape[2]
        taps = (_tap(slab, i * dh, j * dw, out_h, out_w, (sh, sw)) for i in range(kh) for j in range(kw))
        sums.append(jnp.stack(_channel_sums(*(window * tap for tap in taps))))
    return functools.reduce(jnp.add, sums)


def _depthwise_bwd(rows, cols, residuals, g):
    # Autodiff would transpose each of the k² window reads into its own full-size padded copy of g. Instead g
    # is spread back to stride 1 and zero-padded once, so that window (k-1-i, k-1-j) of it lines up with x for
    # tap (i, j): the input gradient is a depthwise correlation of it with the flipped kernel. Inside a model
    # that pad is written by the pass that computes g, and the correlation fuses into the pass that reads dx.
    # The kernel gradient is all k² per-channel sums of x · window in one pass (see _channel_sums), in float32:
    # at stride 1 over the same padded g; at larger strides over g itself, region by region, since the spread
    # copy is s² times larger and mostly zeros (profiled MobileNetV2 train step on the CPU: 0.90-0.92 s of
    # kernels per step -> 0.79-0.84 s). Doing without the padded g for dx as well is a measured dead end (README).
    x, kernel = residuals
    (kh, sh, dh, _, _), (kw, sw, dw, _, _) = rows, cols
    height, width = x.shape[1:3]
    pads = (_cotangent_pads(height, g.shape[1], rows), _cotangent_pads(width, g.shape[2], cols))
    padded = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), *pads, (0, 0, 0)))
    dx = _shifted_taps(padded, kernel[::-1, ::-1], (1, 1), (dh, dw))
    if (sh, sw) == (1, 1):
        windows = (
            _tap(padded, (kh - 1 - i) * dh, (kw - 1 - j) * dw, height, width, (1, 1))
            for i in range(kh)
            for j in range(kw)
        )
        dk = jnp.stack(_channel_sums(*(x * window for window in windows)))
    else:
        dk = _kernel_grad(x, g, rows, cols)
    return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


# jit: called eagerly (an un-jitted ``init`` or ``apply``), the many small ops would each be compiled and
# dispatched on their own; as one function they compile once per shape. Under an outer jit this is inlined.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _depthwise_shifted(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: Any,
    dilation: tuple[int, int],
    multiplier: int,
) -> Array:
    """Depthwise conv as k² strided slices times per-channel weights, summed, with a hand-written VJP.

    Same result as the grouped ``conv_general_dilated``; on XLA:CPU it avoids the per-channel matrix products
    of a grouped convolution (and, under autodiff, the dense expansion of its weight gradient).
    """
    if multiplier > 1:  # output channel c*m + j reads input channel c
        x = jnp.repeat(x, multiplier, axis=-1)
    return _depthwise(x, kernel, *_axes(x, kernel, strides, padding, dilation))


def _explicit_pads(
    shape: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int], padding: Any, dilation: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(low, high)`` zero padding per spatial axis, for resolved ``padding`` (pairs, ``'SAME'``, ``'VALID'``)."""
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True))
        padding = jax.lax.padtype_to_pads(tuple(shape[1:3]), window, tuple(strides), padding)
    (top, bottom), (left, right) = padding
    return (int(top), int(bottom)), (int(left), int(right))


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


DEPTHWISE_IMPLEMENTATIONS = ("auto", "xla", "shifted", "pallas")


class DepthwiseConv(nn.Module):
    """Depthwise 2-D convolution: one ``kernel_size`` filter per input channel (times ``depth_multiplier``).

    Kernel shape ``(kh, kw, 1, C * depth_multiplier)``, ``feature_group_count = C``; output channel
    ``c * m + j`` comes from input channel ``c``, as in PyTorch's ``groups=C`` conv. Padding defaults to
    PyTorch's symmetric rule; ``'SAME'`` is TF's (see :mod:`flax_dsconv.padding`).

    ``implementation``: ``'xla'`` is XLA's grouped convolution (the reference, fast on GPU/TPU);
    ``'shifted'`` sums k² strided slices times per-channel weights (fast on CPU); ``'pallas'`` runs the
    Triton kernels of :mod:`flax_dsconv.pallas_depthwise` on a GPU (depth multiplier 1; other multipliers use
    ``'xla'``; ``precision`` applies to ``'xla'`` only); ``'auto'`` picks ``'shifted'`` on the CPU backend
    and ``'xla'`` elsewhere. Parameters are identical for all of them.
    ``'shifted'`` and ``'pallas'`` have hand-written VJPs: reverse-mode autodiff only (no ``jax.jvp``).

    >>> y, _ = DepthwiseConv(kernel_size=3, strides=2).init_with_output(key, jnp.ones((1, 64, 64, 32)))
    >>> y.shape
    (1, 32, 32, 32)
    """

    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "torch"
    dilation: int | Sequence[int] = 1
    depth_multiplier: int = 1
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = nn.initializers.zeros
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        bound = _existing_kernel_shape(self)
        check_nhwc(x, None if bound is None else bound[-1] // self.depth_multiplier, _where(self))
        channels = x.shape[-1]
        kernel_size, dilation = _pair(self.kernel_size, "kernel_size"), _pair(self.dilation, "dilation")
        multiplier = self.depth_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"depth_multiplier must be a positive int, got {self.depth_multiplier!r}")
        features = channels * self.depth_multiplier
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, 1, features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides, padding = _pair(self.strides, "strides"), resolve_padding(self.padding, kernel_size, dilation)
        (kernel,) = _vary_like(x, kernel)
        _check_window_fits(x, kernel, strides, padding, dilation, _where(self))
        implementation = resolve_depthwise(self.implementation)
        if implementation == "pallas" and (
            self.depth_multiplier > 1 or not _pallas_fits(x, kernel, strides, padding, dilation)
        ):
            implementation = "xla"
        if implementation == "shifted":
            y = _depthwise_shifted(x, kernel, strides, padding, dilation, self.depth_multiplier)
        elif implementation == "pallas":
            y = _depthwise_pallas(x, kernel, strides, padding, dilation)
        else:
            x, padding = _pad_beyond_reach(x, kernel, strides, padding, dilation)
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=strides,
                padding=padding,
                rhs_dilation=dilation,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=channels,
                precision=self.precision,
            )
        return y if bias is None else y + bias


def resolve_depthwise(implementation: str) -> str:
    """``'xla'``, ``'shifted'`` or ``'pallas'``: what a DepthwiseConv ``implementation`` means on the current
    default backend."""
    if implementation not in DEPTHWISE_IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {DEPTHWISE_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return "shifted" if _on_cpu() else "xla"
    if implementation == "pallas" and jax.default_backend() != "gpu":
        raise ValueError(
            f"implementation 'pallas' runs Triton kernels on a GPU; the default backend is "
            f"{jax.default_backend()!r} (use 'auto')"
        )
    return implementation


def _axes(x: Array, kernel: Array, strides, padding, dilation) -> tuple[_Axis, _Axis]:
    """The conv's window per spatial axis, padding made explicit."""
    (kh, kw), (sh, sw), (dh, dw) = kernel.shape[:2], strides, dilation
    (top, bottom), (left, right) = _explicit_pads(x.shape, (kh, kw), strides, padding, dilation)
    return (kh, sh, dh, top, bottom), (kw, sw, dw, left, right)


def _past_reach(pads: Sequence[tuple[int, int]], kernel_size: Sequence[int], dilation: Sequence[int]) -> list:
    """Per spatial axis, how far explicit ``(low, high)`` padding reaches past the kernel's reach ``(k - 1)·d``.

    XLA:CPU computes the input gradient of a conv padded that far (a conv with negative padding) from memory
    outside the cotangent (openxla/xla#48713: NaN or 1e30 gradients at up to 16 channels).
    """
    reach = [(k - 1) * d for k, d in zip(kernel_size, dilation, strict=True)]
    return [(max(lo - r, 0), max(hi - r, 0)) for (lo, hi), r in zip(pads, reach, strict=True)]


def _pad_beyond_reach(x: Array, kernel: Array, strides, padding, dilation) -> tuple[Array, Any]:
    """``(x, padding)`` for ``conv_general_dilated``, with padding past the kernel's reach (see :func:`_past_reach`)
    applied to ``x`` first (one copy; only explicit pairs can do that)."""
    pads = _explicit_pads(x.shape, kernel.shape[:2], strides, padding, dilation)
    beyond = _past_reach(pads, kernel.shape[:2], dilation)
    if not any(lo or hi for lo, hi in beyond):
        return x, padding
    within = tuple((lo - extra_lo, hi - extra_hi) for (lo, hi), (extra_lo, extra_hi) in zip(pads, beyond, strict=True))
    return jnp.pad(x, ((0, 0), *beyond, (0, 0))), within


def _check_window_fits(x: Array, kernel: Array, strides, padding, dilation, where: str) -> None:
    """Raise where the padded input is smaller than the kernel's (dilated) window: there is no output pixel.

    PyTorch raises here too; XLA's conv would return an empty array.
    """
    axes = _axes(x, kernel, strides, padding, dilation)
    if all(_out_size(size, axis) >= 1 for size, axis in zip(x.shape[1:3], axes, strict=True)):
        return
    padded = "x".join(str(size + lo + hi) for size, (_, _, _, lo, hi) in zip(x.shape[1:3], axes, strict=True))
    window = "x".join(str((k - 1) * d + 1) for k, _, d, _, _ in axes)
    raise ValueError(
        f"{where}: input {x.shape[1]}x{x.shape[2]} (padded: {padded}) is smaller than the kernel's {window} window, "
        f"so there is no output; got shape {tuple(x.shape)}"
    )


def _pallas_fits(x: Array, kernel: Array, strides, padding, dilation) -> bool:
    """Whether the Pallas kernels serve this conv (else DepthwiseConv uses ``'xla'``): a float32/bf16/fp16 input
    (they accumulate in float32) and ``pallas_depthwise.fits``."""
    from flax_dsconv import pallas_depthwise

    return pallas_depthwise.fits(x.shape, *_axes(x, kernel, strides, padding, dilation), x.dtype)


def _depthwise_pallas(x: Array, kernel: Array, strides, padding, dilation) -> Array:
    from flax_dsconv import pallas_depthwise

    return pallas_depthwise.depthwise(x, kernel, *_axes(x, kernel, strides, padding, dilation))


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
    lets XLA fuse the BatchNorm and activation into every tap, which ran MobileNetV2 inference 24% faster on
    CPU but took 70% longer to compile (and the test suite 7 minutes longer).
    """
    if resolve_depthwise(implementation) != "shifted":
        return x, padding
    kernel_size, dilation = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    resolved = resolve_padding(padding, kernel_size, dilation)
    pads = _explicit_pads(x.shape, kernel_size, _pair(strides, "strides"), resolved, dilation)
    if pads == ((0, 0), (0, 0)):
        return x, padding
    return jnp.pad(x, ((0, 0), *pads, (0, 0))), 0


def _contract_channels(x: Array, kernel: Array, precision: Any) -> Array:
    """``x @ kernel`` over the channel axis: a 1x1 convolution."""
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


# The same contraction with a hand-written VJP (used on CPU, see _pointwise_bwd).
_pointwise = jax.custom_vjp(_contract_channels, nondiff_argnums=(2,))


def _pointwise_fwd(x, kernel, precision):
    return _contract_channels(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, g):
    # Autodiff's kernel gradient contracts a transposed cotangent, which XLA:CPU materialises channel-major
    # first (a full-size transpose per layer: 0.19 s of MobileNetV2's CPU train step for one 112² layer);
    # here both operands are contracted over their leading (pixel) axis as they lie in memory.
    x, kernel = residuals
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dk = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), precision=precision)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class PointwiseConv(nn.Module):
    """1x1 convolution as a channel contraction (``dot_general``), kernel ``(1, 1, in, out)``.

    ``strides`` subsamples and an integer ``padding`` zero-pads first, exactly as
    ``nn.Conv2d(kernel_size=1, stride=s, padding=p)`` does (the seed's ``DSConv`` uses ``padding=1``).

    >>> PointwiseConv(128).init_with_output(key, jnp.ones((1, 64, 64, 32)))[0].shape
    (1, 64, 64, 128)
    """

    features: int
    strides: int | Sequence[int] = 1
    padding: PaddingLike = 0
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        bound = _existing_kernel_shape(self)
        check_nhwc(x, None if bound is None else bound[-2], _where(self))
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        pads = resolve_padding(self.padding, (1, 1), (1, 1))
        if not isinstance(pads, str) and any(p for pair in pads for p in pair):
            x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        sh, sw = _pair(self.strides, "strides")
        if (sh, sw) != (1, 1):
            x = x[:, ::sh, ::sw, :]
        (kernel,) = _vary_like(x, kernel)
        y = (_pointwise if _on_cpu() else _contract_channels)(x, kernel[0, 0], self.precision)
        return y if bias is None else y + bias


def full_conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    padding: PaddingLike = "torch",
    dilation: int = 1,
    *,
    use_bias: bool = False,
    dtype: Dtype | None = None,
    name: str | None = None,
) -> nn.Conv:
    """A dense k x k ``nn.Conv`` (kernel ``(k, k, in, out)``) with this package's padding modes.

    Padding past the kernel's reach ``(k - 1)·d`` raises: XLA:CPU computes the input gradient of such a conv
    from memory outside its buffer (see :func:`_past_reach`). Pad the input with ``jnp.pad`` instead.
    """
    kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    resolved = resolve_padding(padding, kernel, dil)
    if not isinstance(resolved, str) and any(lo or hi for lo, hi in _past_reach(resolved, kernel, dil)):
        reach = tuple((k - 1) * d for k, d in zip(kernel, dil, strict=True))
        raise ValueError(
            f"full_conv: padding {padding!r} reaches past the {kernel[0]}x{kernel[1]} kernel's "
            f"{reach} pixels; XLA:CPU gets the input gradient of such a conv wrong "
            "(openxla/xla#48713): pad the input with jnp.pad first"
        )
    return nn.Conv(
        features,
        kernel,
        strides=_pair(strides, "strides"),
        padding=resolved,
        kernel_dilation=dil,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=conv_kernel_init,
        name=name,
    )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global mean → 1x1 reduce → act → 1x1 expand → gate, times the input.

    Names follow timm (``conv_reduce``, ``conv_expand``); both 1x1 convs carry a bias, as in torchvision
    (``fc1``/``fc2``) and timm. MobileNetV3 gates with ``hard_sigmoid``.
    """

    reduced_channels: int
    act: str = "relu"
    gate: str = "hard_sigmoid"
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        expand = self.variables.get("params", {}).get("conv_expand", {}).get("kernel")
        check_nhwc(x, None if expand is None else expand.shape[-1], _where(self))
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = PointwiseConv(self.reduced_channels, use_bias=True, dtype=self.dtype, name="conv_reduce")(s)
        s = activation(self.act)(s)
        s = PointwiseConv(x.shape[-1], use_bias=True, dtype=self.dtype, name="conv_expand")(s)
        return x * activation(self.gate)(s)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise separable convolution (MobileNet, Howard et al. 2017, Fig. 3).

    ``conv_dw`` (k x k depthwise, stride) → ``bn1`` → act → [``se``] → ``conv_pw`` (1x1) → ``bn2`` →
    [act]. Defaults follow the paper: the stride is applied once, by the depthwise conv, and the
    pointwise conv has no padding. The seed notebook's ``DSConv`` instead pads the 1x1 conv by 1 and
    strides it again (64x64 in, 66x66 out); :func:`seed_dsconv` builds that variant exactly.

    ``pw_act=False`` and ``se_channels``/``skip`` give the MobileNetV2/V3 first-stage block.

    >>> block = DepthwiseSeparableConv(features=128)
    >>> variables = block.init(key, jnp.ones((1, 64, 64, 32)))
    >>> block.apply(variables, x, train=False).shape
    (1, 64, 64, 128)
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    pw_act: bool = True
    se_channels: int = 0
    se_act: str = "relu"
    se_gate: str = "hard_sigmoid"
    skip: bool = False
    use_bias: bool = False
    pointwise_strides: int = 1
    pointwise_padding: PaddingLike = 0
    norm: BatchNormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Dtype | None = None
    depthwise: str = "auto"  # DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        norm = BatchNorm.partial(self.norm, use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype)
        act = activation(self.act)
        shortcut = x
        # Checked here, not only by conv_dw: its input may be padded below, which would garble the message.
        kernel = self.variables.get("params", {}).get("conv_dw", {}).get("kernel")
        check_nhwc(x, None if kernel is None else kernel.shape[-1], _where(self))
        x, padding = pad_for_depthwise(x, self.kernel_size, self.strides, self.padding, self.dilation, self.depthwise)
        x = DepthwiseConv(
            self.kernel_size,
            self.strides,
            padding,
            self.dilation,
            use_bias=self.use_bias,
            dtype=self.dtype,
            implementation=self.depthwise,
            name="conv_dw",
        )(x)
        x = act(norm(name="bn1")(x))
        if self.se_channels:
            x = SqueezeExcite(self.se_channels, self.se_act, self.se_gate, self.dtype, name="se")(x)
        x = PointwiseConv(
            self.features,
            self.pointwise_strides,
            self.pointwise_padding,
            use_bias=self.use_bias,
            dtype=self.dtype,
            name="conv_pw",
        )(x)
        x = norm(name="bn2")(x)
        if self.pw_act:
            x = act(x)
        return add_residual(x, shortcut, self.skip)


def add_residual(x: Array, shortcut: Array, skip: bool) -> Array:
    if not skip:
        return x
    if x.shape != shortcut.shape:
        raise ValueError(f"residual needs equal shapes, got block output {x.shape} and input {shortcut.shape}")
    return x + shortcut


def separable_in_channels(variables: Any) -> int | None:
    """A DepthwiseSeparableConv's input channels, read off its variables' 4-D ``params/conv_dw/kernel`` (depth
    multiplier 1), or None when there is no such kernel."""
    kernel = variables.get("params", {}).get("conv_dw", {}).get("kernel")
    return None if kernel is None or jnp.ndim(kernel) != 4 else int(jnp.shape(kernel)[-1])


def seed_dsconv(out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> DepthwiseSeparableConv:
    """The seed notebook's ``DSConv(in, out, kernel_size, stride, padding)``, reproduced exactly.

    Both convs carry a bias (``nn.Conv2d``'s default), the pointwise conv is padded by 1 and strided
    again, BatchNorm uses PyTorch defaults and ReLU follows both convs. A 64x64 input gives 66x66.
    Prefer :class:`DepthwiseSeparableConv`'s defaults for new models.

    >>> seed_dsconv(128).init_with_output(key, jnp.ones((1, 64, 64, 32)))[0].shape
    (1, 66, 66, 128)
    """
    return DepthwiseSeparableConv(
        features=out_channels,
        kernel_size=kernel_size,
        strides=stride,
        padding=padding,
        use_bias=True,
        pointwise_strides=stride,
        pointwise_padding=1,
    )
