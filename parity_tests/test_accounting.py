"""Every module of a torch model is accounted for: an edited model is refused, naming the module, not converted.

Each supported family gets one edit of each kind (an activation, a pooling, a norm, a conv setting, an extra
module); conversion and the export check must both refuse it with a ConversionError naming the module's path.
"""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
import torchvision
from torch import nn

import torch_ref
from flax_dsconv import ConversionError, from_torch, to_torch_state_dict

tv = torchvision.models


def _set(path: str, value: nn.Module):
    """An edit that puts ``value`` at the dotted module ``path`` (a new attribute if it does not exist)."""

    def edit(model: nn.Module) -> None:
        *parents, last = path.split(".")
        owner = model.get_submodule(".".join(parents)) if parents else model
        if last.isdigit() and isinstance(owner, (nn.Sequential, nn.ModuleList)) and int(last) < len(owner):
            owner[int(last)] = value
        else:
            owner.add_module(last, value)

    return edit


def _stride(path: str):
    def edit(model: nn.Module) -> None:
        model.get_submodule(path).stride = (2, 2)

    return edit


def _group_norm(path: str):
    def edit(model: nn.Module) -> None:
        _set(path, nn.GroupNorm(1, model.get_submodule(path).num_features))(model)

    return edit


def _set_attribute(path: str, name: str, value):
    def edit(model: nn.Module) -> None:
        setattr(model.get_submodule(path), name, value)

    return edit


# mixnet_s's blocks.2.0 depthwise group 2 (7x7, stride 2) as a 9x9.
MIXNET_K9 = nn.Conv2d(48, 48, 9, 2, 4, groups=48, bias=False)
MIXNET_K5_PAD1 = nn.Conv2d(48, 48, 5, 2, 1, groups=48, bias=False)  # its group 1, padded 1 instead of 2

FAMILIES = {
    "torch_ref MobileNetV1": lambda: torch_ref.MobileNetV1(0.25, num_classes=10),
    "torch_ref DepthwiseSeparableConv": lambda: torch_ref.DepthwiseSeparableConv(8, 16),
    "torch_ref DSConv": lambda: torch_ref.DSConv(8, 16),
    "torchvision mobilenet_v2": lambda: tv.mobilenet_v2(width_mult=0.5, num_classes=10),
    "torchvision mobilenet_v3_small": lambda: tv.mobilenet_v3_small(num_classes=10),
    "torchvision efficientnet_b0": lambda: tv.efficientnet_b0(num_classes=10),
    "torchvision efficientnet_v2_s": lambda: tv.efficientnet_v2_s(num_classes=10),
    "torchvision mnasnet0_5": lambda: tv.mnasnet0_5(num_classes=10),
    "timm mobilenetv1_100": lambda: timm.create_model("mobilenetv1_100", num_classes=10),
    "timm mobilenetv2_050": lambda: timm.create_model("mobilenetv2_050", num_classes=10),
    "timm mobilenetv3_small_100": lambda: timm.create_model("mobilenetv3_small_100", num_classes=10),
    "timm mobilenet_edgetpu_v2_xs": lambda: timm.create_model("mobilenet_edgetpu_v2_xs", num_classes=10),
    "timm mobilenetv4_conv_small": lambda: timm.create_model("mobilenetv4_conv_small", num_classes=10),
    "timm mixnet_s": lambda: timm.create_model("mixnet_s", num_classes=10),
}

# family -> kind -> (edit, the path the error must name)
EDITS = {
    "torch_ref MobileNetV1": {
        "activation": (_set("blocks.1.0.act", nn.ReLU6()), "blocks.1.0.act"),
        "pooling": (_set("pool", nn.AdaptiveMaxPool2d(1)), "pool"),
        "norm": (_group_norm("blocks.0.0.bn2"), "blocks.0.0.bn2"),
        "conv setting": (_stride("blocks.0.0.conv_pw"), "blocks.0.0.conv_pw"),
        "extra module": (_set("blocks.2.0.extra", nn.Hardswish()), "blocks.2.0.extra"),
    },
    "torch_ref DepthwiseSeparableConv": {
        "activation": (_set("act", nn.SiLU()), "act"),
        "norm": (_group_norm("bn1"), "bn1"),
        "conv setting": (_stride("conv_pw"), "conv_pw"),
        "extra module": (_set("extra", nn.Dropout(0.1)), "extra"),
    },
    "torch_ref DSConv": {
        "activation": (_set("depthwise_sep_conv.2", nn.ReLU6()), "depthwise_sep_conv.2"),
        "norm": (_group_norm("depthwise_sep_conv.4"), "depthwise_sep_conv.4"),
        "conv setting": (_stride("depthwise_sep_conv.0"), "depthwise_sep_conv.0"),
        "extra module": (_set("depthwise_sep_conv.6", nn.ReLU()), "depthwise_sep_conv.6"),
    },
    "torchvision mobilenet_v2": {
        "activation": (_set("features.2.conv.0.2", nn.SiLU()), "features.2.conv.0.2"),
        "pooling": (_set("avgpool", nn.AdaptiveMaxPool2d(1)), "avgpool"),
        "norm": (_group_norm("features.3.conv.1.1"), "features.3.conv.1.1"),
        "conv setting": (_stride("features.2.conv.2"), "features.2.conv.2"),
        "extra module": (_set("features.4.extra", nn.Hardswish()), "features.4.extra"),
        "head": (_set("classifier", nn.Linear(1280, 10)), "classifier"),
    },
    "torchvision mobilenet_v3_small": {
        "activation": (_set("features.4.block.0.2", nn.ReLU()), "features.4.block.0.2"),
        "pooling": (_set("avgpool", nn.AdaptiveMaxPool2d(1)), "avgpool"),
        "squeeze-excite pooling": (
            _set("features.1.block.1.avgpool", nn.AdaptiveMaxPool2d(1)),
            "features.1.block.1.avgpool",
        ),
        "norm": (_group_norm("features.2.block.1.1"), "features.2.block.1.1"),
        "conv setting": (_stride("features.4.block.3.0"), "features.4.block.3.0"),
        "extra module": (_set("features.2.extra", nn.Dropout(0.5)), "features.2.extra"),
        "head": (_set("classifier.0", nn.Identity()), "classifier.0"),
    },
    # MBConv: features.1.0 without expansion (depthwise, SE, projection), features.2.1 with it and a residual.
    "torchvision efficientnet_b0": {
        "activation": (_set("features.1.0.block.0.2", nn.Mish()), "features.1.0.block.0.2"),
        "projection activation": (_set("features.2.1.block.3.2", nn.SiLU()), "features.2.1.block.3.2"),
        "supported activation": (_set("features.2.1.block.2.scale_activation", nn.Hardsigmoid()), None),
        "pooling": (_set("avgpool", nn.AdaptiveMaxPool2d(1)), "avgpool"),
        "squeeze-excite pooling": (
            _set("features.2.1.block.2.avgpool", nn.AdaptiveMaxPool2d(1)),
            "features.2.1.block.2.avgpool",
        ),
        "norm": (_group_norm("features.2.1.block.1.1"), "features.2.1.block.1.1"),
        "conv setting": (_stride("features.2.1.block.3.0"), "features.2.1.block.3.0"),
        "extra module": (_set("features.3.extra", nn.Hardswish()), "features.3.extra"),
        "stochastic depth": (_set("features.2.1.stochastic_depth", torchvision.ops.StochasticDepth(0.3, "row")), None),
        "batch stochastic depth": (
            _set("features.2.1.stochastic_depth", torchvision.ops.StochasticDepth(0.2, "batch")),
            "features.2.1.stochastic_depth",
        ),
        "head": (_set("classifier", nn.Linear(1280, 10)), "classifier"),
    },
    # FusedMBConv: features.1.1 one conv with a residual, features.2.1 expansion + projection with a residual.
    "torchvision efficientnet_v2_s": {
        "activation": (_set("features.2.1.block.1.2", nn.ReLU()), "features.2.1.block.1.2"),
        "unsupported activation": (_set("features.1.1.block.0.2", nn.Mish()), "features.1.1.block.0.2"),
        "pooling": (_set("avgpool", nn.AdaptiveMaxPool2d(1)), "avgpool"),
        "norm": (_group_norm("features.2.1.block.0.1"), "features.2.1.block.0.1"),
        "conv setting": (_stride("features.2.1.block.1.0"), "features.2.1.block.1.0"),
        "extra module": (_set("features.1.0.extra", nn.ReLU()), "features.1.0.extra"),
    },
    # MNASNet pools with x.mean(), no module: no pooling edit.
    "torchvision mnasnet0_5": {
        "activation": (_set("layers.9.1.layers.5", nn.ReLU6()), "layers.9.1.layers.5"),
        "stem activation": (_set("layers.2", nn.SiLU()), None),  # any supported one: converts
        "norm": (_group_norm("layers.4"), "layers.4"),
        "conv setting": (_stride("layers.6"), "layers.6"),
        "extra module": (_set("layers.10.0.extra", nn.ReLU()), "layers.10.0.extra"),
        "head": (_set("classifier.1", nn.Identity()), "classifier.1"),
    },
    "timm mobilenetv1_100": {
        "activation": (_set("blocks.1.0.bn2.act", nn.SiLU()), "blocks.1.0.bn2.act"),
        "pooling": (_set("global_pool", nn.AdaptiveMaxPool2d(1)), "global_pool"),
        "norm": (_group_norm("blocks.1.0.bn1"), "blocks.1.0.bn1"),
        "conv setting": (_stride("blocks.1.0.conv_pw"), "blocks.1.0.conv_pw"),
        "extra module": (_set("blocks.2.0.extra", nn.ReLU()), "blocks.2.0.extra"),
    },
    "timm mobilenetv2_050": {
        "activation": (_set("blocks.1.0.bn3.act", nn.ReLU()), "blocks.1.0"),
        "pooling": (
            _set("global_pool", timm.layers.SelectAdaptivePool2d(pool_type="max", flatten=True)),
            "global_pool",
        ),
        "norm": (_group_norm("blocks.2.1.bn2"), "blocks.2.1.bn2"),
        "conv setting": (_stride("blocks.1.0.conv_pwl"), "blocks.1.0.conv_pwl"),
        "extra module": (_set("blocks.3.0.extra", nn.ReLU()), "blocks.3.0.extra"),
        "drop path": (_set("blocks.3.0.drop_path", timm.layers.DropPath(0.2)), None),  # that block's drop_path
        "unscaled drop path": (
            _set("blocks.3.0.drop_path", timm.layers.DropPath(0.2, scale_by_keep=False)),
            "blocks.3.0.drop_path",
        ),
    },
    "timm mobilenetv3_small_100": {
        "activation": (_set("blocks.1.0.bn2.act", nn.Mish()), "blocks.1.0.bn2.act"),
        "supported activation": (_set("blocks.0.0.se.gate", nn.Sigmoid()), None),  # converts (test below)
        "pooling": (_set("global_pool", nn.AdaptiveMaxPool2d(1)), "global_pool"),
        "norm": (_set("bn1", nn.BatchNorm2d(16)), None),  # plain BN: converts when the activation is kept
        "norm without its activation": (_set("blocks.1.0.bn1", nn.BatchNorm2d(72)), "blocks.1.0"),
        "conv setting": (_stride("blocks.0.0.se.conv_reduce"), "blocks.0.0.se.conv_reduce"),
        "extra module": (_set("blocks.2.0.se.extra", nn.ReLU()), "blocks.2.0.se.extra"),
        "head": (_set("norm_head", nn.GroupNorm(1, 1024)), "norm_head"),
        "head norm": (_set("norm_head", nn.BatchNorm2d(1024)), None),  # BN then act2: converts (test_mobilenetv4)
    },
    # Edge residual blocks: blocks.1.0 dense and strided, blocks.1.1 grouped with a residual.
    "timm mobilenet_edgetpu_v2_xs": {
        "activation": (_set("blocks.1.0.bn2.act", nn.ReLU()), "blocks.1.0.bn2.act"),  # the projection is linear
        "unsupported activation": (_set("blocks.1.1.bn1.act", nn.Mish()), "blocks.1.1.bn1.act"),
        "supported activation": (_set("blocks.1.0.bn1.act", nn.ReLU6()), None),  # the block's act: converts
        "pooling": (_set("global_pool", nn.AdaptiveMaxPool2d(1)), "global_pool"),
        "norm": (_group_norm("blocks.1.1.bn1"), "blocks.1.1.bn1"),
        "conv setting": (_stride("blocks.1.1.conv_pwl"), "blocks.1.1.conv_pwl"),
        "extra module": (_set("blocks.1.1.extra", nn.ReLU()), "blocks.1.1.extra"),
        "drop path": (_set("blocks.1.1.drop_path", timm.layers.DropPath(0.2)), None),  # that block's drop_path
    },
    # Universal inverted residuals: blocks.2.0 ExtraDW (stride on dw_mid), blocks.2.1 IB with a residual.
    "timm mobilenetv4_conv_small": {
        "activation": (_set("blocks.2.1.dw_mid.bn.act", nn.ReLU6()), "blocks.2.1.dw_mid.bn.act"),  # pw_exp's ReLU
        "start activation": (_set("blocks.2.0.dw_start.bn.act", nn.ReLU()), "blocks.2.0.dw_start.bn.act"),
        "projection activation": (_set("blocks.2.1.pw_proj.bn.act", nn.ReLU()), "blocks.2.1.pw_proj.bn.act"),
        "pooling": (_set("global_pool", nn.AdaptiveMaxPool2d(1)), "global_pool"),
        "norm": (_group_norm("blocks.2.1.pw_exp.bn"), "blocks.2.1.pw_exp.bn"),
        "conv setting": (_stride("blocks.2.1.pw_proj.conv"), "blocks.2.1.pw_proj.conv"),
        "stride placement": (_stride("blocks.2.0.dw_start.conv"), "blocks.2.0.dw_start.conv"),  # dw_mid has it
        "extra module": (_set("blocks.2.1.extra", nn.ReLU()), "blocks.2.1.extra"),
        "squeeze-excite": (_set("blocks.2.1.se", timm.layers.SqueezeExcite(192)), "blocks.2.1.se"),
        "layer scale": (_set("blocks.2.1.layer_scale", timm.layers.LayerScale2d(96)), None),  # converts
        "drop path": (_set("blocks.2.1.drop_path", timm.layers.DropPath(0.2)), None),  # that block's drop_path
        "head": (_group_norm("norm_head"), "norm_head"),
        "head activation": (_set("act2", nn.ReLU()), "act2"),  # a second one, after norm_head's
    },
    # MixedConv2d: blocks.1.0 with 1x1 expansion and projection in 2 groups, blocks.2.0 depthwise 3/5/7 at stride 2,
    # blocks.2.1 depthwise 3/5.
    "timm mixnet_s": {
        "activation": (_set("blocks.2.0.bn2.act", nn.ReLU()), "blocks.2.0"),  # bn1 has the block's SiLU
        "pooling": (_set("global_pool", nn.AdaptiveMaxPool2d(1)), "global_pool"),
        "norm": (_group_norm("blocks.2.0.bn1"), "blocks.2.0.bn1"),
        "conv setting": (_stride("blocks.1.0.conv_pw.1"), "blocks.1.0.conv_pw.1"),
        "split stride": (_stride("blocks.2.1.conv_dw.0"), "blocks.2.1.conv_dw"),  # the other group's is 1
        "split kernel": (_set("blocks.2.0.conv_dw.2", MIXNET_K9), None),  # kernels 3/5/9: converts (test below)
        "split padding": (_set("blocks.2.0.conv_dw.1", MIXNET_K5_PAD1), "blocks.2.0.conv_dw.1"),
        "channel split": (_set_attribute("blocks.2.0.conv_dw", "splits", [50, 47, 47]), "blocks.2.0.conv_dw"),
        "extra module": (_set("blocks.2.0.conv_dw.3", nn.ReLU()), "blocks.2.0.conv_dw.3"),  # a fourth group
        "drop path": (_set("blocks.2.1.drop_path", timm.layers.DropPath(0.2)), None),  # that block's drop_path
    },
}

CASES = [(family, kind) for family, edits in EDITS.items() for kind in edits]


@pytest.mark.parametrize("family,kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_an_edited_module_is_refused_naming_it_by_conversion_and_export(family, kind):
    edit, path = EDITS[family][kind]
    original = FAMILIES[family]()
    module, variables = from_torch(original)
    edited = copy.deepcopy(original)
    edit(edited)
    if path is None:  # an edit the config can express: converts, to something that computes what torch does
        from_torch(edited)
        return
    # The path as a whole dotted name (so 'blocks.1.0' does not match inside 'blocks.1.0.x' by accident).
    pattern = r"(^|[\s(:,])" + re.escape(path) + r"([:\s(,]|$)"
    with pytest.raises(ConversionError, match=pattern):
        from_torch(edited)
    with pytest.raises(ConversionError, match=pattern):
        to_torch_state_dict(module, variables, model=edited)


def test_every_family_gets_every_kind_of_edit():
    """The matrix above covers each family with activation, norm, conv-setting and extra-module edits, and
    pooling wherever the family has a pooling module."""
    for family, edits in EDITS.items():
        assert {"activation", "norm", "conv setting", "extra module"} <= edits.keys(), family
        has_pool = any("Pool" in type(m).__name__ for m in FAMILIES[family]().modules())
        assert not has_pool or "pooling" in edits, family


def test_a_converted_edit_computes_what_the_edited_torch_model_computes():
    """Where the config can express an edit (timm's SE gate hard-sigmoid → sigmoid), the conversion follows it."""
    import jax
    import numpy as np
    from conftest import assert_as_close_as_torch, channels_last, randomize_batchnorm, to_nhwc

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = timm.create_model("mobilenetv3_small_100", num_classes=10)
    model.blocks[0][0].se.gate = nn.Sigmoid()
    model = randomize_batchnorm(model, x)
    module, variables = from_torch(model)
    assert module.config.blocks[0].se_gate == "sigmoid"
    with torch.no_grad():
        torch32 = [{"logits": model(x).numpy()},
                   {"logits": channels_last(model)(x.to(memory_format=torch.channels_last)).numpy()}]  # fmt: skip
        exact = {"logits": copy.deepcopy(model).double()(x.double()).numpy()}
    got = {"logits": np.asarray(jax.jit(module.apply)(variables, to_nhwc(x)))}
    assert_as_close_as_torch("output", got, torch32, exact, "timm mobilenetv3_small_100 with a sigmoid SE gate")


def test_a_changed_mixed_conv_kernel_becomes_that_groups_kernel():
    """The edit above converts: the group's new 9x9 kernel is the Flax group's (test_blocks.py holds mixed convs of
    any kernel sizes to torch)."""
    import numpy as np

    model = timm.create_model("mixnet_s", num_classes=10)
    _set("blocks.2.0.conv_dw.2", copy.deepcopy(MIXNET_K9))(model)
    module, variables = from_torch(model)
    block = module.config.stages[2][0]
    assert (block.kernel_sizes, block.kernel_size) == ((3, 5, 9), 9)
    kernel = variables["params"]["blocks_2_0"]["conv_dw"]["2"]["kernel"]
    weight = model.blocks[2][0].conv_dw["2"].weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(kernel), weight.transpose(2, 3, 1, 0))
