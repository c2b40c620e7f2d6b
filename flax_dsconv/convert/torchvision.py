"""The reader of torchvision's MobileNetV2 and MobileNetV3: ``features.{i}`` blocks, Sequential positions inside.
EfficientNet and MNASNet are read by :mod:`~flax_dsconv.convert.torchvision_efficientnet`, dispatched by class."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

from flax import linen as nn

from flax_dsconv.convert import torchvision_efficientnet as efficientnet
from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import NameMap, StateDict, Variables
from flax_dsconv.convert.protocol import Described, register_reader
from flax_dsconv.convert.torch_layers import TorchReader, expect_type
from flax_dsconv.models import BUILDERS, MobileNet, MobileNetConfig
from flax_dsconv.models.mobilenet_v2 import V2_TABLE
from flax_dsconv.models.mobilenet_v3 import V3_LARGE, V3_SMALL
from flax_dsconv.nn import BlockConfig, ConvBNActConfig, DepthwiseSeparableConv, InvertedResidualConfig, SeparableConfig
from flax_dsconv.ops.activations import Activation

ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", *efficientnet.ARCHS)

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


def _cna(r: TorchReader, seq: Any, where: str, *, depthwise: bool = False, kernel: int | None = None,
         activation: bool = True) -> tuple[dict[str, Any], Activation]:  # fmt: skip
    """torchvision's Conv2dNormActivation: (conv, bn[, act]); with ``activation=False``, a bare (conv, bn)."""
    if activation:
        expect_type(seq, where, ("Conv2dNormActivation", "ConvBNActivation", "ConvBNReLU"), "a conv-norm-activation")
    if len(seq) not in ((2, 3) if activation else (2,)):
        raise ConversionError(f"{where}: {len(seq)} layers; expected a conv, a BatchNorm and an activation")
    conv = r.conv(seq[0], f"{where}.0", kernel=kernel, stride=1 if kernel == 1 else None, depthwise=depthwise)
    r.bn(seq[1], f"{where}.1")
    return conv, r.act(seq[2], f"{where}.2") if len(seq) > 2 else "identity"


def _classifier(r: TorchReader, model: Any, v3: bool) -> dict[str, Any]:
    """The head after the features: torchvision's ``classifier`` Sequential, exactly as its builders make it."""
    cls = model.classifier
    layout = ("Linear", "activation", "Dropout", "Linear") if v3 else ("Dropout", "Linear")
    if type(cls).__name__ != "Sequential" or len(cls) != len(layout):
        found = f"Sequential of {len(cls)} layers" if type(cls).__name__ == "Sequential" else type(cls).__name__
        raise ConversionError(f"classifier: {found}, expected torchvision's Sequential({', '.join(layout)})")
    if v3:
        r.avg_pool(model.avgpool, "avgpool")
        first, last = r.linear(cls[0], "classifier.0"), r.linear(cls[3], "classifier.3")
        act, dropout = r.act(cls[1], "classifier.1"), r.dropout(cls[2], "classifier.2")
        return dict(head="post_pool", head_channels=first["out"], head_act=act, head_bias=first["bias"],
                    num_classes=last["out"], dropout=dropout)  # fmt: skip
    return dict(dropout=r.dropout(cls[0], "classifier.0"), num_classes=r.linear(cls[1], "classifier.1")["out"])


def _block(r: TorchReader, blk: Any, where: str, v3: bool) -> BlockConfig:
    """One ``features.{i}`` InvertedResidual: [expansion,] depthwise, [squeeze-excite,] projection."""
    expect_type(blk, where, ("InvertedResidual",), "an inverted residual block")
    name = "block" if v3 else "conv"
    layers = list(getattr(blk, name))
    n = len(layers)
    if not v3:  # V2 ends in a bare conv + bn: read them as one (conv, bn) pair
        layers = [*layers[:-2], [layers[-2], layers[-1]]]
    se: dict[str, Any] = {}
    convs = []
    for j, layer in enumerate(layers):
        at = f"{where}.{name}.{j}"
        if type(layer).__name__ == "SqueezeExcitation" and v3:
            r.avg_pool(layer.avgpool, f"{at}.avgpool")
            reduce = r.conv(layer.fc1, f"{at}.fc1", kernel=1, stride=1)
            r.conv(layer.fc2, f"{at}.fc2", kernel=1, stride=1)
            se = dict(se_channels=reduce["out"], se_act=r.act(layer.activation, f"{at}.activation"),
                      se_gate=r.act(layer.scale_activation, f"{at}.scale_activation"))  # fmt: skip
        else:
            convs.append((at, layer))
    if len(convs) not in (2, 3):
        raise ConversionError(f"{where}: {n} layers; expected [expansion,] depthwise, [squeeze-excite,] projection")
    *expand_at, dw_at, pwl_at = convs
    expand = [_cna(r, layer, at, kernel=1) for at, layer in expand_at]
    dw, act = _cna(r, dw_at[1], dw_at[0], depthwise=True)
    if not v3:  # the pair's torch paths are conv.{n-2} and conv.{n-1}
        conv, bn = pwl_at[1]
        pwl = r.conv(conv, f"{where}.conv.{n - 2}", kernel=1, stride=1)
        r.bn(bn, f"{where}.conv.{n - 1}")
    else:
        pwl, pwl_act = _cna(r, pwl_at[1], pwl_at[0], kernel=1)
        if pwl_act != "identity":
            raise ConversionError(f"{pwl_at[0]}: activation {pwl_act} after the projection; expected none")
    if expand and expand[0][1] != act:
        raise ConversionError(f"{expand_at[0][0]}.2: activation {expand[0][1]} after the expansion, but {act} after "
                              "the depthwise conv; the block has one activation")  # fmt: skip
    shape = dict(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"])
    common = dict(act=act, skip=blk.use_res_connect, **se)
    if expand:
        return InvertedResidualConfig(**shape, expand_channels=expand[0][0]["out"], **common)
    return SeparableConfig(**shape, **common)


def _config(model: Any) -> tuple[MobileNetConfig, dict[int, str]]:
    r = TorchReader()
    v3 = type(model).__name__ == "MobileNetV3"
    if type(model).__name__ not in ("MobileNetV2", "MobileNetV3"):
        raise ConversionError(f"unsupported torchvision model class {type(model).__name__}; expected "
                              f"MobileNetV2, MobileNetV3, {', '.join(efficientnet.CLASSES)}")  # fmt: skip
    feats = list(model.features)
    stem, stem_act = _cna(r, feats[0], "features.0")
    flat = [_block(r, blk, f"features.{idx}", v3) for idx, blk in enumerate(feats[1:-1], start=1)]
    last, last_act = _cna(r, feats[-1], f"features.{len(feats) - 1}", kernel=1)
    head = _classifier(r, model, v3)
    if v3:
        flat.append(ConvBNActConfig(out_channels=last["out"], kernel_size=last["k"], act=last_act))
    else:
        head.update(head="pre_pool", head_channels=last["out"], head_act=last_act)
    config = MobileNetConfig(
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
    return config, r.claimed


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
        if type(model).__name__ in efficientnet.CLASSES:
            config, claimed = efficientnet.config(model)
            names = efficientnet.names(config, mnasnet=type(model).__name__ == "MNASNet")
            arch = efficientnet.find_arch(config) or type(model).__name__
            return Described(arch, self.source, MobileNet(config), config.in_channels, names, claimed)
        config, claimed = _config(model)
        v3 = type(model).__name__ == "MobileNetV3"
        arch = "mobilenet_v2" if not v3 else "mobilenet_v3_large" if len(model.features) > 14 else "mobilenet_v3_small"
        return Described(arch, self.source, MobileNet(config), config.in_channels, _names(config), claimed)

    def skeleton(self, arch: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
        import torchvision

        if arch not in ARCHS:
            raise ConversionError(f"torchvision arch must be one of {ARCHS}, got {arch!r}")
        if arch in efficientnet.ARCHS:
            return efficientnet.skeleton(arch, config)
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
        arch = arch or efficientnet.find_arch(c)
        if arch in efficientnet.ARCHS:
            return arch, {**base, "dropout": c.dropout}
        if arch is None:  # torchvision's V3 small has 11 bottlenecks and a conv, large 15 and a conv
            v3 = "mobilenet_v3_large" if len(c.blocks) > 12 else "mobilenet_v3_small"
            arch = "mobilenet_v2" if c.head == "pre_pool" else v3
        if arch != "mobilenet_v2":
            base["dilated"] = any(b.dilation > 1 for b in c.blocks)
        if arch in BUILDERS and "width_mult" not in config:
            base["width_mult"] = _width(module, arch, {**base, **config})
        return arch, base


register_reader(TorchvisionReader())
