"""The reader of torchvision's MobileNetV2 and MobileNetV3: ``features.{i}`` blocks, Sequential positions inside."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

from flax import linen as nn

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import NameMap, StateDict, Variables
from flax_dsconv.convert.protocol import Described, register_reader
from flax_dsconv.convert.torch_layers import TorchReader, act_name
from flax_dsconv.models import BUILDERS, MobileNet, MobileNetConfig
from flax_dsconv.models.mobilenet_v2 import V2_TABLE
from flax_dsconv.models.mobilenet_v3 import V3_LARGE, V3_SMALL
from flax_dsconv.nn import BlockConfig, ConvBNActConfig, DepthwiseSeparableConv, InvertedResidualConfig, SeparableConfig
from flax_dsconv.ops.activations import Activation

ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")

# torchvision MobileNetV2 block internals: Sequential positions of each Flax sub-module.
_TV_V2_DS = {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1", "bn2": "2"}
_TV_V2_IR = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "conv_pwl": "2", "bn3": "3"}


def _names(config: MobileNetConfig) -> NameMap:
    """torchvision's layout: ``features.{i}`` per block, Sequential positions inside each."""
    v3 = config.head == "post_pool"
    names: dict[tuple[str, ...], tuple[str, bool]] = {
        ("conv_stem",): ("features.0.0", False),
        ("bn1",): ("features.0.1", False),
    }
    blocks = [(f"blocks_{s}_{i}", b) for s, stage in enumerate(config.stages) for i, b in enumerate(stage)]
    for idx, (f, b) in enumerate(blocks, start=1):
        p = f"features.{idx}"
        if b.kind == "conv":
            names[(f, "conv")] = (f"{p}.0", False)
            names[(f, "bn1")] = (f"{p}.1", False)
            continue
        ir = b.kind == "ir"
        if v3:
            seq: list[Any] = [("conv_pw", "bn1")] if ir else []
            seq.append(("conv_dw", "bn2" if ir else "bn1"))
            if getattr(b, "se_channels", 0):
                seq.append("se")
            seq.append(("conv_pwl", "bn3") if ir else ("conv_pw", "bn2"))
            for j, item in enumerate(seq):
                if item == "se":
                    names[(f, "se", "conv_reduce")] = (f"{p}.block.{j}.fc1", False)
                    names[(f, "se", "conv_expand")] = (f"{p}.block.{j}.fc2", False)
                else:
                    names[(f, item[0])] = (f"{p}.block.{j}.0", False)
                    names[(f, item[1])] = (f"{p}.block.{j}.1", False)
        else:
            for name, pos in (_TV_V2_IR if ir else _TV_V2_DS).items():
                names[(f, name)] = (f"{p}.conv.{pos}", False)
    if v3:
        names[("conv_head",)] = ("classifier.0", True)
        names[("classifier",)] = ("classifier.3", False)
    else:
        names[("conv_head",)] = (f"features.{len(blocks) + 1}.0", False)
        names[("bn2",)] = (f"features.{len(blocks) + 1}.1", False)
        names[("classifier",)] = ("classifier.1", False)

    def lookup(path: tuple[str, ...]) -> tuple[str, bool]:
        if path not in names:
            raise ConversionError(f"torchvision has no layer for Flax module {'/'.join(path)}")
        return names[path]

    return lookup


def _cna(r: TorchReader, seq: Any, where: str) -> tuple[dict[str, Any], Activation]:
    """torchvision's Conv2dNormActivation: (conv, bn[, act])."""
    conv = r.conv(seq[0], where)
    r.bn(seq[1], where)
    return conv, act_name(seq[2], where) if len(seq) > 2 else "identity"


def _config(model: Any) -> MobileNetConfig:
    r = TorchReader()
    v3 = type(model).__name__ == "MobileNetV3"
    if type(model).__name__ not in ("MobileNetV2", "MobileNetV3"):
        raise ConversionError(f"unsupported torchvision model class {type(model).__name__}")
    feats = list(model.features)
    stem, stem_act = _cna(r, feats[0], "features.0")
    flat: list[BlockConfig] = []
    for idx, blk in enumerate(feats[1:-1], start=1):
        where = f"features.{idx}"
        layers = list(blk.block if v3 else blk.conv)
        if not v3:  # V2 ends in a bare conv + bn; view it as one (conv, bn) pair
            layers = [*layers[:-2], [layers[-2], layers[-1]]]
        se: dict[str, Any] = {}
        convs = []
        for layer in layers:
            if type(layer).__name__ == "SqueezeExcitation":
                se = dict(se_channels=layer.fc1.out_channels, se_act=act_name(layer.activation, where),
                          se_gate=act_name(layer.scale_activation, where))  # fmt: skip
            else:
                convs.append(_cna(r, layer, where))
        *expand, (dw, act), (pwl, _) = convs
        shape = dict(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"])
        common = dict(act=act, skip=blk.use_res_connect, **se)
        if expand:
            flat.append(InvertedResidualConfig(**shape, expand_channels=expand[0][0]["out"], **common))
        else:
            flat.append(SeparableConfig(**shape, **common))
    last, last_act = _cna(r, feats[-1], f"features.{len(feats) - 1}")
    cls = list(model.classifier)
    if v3:
        flat.append(ConvBNActConfig(out_channels=last["out"], kernel_size=last["k"], act=last_act))
        head = dict(head="post_pool", head_channels=cls[0].out_features, head_act=act_name(cls[1], "classifier.1"),
                    head_bias=cls[0].bias is not None, num_classes=cls[3].out_features, dropout=cls[2].p)  # fmt: skip
    else:
        head = dict(head="pre_pool", head_channels=last["out"], head_act=last_act,
                    num_classes=cls[1].out_features, dropout=cls[0].p)  # fmt: skip
    return MobileNetConfig(
        stages=_group_stages(flat, _STAGES.get((type(model).__name__, len(feats)))),
        stem_channels=stem["out"],
        stem_kernel=stem["k"],
        stem_stride=stem["s"],
        stem_act=stem_act,
        in_channels=feats[0][0].in_channels,
        padding=r.padding(),
        norm=r.norm(),
        **head,
    )


# Blocks per stage of torchvision's tables (by class and len(features)), as the Flax builders group them: the
# parameter names (blocks_{stage}_{i}) then agree even where neighbouring stages round to one width.
_STAGES = {
    ("MobileNetV2", 19): tuple(n for _, _, n, _ in V2_TABLE),
    ("MobileNetV3", 17): (*(len(stage) for stage in V3_LARGE), 1),
    ("MobileNetV3", 13): (*(len(stage) for stage in V3_SMALL), 1),
}


def _group_stages(blocks: list[BlockConfig], sizes: tuple[int, ...] | None) -> tuple[tuple[BlockConfig, ...], ...]:
    """Group a flat block list into stages of ``sizes``; for a custom block list (other sizes), a new stage at
    each stride > 1, width or kind change."""
    if sizes is not None and sum(sizes) == len(blocks):
        ends = list(itertools.accumulate(sizes))
        return tuple(tuple(blocks[end - n : end]) for n, end in zip(sizes, ends, strict=True))
    stages: list[list[BlockConfig]] = []
    for b in blocks:
        prev = stages[-1][-1] if stages else None
        if (
            prev is None
            or b.stride > 1
            or b.out_channels != prev.out_channels
            or (b.kind == "conv") != (prev.kind == "conv")
        ):
            stages.append([])
        stages[-1].append(b)
    return tuple(tuple(s) for s in stages)



def _channels(config: MobileNetConfig) -> tuple[Any, ...]:
    return (config.stem_channels, config.head_channels,
            *((b.out_channels, getattr(b, "expand_channels", 0), getattr(b, "se_channels", 0))
              for b in config.blocks))  # fmt: skip


def _width(module: MobileNet, arch: str, kwargs: dict[str, Any]) -> float:
    """The width_mult whose torchvision model has ``module``'s channels. Widths are rounded to multiples of 8, so
    the last block's ratio to its base width can miss (32/96 for 0.35): the builders, which round as torchvision
    does, are searched over 0.05 steps; the ratio is the fallback (its mismatch is then reported)."""
    options = {k: kwargs[k] for k in ("dilated", "reduced_tail") if k in kwargs}
    target = _channels(module.config)
    for w in (round(0.05 * i, 2) for i in range(1, 61)):
        if _channels(BUILDERS[arch](w, **options).config) == target:
            return w
    last = {"mobilenet_v2": 320, "mobilenet_v3_large": 160, "mobilenet_v3_small": 96}[arch]
    last //= 2 if options.get("reduced_tail") else 1
    return module.config.blocks[-2 if arch != "mobilenet_v2" else -1].out_channels / last


class TorchvisionReader:
    source = "torchvision"

    def describe(self, model: Any) -> Described:
        config = _config(model)
        v3 = type(model).__name__ == "MobileNetV3"
        arch = "mobilenet_v2" if not v3 else "mobilenet_v3_large" if len(model.features) > 14 else "mobilenet_v3_small"
        return Described(arch, self.source, MobileNet(config), config.in_channels, _names(config))

    def skeleton(self, arch: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
        import torchvision

        if arch not in ARCHS:
            raise ConversionError(f"torchvision arch must be one of {ARCHS}, got {arch!r}")
        # torchvision's MobileNetV3 swallows unknown keywords (a misspelt dilated= would be ignored): check them.
        from torchvision.models import mobilenetv2, mobilenetv3

        takes = (mobilenetv2.MobileNetV2.__init__,) if arch == "mobilenet_v2" else (
            mobilenetv3._mobilenet_v3_conf, mobilenetv3.MobileNetV3.__init__)  # fmt: skip
        allowed = {n for f in takes for n, p in inspect.signature(f).parameters.items()
                   if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "arch", "inverted_residual_setting",
                                                                           "last_channel"}  # fmt: skip
        unknown = sorted(config.keys() - allowed)
        if unknown:
            raise ConversionError(f"torchvision {arch} takes no argument {unknown}; it takes {sorted(allowed)}")
        return getattr(torchvision.models, arch)(weights=None, **config)

    def export_target(
        self, module: nn.Module, variables: Variables, arch: str | None, config: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        if isinstance(module, DepthwiseSeparableConv):
            raise ConversionError(f"{self.source} has no DepthwiseSeparableConv layout; use source='torch_ref'")
        assert isinstance(module, MobileNet)
        c = module.config
        base: dict[str, Any] = {"num_classes": c.num_classes}
        if arch is None:  # torchvision's V3 small has 11 bottlenecks and a conv, large 15 and a conv
            v3 = "mobilenet_v3_large" if len(c.blocks) > 12 else "mobilenet_v3_small"
            arch = "mobilenet_v2" if c.head == "pre_pool" else v3
        if arch != "mobilenet_v2":
            base["dilated"] = any(b.dilation > 1 for b in c.blocks)
        if arch in BUILDERS and "width_mult" not in config:
            base["width_mult"] = _width(module, arch, {**base, **config})
        return arch, base


register_reader(TorchvisionReader())
