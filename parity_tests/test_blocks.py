"""Block families against timm's own blocks: the edge residual (fused MBConv), MixNet's mixed-conv inverted
residual, grouped convs, GroupNorm / LayerNorm / EvoNorm-S0 and global context, CondConv's (its layer too), the
anti-aliased (avg / blur pool) blocks and EfficientNet-X's space-to-depth separable block, alone, forward and both
gradients, and the timm models built of them, converted whole."""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from conftest import assert_as_close_as_torch, randomize_batchnorm, to_nchw, to_nhwc, torch_runs
from flax import linen as flax_nn
from flax import traverse_util
from kinks import nudge_off_kinks
from timm.layers import EvoNorm2dS0 as TimmEvoNorm2dS0
from timm.layers import EvoNorm2dS0a as TimmEvoNorm2dS0a
from timm.layers import GlobalContext as TimmGlobalContext
from timm.layers import GroupNormAct as TimmGroupNormAct
from timm.layers import LayerNormAct2d as TimmLayerNormAct2d
from timm.layers.cond_conv2d import CondConv2d as TimmCondConv2d
from timm.models._efficientnet_blocks import CondConvResidual as TimmCondConvResidual
from timm.models._efficientnet_blocks import DepthwiseSeparableConv as TimmSeparable
from timm.models._efficientnet_blocks import EdgeResidual as TimmEdgeResidual
from timm.models._efficientnet_blocks import InvertedResidual as TimmInvertedResidual
from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite
from timm.models._efficientnet_blocks import UniversalInvertedResidual as TimmUniversalInvertedResidual

from flax_dsconv import ConversionError, from_torch, to_torch_state_dict
from flax_dsconv.convert.plan import TO_TORCH, Entry, check_keys, dotted, plan, to_flax
from flax_dsconv.nn import (
    BatchNormConfig,
    BlockContext,
    CondConv,
    CondConvResidual,
    CondConvResidualConfig,
    DepthwiseSeparableConv,
    EdgeResidual,
    EdgeResidualConfig,
    EvoNormS0,
    EvoNormS0Config,
    GlobalContext,
    GroupNorm,
    GroupNormConfig,
    InvertedResidual,
    InvertedResidualConfig,
    LayerNorm,
    LayerNormConfig,
    SeparableConfig,
    UniversalInvertedResidual,
    UniversalInvertedResidualConfig,
    build_block,
    split_channels,
)
from flax_dsconv.ops.antialias import anti_alias
from flax_dsconv.shapes import abstract_variables

ACTS = {"relu": torch.nn.ReLU, "silu": torch.nn.SiLU}

# timm EdgeResidual arguments (plus the activation's name and whether the block adds its input), on 16 channels.
EDGE_CASES = {
    "stride1_skip": dict(out_chs=16, exp_ratio=4.0, act="silu", skip=True),
    "stride2": dict(out_chs=24, stride=2, exp_ratio=4.0, act="relu", skip=False),
    "se": dict(out_chs=16, exp_ratio=4.0, act="silu", se=True, skip=True),
    "grouped": dict(out_chs=16, exp_ratio=4.0, group_size=8, act="relu", skip=True),  # 64 channels in 8 groups
    "same_stride2": dict(out_chs=24, stride=2, pad_type="same", exp_ratio=4.0, act="silu", skip=False),
    "dilated": dict(out_chs=16, dilation=2, exp_ratio=2.0, act="silu", skip=True),
    # EfficientNet-EdgeTPU's first block: expansion from another width than the input's, and no residual.
    "force_in_chs_noskip": dict(out_chs=16, force_in_chs=8, noskip=True, exp_ratio=4.0, act="relu", skip=False),
}
IN_CHANNELS = 16


def _timm_block(case: dict) -> torch.nn.Module:
    args = {k: v for k, v in case.items() if k not in ("act", "se", "skip")}
    # timm's SqueezeExcite as EfficientNet builds it: the block's activation, a sigmoid gate.
    se_layer = functools.partial(TimmSqueezeExcite, rd_ratio=0.25) if case.get("se") else None
    return TimmEdgeResidual(IN_CHANNELS, act_layer=ACTS[case["act"]], se_layer=se_layer, **args)


def _flax_block(case: dict, blk: torch.nn.Module) -> EdgeResidual:
    """The Flax block of ``case``; widths the timm block derives (expansion, SE, groups) read off its convs."""
    se = blk.se.conv_reduce.out_channels if case.get("se") else 0
    return EdgeResidual(
        case["out_chs"],
        blk.conv_exp.out_channels,
        strides=case.get("stride", 1),
        dilation=case.get("dilation", 1),
        groups=blk.conv_exp.groups,
        padding="SAME" if case.get("pad_type") == "same" else "torch",
        act=case["act"],
        se_channels=se,
        se_act=case["act"],
        se_gate="sigmoid",
        skip=case["skip"],
    )


def _variables(module, blk: torch.nn.Module, in_channels: int) -> tuple[dict, list]:
    """The torch block's weights as the Flax block's variables, by the converter's key plan and layout rules."""
    entries = plan(abstract_variables(module, in_channels), dotted)
    state = blk.state_dict()
    check_keys(entries, state, f"the timm {type(blk).__name__}")
    flat = {e.flax_key: jnp.asarray(to_flax(e, state[e.torch_key].numpy())) for e in entries}
    return traverse_util.unflatten_dict(flat), entries


def _assert_block_matches_timm(
    module, blk: torch.nn.Module, in_channels: int, x: torch.Tensor, cotangent: torch.Tensor, train: bool, label: str
) -> None:
    """The Flax ``module`` with ``blk``'s weights against ``blk``: output, input and parameter gradients (and in
    train mode the updated BatchNorm statistics) by the float64-referenced rule, both torch memory formats setting
    the bound."""
    variables, entries = _variables(module, blk, in_channels)  # before a train-mode pass moves the statistics
    outputs, grads, stats = torch_runs(blk, x, cotangent, train)

    @jax.jit
    def forward_and_vjp(params, x, cotangent):
        def run(params, x):
            out, state = module.apply({"params": params, "batch_stats": variables.get("batch_stats", {})}, x,
                                      train=train, mutable=["batch_stats"])  # fmt: skip
            return out, state.get("batch_stats", {})

        out, vjp, new_stats = jax.vjp(run, params, x, has_aux=True)
        return out, new_stats, *vjp(cotangent)

    out, new_stats, g_params, g_x = forward_and_vjp(variables["params"], to_nhwc(x), to_nhwc(cotangent))
    flat = traverse_util.flatten_dict({"params": g_params, "batch_stats": new_stats})
    by_torch_name = {e.torch_key: np.asarray(TO_TORCH[e.layout](np.asarray(flat[e.flax_key]))) for e in entries}
    label = f"{label} {'train' if train else 'eval'}"
    torch32 = [outputs["nchw"], outputs["nhwc"]]
    print(assert_as_close_as_torch("output", {"output": to_nchw(out)}, torch32, outputs["exact"], label))
    flax_grads = {"input": to_nchw(g_x), **{k: by_torch_name[k] for k in grads["exact"] if k != "input"}}
    torch32 = [grads["nchw"], grads["nhwc"]]
    print(assert_as_close_as_torch("gradient", flax_grads, torch32, grads["exact"], label + " gradients"))
    if train:
        flax_stats = {k: by_torch_name[k] for k in stats["exact"]}
        torch32 = [stats["nchw"], stats["nhwc"]]
        assert_as_close_as_torch("statistics", flax_stats, torch32, stats["exact"], label + " BatchNorm statistics")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_residual_matches_timm_forward_and_both_gradients(name, train):
    case = EDGE_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 16, 16, generator=g)
    blk = _timm_block(case)
    assert blk.has_skip == case["skip"]
    assert (blk.conv_exp.groups > 1) == ("group_size" in case)
    blk = randomize_batchnorm(blk, x).train(train)
    nudge_off_kinks(blk, x, train=train)  # no ReLU input within fp32 rounding of 0 (kinks.py)
    size = 16 // case.get("stride", 1)
    cotangent = torch.randn((2, case["out_chs"], size, size), generator=g)
    _assert_block_matches_timm(_flax_block(case, blk), blk, IN_CHANNELS, x, cotangent, train, f"EdgeResidual {name}")


# timm InvertedResidual arguments with MixedConv2d convs (lists of kernel sizes), plus the activation's name and
# whether the block adds its input, on 16 channels; widths chosen so that some splits are uneven.
MIXED_CASES = {
    # 40 expanded channels in 3 depthwise groups (14, 13, 13); SE; stride 2.
    "k357_stride2_se": dict(out_chs=24, dw_kernel_size=[3, 5, 7], stride=2, exp_ratio=2.5, act="silu", se=True,
                            skip=False),
    # 1x1 expansion in 3 groups (16 in: 6, 5, 5; 48 out) and projection in 2; dilated; residual.
    "pw_splits_dilated_skip": dict(out_chs=16, dw_kernel_size=[3, 5], dilation=2, exp_kernel_size=[1, 1, 1],
                                   pw_kernel_size=[1, 1], exp_ratio=3.0, act="relu", skip=True),
    # TF 'SAME' per kernel size on an even input at stride 2 (asymmetric), four groups.
    "same_stride2": dict(out_chs=24, dw_kernel_size=[3, 5, 7, 9], stride=2, pad_type="same", exp_ratio=2.0,
                         act="silu", skip=False),
}  # fmt: skip


def _timm_mixed_block(case: dict) -> torch.nn.Module:
    args = {k: v for k, v in case.items() if k not in ("act", "se", "skip")}
    se_layer = functools.partial(TimmSqueezeExcite, rd_ratio=0.25) if case.get("se") else None
    return TimmInvertedResidual(IN_CHANNELS, act_layer=ACTS[case["act"]], se_layer=se_layer, **args)


def _split_count(size) -> int:
    return len(size) if isinstance(size, list) else 1


@pytest.mark.parametrize("depthwise", ["xla", "shifted"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(MIXED_CASES))
def test_mixed_conv_inverted_residual_matches_timm_forward_and_both_gradients(name, train, depthwise):
    case = MIXED_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 10, 10, generator=g)
    blk = _timm_mixed_block(case)
    assert blk.has_skip == case["skip"]
    assert type(blk.conv_dw).__name__ == "MixedConv2d"
    blk = randomize_batchnorm(blk, x).train(train)
    nudge_off_kinks(blk, x, train=train)
    module = InvertedResidual(
        case["out_chs"],
        blk.conv_pw.out_channels,
        kernel_size=max(case["dw_kernel_size"]),
        kernel_sizes=tuple(case["dw_kernel_size"]),
        expand_splits=_split_count(case.get("exp_kernel_size", 1)),
        project_splits=_split_count(case.get("pw_kernel_size", 1)),
        strides=case.get("stride", 1),
        dilation=case.get("dilation", 1),
        padding="SAME" if case.get("pad_type") == "same" else "torch",
        act=case["act"],
        se_channels=blk.se.conv_reduce.out_channels if case.get("se") else 0,
        se_act=case["act"],
        se_gate="sigmoid",
        skip=case["skip"],
        depthwise=depthwise,
    )
    size = 10 // case.get("stride", 1)
    cotangent = torch.randn((2, case["out_chs"], size, size), generator=g)
    _assert_block_matches_timm(module, blk, IN_CHANNELS, x, cotangent, train, f"mixed InvertedResidual {name} "
                               f"({depthwise})")  # fmt: skip


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_mixed_conv_separable_block_matches_timm_forward_and_both_gradients(train):
    """timm's DepthwiseSeparableConv with a mixed depthwise conv (3/5/7 over 16 channels: 6, 5, 5) and a 1x1
    projection in 2 groups (to 24: 12, 12), at stride 2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 10, 10, generator=g)
    blk = TimmSeparable(IN_CHANNELS, 24, dw_kernel_size=[3, 5, 7], stride=2, pw_kernel_size=[1, 1],
                        act_layer=torch.nn.SiLU)  # fmt: skip
    blk = randomize_batchnorm(blk, x).train(train)
    module = DepthwiseSeparableConv(24, kernel_size=7, kernel_sizes=(3, 5, 7), strides=2, project_splits=2,
                                    act="silu", pw_act=False, depthwise="xla")  # fmt: skip
    cotangent = torch.randn((2, 24, 5, 5), generator=g)
    _assert_block_matches_timm(module, blk, IN_CHANNELS, x, cotangent, train, "mixed DepthwiseSeparableConv")


def test_mixed_convs_split_channels_as_timm_does():
    from timm.layers.mixed_conv2d import _split_channels

    for channels, splits in [(40, 3), (16, 3), (200, 5), (7, 7), (9, 2)]:
        assert split_channels(channels, splits) == tuple(_split_channels(channels, splits))
    with pytest.raises(ValueError, match=r"cannot split 4 channels into 5 groups"):
        split_channels(4, 5)


def test_a_mixed_config_refuses_a_kernel_size_that_is_not_its_largest():
    with pytest.raises(ValueError, match=r"kernel_size=3 with kernel_sizes=\(3, 5\); expected kernel_size = 5"):
        InvertedResidualConfig(out_channels=8, expand_channels=16, kernel_sizes=(3, 5))
    with pytest.raises(ValueError, match=r"project_splits must be a positive int, got 0"):
        SeparableConfig(out_channels=8, project_splits=0)


def test_edge_residual_refuses_input_channels_that_do_not_split_into_its_groups():
    module = EdgeResidual(16, 64, groups=8)
    with pytest.raises(ValueError, match=r"12 input channels do not split into groups=8"):
        module.init(jax.random.key(0), jnp.ones((1, 8, 8, 12)))


def test_edge_residual_refuses_nchw_input_naming_its_channels():
    module = EdgeResidual(16, 64, groups=2)
    variables = abstract_variables(module, 16)
    with pytest.raises(ValueError, match=r"expected NHWC input with 16 channels.*NCHW\?"):
        jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, 16, 8, 8), jnp.float32))


# CondConv2d arguments (timm's), on 8 input channels: dense and depthwise, strides, both padding rules, bias.
COND_CONV_CASES = {
    "pointwise_4e": dict(out_channels=12, kernel_size=1, num_experts=4),
    "dense_k3_bias_8e": dict(out_channels=6, kernel_size=3, bias=True, num_experts=8),
    "depthwise_k3_stride2": dict(out_channels=8, kernel_size=3, stride=2, groups=8, num_experts=4),
    "depthwise_k5_same_stride2": dict(out_channels=8, kernel_size=5, stride=2, groups=8, padding="same",
                                      num_experts=3),
    "depthwise_k3_dilated": dict(out_channels=8, kernel_size=3, dilation=2, groups=8, num_experts=2),
}  # fmt: skip


@pytest.mark.parametrize("name", list(COND_CONV_CASES))
def test_cond_conv_matches_timm_forward_and_gradients_of_input_routing_and_experts(name):
    case = COND_CONV_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 11, 11, generator=g)  # odd: 'SAME' pads asymmetrically at stride 2
    routing = torch.rand(3, case["num_experts"], generator=g)
    conv = TimmCondConv2d(8, **case)
    with torch.no_grad():
        conv.weight.normal_(0, 0.3, generator=g)
        if conv.bias is not None:
            conv.bias.normal_(0, 0.1, generator=g)
    results = {}
    for run, dtype, memory_format in (("exact", torch.float64, torch.contiguous_format),
                                      ("nchw", torch.float32, torch.contiguous_format),
                                      ("nhwc", torch.float32, torch.channels_last)):  # fmt: skip
        m = copy.deepcopy(conv).to(dtype)
        xr = x.to(dtype).to(memory_format=memory_format).clone().requires_grad_(True)
        rr = routing.to(dtype).clone().requires_grad_(True)
        out = m(xr, rr)
        cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        (out * cotangent).sum().backward()
        results[run] = {"output": out.detach().numpy(), "input": xr.grad.numpy(), "routing": rr.grad.numpy(),
                        **{k: p.grad.numpy() for k, p in m.named_parameters()}}  # fmt: skip
    module = CondConv(case["out_channels"], case["num_experts"], case["kernel_size"], case.get("stride", 1),
                      "SAME" if case.get("padding") == "same" else "torch", case.get("dilation", 1),
                      depthwise=case.get("groups", 1) > 1, use_bias=case.get("bias", False))  # fmt: skip
    shapes = jax.eval_shape(module.init, jax.random.key(0), to_nhwc(x), jnp.asarray(routing.numpy()))
    kernel_shape = tuple(shapes["params"]["kernel"].shape)
    entry = Entry(("params", "kernel"), "weight", tuple(conv.weight.shape), "experts", kernel_shape)
    params = {"kernel": jnp.asarray(to_flax(entry, conv.weight.detach().numpy()))}
    if conv.bias is not None:
        params["bias"] = jnp.asarray(conv.bias.detach().numpy())
    cotangent = torch.randn(results["exact"]["output"].shape, generator=torch.Generator().manual_seed(1))

    @jax.jit
    def forward_and_vjp(params, x, routing, cotangent):
        out, vjp = jax.vjp(lambda p, x, r: module.apply({"params": p}, x, r), params, x, routing)
        return out, *vjp(cotangent)

    out, g_params, g_x, g_routing = forward_and_vjp(params, to_nhwc(x), jnp.asarray(routing.numpy()),
                                                    to_nhwc(cotangent))  # fmt: skip
    flax = {"output": to_nchw(out), "input": to_nchw(g_x), "routing": np.asarray(g_routing),
            "weight": TO_TORCH["experts"](np.asarray(g_params["kernel"]))}  # fmt: skip
    if conv.bias is not None:
        flax["bias"] = np.asarray(g_params["bias"])
    exact, torch32 = results.pop("exact"), list(results.values())
    print(assert_as_close_as_torch("output", {"output": flax.pop("output")},
                                   [{"output": r.pop("output")} for r in torch32],
                                   {"output": exact.pop("output")}, f"CondConv {name}"))  # fmt: skip
    print(assert_as_close_as_torch("gradient", flax, torch32, exact, f"CondConv {name} gradients"))


# timm CondConvResidual arguments on 16 channels, with the activation's name and whether the block adds its input.
COND_CONV_BLOCK_CASES = {
    "stride1_se_skip_4e": dict(out_chs=16, exp_ratio=4.0, num_experts=4, se=True, skip=True),
    "k5_same_stride2_8e": dict(out_chs=24, dw_kernel_size=5, stride=2, pad_type="same", exp_ratio=6.0,
                               num_experts=8, se=True, skip=False),
    "k3_stride2_noskip": dict(out_chs=16, stride=2, exp_ratio=2.0, num_experts=2, skip=False),
}  # fmt: skip


# Train mode only (gradients and BatchNorm statistics): the zoo's whole models compare the eval-mode forward of every
# CondConv, anti-aliased and space-to-depth block kind, and the suite's time is spent where it checks something new.
@pytest.mark.parametrize("name", list(COND_CONV_BLOCK_CASES))
def test_cond_conv_inverted_residual_matches_timm_forward_and_both_gradients(name):
    """timm's CondConvResidual (SiLU, sigmoid-gated SE as EfficientNet-CondConv builds it), the routing included:
    ``routing_fn``'s gradients come only through the experts' mixture."""
    case = COND_CONV_BLOCK_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 12, 12, generator=g)
    se_layer = functools.partial(TimmSqueezeExcite, rd_ratio=0.25 / case["exp_ratio"]) if case.get("se") else None
    args = {k: v for k, v in case.items() if k not in ("se", "skip")}
    blk = TimmCondConvResidual(IN_CHANNELS, act_layer=torch.nn.SiLU, se_layer=se_layer, **args)
    assert blk.has_skip == case["skip"]
    with torch.no_grad():
        for conv in (blk.conv_pw, blk.conv_dw, blk.conv_pwl):  # experts that differ, so the routing matters
            conv.weight.normal_(0, (2 / conv.weight[0].numel() * conv.num_experts) ** 0.5, generator=g)
        blk.routing_fn.weight.normal_(0, 1.0, generator=g)
        blk.routing_fn.bias.normal_(0, 0.5, generator=g)
    blk = randomize_batchnorm(blk, x).train()
    module = CondConvResidual(case["out_chs"], blk.conv_pw.out_channels, case["num_experts"],
                              kernel_size=case.get("dw_kernel_size", 3), strides=case.get("stride", 1),
                              padding="SAME" if case.get("pad_type") == "same" else "torch", act="silu",
                              se_channels=blk.se.conv_reduce.out_channels if case.get("se") else 0, se_act="silu",
                              skip=case["skip"])  # fmt: skip
    size = 12 // case.get("stride", 1)
    cotangent = torch.randn((2, case["out_chs"], size, size), generator=g)
    _assert_block_matches_timm(module, blk, IN_CHANNELS, x, cotangent, True, f"CondConvResidual {name}")


def test_cond_conv_refuses_bad_settings_naming_them():
    with pytest.raises(ValueError, match=r"CondConvResidualConfig: num_experts must be a positive int, got 0"):
        CondConvResidualConfig(out_channels=8, expand_channels=16, num_experts=0)
    x, routing = jnp.ones((2, 8, 8, 4)), jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"routing weights must be \(batch, num_experts\) = \(2, 4\), got shape"):
        CondConv(8, num_experts=4).init(jax.random.key(0), x, routing)
    with pytest.raises(ValueError, match=r"num_experts must be a positive int, got True"):
        CondConv(8, num_experts=True).init(jax.random.key(0), x, routing)


def test_an_edited_cond_conv_block_is_refused_naming_the_module():
    from flax_dsconv import ConversionError
    from flax_dsconv.convert.protocol import describe

    with torch.device("meta"):
        model = timm.create_model("efficientnet_cc_b0_4e")
        block = model.blocks[4][0]
        block.routing_fn = torch.nn.Linear(block.routing_fn.in_features, 4, bias=False)
    with pytest.raises(ConversionError, match=r"^blocks\.4\.0\.routing_fn: Linear\(80, 4, bias=False\)"):
        describe(model)
    with torch.device("meta"):
        block.routing_fn = torch.nn.Linear(block.routing_fn.in_features, 4)
        block.conv_dw = TimmCondConv2d(480, 480, 5, groups=480, num_experts=8)
    with pytest.raises(ConversionError, match=r"^blocks\.4\.0: experts .*'conv_dw': 8"):
        describe(model)
    with torch.device("meta"):
        block.conv_dw = torch.nn.Conv2d(480, 480, 5, padding=2, groups=480, bias=False)
    with pytest.raises(ConversionError, match=r"^blocks\.4\.0\.conv_dw: Conv2d, expected a convolution \(CondConv2d\)"):
        describe(model)


# ------------------------------------------------------------------------------------------ anti-aliasing

# timm's aa_layer names for the Flax kinds: 'avg' is AvgPool2d(stride), 'blurpc' BlurPool2d(pad_mode='constant').
TIMM_AA = {"avg": "avg", "blur": "blurpc"}


@pytest.mark.parametrize("size", [(12, 12), (11, 13)], ids=["even", "odd"])
@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("kind", list(TIMM_AA))
def test_anti_alias_pool_matches_timm_forward_and_input_gradient(kind, stride, size):
    from timm.layers.blur_pool import create_aa

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *size, generator=g)
    pool = create_aa(TIMM_AA[kind], channels=5, stride=stride)
    assert type(pool).__name__ == ("AvgPool2d" if kind == "avg" else "BlurPool2d")
    results = {}
    for run, dtype, memory_format in (("exact", torch.float64, torch.contiguous_format),
                                      ("nchw", torch.float32, torch.contiguous_format),
                                      ("nhwc", torch.float32, torch.channels_last)):  # fmt: skip
        xr = x.to(dtype).to(memory_format=memory_format).clone().requires_grad_(True)
        out = copy.deepcopy(pool).to(dtype)(xr)
        cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        (out * cotangent).sum().backward()
        results[run] = ({"output": out.detach().numpy()}, {"input": xr.grad.numpy()})
    cotangent = to_nhwc(torch.randn(results["exact"][0]["output"].shape, generator=torch.Generator().manual_seed(1)))
    out, vjp = jax.vjp(lambda x: anti_alias(x, kind, stride), to_nhwc(x))
    (g_x,) = vjp(cotangent)
    exact, runs = results.pop("exact"), list(results.values())
    label = f"{kind} pool stride {stride} on {size}"
    assert_as_close_as_torch("output", {"output": to_nchw(out)}, [r[0] for r in runs], exact[0], label)
    assert_as_close_as_torch("gradient", {"input": to_nchw(g_x)}, [r[1] for r in runs], exact[1], label)


# (timm block, its arguments on 16 input channels, the Flax module's): SiLU, stride 2, 12 x 12 input.
AA_BLOCK_CASES = {
    "ir_k5_se": (TimmInvertedResidual, dict(out_chs=24, dw_kernel_size=5, exp_ratio=4.0, se=True),
                 lambda blk, **kw: InvertedResidual(24, blk.conv_pw.out_channels, kernel_size=5, se_channels=4,
                                                    se_act="silu", se_gate="sigmoid", **kw)),
    "er_same": (TimmEdgeResidual, dict(out_chs=24, exp_ratio=4.0, pad_type="same"),
                lambda blk, **kw: EdgeResidual(24, blk.conv_exp.out_channels, **kw)),
    "uir_dw_mid": (TimmUniversalInvertedResidual, dict(out_chs=24, dw_kernel_size_start=3, dw_kernel_size_mid=5,
                                                       exp_ratio=4.0, layer_scale_init_value=None),
                   lambda blk, **kw: UniversalInvertedResidual(24, 64, start_kernel_size=3, kernel_size=5, **kw)),
    "uir_dw_start": (TimmUniversalInvertedResidual, dict(out_chs=24, dw_kernel_size_start=5, dw_kernel_size_mid=0,
                                                         exp_ratio=2.0, layer_scale_init_value=None),
                     lambda blk, **kw: UniversalInvertedResidual(24, 32, start_kernel_size=5, kernel_size=0, **kw)),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(TIMM_AA))
@pytest.mark.parametrize("name", list(AA_BLOCK_CASES))
def test_anti_aliased_block_matches_timm_forward_and_both_gradients(name, kind):
    timm_block, args, flax_block = AA_BLOCK_CASES[name]
    args = dict(args)
    if args.pop("se", False):
        args["se_layer"] = functools.partial(TimmSqueezeExcite, rd_ratio=0.25 / args["exp_ratio"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 12, 12, generator=g)
    blk = timm_block(IN_CHANNELS, stride=2, act_layer=torch.nn.SiLU, aa_layer=TIMM_AA[kind], **args)
    blk = randomize_batchnorm(blk, x).train()
    padding = "SAME" if args.get("pad_type") == "same" else "torch"
    module = flax_block(blk, strides=2, act="silu", aa=kind, padding=padding)
    cotangent = torch.randn((2, 24, 6, 6), generator=g)
    _assert_block_matches_timm(module, blk, IN_CHANNELS, x, cotangent, True, f"{kind}-anti-aliased {name}")


def test_anti_aliasing_refuses_bad_settings_naming_the_field():
    with pytest.raises(ValueError, match=r"InvertedResidualConfig: aa='avg' with stride=1; anti-aliased"):
        InvertedResidualConfig(out_channels=8, expand_channels=16, aa="avg")
    with pytest.raises(ValueError, match=r"EdgeResidualConfig: aa must be one of \('none', 'avg', 'blur'\), got 'max'"):
        EdgeResidualConfig(out_channels=8, expand_channels=16, stride=2, aa="max")
    with pytest.raises(ValueError, match=r"aa='blur' needs dw_mid or dw_start to stride"):
        UniversalInvertedResidualConfig(out_channels=8, expand_channels=16, kernel_size=0, end_kernel_size=3, stride=2,
                                        aa="blur")  # fmt: skip
    with pytest.raises(ValueError, match=r"InvertedResidual .*aa='blur' with stride=1"):
        InvertedResidual(8, 16, aa="blur").init(jax.random.key(0), jnp.ones((1, 8, 8, 8)))


@pytest.mark.parametrize("config", [SeparableConfig, InvertedResidualConfig, EdgeResidualConfig])
def test_a_block_config_refuses_a_channel_attention_kind_it_cannot_build(config):
    extra = {} if config is SeparableConfig else {"expand_channels": 16}
    with pytest.raises(ValueError, match=rf"{config.__name__}: se_kind must be one of \['se', 'gc'\], got 'eca'"):
        config(out_channels=8, se_channels=4, se_kind="eca", **extra)
    assert config(out_channels=8, se_channels=4, se_kind="gc", **extra).se_kind == "gc"


def test_an_edited_anti_aliasing_layer_is_refused_naming_the_module():
    from timm.layers.blur_pool import BlurPool2d

    from flax_dsconv import ConversionError
    from flax_dsconv.convert.protocol import describe

    model = timm.create_model("mobilenetv4_conv_blur_medium")
    model.blocks[1][0].dw_mid.aa = BlurPool2d(model.blocks[1][0].dw_mid.conv.out_channels, pad_mode="reflect")
    with pytest.raises(ConversionError, match=r"^blocks\.1\.0\.dw_mid\.aa: BlurPool2d\(.*pad_mode='reflect'"):
        describe(model)
    model = timm.create_model("mobilenetv4_conv_aa_medium")
    model.blocks[0][0].aa = torch.nn.AvgPool2d(2, ceil_mode=True)
    with pytest.raises(ConversionError, match=r"^blocks\.0\.0\.aa: AvgPool2d.*ceil_mode=True"):
        describe(model)
    model.blocks[0][0].aa = torch.nn.MaxPool2d(2)
    with pytest.raises(ConversionError, match=r"^blocks\.0\.0\.aa: MaxPool2d, expected anti-aliasing"):
        describe(model)


# ------------------------------------------------------------------------------------------ space-to-depth

# timm DepthwiseSeparableConv(s2d=1) arguments on 16 channels: its depthwise kernel becomes (k + 1) // 2, padded
# 'SAME' when that is 2, else by the block's rule.
S2D_CASES = {
    "k3_to_2_se": dict(out_chs=24, dw_kernel_size=3, se=True),
    "k5_to_3_torch": dict(out_chs=32, dw_kernel_size=5),
    "k5_to_3_same": dict(out_chs=32, dw_kernel_size=5, pad_type="same"),
}


@pytest.mark.parametrize("size", [12, 11], ids=["even", "odd"])
@pytest.mark.parametrize("name", list(S2D_CASES))
def test_space_to_depth_separable_block_matches_timm_forward_and_both_gradients(name, size):
    case = dict(S2D_CASES[name])
    se_layer = functools.partial(TimmSqueezeExcite, rd_ratio=0.25 / 4) if case.pop("se", False) else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, size, size, generator=g)
    blk = TimmSeparable(IN_CHANNELS, s2d=1, act_layer=torch.nn.SiLU, se_layer=se_layer, **case)
    blk = randomize_batchnorm(blk, x).train()
    kernel = (case["dw_kernel_size"] + 1) // 2
    assert blk.conv_dw.kernel_size == (kernel, kernel) and blk.conv_dw.in_channels == 4 * IN_CHANNELS
    module = DepthwiseSeparableConv(case["out_chs"], kernel_size=kernel, space_to_depth=True, act="silu",
                                    pw_act=False, padding="SAME" if case.get("pad_type") == "same" else "torch",
                                    se_channels=4 if se_layer else 0, se_act="silu", se_gate="sigmoid")  # fmt: skip
    cotangent = torch.randn((2, case["out_chs"], (size + 1) // 2, (size + 1) // 2), generator=g)
    _assert_block_matches_timm(module, blk, IN_CHANNELS, x, cotangent, True, f"space-to-depth {name} at {size}")


def test_space_to_depth_refuses_bad_settings_naming_them():
    from flax_dsconv import ConversionError
    from flax_dsconv.convert.protocol import describe
    from flax_dsconv.models.table import Row

    with pytest.raises(ValueError, match=r"SeparableConfig: space_to_depth=True with stride=2"):
        SeparableConfig(out_channels=8, stride=2, space_to_depth=True)
    with pytest.raises(ValueError, match=r"an? 'ir' block has no space_to_depth"):
        Row(block="ir", out=8, space_to_depth=True)
    model = timm.create_model("efficientnet_x_b3")
    model.blocks[0][0].bn_s2d.act = torch.nn.ReLU()
    with pytest.raises(ConversionError, match=r"^blocks\.0\.0\.bn_s2d\.act: activation relu; expected the block's"):
        describe(model)
    model = timm.create_model("efficientnet_x_b3")
    s2d = model.blocks[0][0].conv_s2d
    model.blocks[0][0].conv_s2d = torch.nn.Conv2d(s2d.in_channels, s2d.out_channels, 2, stride=2, bias=False)
    with pytest.raises(ConversionError, match=r"^blocks\.0\.0\.conv_s2d: padding \(0, 0\); expected TF 'SAME'"):
        describe(model)
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    with torch.device("meta"):  # timm's space-to-depth in an inverted residual, which no timm model has
        model = EfficientNet(decode_arch_def([["ir_r1_k3_s1_e2_c16_d1"], ["ir_r1_k3_s2_e4_c24"]]), stem_size=8)
    with pytest.raises(ConversionError, match=r"^blocks\.0\.0\.conv_s2d: space-to-depth .* in a InvertedResidual"):
        describe(model)


# ------------------------------------------------------------------------------------------ whole models

def test_edge_residual_model_round_trips_bit_exact_through_a_state_dict_and_its_arch_name():
    name = "mobilenet_edgetpu_v2_xs"  # grouped and dense expansion convs
    model = randomize_batchnorm(timm.create_model(name, num_classes=10), (2, 3, 64, 64))
    module, variables = from_torch(model)
    exported = to_torch_state_dict(module, variables, source="timm", arch=name, num_classes=10)
    target = timm.create_model(name, num_classes=10)
    target.load_state_dict(exported, strict=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    module_sd, variables_sd = from_torch(exported, source="timm", arch=name, num_classes=10)
    assert module_sd.config == module.config
    jax.tree.map(np.testing.assert_array_equal, variables_sd, variables)


def test_mixnet_round_trips_bit_exact_through_a_state_dict_and_its_arch_name():
    name = "mixnet_s"  # mixed depthwise convs (3 to 11) and mixed 1x1 expansions and projections
    model = randomize_batchnorm(timm.create_model(name, num_classes=10), (2, 3, 32, 32))
    module, variables = from_torch(model)
    assert {len(b.kernel_sizes) for b in module.config.blocks} == {0, 2, 3, 4, 5}
    assert {(b.expand_splits, b.project_splits) for b in module.config.blocks[1:]} >= {(1, 1), (2, 2), (1, 2)}
    exported = to_torch_state_dict(module, variables, source="timm", arch=name, num_classes=10)
    assert exported.keys() == model.state_dict().keys()
    target = timm.create_model(name, num_classes=10)
    target.load_state_dict(exported, strict=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    module_sd, variables_sd = from_torch(exported, source="timm", arch=name, num_classes=10)
    assert module_sd.config == module.config
    jax.tree.map(np.testing.assert_array_equal, variables_sd, variables)


@pytest.mark.parametrize("name", ["tf_efficientnet_cc_b0_4e", "mobilenetv4_conv_blur_medium", "efficientnet_x_b3"])
def test_cond_conv_anti_aliased_and_space_to_depth_models_round_trip_bit_exact_by_their_arch_names(name):
    """CondConv's flattened experts (and TF 'SAME'), BlurPool2d's unsaved filter, space-to-depth's convs: converted
    from a state_dict by name, exported back by name, loaded strictly, every tensor equal."""
    model = randomize_batchnorm(timm.create_model(name, num_classes=10), (2, 3, 64, 64))
    module, variables = from_torch(model)
    module_sd, variables_sd = from_torch(model.state_dict(), source="timm", arch=name, num_classes=10)
    assert module_sd.config == module.config
    jax.tree.map(np.testing.assert_array_equal, variables_sd, variables)
    exported = to_torch_state_dict(module, variables, source="timm", arch=name, num_classes=10)
    assert exported.keys() == model.state_dict().keys()
    target = timm.create_model(name, num_classes=10)
    target.load_state_dict(exported, strict=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_an_edited_edge_residual_activation_becomes_that_blocks_activation():
    """bn1's activation is the block's, which the config holds per block (test_accounting refuses the edits it
    cannot hold)."""
    model = timm.create_model("efficientnet_es", num_classes=10)
    model.blocks[1][0].bn1.act = torch.nn.ReLU6()
    module, _ = from_torch(model)
    assert [b.act for b in module.config.stages[1]] == ["relu6", "relu"]


# ------------------------------------------------------------------------------------------ norms and attention

def _randomize_affine(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every 1-D parameter of ``module`` redrawn (scales and EvoNorm's ``v`` in [0.5, 1.5), biases N(0, 0.1²)), so
    that no norm is the identity and every parameter gradient is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 if name.endswith("bias")
                        else torch.rand(p.shape, generator=g) + 0.5)  # fmt: skip
    return module


class _Alone(flax_nn.Module):
    """One Flax layer named ``'0'``, as a torch layer alone in an ``nn.Sequential`` is keyed (``0.weight``)."""

    make: functools.partial

    @flax_nn.compact
    def __call__(self, x, train: bool = False):
        return self.make(name="0")(x)


# A timm layer on 32 channels and its Flax twin.
LAYER_CASES = {
    "group_norm_act_group_size": (lambda: TimmGroupNormAct(32, group_size=8, act_layer=torch.nn.SiLU),
                                  functools.partial(GroupNorm, group_size=8, act="silu")),
    "group_norm_groups": (lambda: TimmGroupNormAct(32, num_groups=4, apply_act=False),
                          functools.partial(GroupNorm, groups=4)),
    "layer_norm_act_2d": (lambda: TimmLayerNormAct2d(32, act_layer=torch.nn.SiLU),
                          functools.partial(LayerNorm, act="silu")),
    "evonorm_s0": (lambda: TimmEvoNorm2dS0(32, group_size=8), functools.partial(EvoNormS0, group_size=8, act="silu")),
    "evonorm_s0_no_act": (lambda: TimmEvoNorm2dS0(32, group_size=8, apply_act=False),
                          functools.partial(EvoNormS0, group_size=8)),
    "global_context": (lambda: TimmGlobalContext(32, rd_ratio=0.25, act_layer=torch.nn.SiLU),
                       functools.partial(GlobalContext, 8, act="silu")),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_norm_and_attention_layers_match_timm_forward_and_both_gradients(name):
    """No running statistics in any of them: train and eval compute the same, so eval is the case."""
    timm_layer, flax_layer = LAYER_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 8, 8, generator=g) * 2 + 0.5
    blk = _randomize_affine(torch.nn.Sequential(timm_layer())).eval()
    assert not list(blk.buffers())
    cotangent = torch.randn((2, 32, 8, 8), generator=g)
    _assert_block_matches_timm(_Alone(flax_layer), blk, 32, x, cotangent, False, name)


def _gn(group_size: int) -> functools.partial:
    return functools.partial(TimmGroupNormAct, group_size=group_size)


# timm blocks with grouped convs (group_size), other norms or global context, on 16 channels: the block class, its
# arguments, the Flax block's norm and the activation.
NORM_BLOCK_CASES = {
    "ir_grouped_bn_stride2_se": (TimmInvertedResidual, dict(out_chs=24, stride=2, exp_ratio=4.0, group_size=8,
                                 se_layer=functools.partial(TimmSqueezeExcite, rd_ratio=0.25)), None, "relu"),
    "ir_grouped_gn_gc": (TimmInvertedResidual, dict(out_chs=16, exp_ratio=4.0, group_size=4, norm_layer=_gn(8),
                         se_layer=functools.partial(TimmGlobalContext, rd_ratio=0.0625)),
                         GroupNormConfig(group_size=8), "silu"),
    "ir_evonorm_se_dilated": (TimmInvertedResidual, dict(out_chs=16, exp_ratio=3.0, dilation=2,
                              norm_layer=functools.partial(TimmEvoNorm2dS0, group_size=8),
                              se_layer=functools.partial(TimmSqueezeExcite, rd_ratio=0.25)),
                              EvoNormS0Config(group_size=8), "silu"),
    "ds_grouped_ln_same_stride2": (TimmSeparable, dict(out_chs=24, stride=2, group_size=8, pad_type="same",
                                   norm_layer=TimmLayerNormAct2d), LayerNormConfig(), "silu"),
    "er_gn_groups": (TimmEdgeResidual, dict(out_chs=16, exp_ratio=4.0, group_size=16,
                     norm_layer=functools.partial(TimmGroupNormAct, num_groups=4)),
                     GroupNormConfig(groups=4), "silu"),
}  # fmt: skip


def _flax_norm_block(name: str, blk: torch.nn.Module, norm, act: str, depthwise: str) -> flax_nn.Module:
    """The Flax block of ``blk`` (widths the timm block derives read off its convs), with ``norm`` (None: BatchNorm)
    and ``depthwise``."""
    _, args, _, _ = NORM_BLOCK_CASES[name]
    se = getattr(blk, "se", None)
    attention = {}
    if type(se).__name__ == "SqueezeExcite":
        attention = dict(se_channels=se.conv_reduce.out_channels, se_act=act, se_gate="sigmoid")
    elif type(se).__name__ == "GlobalContext":
        attention = dict(se_channels=se.mlp_scale.fc1.out_channels, se_act=act, se_gate="sigmoid", se_kind="gc")
    common = dict(out_channels=args["out_chs"], stride=args.get("stride", 1), dilation=args.get("dilation", 1),
                  act=act, skip=blk.has_skip, **attention)  # fmt: skip
    if isinstance(blk, TimmInvertedResidual):
        config = InvertedResidualConfig(expand_channels=blk.conv_pw.out_channels,
                                        group_size=args.get("group_size", 1), **common)  # fmt: skip
    elif isinstance(blk, TimmSeparable):
        config = SeparableConfig(group_size=args.get("group_size", 1), **common)
    else:
        config = EdgeResidualConfig(expand_channels=blk.conv_exp.out_channels, groups=blk.conv_exp.groups, **common)
    padding = "SAME" if args.get("pad_type") == "same" else "torch"
    return build_block(config, BlockContext(padding, norm or BatchNormConfig(), None, None, depthwise), "blk")


# Train mode where there are batch statistics: GroupNorm, LayerNorm and EvoNorm-S0 compute the same in both modes.
NORM_BLOCK_RUNS = [pytest.param(name, train, id=f"{name}-{'train' if train else 'eval'}")
                   for name, (_, _, norm, _) in NORM_BLOCK_CASES.items() for train in (False, True)
                   if not train or norm is None]  # fmt: skip


@pytest.mark.parametrize("depthwise", ["xla", "shifted"])
@pytest.mark.parametrize("name,train", NORM_BLOCK_RUNS)
def test_grouped_norm_and_global_context_blocks_match_timm_forward_and_both_gradients(name, train, depthwise):
    cls, args, norm, act = NORM_BLOCK_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 10, 10, generator=g)
    blk = _randomize_affine(cls(IN_CHANNELS, act_layer=ACTS[act], **args))
    blk = randomize_batchnorm(blk, x).train(train)
    if act == "relu":
        nudge_off_kinks(blk, x, train=train)
    if "group_size" in args and cls is not TimmEdgeResidual:
        assert 1 < blk.conv_dw.groups < blk.conv_dw.in_channels
    size = 10 // args.get("stride", 1)
    cotangent = torch.randn((2, args["out_chs"], size, size), generator=g)
    wrapped = torch.nn.Module()  # keyed as the Flax block is named: block.conv_pw.weight
    wrapped.block = blk
    wrapped.forward = blk.forward
    module = _Wrapped(_flax_norm_block(name, blk, norm, act, depthwise))
    _assert_block_matches_timm(module, wrapped, IN_CHANNELS, x, cotangent, train, f"{name} ({depthwise})")


class _Wrapped(flax_nn.Module):
    """A Flax block as a child named ``block``, whose variables then key as ``block.conv_pw.weight``."""

    block: flax_nn.Module

    @flax_nn.compact
    def __call__(self, x, train: bool = False):
        return self.block(x, train)


NORM_MODELS = ["test_efficientnet_evos", "test_efficientnet_gn", "test_efficientnet_ln", "gc_efficientnetv2_rw_t",
               "efficientnet_b0_g8_gn"]  # fmt: skip


@pytest.mark.parametrize("name", NORM_MODELS)
def test_norm_and_global_context_models_round_trip_bit_exact_through_a_state_dict_and_their_arch_name(name):
    model = randomize_batchnorm(_randomize_affine(timm.create_model(name, num_classes=10)), (2, 3, 64, 64))
    module, variables = from_torch(model)
    exported = to_torch_state_dict(module, variables, source="timm", arch=name, num_classes=10)
    assert exported.keys() == model.state_dict().keys()
    target = timm.create_model(name, num_classes=10)
    target.load_state_dict(exported, strict=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    module_sd, variables_sd = from_torch(exported, source="timm", arch=name, num_classes=10)
    assert module_sd.config == module.config
    jax.tree.map(np.testing.assert_array_equal, variables_sd, variables)


def test_evonorm_s0_refuses_an_activation_it_has_no_place_for():
    with pytest.raises(ValueError, match=r"EvoNormS0 '0'.*act='relu'.*expected act='silu'"):
        _Alone(functools.partial(EvoNormS0, group_size=8, act="relu")).init(jax.random.key(0), jnp.ones((1, 4, 4, 16)))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GroupNormConfig(groups=4, group_size=8), r"GroupNormConfig: set exactly one of groups and group_size"),
        (lambda: EvoNormS0Config(), r"EvoNormS0Config: set exactly one of groups and group_size"),
        (lambda: GroupNormConfig(group_size=-8), r"group_size must be an int >= 0, got -8"),
        (lambda: LayerNormConfig(epsilon=0.0), r"LayerNormConfig: epsilon must be a number above 0, got 0.0"),
        (lambda: InvertedResidualConfig(out_channels=8, expand_channels=16, group_size=0),
         r"InvertedResidualConfig: group_size must be a positive int \(1: depthwise\), got 0"),
        (lambda: SeparableConfig(out_channels=8, kernel_size=5, kernel_sizes=(3, 5), group_size=4),
         r"SeparableConfig: group_size=4 with mixed kernel_sizes=\(3, 5\)"),
    ],
)
def test_a_bad_norm_or_group_setting_is_refused_naming_it(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_group_norm_refuses_channels_that_do_not_split_into_its_groups():
    with pytest.raises(ValueError, match=r"GroupNorm '0': 12 channels do not split into group_size=8"):
        _Alone(functools.partial(GroupNorm, group_size=8)).init(jax.random.key(0), jnp.ones((1, 4, 4, 12)))
    module = InvertedResidual(16, 36, group_size=8)
    with pytest.raises(ValueError, match=r"conv_dw: a grouped conv of group_size=8 .* got 36 channels"):
        module.init(jax.random.key(0), jnp.ones((1, 8, 8, 16)))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: setattr(m.blocks[3][0], "se", TimmGlobalContext(128, fuse_add=True)),
         r"^blocks\.3\.0\.se: GlobalContext with use_attn=True, fuse_add=True"),
        (lambda m: setattr(m.blocks[1][0], "bn1", TimmEvoNorm2dS0a(64, group_size=8)),
         r"^blocks\.1\.0\.bn1: EvoNorm2dS0a, expected a norm"),
        (lambda m: setattr(m.blocks[1][0], "bn2", torch.nn.BatchNorm2d(24)),
         r"model mixes BatchNorm \(blocks\.1\.0\.bn2\) and evonorm_s0 norms"),
        (lambda m: setattr(m.blocks[1][0], "bn2", TimmGroupNormAct(24, group_size=8, apply_act=False)),
         r"expected one norm setting across the model, found 2: evonorm_s0 eps=1e-05 at .*; group eps=1e-05 at "
         r"blocks\.1\.0\.bn2"),
    ],
)
def test_the_timm_reader_refuses_a_norm_or_attention_it_cannot_hold_naming_the_module(edit, match):
    from flax_dsconv.convert.protocol import describe

    model = timm.create_model("test_efficientnet_evos")
    edit(model)
    with pytest.raises(ConversionError, match=match):
        describe(model)
