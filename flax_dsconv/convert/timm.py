"""The reader of timm's MobileNets: timm's ``EfficientNet`` and ``MobileNetV3`` classes, read block by block.

A custom ``EfficientNet(block_args=...)`` converts as long as it is built of the blocks read here.
"""

from __future__ import annotations

from typing import Any, Literal

from flax import linen as nn

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import StateDict, Variables, dotted
from flax_dsconv.convert.protocol import Described, register_reader
from flax_dsconv.convert.torch_layers import TorchReader, act_name
from flax_dsconv.models import MobileNet, MobileNetConfig
from flax_dsconv.nn import BlockConfig, ConvBNActConfig, DepthwiseSeparableConv, InvertedResidualConfig, SeparableConfig
from flax_dsconv.ops.activations import Activation

PREFIXES = ("mobilenetv1_", "mobilenetv2_", "mobilenetv3_", "tf_mobilenetv3_")


def _config(model: Any) -> MobileNetConfig:
    r = TorchReader()
    kind = type(model).__name__
    if kind not in ("EfficientNet", "MobileNetV3"):
        raise ConversionError(f"unsupported timm model class {kind}; expected timm MobileNet V1/V2/V3")
    stem = r.conv(model.conv_stem, "conv_stem")
    r.bn(model.bn1, "bn1")
    stages = []
    for s, stage in enumerate(model.blocks):
        blocks: list[BlockConfig] = []
        for i, blk in enumerate(stage):
            where = f"blocks.{s}.{i}"
            name = type(blk).__name__
            if type(getattr(blk, "aa", None)).__name__ not in ("NoneType", "Identity"):
                raise ConversionError(f"{where}: anti-aliased downsampling ({type(blk.aa).__name__}) is not supported")
            block: BlockConfig
            se: dict[str, Any] = {}
            if getattr(blk, "se", None) is not None and type(blk.se).__name__ != "Identity":
                se = dict(se_channels=blk.se.conv_reduce.out_channels, se_act=act_name(blk.se.act1, where + ".se"),
                          se_gate=act_name(blk.se.gate, where + ".se"))  # fmt: skip
            if name == "DepthwiseSeparableConv":
                dw, pw = r.conv(blk.conv_dw, where), r.conv(blk.conv_pw, where)
                r.bn(blk.bn1, where)
                r.bn(blk.bn2, where)
                act, pw_act = act_name(blk.bn1.act, where), act_name(blk.bn2.act, where)
                if pw_act not in ("identity", act):
                    raise ConversionError(f"{where}: pointwise activation {pw_act} differs from {act}")
                block = SeparableConfig(out_channels=pw["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"],
                                        act=act, pw_act=pw_act != "identity", skip=blk.has_skip, **se)  # fmt: skip
            elif name == "InvertedResidual":
                pw, dw, pwl = r.conv(blk.conv_pw, where), r.conv(blk.conv_dw, where), r.conv(blk.conv_pwl, where)
                for bn in (blk.bn1, blk.bn2, blk.bn3):
                    r.bn(bn, where)
                act = act_name(blk.bn1.act, where)
                if (act_name(blk.bn2.act, where), act_name(blk.bn3.act, where)) != (act, "identity"):
                    raise ConversionError(f"{where}: activations {blk.bn1.act}, {blk.bn2.act}, {blk.bn3.act}; "
                                          f"expected {act} after the expansion and depthwise convs, none after the "
                                          "projection")  # fmt: skip
                block = InvertedResidualConfig(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"],
                                               dilation=dw["d"], expand_channels=pw["out"], act=act,
                                               skip=blk.has_skip, **se)  # fmt: skip
            elif name == "ConvBnAct":
                conv = r.conv(blk.conv, where)
                r.bn(blk.bn1, where)
                block = ConvBNActConfig(out_channels=conv["out"], kernel_size=conv["k"], stride=conv["s"],
                                        dilation=conv["d"], act=act_name(blk.bn1.act, where),
                                        skip=blk.has_skip)  # fmt: skip
            else:
                raise ConversionError(f"{where}: unsupported timm block {name}")
            blocks.append(block)
        stages.append(tuple(blocks))

    head: Literal["none", "pre_pool", "post_pool"] = "none"
    head_act: Activation = "relu"
    head_channels, head_bias = 0, False
    if type(model.conv_head).__name__ != "Identity":
        h = r.conv(model.conv_head, "conv_head")
        head_channels, head_bias = h["out"], h["bias"]
        if kind == "EfficientNet":
            r.bn(model.bn2, "bn2")
            head, head_act = "pre_pool", act_name(model.bn2.act, "bn2")
        else:
            if type(model.norm_head).__name__ != "Identity":
                raise ConversionError("timm norm_head after pooling is not supported")
            head, head_act = "post_pool", act_name(model.act2, "act2")
    if getattr(model.global_pool, "pool_type", "avg") != "avg":
        raise ConversionError(f"only average pooling is supported, got {model.global_pool}")
    classifier = model.classifier
    return MobileNetConfig(
        stages=tuple(stages),
        stem_channels=stem["out"],
        stem_kernel=stem["k"],
        stem_stride=stem["s"],
        stem_act=act_name(model.bn1.act, "bn1"),
        head=head,
        head_channels=head_channels,
        head_act=head_act,
        head_bias=head_bias,
        num_classes=getattr(classifier, "out_features", 0),
        dropout=float(model.drop_rate),
        in_channels=model.conv_stem.in_channels,
        padding=r.padding(),
        norm=r.norm(),
    )


class TimmReader:
    source = "timm"

    def describe(self, model: Any) -> Described:
        config = _config(model)
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        return Described(arch, self.source, MobileNet(config), config.in_channels, dotted)

    def skeleton(self, arch: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
        import timm

        if not arch or not arch.startswith(PREFIXES):
            raise ConversionError(f"timm arch must be a MobileNet model name ({', '.join(PREFIXES)}...), got {arch!r}")
        return timm.create_model(arch, pretrained=False, **config)

    def export_target(
        self, module: nn.Module, variables: Variables, arch: str | None, config: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        if isinstance(module, DepthwiseSeparableConv):
            raise ConversionError(f"{self.source} has no DepthwiseSeparableConv layout; use source='torch_ref'")
        if arch is None:
            raise ConversionError("a timm export needs arch= (the timm model name, e.g. 'mobilenetv3_large_100') "
                                  "or model= (the timm model to load into)")  # fmt: skip
        return arch, {"num_classes": module.config.num_classes, "in_chans": module.config.in_channels}


register_reader(TimmReader())
