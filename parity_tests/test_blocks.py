"""Block families against timm's own blocks: the edge residual (fused MBConv), MixNet's mixed-conv inverted
residual, grouped convs, GroupNorm / LayerNorm / EvoNorm-S0 and global context, alone, forward and both gradients,
and the timm models built of them, converted whole."""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from conftest import assert_as_close_as_torch, channels_last, randomize_batchnorm, to_nchw, to_nhwc
from flax import linen as flax_nn
from flax import traverse_util
from kinks import nudge_off_kinks
from timm.layers import EvoNorm2dS0 as TimmEvoNorm2dS0
from timm.layers import EvoNorm2dS0a as TimmEvoNorm2dS0a
from timm.layers import GlobalContext as TimmGlobalContext
from timm.layers import GroupNormAct as TimmGroupNormAct
from timm.layers import LayerNormAct2d as TimmLayerNormAct2d
from timm.models._efficientnet_blocks import DepthwiseSeparableConv as TimmSeparable
from timm.models._efficientnet_blocks import EdgeResidual as TimmEdgeResidual
from timm.models._efficientnet_blocks import InvertedResidual as TimmInvertedResidual
from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite

from flax_dsconv import ConversionError, from_torch, to_torch_state_dict
from flax_dsconv.convert.plan import TO_FLAX, TO_TORCH, check_keys, dotted, plan
from flax_dsconv.nn import (
    BatchNormConfig,
    BlockContext,
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
    build_block,
    split_channels,
)
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
    flat = {e.flax_key: jnp.asarray(TO_FLAX[e.layout](state[e.torch_key].numpy())) for e in entries}
    return traverse_util.unflatten_dict(flat), entries


def _assert_block_matches_timm(
    module, blk: torch.nn.Module, in_channels: int, x: torch.Tensor, cotangent: torch.Tensor, train: bool, label: str
) -> None:
    """The Flax ``module`` with ``blk``'s weights against ``blk``: output, input and parameter gradients (and in
    train mode the updated BatchNorm statistics) by the float64-referenced rule, both torch memory formats setting
    the bound."""
    variables, entries = _variables(module, blk, in_channels)  # before a train-mode pass moves the statistics
    runs = {"exact": copy.deepcopy(blk).double(), "nchw": copy.deepcopy(blk), "nhwc": channels_last(blk)}
    outputs, grads, stats = {}, {}, {}
    for run, m in runs.items():
        m.train(train)
        xr = x.double() if run == "exact" else x.to(memory_format=torch.channels_last) if run == "nhwc" else x
        xr = xr.clone().requires_grad_(True)
        out = m(xr)
        (out * cotangent.to(out.dtype)).sum().backward()
        outputs[run] = {"output": out.detach().numpy()}
        grads[run] = {"input": xr.grad.numpy(), **{k: p.grad.numpy() for k, p in m.named_parameters()}}
        stats[run] = {k: v.numpy() for k, v in m.state_dict().items() if k.endswith(("running_mean", "running_var"))}

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
