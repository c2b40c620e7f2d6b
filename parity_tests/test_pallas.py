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
from flax_dsconv import pallas_depthwise as pdw


def xla_depthwise(x, kernel, stride, padding, dilation):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        precision="highest",
    )


def geometry(kernel, stride, dilation, padding):
    (top, bottom), (left, right) = padding
    return (kernel, stride, dilation, top, bottom), (kernel, stride, dilation, left, right)


# (N, H, W, C), kernel, stride, dilation, explicit padding. Unit stride runs the flattened-row kernels, the
# others the channel-block kernels; C=20 and C=40 leave part of a channel block masked, N=3 leaves half of
# the kernel gradient's last two-image group empty, ((5, 0), (0, 6)) pads past the kernel's reach.
CASES = [
    ((2, 9, 11, 16), 3, 1, 1, ((1, 1), (1, 1))),
    ((3, 8, 9, 40), 3, 1, 1, ((0, 2), (2, 0))),
    ((1, 8, 8, 20), 3, 1, 2, ((2, 2), (2, 2))),
    ((1, 8, 9, 16), 3, 1, 1, ((0, 0), (0, 0))),
    ((1, 6, 6, 8), 3, 1, 1, ((5, 0), (0, 6))),
    ((2, 9, 11, 16), 3, 2, 1, ((1, 1), (1, 1))),
    ((1, 10, 7, 24), 5, 2, 1, ((2, 2), (2, 2))),
    ((1, 7, 9, 8), 3, 2, 1, ((0, 1), (1, 0))),
    ((1, 9, 9, 72), 3, 3, 1, ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("shape,kernel,stride,dilation,padding", CASES)
def test_pallas_kernels_equal_xla_forward_and_both_gradients(shape, kernel, stride, dilation, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, shape[-1]), np.float32))
    rows, cols = geometry(kernel, stride, dilation, padding)

    def reference(x, w):
        return xla_depthwise(x, w, stride, padding, dilation)

    def pallas(x, w):
        return pdw.depthwise(x, w, rows, cols, True)

    y_ref, vjp_ref = jax.vjp(reference, x, w)
    y, vjp = jax.vjp(pallas, x, w)
    assert y.shape == y_ref.shape
    g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
    (dx, dw), (dx_ref, dw_ref) = vjp(g), vjp_ref(g)
    chex.assert_trees_all_close((y, dx), (y_ref, dx_ref), atol=1e-5, rtol=0)
    # Kernel gradients sum over every output pixel (values up to ~40): bound them relatively as well.
    chex.assert_trees_all_close(dw, dw_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,kernel,stride,dilation,padding", [CASES[1], CASES[4]])
def test_channel_block_tiling_also_serves_unit_stride(shape, kernel, stride, dilation, padding):
    # Unit stride picks the flattened-row kernels; the channel-block kernels must give the same sums there.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, shape[-1]), np.float32))
    rows, cols = geometry(kernel, stride, dilation, padding)
    fwd_rows = pdw._forward_geometry(kernel, stride, dilation, rows[3])
    fwd_cols = pdw._forward_geometry(kernel, stride, dilation, cols[3])
    taps = w.reshape(kernel * kernel, shape[-1])
    y_ref = xla_depthwise(x, w, stride, padding, dilation)
    blocks = pdw.Tiles(rows=4, cols=4, chans=16)
    y = pdw.gather_correlate(x, taps, y_ref.shape[1:3], fwd_rows, fwd_cols, blocks, interpret=True)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)
    g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
    dw_ref = jax.vjp(lambda w: xla_depthwise(x, w, stride, padding, dilation), w)[1](g)[0]
    dw = pdw.kernel_grad(x, g, fwd_rows, fwd_cols, pdw.Tiles(rows=2, cols=4, chans=16), interpret=True)
    np.testing.assert_allclose(dw.reshape(dw_ref.shape), dw_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_pallas_kernels_lower_to_triton(stride):
    # Lowering for CUDA runs Pallas' Triton code generation on this machine: an op or index the Triton backend
    # does not support fails here, without a GPU.
    x = jax.ShapeDtypeStruct((8, 28, 28, 144), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 3, 1, 144), jnp.bfloat16)
    rows = (3, stride, 1, 1, 1)

    def forward_and_vjp(x, w):
        y, vjp = jax.vjp(lambda x, w: pdw.depthwise(x, w, rows, rows), x, w)
        return y, vjp(y)

    text = jax.jit(forward_and_vjp).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3  # forward, input gradient, kernel gradient


def test_pallas_implementation_needs_a_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("this checks the error off a GPU")
    with pytest.raises(ValueError, match="'pallas' runs Triton kernels on an NVIDIA GPU; the default backend is"):
        DepthwiseConv(implementation="pallas").init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))


def test_default_tiles_are_powers_of_two_within_the_tensor():
    for out_h, out_w, channels in [(112, 112, 32), (56, 56, 144), (7, 7, 960), (28, 28, 20), (1, 1, 3)]:
        tiles = pdw.default_tiles(out_h, out_w, channels)
        for size in tiles[:3]:
            assert size & (size - 1) == 0
        assert tiles.chans == min(64, 1 << (channels - 1).bit_length())
        assert tiles.cols <= max(8, out_w) and tiles.rows * tiles.cols * tiles.chans <= 4096
