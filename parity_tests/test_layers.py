"""Layer-level parity: every conv, norm and block equals its PyTorch counterpart (fp32, CPU, 1e-5)."""

import dataclasses
import functools
import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, random_variables, randomize_batchnorm, to_nhwc

import torch_ref
from flax_dsconv import (
    BatchNorm,
    DepthwiseConv,
    DepthwiseSeparableConv,
    PointwiseConv,
    count_params,
    from_torch,
    seed_dsconv,
)
from flax_dsconv.ops.depthwise import pad_for_depthwise
from flax_dsconv.ops.padding import resolve_padding


def conv_params(conv: torch.nn.Conv2d) -> dict:
    params = {"kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))}
    if conv.bias is not None:
        params["bias"] = jnp.asarray(conv.bias.detach().numpy())
    return {"params": params}


GRID = list(itertools.product((3, 5), (1, 2), (7, 8), (1, 2), (1, 2), (False, True)))


@pytest.mark.parametrize("implementation", ["xla", "shifted"])
@pytest.mark.parametrize("kernel,stride,size,dilation,multiplier,bias", GRID)
def test_depthwise_matches_torch(kernel, stride, size, dilation, multiplier, bias, implementation):
    channels = 4
    conv = torch.nn.Conv2d(channels, channels * multiplier, kernel, stride, dilation * (kernel - 1) // 2,
                           dilation, groups=channels, bias=bias)  # fmt: skip
    x = torch.randn(2, channels, size, size)
    layer = DepthwiseConv(kernel, stride, "torch", dilation, multiplier, use_bias=bias, implementation=implementation)
    assert_close(layer.apply(conv_params(conv), to_nhwc(x)), conv(x))


def _output_and_gradients(module: nn.Module, variables: dict, x: jax.Array, cotangent: jax.Array) -> tuple:
    """``(y, (d variables, d x))`` of ``module.apply`` for ``cotangent``, jitted."""

    @jax.jit
    def forward_and_vjp(variables, x, cotangent):
        y, vjp = jax.vjp(module.apply, variables, x)
        return y, vjp(cotangent)

    return forward_and_vjp(variables, x, cotangent)


# ((5, 0), (0, 6)) pads past the kernel's reach on both sides: some outputs read only zeros. The input gradient
# runs one correlation per stride phase: stride 3 with dilation 2, and a different kernel, stride and dilation
# per axis, give phases of unequal tap counts.
@pytest.mark.parametrize("padding", ["torch", "SAME", "VALID", 2, ((0, 1), (2, 0)), ((5, 0), (0, 6))])
@pytest.mark.parametrize("kernel,stride,size,dilation,multiplier", [
    (3, 1, 7, 1, 1), (3, 2, 8, 1, 1), (5, 2, 9, 1, 2), (3, 1, 8, 2, 1), (5, 2, 10, 2, 2), (3, 2, 7, 2, 1),
    (5, 3, 11, 2, 1), ((3, 5), (2, 1), 9, (1, 2), 1)])  # fmt: skip
def test_shifted_depthwise_equals_xla_reference_forward_and_both_gradients(
    kernel, stride, size, dilation, multiplier, padding
):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 3), np.float32))
    layers = {
        implementation: DepthwiseConv(kernel, stride, padding, dilation, multiplier, use_bias=True,
                                      implementation=implementation)
        for implementation in ("xla", "shifted")
    }  # fmt: skip
    # One set of variables for both (same parameters by design), drawn in numpy: a layer's eager init would
    # compile its forward pass op by op, most of this test's time.
    shapes = jax.eval_shape(layers["xla"].init, jax.random.key(1), x)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
    y_shape = jax.eval_shape(layers["xla"].apply, variables, x).shape
    cotangent = jnp.asarray(rng.standard_normal(y_shape, np.float32))

    y_ref, (dv_ref, dx_ref) = _output_and_gradients(layers["xla"], variables, x, cotangent)
    y, (dv, dx) = _output_and_gradients(layers["shifted"], variables, x, cotangent)
    chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=0)
    # Kernel gradients sum over every output pixel (values ~30): bound them relatively as well.
    chex.assert_trees_all_close((dv, dx), (dv_ref, dx_ref), atol=1e-5, rtol=1e-5)


# Padding past the kernel's reach (k - 1)·d on one side: some outputs read only zeros. XLA:CPU's own gradient of
# such a conv reads memory outside the cotangent at up to 16 channels (openxla/xla#48713); the 'xla' path pads
# those pixels itself. The reference is float64 PyTorch on an explicitly padded input.
@pytest.mark.parametrize("implementation", ["xla", "shifted"])
@pytest.mark.parametrize("stride,padding", [(1, ((4, 0), (3, 5))), (2, ((5, 0), (0, 6))), (3, ((0, 4), (4, 1)))])
def test_depthwise_gradients_with_padding_beyond_the_kernels_reach_match_torch(stride, padding, implementation):
    (top, bottom), (left, right) = padding
    x = torch.randn(2, 4, 8, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=stride, groups=4)
    g = torch.randn_like(y)
    y.backward(g)
    layer = DepthwiseConv(3, stride, padding, implementation=implementation)
    variables = {"params": {"kernel": jnp.asarray(w.detach().numpy().transpose(2, 3, 1, 0), jnp.float32)}}
    out, (dv, dx) = _output_and_gradients(layer, variables, to_nhwc(x.detach()).astype(jnp.float32), to_nhwc(g))
    assert_close(out, y)
    assert_close(dx, x.grad)
    np.testing.assert_allclose(dv["params"]["kernel"], w.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "shifted"])
@pytest.mark.parametrize("size,padding", [(4, 0), (2, 1)])
def test_depthwise_rejects_input_smaller_than_its_window(size, padding, implementation):
    layer = DepthwiseConv(5, padding=padding, implementation=implementation)
    with pytest.raises(ValueError, match=rf"input {size}x{size} \(padded: {size + 2 * padding}x.*5x5 window"):
        layer.init(jax.random.key(0), jnp.ones((1, size, size, 3)))


@pytest.mark.parametrize("implementation", ["xla", "shifted"])
@pytest.mark.parametrize("padding,stride", [("torch", 1), ("SAME", 2), (((2, 0), (1, 3)), 1), (0, 2)])
def test_padding_outside_the_depthwise_conv_gives_the_same_output(padding, stride, implementation):
    # What the blocks do on the 'shifted' path: pad the activation where it is computed, then a 0-padded conv.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 8, 3), np.float32))
    conv = DepthwiseConv(3, stride, padding, use_bias=True, implementation=implementation)
    variables = conv.init(jax.random.key(0), x)
    padded, new_padding = pad_for_depthwise(x, 3, stride, padding, 1, implementation)
    if implementation == "xla" or padding == 0:  # nothing to move: both returned as given
        assert padded is x and new_padding == padding
    else:
        assert new_padding == 0 and padded.shape[1:3] != x.shape[1:3]
    moved = DepthwiseConv(3, stride, new_padding, use_bias=True, implementation=implementation)
    # The same 9 products per output; XLA may pair them into FMAs differently at the edge rows (1 ulp).
    np.testing.assert_allclose(moved.apply(variables, padded), conv.apply(variables, x), rtol=1e-6, atol=1e-6)


def test_depthwise_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="implementation must be one of"):
        DepthwiseConv(implementation="cudnn").init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))


@pytest.mark.parametrize("padding,torch_pad", [(0, (0, 0, 0, 0)), (2, (2, 2, 2, 2)), (((1, 0), (0, 2)), (0, 2, 1, 0))])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_explicit_padding_matches_torch(padding, torch_pad, stride):
    conv = torch.nn.Conv2d(3, 3, 3, stride, 0, groups=3)
    x = torch.randn(1, 3, 9, 10)
    layer = DepthwiseConv(3, stride, padding, use_bias=True)
    assert_close(layer.apply(conv_params(conv), to_nhwc(x)), conv(F.pad(x, torch_pad)))


def test_same_padding_differs_from_torch_at_stride2_even_input():
    conv = torch.nn.Conv2d(3, 3, 3, 2, 1, groups=3, bias=False)
    x = torch.randn(1, 3, 8, 8)
    params = conv_params(conv)
    same = DepthwiseConv(3, 2, "SAME").apply(params, to_nhwc(x))
    symmetric = DepthwiseConv(3, 2, "torch").apply(params, to_nhwc(x))
    assert same.shape == symmetric.shape == (1, 4, 4, 3)
    assert np.abs(np.asarray(same - symmetric)).max() > 1e-2
    assert_close(symmetric, conv(x))
    # TF 'SAME' puts the odd pixel at the bottom/right: torch with pad (0, 1, 0, 1) and no padding.
    tf_like = torch.nn.functional.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2, groups=3)
    assert_close(same, tf_like)


@pytest.mark.parametrize("stride,padding,bias,size", itertools.product((1, 2), (0, 1), (False, True), (7, 8)))
def test_pointwise_matches_torch(stride, padding, bias, size):
    conv = torch.nn.Conv2d(6, 5, 1, stride, padding, bias=bias)
    x = torch.randn(2, 6, size, size)
    layer = PointwiseConv(5, stride, padding, use_bias=bias)
    assert_close(layer.apply(conv_params(conv), to_nhwc(x)), conv(x))


@pytest.mark.parametrize("stride,padding,size", [(1, 0, 7), (2, 0, 8), (2, 1, 7), (1, ((1, 0), (0, 2)), 8)])
def test_pointwise_vjp_equals_autodiff_of_a_1x1_convolution(stride, padding, size):
    # PointwiseConv's hand-written VJP (on CPU) against lax.conv_general_dilated's autodiff, same parameters.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, 6), np.float32))
    layer = PointwiseConv(5, stride, padding, use_bias=True)
    variables = {"params": {"kernel": jnp.asarray(rng.standard_normal((1, 1, 6, 5), np.float32)),
                            "bias": jnp.asarray(rng.standard_normal(5, np.float32))}}  # fmt: skip
    reference = nn.Conv(5, (1, 1), stride, padding=resolve_padding(padding, (1, 1), (1, 1)))
    assert "custom_vjp_call" in str(jax.make_jaxpr(layer.apply)(variables, x))  # the path under test
    cotangent = jnp.asarray(rng.standard_normal(jax.eval_shape(layer.apply, variables, x).shape, np.float32))
    y, grads = _output_and_gradients(layer, variables, x, cotangent)
    y_ref, grads_ref = _output_and_gradients(reference, variables, x, cotangent)
    chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(grads, grads_ref, atol=1e-5, rtol=1e-5)


def bn_variables(bn: torch.nn.BatchNorm2d) -> dict:
    t = lambda a: jnp.asarray(a.detach().numpy())  # noqa: E731
    return {"params": {"scale": t(bn.weight), "bias": t(bn.bias)},
            "batch_stats": {"mean": t(bn.running_mean), "var": t(bn.running_var)}}  # fmt: skip


def test_batchnorm_eval_matches_torch():
    bn = randomize_batchnorm(torch.nn.BatchNorm2d(8, eps=1e-3), (4, 8, 5, 5))
    x = torch.randn(2, 8, 5, 5)
    assert not torch.allclose(bn.running_var, torch.ones(8)), "BN must not be the identity"
    y = BatchNorm(use_running_average=True, epsilon=1e-3).apply(bn_variables(bn), to_nhwc(x))
    assert_close(y, bn(x))


@pytest.mark.parametrize("torch_momentum", [0.1, 0.01])
def test_batchnorm_train_step_matches_torch_running_stats(torch_momentum):
    bn = randomize_batchnorm(torch.nn.BatchNorm2d(8, momentum=torch_momentum), (4, 8, 5, 5)).train()
    variables = bn_variables(bn)
    x = torch.randn(3, 8, 5, 5)
    y, updates = BatchNorm(use_running_average=False, momentum=1 - torch_momentum).apply(
        variables, to_nhwc(x), mutable=["batch_stats"]
    )
    assert_close(y, bn(x))
    np.testing.assert_allclose(updates["batch_stats"]["mean"], bn.running_mean.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], bn.running_var.numpy(), rtol=0, atol=1e-6)


def test_batchnorm_flax_biased_update_stays_available():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    ours = BatchNorm(use_running_average=False, torch_running_var=False, momentum=0.9)
    theirs = nn.BatchNorm(use_running_average=False, momentum=0.9)
    v = theirs.init(jax.random.key(1), x)
    _, a = ours.apply(v, x, mutable=["batch_stats"])
    _, b = theirs.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(a["batch_stats"]["var"], b["batch_stats"]["var"], rtol=0, atol=1e-6)


def test_batchnorm_axis_name_is_one_big_batch_forward_gradients_and_running_stats():
    # The shard_map/pmap path: under vmap with a named axis, each of 4 "devices" sees 2 images and the
    # statistics, the running-statistics update and the gradients must be those of the 8-image batch.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 2, 5, 5, 3), np.float32) * 2 + 1)
    cotangent = jnp.asarray(rng.standard_normal(x.shape, np.float32))
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 3), jnp.float32), "bias": jnp.asarray(rng.normal(size=3))}
    stats = {"mean": jnp.zeros(3), "var": jnp.ones(3)}

    def run(bn, params, x):
        return bn.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])

    synced = BatchNorm(use_running_average=False, axis_name="devices")
    sharded = jax.vmap(lambda p, x: run(synced, p, x), in_axes=(None, 0), axis_name="devices")
    whole = functools.partial(run, BatchNorm(use_running_average=False))

    (y, updates), (y_ref, updates_ref) = sharded(params, x), whole(params, x.reshape(8, 5, 5, 3))
    np.testing.assert_allclose(y.reshape(y_ref.shape), y_ref, rtol=0, atol=1e-6)
    for name in ("mean", "var"):  # every device ends with the global statistics (unbiased var over 8·25 values)
        got, expected = updates["batch_stats"][name], updates_ref["batch_stats"][name]
        np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=0, atol=1e-6)

    # Gradients as data parallelism takes them: each device differentiates its own loss (its cotangent), the
    # BatchNorm backward exchanges the statistics' terms over the axis, the parameter gradients are summed.
    def local_grads(params, x, cotangent):
        return jax.grad(lambda p, x: jnp.sum(run(synced, p, x)[0] * cotangent), argnums=(0, 1))(params, x)

    param_grads, x_grads = jax.vmap(local_grads, in_axes=(None, 0, 0), axis_name="devices")(params, x, cotangent)
    grads = (jax.tree.map(lambda g: g.sum(0), param_grads), x_grads.reshape(8, 5, 5, 3))
    grads_ref = jax.grad(lambda p, x: jnp.sum(whole(p, x)[0] * cotangent.reshape(x.shape)), argnums=(0, 1))(
        params, x.reshape(8, 5, 5, 3)
    )
    chex.assert_trees_all_close(grads, grads_ref, atol=1e-5, rtol=0)


def test_batchnorm_rejects_one_value_per_channel_in_train_mode():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(use_running_average=False).init(jax.random.key(0), jnp.ones((1, 1, 1, 4)))


# The seed notebook's class, verbatim but for formatting: its checkpoints must load into torch_ref.DSConv.
class SeedDSConv(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1):
        super().__init__()
        nn_ = torch.nn
        self.depthwise_sep_conv = nn_.Sequential(
            nn_.Conv2d(in_channels=in_channels, out_channels=in_channels, kernel_size=kernel_size, stride=stride,
                       padding=padding, groups=in_channels),
            nn_.BatchNorm2d(in_channels),
            nn_.ReLU(),
            nn_.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1, stride=stride, padding=1),
            nn_.BatchNorm2d(out_channels),
            nn_.ReLU(),
        )  # fmt: skip

    def forward(self, x):
        return self.depthwise_sep_conv(x)


@pytest.mark.parametrize("stride", [1, 2])
def test_seed_checkpoint_loads_into_torch_ref_and_flax(tmp_path, stride):
    seed = randomize_batchnorm(SeedDSConv(32, 128, stride=stride), (2, 32, 64, 64))
    path = tmp_path / "seed.pth"
    torch.save(seed.state_dict(), path)
    ref = torch_ref.DSConv(32, 128, stride=stride).eval()
    ref.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(1, 32, 64, 64)
    assert torch.equal(ref(x), seed(x))
    model, variables = from_torch(path, arch="dsconv", source="torch_ref", stride=stride)
    y = model.apply(variables, to_nhwc(x))
    assert_close(y, seed(x))
    # The seed strides twice: 64 → 32 (depthwise) → 34 (pad 1) → 17 (pointwise, stride 2 again).
    assert y.shape == ((1, 66, 66, 128) if stride == 1 else (1, 17, 17, 128))


def test_seed_dsconv_gives_66x66_and_paper_block_keeps_64x64():
    x = jnp.ones((1, 64, 64, 32))
    assert seed_dsconv(128).init_with_output(jax.random.key(0), x)[0].shape == (1, 66, 66, 128)
    assert DepthwiseSeparableConv(128).init_with_output(jax.random.key(0), x)[0].shape == (1, 64, 64, 128)
    assert DepthwiseSeparableConv(128, strides=2).init_with_output(jax.random.key(0), x)[0].shape == (1, 32, 32, 128)


@pytest.mark.parametrize("stride,size,act", [(1, 64, "relu"), (2, 65, "relu6"), (2, 64, "hard_swish")])
def test_paper_block_matches_torch_ref(stride, size, act):
    block = randomize_batchnorm(torch_ref.DepthwiseSeparableConv(16, 24, stride=stride, act=act), (2, 16, size, size))
    x = torch.randn(2, 16, size, size)
    model, variables = from_torch(block)
    assert_close(model.apply(variables, to_nhwc(x)), block(x))


def test_seed_parameter_comparison_4384_vs_9216():
    x = jnp.ones((1, 64, 64, 32))
    depthwise = DepthwiseConv(3).init(jax.random.key(0), x)
    pointwise = PointwiseConv(128).init(jax.random.key(0), x)
    full = nn.Conv(32, (3, 3), use_bias=False).init(jax.random.key(0), x)
    assert count_params(depthwise) + count_params(pointwise) == 4384
    assert count_params(full) == 9216


def test_block_rejects_nchw_input_with_both_shapes_named():
    block = DepthwiseSeparableConv(64)
    variables = block.init(jax.random.key(0), jnp.ones((1, 16, 16, 32)))
    with pytest.raises(ValueError, match=r"expected NHWC input with 32 channels.*\(1, 32, 16, 16\).*NCHW"):
        block.apply(variables, jnp.ones((1, 32, 16, 16)))


@pytest.mark.parametrize(
    "x,error,match",
    [
        (jnp.ones((3, 32, 32)), ValueError, r"4-D NHWC.*\(3, 32, 32\)"),
        (jnp.ones((1, 3, 32, 32)), ValueError, r"3 channels.*\(1, 3, 32, 32\)"),
        (jnp.ones((1, 32, 32, 3), jnp.int32), TypeError, "floating-point.*int32"),
    ],
)
def test_model_rejects_bad_input(x, error, match):
    from flax_dsconv import mobilenet_v3_small

    with pytest.raises(error, match=match):
        mobilenet_v3_small().init(jax.random.key(0), x)


@pytest.mark.parametrize(
    "x,match",
    [
        (lambda: torch.ones(1, 32, 32, 3), r"got torch\.Tensor; convert to a jax or numpy array.*x\.numpy\(\)"),
        (lambda: [[[[0.0] * 3] * 32] * 32], "got builtins.list; convert to a jax or numpy array"),
    ],
)
def test_model_names_an_input_that_is_no_array(x, match):
    from flax_dsconv import mobilenet_v3_small

    model = mobilenet_v3_small()
    with pytest.raises(TypeError, match=match):
        model.init(jax.random.key(0), x())
    variables = random_variables(model, jnp.ones((1, 32, 32, 3)))
    with pytest.raises(TypeError, match=match):
        model.apply(variables, x())


def test_an_empty_batch_gives_empty_logits_as_torch_does():
    from flax_dsconv import mobilenet_v2, mobilenet_v3_small

    for model in (mobilenet_v2(0.35, num_classes=7), mobilenet_v3_small(num_classes=7)):
        variables = random_variables(model, jnp.ones((1, 32, 32, 3)))
        assert jax.jit(model.apply)(variables, jnp.ones((0, 32, 32, 3))).shape == (0, 7)
        features = model.clone(config=dataclasses.replace(model.config, num_classes=0))
        assert jax.jit(features.apply)(variables, jnp.ones((0, 32, 32, 3))).shape == (0, model.config.head_channels)


@pytest.mark.parametrize("builder", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"width_multiplier": 0}, ValueError, "width_multiplier must be a finite number above 0, got 0"),
        ({"width_multiplier": -1}, ValueError, "width_multiplier must be a finite number above 0, got -1"),
        ({"width_multiplier": float("nan")}, ValueError, "width_multiplier must be a finite number above 0, got nan"),
        ({"width_multiplier": "0.5"}, TypeError, "width_multiplier must be a number, got '0.5'"),
        ({"dropout": 2.0}, ValueError, r"dropout is a probability in \[0, 1\], got 2.0"),
        ({"dropout": -0.1}, ValueError, r"dropout is a probability in \[0, 1\], got -0.1"),
        ({"num_classes": -5}, ValueError, "num_classes must be at least 0, got -5"),
        ({"num_classes": "10"}, TypeError, "num_classes must be an int, got '10'"),
        ({"in_channels": 0}, ValueError, "in_channels must be at least 1, got 0"),
    ],
)
def test_builders_refuse_invalid_settings_naming_them(builder, kwargs, error, match):
    import flax_dsconv

    with pytest.raises(error, match=match):
        getattr(flax_dsconv, builder)(**kwargs)


def test_dense_conv_rejects_padding_past_its_kernels_reach():
    from flax_dsconv.nn import full_conv

    assert full_conv(8, 3, padding=((2, 2), (0, 2))).padding == ((2, 2), (0, 2))  # at the reach: fine
    with pytest.raises(ValueError, match=r"padding \(\(3, 0\), \(0, 0\)\) reaches past the 3x3 kernel's \(2, 2\)"):
        full_conv(8, 3, padding=((3, 0), (0, 0)))
    with pytest.raises(ValueError, match="1x1 kernel's"):
        full_conv(8, 1, padding=1)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: DepthwiseConv(3, dilation=0), "dilation must be a positive int"),
        (lambda: DepthwiseConv(3, strides=(1, 0)), "strides must be a positive int"),
        (lambda: DepthwiseConv(0), "kernel_size must be a positive int"),
        (lambda: DepthwiseConv(3, depth_multiplier=0), "depth_multiplier must be a positive int"),
        (lambda: DepthwiseConv(3, padding=1.0), "padding must be a mode"),
        (lambda: DepthwiseConv(3, padding=((-1, -1), (1, 1))), "pairs of non-negative ints"),
        (lambda: PointwiseConv(4, strides=0), "strides must be a positive int"),
        (lambda: DepthwiseConv(3, strides=(True, 2)), "strides must be a positive int"),  # a bool is no size
        (lambda: DepthwiseConv(3, padding=((True, False), (1, 1))), "pairs of non-negative ints"),
        (lambda: DepthwiseSeparableConv(4, padding=((-1, -1), (1, 1))), "pairs of non-negative ints"),
    ],
)
@pytest.mark.parametrize("implementation", ["xla", "shifted"])
def test_invalid_sizes_and_paddings_raise_naming_the_setting(build, match, implementation):
    module = build()
    field = "implementation" if isinstance(module, DepthwiseConv) else "depthwise"
    if hasattr(module, field):
        module = module.clone(**{field: implementation})
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))


def test_dense_conv_block_checks_its_input_like_the_separable_block():
    from flax_dsconv import ConvBNAct

    block = ConvBNAct(4, 3)
    variables = block.init(jax.random.key(0), jnp.ones((2, 16, 16, 8)))
    with pytest.raises(ValueError, match=r"expected NHWC input with 8 channels.*NCHW\?"):
        block.apply(variables, jnp.ones((2, 8, 16, 16)))
    with pytest.raises(ValueError, match="4-D NHWC"):
        block.apply(variables, jnp.ones((16, 16, 8)))
    with pytest.raises(TypeError, match="floating-point"):
        block.apply(variables, jnp.ones((2, 16, 16, 8), jnp.int32))


def test_squeeze_excite_names_its_own_input_when_it_is_laid_out_wrong():
    from flax_dsconv import SqueezeExcite

    se = SqueezeExcite(4)
    variables = se.init(jax.random.key(0), jnp.ones((2, 6, 6, 16)))
    # Before: the pooled (2, 1, 1, 6) tensor's shape, in conv_reduce's name.
    with pytest.raises(ValueError, match=r"SqueezeExcite.*16 channels.*\(2, 16, 6, 6\).*NCHW\?"):
        se.apply(variables, jnp.ones((2, 16, 6, 6)))
    with pytest.raises(ValueError, match=r"SqueezeExcite.*4-D NHWC"):
        se.init(jax.random.key(0), jnp.ones((6, 6, 16)))


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_shifted_bfloat16_forward_rounds_like_xla(kernel_size):
    # The taps are summed in float32 and rounded once, as XLA's conv does: same error against an fp32 reference.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 32))
    reference = DepthwiseConv(kernel_size, implementation="xla", precision="highest")
    variables = reference.init(jax.random.key(1), x)
    expected = reference.apply(variables, x)
    errors = {}
    for implementation in ("xla", "shifted"):
        y = DepthwiseConv(kernel_size, implementation=implementation, dtype=jnp.bfloat16).apply(variables, x)
        assert y.dtype == jnp.bfloat16
        errors[implementation] = float(jnp.linalg.norm(y.astype(jnp.float32) - expected) / jnp.linalg.norm(expected))
    assert 0 < errors["shifted"] <= 1.1 * errors["xla"], errors


def test_eager_train_mode_batchnorm_compiles_only_on_its_first_call(caplog):
    bn, x = BatchNorm(use_running_average=False), jnp.ones((4, 5, 5, 3))
    variables = bn.init(jax.random.key(0), x)
    apply = lambda: bn.apply(variables, x, mutable=["batch_stats"])  # noqa: E731
    apply()
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        apply()
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()], caplog.text


def test_running_statistics_keep_float32_under_x64_with_float64_input():
    with jax.enable_x64(True):
        bn, x = BatchNorm(use_running_average=False), jax.random.normal(jax.random.key(0), (4, 5, 5, 3), jnp.float64)
        variables = bn.init(jax.random.key(0), x)
        y, updates = bn.apply(variables, x, mutable=["batch_stats"])
        assert y.dtype == jnp.float64
        assert {a.dtype for a in jax.tree.leaves(updates)} == {
            a.dtype for a in jax.tree.leaves(variables["batch_stats"])
        }


@pytest.mark.parametrize("name", ["hard_swish", "hard_sigmoid"])
def test_hard_activations_divide_by_six_without_bias(name):
    """XLA turns ``t / 6`` into ``t * float32(1/6)``, a quarter ulp too large: every output biased the same way
    (LCNet-0.35's error reached 2.2x torch's). The library's versions round like a division, as torch's do."""
    from flax_dsconv.ops.activations import activation

    x = np.random.default_rng(0).uniform(-4, 8, 200_000).astype(np.float32)
    got = np.asarray(jax.jit(activation(name))(x)).astype(np.float64)
    x64 = x.astype(np.float64)
    exact = np.clip(x64 + 3, 0, 6) / 6 * (x64 if name == "hard_swish" else 1)
    torch_fn = F.hardswish if name == "hard_swish" else F.hardsigmoid
    torch32 = torch_fn(torch.from_numpy(x)).numpy().astype(np.float64)
    nonzero = exact != 0
    bias = np.mean((got - exact)[nonzero] / exact[nonzero])
    torch_bias = np.mean((torch32 - exact)[nonzero] / exact[nonzero])
    assert abs(bias) < 1e-9 and abs(torch_bias) < 1e-9, (bias, torch_bias)  # jax.nn's: 1.4e-8
    # Near x = -3, x + 3 in float32 already cancels; elsewhere within an ulp of torch's result.
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(got - exact) <= np.abs(torch32 - exact) + ulp), "over an ulp beyond torch's error"


@pytest.mark.parametrize("name,reference", [("relu", "relu"), ("relu6", "relu6"), ("sigmoid", "sigmoid"),
                                            ("silu", "silu")])  # fmt: skip
def test_an_activation_has_jax_nns_values_and_gradients_at_its_kinks(name, reference):
    """The activations are lax primitives (cheaper to trace than jax.nn's jitted functions) with the same values
    and the same gradients, kinks included: 0 at relu's 0 and relu6's 0 and 6, as in PyTorch."""
    from flax_dsconv.ops.activations import activation

    x = jnp.array([-7.0, -6.0, -3.0, -1.0, -0.0, 0.0, 0.5, 3.0, 5.9, 6.0, 7.0])
    ours, theirs = activation(name), getattr(jax.nn, reference)
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(theirs(x)))
    np.testing.assert_array_equal(np.asarray(jax.vmap(jax.grad(ours))(x)), np.asarray(jax.vmap(jax.grad(theirs))(x)))


# --- initialisation: flax_dsconv.nn.initializers and MobileNet.init -----------------------------------------------

INIT_SHAPES = [(3, 3, 1, 32), (1, 1, 320, 1280), (1280, 1000), (4, 3, 3, 8, 16), (7,)]


@pytest.mark.parametrize("shape", INIT_SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_initializers_give_the_same_values_eagerly_and_under_jit(shape, dtype):
    from flax_dsconv.nn import initializers as init

    key = jax.random.key(3)
    fns = [init.normal(0.01), init.zeros, init.ones, init.constant(1e-5)]
    if len(shape) > 1:  # variance scaling needs an in and an out axis
        fns += [init.he_normal_fan_out(batch_axis=(0,) if len(shape) == 5 else ()), init.lecun_normal()]
    for fn in fns:
        eager = fn(key, shape, dtype)
        traced = jax.jit(lambda k, fn=fn: fn(k, shape, dtype))(key)
        assert eager.shape == traced.shape == shape and eager.dtype == traced.dtype == dtype
        np.testing.assert_array_equal(np.asarray(eager, np.float32), np.asarray(traced, np.float32))
    other = init.normal(1.0)(jax.random.key(4), shape)
    assert not np.array_equal(init.normal(1.0)(key, shape), other)  # the key matters
    np.testing.assert_array_equal(init.normal(1.0)(key, shape), init.normal(1.0)(key, shape))


def test_initializers_draw_the_distributions_of_jax_initializers():
    from flax_dsconv.nn import initializers as init

    key = jax.random.key(0)
    kernel = np.asarray(init.he_normal_fan_out()(key, (3, 3, 64, 256)))  # fan-out 3*3*256
    assert abs(kernel.std() / np.sqrt(2 / (9 * 256)) - 1) < 0.02 and abs(kernel.mean()) < 1e-3
    experts = np.asarray(init.he_normal_fan_out(batch_axis=(0,))(key, (4, 5, 5, 1, 480)))  # fan-out 5*5*480
    assert abs(experts.std() / np.sqrt(2 / (25 * 480)) - 1) < 0.02
    dense = np.asarray(init.lecun_normal()(key, (512, 256)))
    assert abs(dense.std() / np.sqrt(1 / 512) - 1) < 0.03 and np.abs(dense).max() <= 2 * np.sqrt(1 / 512) / 0.8796
    classifier = np.asarray(init.normal(0.01)(key, (1280, 1000)))
    assert abs(classifier.std() / 0.01 - 1) < 0.01
    # Blocks are independent draws: consecutive blocks of a tensor are uncorrelated, not repeats.
    flat = classifier.reshape(-1)[: 2 * init.BLOCK].reshape(2, init.BLOCK)
    assert abs(np.corrcoef(flat)[0, 1]) < 0.05
    with pytest.raises(ValueError, match="mode must be"):
        init.variance_scaling(2.0, "fan_sideways", "normal")
    with pytest.raises(ValueError, match="distribution must be one of"):
        init.variance_scaling(2.0, "fan_out", "uniform")


@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv4_hybrid_medium"])
def test_model_init_is_flaxs_init_without_its_eager_forward_pass(name):
    from flax_dsconv import create_model

    model = create_model(name, num_classes=10)
    x = jnp.ones((2, 64, 64, 3))
    fast = model.init(jax.random.key(1), x)
    flax_init = nn.Module.init(model, jax.random.key(1), x)  # the forward pass op by op, seconds
    chex.assert_trees_all_equal(fast, flax_init)
    chex.assert_trees_all_equal_shapes_and_dtypes(fast, jax.eval_shape(model.init, jax.random.key(1), x))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(fast))
    params = fast["params"]
    assert not np.allclose(params["classifier"]["kernel"], 0) and np.all(params["classifier"]["bias"] == 0)
    stats = jax.tree_util.tree_leaves_with_path(fast["batch_stats"])
    assert all(np.all(v == (1 if path[-1].key == "var" else 0)) for path, v in stats)


# Every family's modules (and the norm-layer variants) on the fast path: its cost is the shared samplers, compiled
# once per process, not a compilation per layer (which is where Flax's eager init spends its seconds).
INIT_FAMILIES = ["mobilenetv3_small_050", "mobilenetv4_conv_small_035", "efficientnet_b0", "tf_efficientnetv2_b0",
                 "mixnet_s", "efficientnet_cc_b0_4e", "efficientnet_b0_g8_gn", "lcnet_050", "efficientnet_x_b3",
                 "efficientnet_blur_b0", "mobilenetv4_hybrid_medium", "test_efficientnet_evos", "test_efficientnet_ln",
                 "gc_efficientnetv2_rw_t"]  # fmt: skip


def test_model_init_compiles_nothing_per_layer_for_any_family():
    from flax_dsconv import create_model

    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    create_model("mobilenetv1_100").init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))  # the shared samplers
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        counts = {}
        for name in INIT_FAMILIES:
            compiles.clear()
            variables = create_model(name).init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
            assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(variables))
            counts[name] = len(compiles)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    # Flax's own init compiles a few hundred executables per model.
    assert all(n <= 2 for n in counts.values()), sorted(counts.items(), key=lambda kv: -kv[1])


def test_model_init_under_jit_and_with_flax_options_gives_flaxs_variables():
    from flax_dsconv import create_model

    x = jnp.ones((2, 32, 32, 3))
    plain = create_model("mobilenetv1_100", num_classes=10)  # few parameters: jit(init) compiles one draw for each
    chex.assert_trees_all_equal(jax.jit(plain.init)(jax.random.key(2), x), plain.init(jax.random.key(2), x))
    model = create_model("mobilenetv3_small_050", num_classes=10)
    fast = model.init(jax.random.key(2), x)
    # Train-mode init, another method, keyword input: the same variables; a different key: different ones.
    chex.assert_trees_all_equal(model.init(jax.random.key(2), x, train=True), fast)
    chex.assert_trees_all_equal(model.init({"params": jax.random.key(2)}, x=x), fast)
    chex.assert_trees_all_equal(plain.init(jax.random.key(2), x, method="forward_features"),
                                nn.Module.init(plain, jax.random.key(2), x, method="forward_features"))  # fmt: skip
    assert not np.array_equal(model.init(jax.random.key(3), x)["params"]["conv_stem"]["kernel"],
                              fast["params"]["conv_stem"]["kernel"])  # fmt: skip
    # Variables that depend on the input (sown intermediates) come from Flax's own init, concrete.
    sown = plain.init(jax.random.key(2), x, mutable=True)
    assert "intermediates" in sown and all(isinstance(v, jax.Array) for v in jax.tree.leaves(sown))
    chex.assert_trees_all_equal(sown, nn.Module.init(plain, jax.random.key(2), x, mutable=True))
