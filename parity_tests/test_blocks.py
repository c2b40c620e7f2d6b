"""Block families against timm's own blocks: the edge residual (fused MBConv) alone, forward and both gradients,
and the timm models built of it, converted whole."""

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
from flax import traverse_util
from kinks import nudge_off_kinks
from timm.models._efficientnet_blocks import EdgeResidual as TimmEdgeResidual
from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite

from flax_dsconv import from_torch, to_torch_state_dict
from flax_dsconv.convert.plan import TO_FLAX, TO_TORCH, check_keys, dotted, plan
from flax_dsconv.nn import EdgeResidual
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


def _variables(module: EdgeResidual, blk: torch.nn.Module) -> tuple[dict, list]:
    """The torch block's weights as the Flax block's variables, by the converter's key plan and layout rules."""
    entries = plan(abstract_variables(module, IN_CHANNELS), dotted)
    state = blk.state_dict()
    check_keys(entries, state, "the timm EdgeResidual")
    flat = {e.flax_key: jnp.asarray(TO_FLAX[e.layout](state[e.torch_key].numpy())) for e in entries}
    return traverse_util.unflatten_dict(flat), entries


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
    module = _flax_block(case, blk)
    variables, entries = _variables(module, blk)  # before a train-mode torch pass moves the running statistics
    size = 16 // case.get("stride", 1)
    cotangent = torch.randn((2, case["out_chs"], size, size), generator=g)

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
            out, state = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=train,
                                      mutable=["batch_stats"])  # fmt: skip
            return out, state["batch_stats"]

        out, vjp, new_stats = jax.vjp(run, params, x, has_aux=True)
        return out, new_stats, *vjp(cotangent)

    out, new_stats, g_params, g_x = forward_and_vjp(variables["params"], to_nhwc(x), to_nhwc(cotangent))
    flat = traverse_util.flatten_dict({"params": g_params, "batch_stats": new_stats})
    by_torch_name = {e.torch_key: np.asarray(TO_TORCH[e.layout](np.asarray(flat[e.flax_key]))) for e in entries}
    label = f"EdgeResidual {name} {'train' if train else 'eval'}"
    torch32 = [outputs["nchw"], outputs["nhwc"]]
    print(assert_as_close_as_torch("output", {"output": to_nchw(out)}, torch32, outputs["exact"], label))
    flax_grads = {"input": to_nchw(g_x), **{k: by_torch_name[k] for k in grads["exact"] if k != "input"}}
    torch32 = [grads["nchw"], grads["nhwc"]]
    print(assert_as_close_as_torch("gradient", flax_grads, torch32, grads["exact"], label + " gradients"))
    if train:
        flax_stats = {k: by_torch_name[k] for k in stats["exact"]}
        torch32 = [stats["nchw"], stats["nhwc"]]
        assert_as_close_as_torch("statistics", flax_stats, torch32, stats["exact"], label + " BatchNorm statistics")


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


def test_an_edited_edge_residual_activation_becomes_that_blocks_activation():
    """bn1's activation is the block's, which the config holds per block (test_accounting refuses the edits it
    cannot hold)."""
    model = timm.create_model("efficientnet_es", num_classes=10)
    model.blocks[1][0].bn1.act = torch.nn.ReLU6()
    module, _ = from_torch(model)
    assert [b.act for b in module.config.stages[1]] == ["relu6", "relu"]
