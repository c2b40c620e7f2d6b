"""Depthwise convolution as Pallas (Triton) kernels for NVIDIA GPUs: forward, input gradient, kernel gradient.

XLA:GPU runs a depthwise conv as a cuDNN grouped convolution, which it autotunes while compiling. These kernels
need no autotuning, so a model compiles much faster with them (docs/performance.md). They accumulate in float32;
the k² taps of a tile re-read the input from the cache, not from memory.

One gather-correlate kernel serves both the forward pass and the input gradient:

    out[n, oh, ow, c] = Σ_ij  in[n, (oh·A + Bh_i) / D, (ow·A + Bw_j) / D, c] · w[i, j, c]

where a tap counts only if its numerator is ≥ 0, divisible by ``D`` and lands inside ``in``. The forward pass
is ``A = s, B_i = i·d - lo, D = 1``; the input gradient is the same sum with ``A = 1, B_i = lo - i·d, D = s``
over the cotangent, so no spread or padded copy of the cotangent is made. A third kernel sums ``x · g`` per
tap and channel (the kernel gradient) into a small array of partial sums that XLA adds up.

Two tilings:

- Unit stride (``in = out + b``, every stride-1 layer and its input gradient): a program takes a few image rows
  and a run of the flattened ``(width, channels)`` row. Each tap's load is then one contiguous, aligned run
  shifted by ``b·C`` elements, masked at the row ends by bounds that are multiples of ``C``.
- Other strides: ``(rows, columns, channels)`` blocks with the channels innermost, so each pixel's channels are
  one contiguous run.

Their speed against cuDNN and PyTorch is in docs/performance.md (``benchmarks/gpu_pallas.py`` measures it).
Only depth multiplier 1 is supported (MobileNets use no other): :func:`flax_dsconv.ops.depthwise.depthwise` runs
XLA's conv for the rest, and ignores its ``precision`` here (the kernels multiply in float32).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from flax_dsconv.ops.padding import Axis
from flax_dsconv.ops.padding import output_size as _out_size

try:  # Triton-specific loads and stores with masks; absent from some jaxlib builds
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover - depends on the installed jaxlib
    plgpu = None  # type: ignore[assignment]

Array = jax.Array
_INT32_LIMIT = 2**31 - 1


class Geometry(NamedTuple):
    """One spatial axis of a gather-correlate: tap ``i`` of output position ``o`` reads input position
    ``(o·a + b[i]) / den``, and counts only where that is a whole number inside the input."""

    a: int
    b: tuple[int, ...]
    den: int


class BlockTiles(NamedTuple):
    """Channel-block tiling (any geometry): each program computes ``rows x cols`` output pixels times ``chans``
    channels (powers of two, as Triton's tensors must be; the edges are masked) with ``warps`` warps. The kernel
    gradient sums one column block of one image per program, ``rows`` output rows at a time."""

    rows: int
    cols: int
    chans: int
    warps: int = 4


class RowTiles(NamedTuple):
    """Flattened-row tiling of a unit-stride correlation: each program computes ``rows`` output rows times
    ``width`` consecutive elements of the flattened ``(width, channels)`` row, with ``warps`` warps."""

    rows: int
    width: int
    warps: int = 4


class RowGradTiles(NamedTuple):
    """Flattened-row tiling of a unit-stride kernel gradient: each program sums ``width`` consecutive elements
    of the flattened row over every row of ``images`` images, with ``warps`` warps."""

    width: int
    images: int = 2
    warps: int = 4


_ELEMENTS = 4096  # output elements per program of the correlations
_GRAD_REGISTERS = 9 * 1024  # float32 partial sums (taps x width) a kernel-gradient program keeps live


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _floor_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def channel_block(channels: int, cap: int = 64) -> int:
    """Channels per block: ``cap``, or the next power of two if ``channels`` is smaller; the last block is masked.

    Wide blocks, partly masked, ran faster than exact ones on an H100 (docs/performance.md)."""
    return min(cap, _next_pow2(channels))


def default_block_tiles(out_h: int, out_w: int, channels: int) -> BlockTiles:
    chans = channel_block(channels)
    cols = min(_next_pow2(out_w), 8)
    return BlockTiles(min(_next_pow2(out_h), max(1, _ELEMENTS // (cols * chans))), cols, chans)


def default_row_tiles(out_h: int, out_row: int) -> RowTiles:
    width = min(_next_pow2(out_row), 1024)
    return RowTiles(min(_next_pow2(out_h), max(1, _ELEMENTS // width)), width)


def default_row_grad_tiles(out_row: int, taps: int) -> RowGradTiles:
    # One float32 sum per tap and element: 1,024 elements for a 3x3 kernel, 256 for 5x5.
    return RowGradTiles(min(_next_pow2(out_row), 1024, _floor_pow2(_GRAD_REGISTERS // taps)))


# What the kernels take: they load, multiply and sum in float32 (float64 would silently lose precision).
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def fits(x_shape: tuple[int, ...], row_spec: Axis, col_spec: Axis, dtype: Any = jnp.float32) -> bool:
    """Whether this jaxlib has Pallas' Triton backend, ``dtype`` is one of :data:`DTYPES`, the batch is not empty,
    and 32-bit element offsets address every buffer the three kernels touch (input, output, tiled weights,
    partial sums) for this conv."""
    batch, height, width, channels = x_shape
    out_h, out_w = _out_size(height, row_spec), _out_size(width, col_spec)
    taps = row_spec[0] * col_spec[0]
    sizes = (
        batch * height * width * channels,
        batch * out_h * out_w * channels,
        taps * max(width, out_w) * channels,  # weights tiled along a row
        batch * taps * max(width, out_w) * channels,  # kernel-gradient partial sums (at most one set per image)
    )
    return plgpu is not None and jnp.dtype(dtype) in DTYPES and batch > 0 and max(sizes) <= _INT32_LIMIT


def _pallas(kernel, out_shape, grid, warps: int, stages: int, interpret: bool, name: str):
    params = None if interpret else plgpu.CompilerParams(num_warps=warps, num_stages=stages)
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid, compiler_params=params, interpret=interpret, name=name
    )


def _is_unit(geom: Geometry) -> bool:
    return geom.a == 1 and geom.den == 1


def _divmod(a: Array, b: int) -> tuple[Array, Array]:
    """``a // b`` and ``a % b`` for non-negative int ``a``, as ``lax.div``/``lax.rem`` (what Triton lowers; ``//``
    and ``%`` add a sign fix-up it does not) with ``b`` in ``a``'s dtype (a Python int is int64 under x64)."""
    divisor = jnp.asarray(b, a.dtype)
    return jax.lax.div(a, divisor), jax.lax.rem(a, divisor)


def _taps(index: Array, size: int, bound: int, geom: Geometry, tap: int) -> tuple[Array, Array]:
    """``(input index, valid)`` along one axis for output positions ``index`` (``size`` of them) and one tap."""
    num = index * geom.a + geom.b[tap]
    valid = (num >= 0) & (index < size)
    if geom.den > 1:
        num = jnp.maximum(num, 0)
        num, remainder = _divmod(num, geom.den)
        valid &= remainder == 0
    return num, valid & (num < bound)


def _column_masks(q: Array, in_w: int, out_w: int, channels: int, shifts: tuple[int, ...]) -> list[Array]:
    """Per column shift: which flattened output positions ``q = ow·C + c`` read ``iw = ow + shift`` inside
    ``[0, in_w)`` (and lie inside the output row). Bounds are multiples of ``C``, so the masks stay constant
    over aligned runs of a pixel's channels and Triton keeps the loads vectorised."""
    return [(q >= max(0, -shift) * channels) & (q < min(in_w - shift, out_w) * channels) for shift in shifts]


def _block_correlate_kernel(x_ref, w_ref, o_ref, *, in_hw, out_hw, channels, row_geom, col_geom, tiles, row_blocks):
    bh, bw, bc = tiles.rows, tiles.cols, tiles.chans
    (height, width), (out_h, out_w) = in_hw, out_hw
    n, row_block = _divmod(pl.program_id(0), row_blocks)
    oh = row_block * bh + jnp.arange(bh, dtype=jnp.int32)
    ow = pl.program_id(1) * bw + jnp.arange(bw, dtype=jnp.int32)
    chan = pl.program_id(2) * bc + jnp.arange(bc, dtype=jnp.int32)
    chan_ok = chan < channels
    kw = len(col_geom.b)
    acc = jnp.zeros((bh, bw, bc), jnp.float32)
    for i in range(len(row_geom.b)):
        h, h_ok = _taps(oh, out_h, height, row_geom, i)
        row_off = (n * height + h) * (width * channels)
        for j in range(kw):
            w, w_ok = _taps(ow, out_w, width, col_geom, j)
            off = row_off[:, None, None] + (w * channels)[None, :, None] + chan[None, None, :]
            mask = h_ok[:, None, None] & w_ok[None, :, None] & chan_ok[None, None, :]
            v = plgpu.load(x_ref.at[off], mask=mask, other=0)
            k = plgpu.load(w_ref.at[(i * kw + j) * channels + chan], mask=chan_ok, other=0)
            acc += v.astype(jnp.float32) * k.astype(jnp.float32)[None, None, :]
    out_off = ((n * out_h + oh) * (out_w * channels))[:, None, None] + (ow * channels)[None, :, None] + chan
    out_mask = (oh < out_h)[:, None, None] & (ow < out_w)[None, :, None] & chan_ok[None, None, :]
    plgpu.store(o_ref.at[out_off], acc.astype(o_ref.dtype), mask=out_mask)


def _row_correlate_kernel(x_ref, w_ref, o_ref, *, in_hw, out_hw, channels, row_geom, col_geom, tiles, row_blocks):
    (height, width), (out_h, out_w) = in_hw, out_hw
    in_row, out_row = width * channels, out_w * channels
    n, row_block = _divmod(pl.program_id(0), row_blocks)
    oh = row_block * tiles.rows + jnp.arange(tiles.rows, dtype=jnp.int32)
    q = pl.program_id(1) * tiles.width + jnp.arange(tiles.width, dtype=jnp.int32)
    q_ok = q < out_row
    col_ok = _column_masks(q, width, out_w, channels, col_geom.b)
    kw = len(col_geom.b)
    acc = jnp.zeros((tiles.rows, tiles.width), jnp.float32)
    for i, b in enumerate(row_geom.b):
        h = oh + b
        h_ok = (h >= 0) & (h < height) & (oh < out_h)
        row_off = (n * height + h) * in_row
        for j, shift in enumerate(col_geom.b):
            k = plgpu.load(w_ref.at[(i * kw + j) * out_row + q], mask=q_ok, other=0)
            off = row_off[:, None] + (q + shift * channels)[None, :]
            v = plgpu.load(x_ref.at[off], mask=h_ok[:, None] & col_ok[j][None, :], other=0)
            acc += v.astype(jnp.float32) * k.astype(jnp.float32)[None, :]
    out_off = ((n * out_h + oh) * out_row)[:, None] + q[None, :]
    plgpu.store(o_ref.at[out_off], acc.astype(o_ref.dtype), mask=(oh < out_h)[:, None] & q_ok[None, :])


def gather_correlate(
    x: Array,
    taps: Array,
    out_hw: tuple[int, int],
    row_geom: Geometry,
    col_geom: Geometry,
    tiles: BlockTiles | RowTiles | None = None,
    interpret: bool = False,
) -> Array:
    """``out[n, oh, ow, c] = Σ_ij x[n, row_i(oh), col_j(ow), c] · taps[i·kw + j, c]`` (see the module doc).

    Unit-stride geometries (``in = out + b``) default to flattened image rows (:class:`RowTiles`), where each
    tap's load is one contiguous run; any geometry runs on channel blocks (:class:`BlockTiles`).
    """
    batch, height, width, channels = x.shape
    out_h, out_w = out_hw
    unit = _is_unit(row_geom) and _is_unit(col_geom)
    if tiles is not None and not isinstance(tiles, RowTiles | BlockTiles):
        raise TypeError(f"tiles must be RowTiles or BlockTiles, got {type(tiles).__name__}")
    if isinstance(tiles, RowTiles) and not unit:
        raise ValueError(f"RowTiles need unit-stride geometries, got {row_geom} and {col_geom}; use BlockTiles")
    common = dict(in_hw=(height, width), out_hw=out_hw, channels=channels, row_geom=row_geom, col_geom=col_geom)
    grid: tuple[int, ...]
    if unit and not isinstance(tiles, BlockTiles):
        tiles = tiles or default_row_tiles(out_h, out_w * channels)
        row_blocks = pl.cdiv(out_h, tiles.rows)
        kernel = functools.partial(_row_correlate_kernel, tiles=tiles, row_blocks=row_blocks, **common)
        grid = (batch * row_blocks, pl.cdiv(out_w * channels, tiles.width))
        weights = jnp.tile(taps, (1, out_w))  # repeated along the row: each program loads contiguous vectors
        name = "depthwise_correlate_rows"
    else:
        tiles = tiles if isinstance(tiles, BlockTiles) else default_block_tiles(out_h, out_w, channels)
        row_blocks = pl.cdiv(out_h, tiles.rows)
        kernel = functools.partial(_block_correlate_kernel, tiles=tiles, row_blocks=row_blocks, **common)
        grid = (batch * row_blocks, pl.cdiv(out_w, tiles.cols), pl.cdiv(channels, tiles.chans))
        weights, name = taps, "depthwise_correlate_blocks"
    out_shape = jax.ShapeDtypeStruct((batch * out_h * out_w * channels,), x.dtype)
    out = _pallas(kernel, out_shape, grid, tiles.warps, 1, interpret, name)(x.reshape(-1), weights.reshape(-1))
    return out.reshape(batch, out_h, out_w, channels)


def _block_kernel_grad_kernel(x_ref, g_ref, o_ref, *, in_hw, out_hw, channels, row_geom, col_geom, tiles):
    bh, bw, bc = tiles.rows, tiles.cols, tiles.chans
    (height, width), (out_h, out_w) = in_hw, out_hw
    n = pl.program_id(0)
    ow = pl.program_id(1) * bw + jnp.arange(bw, dtype=jnp.int32)
    chan = pl.program_id(2) * bc + jnp.arange(bc, dtype=jnp.int32)
    chan_ok = chan < channels
    kh, kw = len(row_geom.b), len(col_geom.b)
    col_taps = [_taps(ow, out_w, width, col_geom, j) for j in range(kw)]

    def row_block(r, sums):
        oh = r * bh + jnp.arange(bh, dtype=jnp.int32)
        g_off = ((n * out_h + oh) * (out_w * channels))[:, None, None] + (ow * channels)[None, :, None] + chan
        g_mask = (oh < out_h)[:, None, None] & (ow < out_w)[None, :, None] & chan_ok[None, None, :]
        g = plgpu.load(g_ref.at[g_off], mask=g_mask, other=0).astype(jnp.float32)
        sums = list(sums)
        for i in range(kh):
            h, h_ok = _taps(oh, out_h, height, row_geom, i)
            row_off = (n * height + h) * (width * channels)
            for j, (w, w_ok) in enumerate(col_taps):
                off = row_off[:, None, None] + (w * channels)[None, :, None] + chan[None, None, :]
                mask = h_ok[:, None, None] & w_ok[None, :, None] & chan_ok[None, None, :]
                v = plgpu.load(x_ref.at[off], mask=mask, other=0).astype(jnp.float32)
                sums[i * kw + j] += jnp.sum(v * g, axis=0)
        return tuple(sums)

    init = tuple(jnp.zeros((bw, bc), jnp.float32) for _ in range(kh * kw))
    sums = jax.lax.fori_loop(0, pl.cdiv(out_h, bh), row_block, init)
    for t, s in enumerate(sums):
        off = ((n * pl.num_programs(1) + pl.program_id(1)) * (kh * kw) + t) * channels + chan
        plgpu.store(o_ref.at[off], jnp.sum(s, axis=0), mask=chan_ok)


def _row_kernel_grad_kernel(x_ref, g_ref, o_ref, *, batch, in_hw, out_hw, channels, row_geom, col_geom, tiles):
    (height, width), (out_h, out_w) = in_hw, out_hw
    in_row, out_row = width * channels, out_w * channels
    kw = len(col_geom.b)
    n0 = pl.program_id(0) * tiles.images
    q = pl.program_id(1) * tiles.width + jnp.arange(tiles.width, dtype=jnp.int32)
    q_ok = q < out_row
    col_ok = _column_masks(q, width, out_w, channels, col_geom.b)

    def one_row(r, sums):
        image, oh = _divmod(r, out_h)
        n = n0 + image
        n_ok = n < batch
        g = plgpu.load(g_ref.at[(n * out_h + oh) * out_row + q], mask=q_ok & n_ok, other=0).astype(jnp.float32)
        sums = list(sums)
        for i, b in enumerate(row_geom.b):
            h = oh + b
            h_ok = (h >= 0) & (h < height) & n_ok
            row_off = (n * height + h) * in_row
            for j, shift in enumerate(col_geom.b):
                v = plgpu.load(x_ref.at[row_off + q + shift * channels], mask=col_ok[j] & h_ok, other=0)
                sums[i * kw + j] += v.astype(jnp.float32) * g
        return tuple(sums)

    init = tuple(jnp.zeros((tiles.width,), jnp.float32) for _ in range(len(row_geom.b) * kw))
    sums = jax.lax.fori_loop(0, tiles.images * out_h, one_row, init)
    for t, s in enumerate(sums):
        plgpu.store(o_ref.at[(pl.program_id(0) * len(sums) + t) * out_row + q], s, mask=q_ok)


def kernel_grad(
    x: Array,
    g: Array,
    row_geom: Geometry,
    col_geom: Geometry,
    tiles: BlockTiles | RowGradTiles | None = None,
    interpret: bool = False,
) -> Array:
    """``dk[i·kw + j, c] = Σ_{n,oh,ow} x[n, row_i(oh), col_j(ow), c] · g[n, oh, ow, c]`` in float32, for the
    forward geometry ``row_geom``/``col_geom``. Unit stride defaults to :class:`RowGradTiles`."""
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = g.shape
    taps = len(row_geom.b) * len(col_geom.b)
    unit = _is_unit(row_geom) and _is_unit(col_geom)
    if tiles is not None and not isinstance(tiles, RowGradTiles | BlockTiles):
        raise TypeError(f"tiles must be RowGradTiles or BlockTiles, got {type(tiles).__name__}")
    if isinstance(tiles, RowGradTiles) and not unit:
        raise ValueError(f"RowGradTiles need unit-stride geometries, got {row_geom} and {col_geom}; use BlockTiles")
    common = dict(in_hw=(height, width), out_hw=(out_h, out_w), channels=channels, row_geom=row_geom, col_geom=col_geom)
    grid: tuple[int, ...]
    if unit and not isinstance(tiles, BlockTiles):
        tiles = tiles or default_row_grad_tiles(out_w * channels, taps)
        groups = pl.cdiv(batch, tiles.images)
        kernel = functools.partial(_row_kernel_grad_kernel, batch=batch, tiles=tiles, **common)
        grid, stages = (groups, pl.cdiv(out_w * channels, tiles.width)), 2
        partial_shape, name = (groups, taps, out_w, channels), "depthwise_kernel_grad_rows"
    else:
        if not isinstance(tiles, BlockTiles):
            tiles = BlockTiles(rows=1, cols=min(_next_pow2(out_w), 16), chans=channel_block(channels))
        col_blocks = pl.cdiv(out_w, tiles.cols)
        kernel = functools.partial(_block_kernel_grad_kernel, tiles=tiles, **common)
        grid, stages = (batch, col_blocks, pl.cdiv(channels, tiles.chans)), 1
        partial_shape, name = (batch * col_blocks, taps, 1, channels), "depthwise_kernel_grad_blocks"
    out_shape = jax.ShapeDtypeStruct((math.prod(partial_shape),), jnp.float32)
    partial_sums = _pallas(kernel, out_shape, grid, tiles.warps, stages, interpret, name)(x.reshape(-1), g.reshape(-1))
    return partial_sums.reshape(partial_shape).sum(axis=(0, 2))


def forward_geometry(spec: Axis) -> Geometry:
    k, stride, dilation, lo, _ = spec
    return Geometry(a=stride, b=tuple(i * dilation - lo for i in range(k)), den=1)


def input_grad_geometry(spec: Axis) -> Geometry:
    k, stride, dilation, lo, _ = spec
    return Geometry(a=1, b=tuple(lo - i * dilation for i in range(k)), den=stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise(x: Array, kernel: Array, row_spec: Axis, col_spec: Axis, interpret: bool = False) -> Array:
    """Depthwise conv of NHWC ``x`` with a ``(kh, kw, 1, C)`` kernel, zero padding and strides as in the per-axis
    specs ``(kernel size, stride, dilation, pad_lo, pad_hi)``: Pallas forward and VJP. ``interpret`` runs
    Pallas' interpreter (any backend; for tests)."""
    return _forward(x, kernel, row_spec, col_spec, interpret)


def _forward(x, kernel, row_spec, col_spec, interpret):
    expected = (row_spec[0], col_spec[0], 1, x.shape[-1])
    if x.ndim != 4 or kernel.shape != expected:  # the kernels index the weights by x's channel count
        raise ValueError(f"depthwise: NHWC x and a {expected} kernel for these specs; got x {x.shape}, "
                         f"kernel {kernel.shape}")  # fmt: skip
    if x.dtype not in DTYPES:
        raise ValueError(f"depthwise: the kernels accumulate in float32; x must be one of {DTYPES}, got {x.dtype}")
    out_hw = (_out_size(x.shape[1], row_spec), _out_size(x.shape[2], col_spec))
    taps = kernel.reshape(-1, kernel.shape[-1])
    row_geom, col_geom = forward_geometry(row_spec), forward_geometry(col_spec)
    return gather_correlate(x, taps, out_hw, row_geom, col_geom, interpret=interpret)


def _depthwise_fwd(x, kernel, row_spec, col_spec, interpret):
    return _forward(x, kernel, row_spec, col_spec, interpret), (x, kernel)


def _depthwise_bwd(row_spec, col_spec, interpret, residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    taps = kernel.reshape(-1, kernel.shape[-1])
    row_geom, col_geom = input_grad_geometry(row_spec), input_grad_geometry(col_spec)
    dx = gather_correlate(g, taps, x.shape[1:3], row_geom, col_geom, interpret=interpret)
    dk = kernel_grad(x, g, forward_geometry(row_spec), forward_geometry(col_spec), interpret=interpret)
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)
