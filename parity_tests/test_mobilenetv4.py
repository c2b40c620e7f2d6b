"""MobileNetV4's conv models against timm: the universal inverted residual alone (forward and both gradients,
every variant), the models converted whole (logits and every stage), the head's norm after pooling, a bit-exact
round trip, and the MobileNetV4 models the reader refuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from conftest import (
    assert_as_close_as_torch,
    assert_model_matches_torch,
    randomize_batchnorm,
    to_nchw,
    to_nhwc,
    torch_runs,
)
from flax import traverse_util
from kinks import nudge_off_kinks
from timm.models._efficientnet_blocks import UniversalInvertedResidual as TimmUIR
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.mobilenetv3 import MobileNetV3

from flax_dsconv import from_torch, to_torch_state_dict
from flax_dsconv.convert.plan import TO_FLAX, TO_TORCH, check_keys, dotted, plan
from flax_dsconv.convert.protocol import describe
from flax_dsconv.models import MobileNetConfig
from flax_dsconv.nn import UniversalInvertedResidual, UniversalInvertedResidualConfig
from flax_dsconv.shapes import abstract_variables

IN_CHANNELS = 16

# timm UniversalInvertedResidual arguments on 16 channels (a: start, k: middle, e: end depthwise kernel, 0 for
# none), and whether the block adds its input. layer_scale_init_value is timm's 1e-5 where given, else none.
UIR_CASES = {
    "extra_dw": dict(a=3, k=5, e=0, out_chs=16, exp_ratio=4.0, skip=True),
    "extra_dw_stride2": dict(a=5, k=5, e=0, out_chs=24, stride=2, exp_ratio=3.0, skip=False),  # stride on dw_mid
    "ib": dict(a=0, k=3, e=0, out_chs=16, exp_ratio=2.0, skip=True),
    "ib_stride2": dict(a=0, k=3, e=0, out_chs=24, stride=2, exp_ratio=6.0, skip=False),
    "convnext_like_stride2": dict(a=3, k=0, e=0, out_chs=24, stride=2, exp_ratio=4.0, skip=False),  # on dw_start
    "ffn": dict(a=0, k=0, e=0, out_chs=16, exp_ratio=2.0, skip=True),
    "end_only_stride2": dict(a=0, k=0, e=3, out_chs=24, stride=2, exp_ratio=2.0, skip=False),  # on dw_end
    "all_three": dict(a=3, k=3, e=5, out_chs=16, exp_ratio=2.0, skip=True),
    "layer_scale": dict(a=3, k=3, e=0, out_chs=16, exp_ratio=4.0, layer_scale_init_value=1e-5, skip=True),
    "same_stride2": dict(a=3, k=5, e=0, out_chs=24, stride=2, pad_type="same", exp_ratio=2.0, skip=False),
    "same_start_stride2": dict(a=5, k=0, e=0, out_chs=24, stride=2, pad_type="same", exp_ratio=2.0, skip=False),
    "dilated": dict(a=3, k=3, e=0, out_chs=16, dilation=2, exp_ratio=2.0, skip=True),
    "noskip": dict(a=0, k=3, e=0, out_chs=16, noskip=True, exp_ratio=2.0, skip=False),
}


def _timm_block(case: dict) -> torch.nn.Module:
    args = {k: v for k, v in case.items() if k not in ("a", "k", "e", "skip")}
    args.setdefault("layer_scale_init_value", None)
    blk = TimmUIR(IN_CHANNELS, dw_kernel_size_start=case["a"], dw_kernel_size_mid=case["k"],
                  dw_kernel_size_end=case["e"], act_layer=torch.nn.ReLU, **args)  # fmt: skip
    if case.get("layer_scale_init_value"):
        with torch.no_grad():  # timm's 1e-5 would make the block's output nearly the residual alone
            blk.layer_scale.gamma.copy_(torch.rand(blk.layer_scale.gamma.shape) + 0.5)
    return blk


def _flax_block(case: dict, blk: torch.nn.Module) -> UniversalInvertedResidual:
    return UniversalInvertedResidual(
        case["out_chs"],
        blk.pw_exp.conv.out_channels,
        start_kernel_size=case["a"],
        kernel_size=case["k"],
        end_kernel_size=case["e"],
        strides=case.get("stride", 1),
        dilation=case.get("dilation", 1),
        padding="SAME" if case.get("pad_type") == "same" else "torch",
        layer_scale=bool(case.get("layer_scale_init_value")),
        skip=case["skip"],
    )


def _variables(module: UniversalInvertedResidual, blk: torch.nn.Module) -> tuple[dict, list]:
    """The torch block's weights as the Flax block's variables, by the converter's key plan and layout rules."""
    entries = plan(abstract_variables(module, IN_CHANNELS), dotted)
    state = blk.state_dict()
    check_keys(entries, state, "the timm UniversalInvertedResidual")
    flat = {e.flax_key: jnp.asarray(TO_FLAX[e.layout](state[e.torch_key].numpy())) for e in entries}
    return traverse_util.unflatten_dict(flat), entries


def test_uir_cases_build_the_timm_variant_they_name():
    """The stride sits where the case says (dw_mid, else dw_start, else dw_end) and layer scale is there."""
    for name, case in UIR_CASES.items():
        blk = _timm_block(case)
        assert blk.has_skip == case["skip"], name
        strides = {n: getattr(blk, n).conv.stride[0] for n, k in (("dw_start", "a"), ("dw_mid", "k"), ("dw_end", "e"))
                   if case[k]}  # fmt: skip
        assert sum(s > 1 for s in strides.values()) == (case.get("stride", 1) > 1), (name, strides)
        assert (type(blk.layer_scale).__name__ == "LayerScale2d") == ("layer_scale_init_value" in case), name


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(UIR_CASES))
def test_uir_matches_timm_forward_and_both_gradients(name, train):
    case = UIR_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, IN_CHANNELS, 16, 16, generator=g)
    blk = randomize_batchnorm(_timm_block(case), x).train(train)
    nudge_off_kinks(blk, x, train=train)  # no ReLU input within fp32 rounding of 0 (kinks.py)
    module = _flax_block(case, blk)
    variables, entries = _variables(module, blk)  # before a train-mode torch pass moves the running statistics
    size = 16 // case.get("stride", 1)
    cotangent = torch.randn((2, case["out_chs"], size, size), generator=g)

    outputs, grads, stats = torch_runs(blk, x, cotangent, train)

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
    label = f"UniversalInvertedResidual {name} {'train' if train else 'eval'}"
    torch32 = [outputs["nchw"], outputs["nhwc"]]
    print(assert_as_close_as_torch("output", {"output": to_nchw(out)}, torch32, outputs["exact"], label))
    # Every parameter timm has (layer_scale.gamma among them) has its Flax twin's gradient.
    assert grads["exact"].keys() - {"input"} <= by_torch_name.keys()
    flax_grads = {"input": to_nchw(g_x), **{k: by_torch_name[k] for k in grads["exact"] if k != "input"}}
    torch32 = [grads["nchw"], grads["nhwc"]]
    print(assert_as_close_as_torch("gradient", flax_grads, torch32, grads["exact"], label + " gradients"))
    if train:
        flax_stats = {k: by_torch_name[k] for k in stats["exact"]}
        torch32 = [stats["nchw"], stats["nhwc"]]
        assert_as_close_as_torch("statistics", flax_stats, torch32, stats["exact"], label + " BatchNorm statistics")


def test_uir_refuses_a_stride_without_a_depthwise_conv_to_take_it():
    module = UniversalInvertedResidual(16, 32, kernel_size=0, strides=2)
    with pytest.raises(ValueError, match=r"strides=2 needs a depthwise conv.*every depthwise kernel size is 0"):
        abstract_variables(module, 16)


def test_uir_refuses_nchw_input_naming_its_channels():
    module = UniversalInvertedResidual(16, 64, start_kernel_size=3)
    variables = abstract_variables(module, 16)
    with pytest.raises(ValueError, match=r"expected NHWC input with 16 channels.*NCHW\?"):
        jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, 16, 8, 8), jnp.float32))


# ------------------------------------------------------------------------------------------ whole models


# The paper's names for the UIR variants, by (start depthwise, middle depthwise) present.
VARIANTS = {(True, True): "ExtraDW", (False, True): "IB", (True, False): "ConvNeXt-like", (False, False): "FFN"}


@pytest.mark.parametrize("name,variants", [
    ("mobilenetv4_conv_small", {"ExtraDW", "IB", "ConvNeXt-like"}),
    ("mobilenetv4_conv_medium", {"ExtraDW", "ConvNeXt-like", "FFN"}),
])  # fmt: skip
def test_the_zoo_models_compared_whole_hold_every_uir_variant_and_the_head_norm(name, variants):
    # test_zoo.py compares their logits and stages; this says what that comparison covers.
    with torch.device("meta"):
        model = timm.create_model(name)
    config = describe(model).module.config
    assert {VARIANTS[b.start_kernel_size > 0, b.kernel_size > 0] for b in config.blocks
            if isinstance(b, UniversalInvertedResidualConfig)} == variants  # fmt: skip
    assert config.head == "post_pool" and config.head_norm


def test_an_anti_aliased_uir_reads_its_pool_as_the_blocks_stride():
    """In the _aa models the UIR's dw_mid runs at stride 1 and an AvgPool2d downsamples: the block's stride is the
    pool's. With the first stage's pool removed, its conv has stride 1: a model of its own, which converts so."""
    model = timm.create_model("mobilenetv4_conv_aa_medium", num_classes=10)
    model.blocks[0][0].aa = torch.nn.Identity()
    config = from_torch(model)[0].config
    first, uir = config.stages[0][0], config.stages[1][0]
    assert (first.stride, first.aa) == (1, "none")
    assert (uir.stride, uir.aa) == (2, "avg")


def test_mobilenetv4_round_trips_bit_exact_through_a_state_dict_and_its_arch_name():
    name = "mobilenetv4_conv_small"
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


def _layer_scale_mobilenet() -> MobileNetV3:
    """A small timm MobileNetV3 of ExtraDW and ConvNeXt-like blocks with layer scale (as the hybrids have; they are
    compared whole in test_zoo.py), random gammas."""
    arch = [["cn_r1_k3_s1_c16"], ["uir_r1_a3_k5_s2_e4_c24", "uir_r1_a3_k0_s1_e2_c24"]]
    model = MobileNetV3(decode_arch_def(arch), num_classes=10, stem_size=16, num_features=64, head_bias=False,
                        head_norm=True, norm_layer=torch.nn.BatchNorm2d, act_layer=torch.nn.ReLU,
                        layer_scale_init_value=1e-5)  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "gamma"):
                m.gamma.copy_(torch.rand(m.gamma.shape) + 0.5)
    return model


def test_layer_scale_converts_computes_and_round_trips_bit_exact():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = randomize_batchnorm(_layer_scale_mobilenet(), x)
    module, _, summary = assert_model_matches_torch(model, x, "MobileNetV3 with layer scale")
    print(summary)
    assert [b.layer_scale for b in module.config.stages[1]] == [True, True]
    _, variables = from_torch(model)
    target = _layer_scale_mobilenet()
    target.load_state_dict(to_torch_state_dict(module, variables, model=target), strict=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_a_plain_batchnorm_head_norm_before_act2_computes_what_torch_does():
    """norm_head as a BatchNorm2d without its activation, then V3's act2 (hard-swish): the head's norm and act."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = timm.create_model("mobilenetv3_small_100", num_classes=10)
    model.norm_head = torch.nn.BatchNorm2d(1024)
    module, _, summary = assert_model_matches_torch(
        randomize_batchnorm(model, x), x, "mobilenetv3_small_100 + head norm"
    )
    print(summary)
    assert (module.config.head_norm, module.config.head_act) == (True, "hard_swish")


def test_the_head_norm_needs_more_than_one_value_per_channel_in_train_mode_as_in_torch():
    model = timm.create_model("mobilenetv4_conv_small", num_classes=10).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.randn(1, 3, 64, 64))
    module, variables = from_torch(model)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input shape \(1, 1, 1, 1280\)"):
        jax.eval_shape(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)


def test_saves_written_before_head_norm_still_load_and_a_head_norm_round_trips(tmp_path):
    import json

    import flax_dsconv

    module, variables = from_torch(timm.create_model("mobilenetv3_small_100", num_classes=10))
    flax_dsconv.save(tmp_path / "v3", module, variables)
    info = json.loads((tmp_path / "v3" / "config.json").read_text())
    del info["config"]["head_norm"]  # as every save before the field existed
    (tmp_path / "v3" / "config.json").write_text(json.dumps(info))
    assert flax_dsconv.load(tmp_path / "v3")[0].config == module.config
    v4, v4_variables = from_torch(timm.create_model("mobilenetv4_conv_small", num_classes=10))
    flax_dsconv.save(tmp_path / "v4", v4, v4_variables)
    loaded, loaded_variables = flax_dsconv.load(tmp_path / "v4")
    assert loaded.config == v4.config and loaded.config.head_norm
    jax.tree.map(np.testing.assert_array_equal, loaded_variables, v4_variables)


def test_head_norm_is_refused_without_a_post_pool_head():
    with pytest.raises(ValueError, match=r"head_norm=True is the post_pool head's norm; head='pre_pool'"):
        MobileNetConfig(stages=(), head="pre_pool", head_channels=8, head_norm=True)
