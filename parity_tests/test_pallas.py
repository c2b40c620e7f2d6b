"""The Pallas depthwise kernels: forward, input gradient and kernel gradient equal XLA's grouped conv (fp32).

These run Pallas' interpreter on the CPU, which executes the kernels' own index arithmetic and masks; the GPU
(Triton) build of the same kernels is checked by ``benchmarks/gpu_pallas.py`` on a GPU, and here its lowering
to Triton IR, which needs no GPU.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_dsconv import DepthwiseConv
from flax_dsconv.ops import depthwise as depthwise_ops
from flax_dsconv.ops import pallas as pdw
from flax_dsconv.ops.depthwise import pallas_serves
from flax_dsconv.ops.padding import window_axes


def xla_depthwise(x, kernel, strides, padding, dilation):
    # Padded here, not by the conv: XLA:CPU's gradient of a conv padded past its kernel's reach reads memory
    # outside the cotangent at up to 16 channels (openxla/xla#48713).
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        "VALID",
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        precision="highest",
    )


def specs(kernel, strides, dilation, padding):
    """Per-axis ``(k, stride, dilation, lo, hi)``, as ``pallas_depthwise.depthwise`` takes them."""
    return tuple((k, s, d, lo, hi) for k, s, d, (lo, hi) in zip(kernel, strides, dilation, padding, strict=True))


def draw(shape, kernel, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((*kernel, 1, shape[-1]), np.float32))
    return rng, x, w


# (N, H, W, C), kernel, strides, dilation, explicit padding. Stride 1 on both axes runs the flattened-row
# kernels (C=20: a row tile ends inside a pixel; N=3: the kernel gradient's last two-image group is half
# empty); any other stride runs the channel-block kernels (C=24, 40, 72: the last channel block is masked).
# The input gradient of a strided conv divides by the stride (with dilation 2 in one case). ((5, 0), (0, 6))
# pads past the kernel's reach; one case has a different kernel and stride per axis.
CASES = [
    ((2, 9, 11, 16), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
    ((3, 8, 9, 20), (3, 3), (1, 1), (1, 1), ((0, 2), (2, 0))),
    ((1, 8, 8, 20), (3, 3), (1, 1), (2, 2), ((2, 2), (2, 2))),
    ((1, 8, 9, 16), (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ((1, 6, 6, 8), (3, 3), (1, 1), (1, 1), ((5, 0), (0, 6))),
    ((2, 9, 11, 40), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))),
    ((1, 11, 10, 24), (3, 3), (2, 2), (2, 2), ((2, 2), (2, 1))),
    ((1, 10, 7, 24), (5, 5), (2, 2), (1, 1), ((2, 2), (2, 2))),
    ((1, 9, 12, 8), (3, 5), (1, 2), (1, 1), ((1, 1), (2, 2))),
    ((1, 7, 9, 8), (3, 3), (2, 2), (1, 1), ((0, 1), (1, 0))),
    ((1, 9, 9, 72), (3, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("shape,kernel,strides,dilation,padding", CASES)
def test_pallas_kernels_equal_xla_forward_and_both_gradients(shape, kernel, strides, dilation, padding):
    rng, x, w = draw(shape, kernel)
    row_spec, col_spec = specs(kernel, strides, dilation, padding)

    @jax.jit
    def both(x, w, g):
        y_ref, vjp_ref = jax.vjp(lambda x, w: xla_depthwise(x, w, strides, padding, dilation), x, w)
        y, vjp = jax.vjp(lambda x, w: pdw.depthwise(x, w, row_spec, col_spec, True), x, w)
        return (y, *vjp(g)), (y_ref, *vjp_ref(g))

    out_shape = jax.eval_shape(lambda x, w: xla_depthwise(x, w, strides, padding, dilation), x, w).shape
    g = jnp.asarray(rng.standard_normal(out_shape, np.float32))
    (y, dx, dw), (y_ref, dx_ref, dw_ref) = both(x, w, g)
    assert y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == w.shape
    chex.assert_trees_all_close((y, dx), (y_ref, dx_ref), atol=1e-5, rtol=0)
    # Kernel gradients sum over every output pixel (values up to ~40): bound them relatively as well.
    chex.assert_trees_all_close(dw, dw_ref, atol=1e-5, rtol=1e-5)


def test_explicit_tiles_spanning_many_programs_give_the_same_sums():
    # Small tiles put the program-index arithmetic to work: several row blocks and row runs per image (runs of
    # 32 elements end inside 20-channel pixels), several images per kernel-gradient program with the last group
    # short, and the channel-block kernels on a unit-stride geometry with a masked channel block.
    shape, kernel, padding = (3, 7, 9, 20), (3, 3), ((1, 1), (1, 1))
    rng, x, w = draw(shape, kernel, seed=1)
    row_spec, col_spec = specs(kernel, (1, 1), (1, 1), padding)
    rows, cols = pdw.forward_geometry(row_spec), pdw.forward_geometry(col_spec)
    taps = w.reshape(9, shape[-1])
    y_ref, vjp_ref = jax.vjp(lambda w: xla_depthwise(x, w, (1, 1), padding, (1, 1)), w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
    dw_ref = vjp_ref(g)[0].reshape(9, shape[-1])
    for tiles in (pdw.RowTiles(rows=2, width=32), pdw.BlockTiles(rows=2, cols=4, chans=16)):
        y = jax.jit(lambda x, t, tiles=tiles: pdw.gather_correlate(x, t, (7, 9), rows, cols, tiles, True))(x, taps)
        np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0, err_msg=str(tiles))
    for tiles in (pdw.RowGradTiles(width=32, images=2), pdw.BlockTiles(rows=2, cols=4, chans=16)):
        dw = jax.jit(lambda x, g, tiles=tiles: pdw.kernel_grad(x, g, rows, cols, tiles, True))(x, g)
        np.testing.assert_allclose(dw, dw_ref, atol=1e-5, rtol=1e-5, err_msg=str(tiles))
    with pytest.raises(ValueError, match="RowTiles need unit-stride geometries"):
        strided = pdw.forward_geometry((3, 2, 1, 1, 1))
        pdw.gather_correlate(x, taps, (4, 5), strided, strided, pdw.RowTiles(2, 32), True)
    # Tiles of the other kernel's kind are refused, not swapped for the defaults.
    with pytest.raises(TypeError, match="tiles must be RowTiles or BlockTiles, got RowGradTiles"):
        pdw.gather_correlate(x, taps, (7, 9), rows, cols, pdw.RowGradTiles(32), True)
    with pytest.raises(TypeError, match="tiles must be RowGradTiles or BlockTiles, got RowTiles"):
        pdw.kernel_grad(x, g, rows, cols, pdw.RowTiles(2, 32), True)


@pytest.mark.parametrize(
    "kernel,strides,padding,multiplier",
    [(3, 1, "torch", 1), (3, 2, "SAME", 1), ((3, 5), (2, 1), "VALID", 1), (3, 2, "torch", 2)],
)
def test_depthwise_conv_pallas_path_equals_xla(monkeypatch, kernel, strides, padding, multiplier):
    # The layer's own route to the kernels (padding resolution, per-axis specs, the multiplier fallback), run
    # through the interpreter: on a CPU backend 'pallas' is refused, so both hooks are stood in for here.
    original = pdw.depthwise
    monkeypatch.setattr(pdw, "depthwise", lambda x, w, rows, cols: original(x, w, rows, cols, True))
    monkeypatch.setattr(depthwise_ops, "resolve_depthwise", lambda implementation: implementation)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 9, 10, 8), np.float32))
    convs = {
        impl: DepthwiseConv(kernel, strides, padding, depth_multiplier=multiplier, use_bias=True, implementation=impl)
        for impl in ("xla", "pallas")
    }
    variables = convs["xla"].init(jax.random.key(0), x)

    def loss(variables, x, impl):
        y = convs[impl].apply(variables, x)
        return jnp.sum(y * jnp.cos(y)), y

    grads = {impl: jax.jit(jax.grad(loss, (0, 1), has_aux=True), static_argnums=2)(variables, x, impl)
             for impl in convs}  # fmt: skip
    chex.assert_trees_all_close(grads["pallas"], grads["xla"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_pallas_kernels_lower_to_triton(stride):
    # Lowering for CUDA runs Pallas' Triton code generation on this machine: an op or index the Triton backend
    # does not support fails here, without a GPU.
    x = jax.ShapeDtypeStruct((8, 28, 28, 144), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 3, 1, 144), jnp.bfloat16)
    spec = (3, stride, 1, 1, 1)

    def forward_and_vjp(x, w):
        y, vjp = jax.vjp(lambda x, w: pdw.depthwise(x, w, spec, spec), x, w)
        return y, vjp(y)

    text = jax.jit(forward_and_vjp).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3  # forward, input gradient, kernel gradient


@pytest.mark.parametrize("stride", [1, 2])
def test_pallas_kernels_trace_and_lower_under_x64(stride):
    # Their int32 index arithmetic must not meet int64 constants when jax_enable_x64 is on.
    x, w = jax.random.normal(jax.random.key(0), (1, 6, 7, 3)), jax.random.normal(jax.random.key(1), (3, 3, 1, 3))
    spec = (3, stride, 1, 1, 1)
    expected = jax.value_and_grad(lambda x, w: xla_depthwise(x, w, (stride,) * 2, ((1, 1),) * 2, (1, 1)).sum(), (0, 1))
    with jax.enable_x64(True):
        got = jax.value_and_grad(lambda x, w: pdw.depthwise(x, w, spec, spec, True).sum(), (0, 1))(x, w)

        def forward_and_vjp(x, w):
            y, vjp = jax.vjp(lambda x, w: pdw.depthwise(x, w, spec, spec), x, w)
            return y, vjp(y)

        text = jax.jit(forward_and_vjp).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == 3
    chex.assert_trees_all_close(got, expected(x, w), atol=1e-5, rtol=1e-5)


def test_pallas_refuses_what_its_kernels_cannot_compute_exactly():
    spec = (3, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"a \(3, 3, 1, 4\) kernel for these specs; got x \(1, 5, 5, 4\)"):
        pdw.depthwise(jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 1, 8)), spec, spec, True)
    with jax.enable_x64(True):
        x64 = jnp.ones((1, 5, 5, 4), jnp.float64)
        with pytest.raises(ValueError, match="accumulate in float32"):
            pdw.depthwise(x64, jnp.ones((3, 3, 1, 4), jnp.float64), spec, spec, True)
        assert not pallas_serves(x64, _axes_3x3(x64), 1)
    # DepthwiseConv falls back to 'xla' for float64, for an empty batch and for a depth multiplier
    assert pallas_serves(jnp.ones((1, 5, 5, 4)), _axes_3x3(jnp.ones((1, 5, 5, 4))), 1)
    assert not pallas_serves(jnp.ones((0, 5, 5, 4)), _axes_3x3(jnp.ones((0, 5, 5, 4))), 1)
    assert not pallas_serves(jnp.ones((1, 5, 5, 4)), _axes_3x3(jnp.ones((1, 5, 5, 4))), 2)


def _axes_3x3(x):
    return window_axes(x.shape, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1))


def test_pallas_implementation_needs_a_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("this checks the error off a GPU")
    with pytest.raises(ValueError, match="'pallas' runs Triton kernels on a GPU; the default backend is 'cpu'"):
        DepthwiseConv(implementation="pallas").init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))


def test_default_tiles_are_powers_of_two_within_the_register_budget():
    for out_h, out_w, channels in [(112, 112, 32), (56, 56, 144), (7, 7, 960), (28, 28, 20), (1, 1, 3)]:
        blocks = pdw.default_block_tiles(out_h, out_w, channels)
        rows = pdw.default_row_tiles(out_h, out_w * channels)
        for size in (*blocks[:3], *rows[:2]):
            assert size >= 1 and size & (size - 1) == 0
        assert blocks.chans == min(64, 1 << (channels - 1).bit_length())
        assert blocks.rows * blocks.cols * blocks.chans <= 4096 and rows.rows * rows.width <= 4096
    # Kernel-gradient sums: one float32 per tap and element, 9 x 1,024 at most.
    assert [pdw.default_row_grad_tiles(8064, k * k).width for k in (3, 5, 7)] == [1024, 256, 128]
    assert pdw.default_row_grad_tiles(100, 9).width == 128
