"""The ``'shifted'`` depthwise convolution: k² strided slices times per-channel weights, summed, with its VJP.

Same result as XLA's grouped ``conv_general_dilated``; on XLA:CPU it avoids the per-channel matrix products of a
grouped convolution (and, under autodiff, the dense expansion of its weight gradient). Unpadded input is summed
region by region (the edges, where windows reach into the zero padding, apart from the interior), so that the
input is read once and never copied whole.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from flax_dsconv.ops.batch_norm import channel_sums
from flax_dsconv.ops.padding import Axis, window_axes
from flax_dsconv.ops.padding import output_size as _out_size

Array = jax.Array


def _shifted_taps(x: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
    """``Σ_ij x[:, i·dh + s·h, j·dw + s·w, c] · kernel[i, j, 0, c]`` over an already padded ``x``, summed in at
    least float32 (bf16 taps summed in bf16 lose accuracy against XLA's conv) and returned in the inputs' type."""
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


def _output_runs(size: int, axis: Axis) -> list[tuple[int, int, bool]]:
    """The output positions along one axis as up to three ``(start, stop, inside)`` runs: the ``inside`` run's
    windows lie wholly within the input; the others reach into the zero padding."""
    k, s, d, lo, _ = axis
    out = _out_size(size, axis)
    first = min(max(-(-lo // s), 0), out)  # the first o with o·s - lo >= 0
    stop = min(max((size - 1 - (k - 1) * d + lo) // s + 1, first), out)  # past the last o whose window fits
    runs = ((0, first, False), (first, stop, True), (stop, out, False))
    return [run for run in runs if run[0] < run[1]]


def _window_slab(x: Array, dim: int, run: tuple[int, int, bool], axis: Axis) -> Array:
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


def _regions(x: Array, rows: Axis, cols: Axis) -> Iterator[tuple[slice, slice, Array]]:
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


def _correlate(x: Array, kernel: Array, rows: Axis, cols: Axis) -> Array:
    """Depthwise correlation of an unpadded ``x`` (zero padding implied by ``rows``/``cols``), summed region by
    region (see :func:`_regions`)."""
    strides, dilation = (rows[1], cols[1]), (rows[2], cols[2])
    bands = [
        _concat([_shifted_taps(slab, kernel, strides, dilation) for _, _, slab in band], axis=2)
        for _, band in itertools.groupby(_regions(x, rows, cols), key=lambda region: region[0])
    ]
    return _concat(bands, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: Array, kernel: Array, rows: Axis, cols: Axis) -> Array:
    return _correlate(x, kernel, rows, cols)


def _depthwise_fwd(x, kernel, rows, cols):
    return _correlate(x, kernel, rows, cols), (x, kernel)


def _cotangent_pads(size: int, out: int, axis: Axis) -> tuple[int, int, int]:
    """``lax.pad`` config spreading ``out`` cotangent positions to stride 1 and padding them to ``size + (k-1)·d``.

    Negative amounts crop: outputs whose windows read only padding touch neither gradient.
    """
    k, s, d, lo, _ = axis
    before = (k - 1) * d - lo
    return before, size + (k - 1) * d - before - (out - 1) * s - 1, s - 1


def _kernel_grad(x: Array, g: Array, rows: Axis, cols: Axis) -> Array:
    """``dk[i, j, c] = Σ g[n, o, p, c] · x[n, o·sh + i·dh - top, p·sw + j·dw - left, c]``, region by region (see
    :func:`_regions`): per region, all k² products summed in one pass (see
    :func:`~flax_dsconv.ops.batch_norm.channel_sums`)."""
    (kh, sh, dh, _, _), (kw, sw, dw, _, _) = rows, cols
    sums = []
    for out_rows, out_cols, slab in _regions(x, rows, cols):
        window = g[:, out_rows, out_cols]
        out_h, out_w = window.shape[1], window.shape[2]
        taps = (_tap(slab, i * dh, j * dw, out_h, out_w, (sh, sw)) for i in range(kh) for j in range(kw))
        sums.append(jnp.stack(channel_sums(*(window * tap for tap in taps))))
    return functools.reduce(jnp.add, sums)


def _depthwise_bwd(rows, cols, residuals, g):
    # Autodiff would transpose each of the k² window reads into its own full-size padded copy of g. Instead g
    # is spread back to stride 1 and zero-padded once, so that window (k-1-i, k-1-j) of it lines up with x for
    # tap (i, j): the input gradient is a depthwise correlation of it with the flipped kernel. Inside a model
    # that pad is written by the pass that computes g, and the correlation fuses into the pass that reads dx.
    # The kernel gradient is all k² per-channel sums of x · window in one pass (see channel_sums), in float32:
    # at stride 1 over the same padded g; at larger strides over g itself, region by region, since the spread
    # copy is s² times larger and mostly zeros. Doing without the padded g for dx as well is a measured dead end
    # (docs/performance.md).
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
        dk = jnp.stack(channel_sums(*(x * window for window in windows)))
    else:
        dk = _kernel_grad(x, g, rows, cols)
    return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


# jit: called eagerly (an un-jitted ``init`` or ``apply``), the many small ops would each be compiled and
# dispatched on their own; as one function they compile once per shape. Under an outer jit this is inlined.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def depthwise_shifted(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: Any,
    dilation: tuple[int, int],
    multiplier: int,
) -> Array:
    """Depthwise conv of NHWC ``x`` with ``kernel`` ``(kh, kw, 1, C·multiplier)`` and resolved ``padding``; output
    channel ``c·multiplier + j`` reads input channel ``c``. Reverse-mode differentiable only (a custom VJP)."""
    if multiplier > 1:  # output channel c*m + j reads input channel c
        x = jnp.repeat(x, multiplier, axis=-1)
    return _depthwise(x, kernel, *window_axes(x.shape, kernel.shape[:2], strides, padding, dilation))

