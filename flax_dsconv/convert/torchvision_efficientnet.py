"""The reader of torchvision's EfficientNet (V1 ``efficientnet_b0``..``b7``, V2 ``efficientnet_v2_s/m/l``) and
MNASNet (``mnasnet0_5``..``mnasnet1_3``), into the same block configs as timm's EfficientNets.

torchvision's ``MBConv`` is an :class:`InvertedResidualConfig` with squeeze-excite (SiLU, sigmoid gate), or a
:class:`SeparableConfig` when its expand ratio is 1; ``FusedMBConv`` an :class:`EdgeResidualConfig`, or a
:class:`ConvBNActConfig` with a residual when its expand ratio is 1. MNASNet's stem ends in a depthwise separable
conv, then ``_InvertedResidual`` stacks. :class:`~flax_dsconv.convert.torchvision.TorchvisionReader` dispatches
here by class.

Each block's ``StochasticDepth`` (row mode) becomes its config's ``drop_path`` rate, as timm's ``DropPath``
does; a state_dict does not record it, so the skeleton it is read into has torchvision's default
(``stochastic_depth_prob=0.2``) unless given.
"""

from __future__ import annotations

import functools
from typing import Any

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import NameMap
from flax_dsconv.convert.torch_layers import TorchReader, expect_type
from flax_dsconv.models import MobileNetConfig
from flax_dsconv.nn import (
    BlockConfig,
    ConvBNActConfig,
    EdgeResidualConfig,
    InvertedResidualConfig,
    SeparableConfig,
)
from flax_dsconv.ops.activations import Activation

EFFICIENTNET_ARCHS = (*(f"efficientnet_b{i}" for i in range(8)), "efficientnet_v2_s", "efficientnet_v2_m",
                      "efficientnet_v2_l")  # fmt: skip
MNASNET_ARCHS = ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3")
ARCHS = EFFICIENTNET_ARCHS + MNASNET_ARCHS
CLASSES = ("EfficientNet", "MNASNet")
# The constructor arguments a state_dict's model can be built with (MNASNet's alpha is in the arch name; a
# norm_layer or a block table would be code, not arguments).
ARGUMENTS = {"EfficientNet": ("num_classes", "dropout", "stochastic_depth_prob"), "MNASNet": ("num_classes", "dropout")}

# Positions inside torchvision's blocks (``block`` Sequentials of Conv2dNormActivation), by Flax block kind.
_Positions = dict[tuple[str, ...], str]
_EFFICIENTNET: dict[str, _Positions] = {
    "ir": {("conv_pw",): "0.0", ("bn1",): "0.1", ("conv_dw",): "1.0", ("bn2",): "1.1",
           ("se", "conv_reduce"): "2.fc1", ("se", "conv_expand"): "2.fc2", ("conv_pwl",): "3.0", ("bn3",): "3.1"},
    "ds": {("conv_dw",): "0.0", ("bn1",): "0.1", ("se", "conv_reduce"): "1.fc1", ("se", "conv_expand"): "1.fc2",
           ("conv_pw",): "2.0", ("bn2",): "2.1"},
    "er": {("conv_exp",): "0.0", ("bn1",): "0.1", ("conv_pwl",): "1.0", ("bn2",): "1.1"},
    "conv": {("conv",): "0.0", ("bn1",): "0.1"},
}  # fmt: skip
# MNASNet: an _InvertedResidual's ``layers`` positions; the stem's separable conv sits in the model's ``layers``.
_MNASNET_IR: _Positions = {("conv_pw",): "0", ("bn1",): "1", ("conv_dw",): "3", ("bn2",): "4", ("conv_pwl",): "6",
                          ("bn3",): "7"}  # fmt: skip
_MNASNET_DS: _Positions = {("conv_dw",): "3", ("bn1",): "4", ("conv_pw",): "6", ("bn2",): "7"}


def _cna(r: TorchReader, seq: Any, where: str, **conv: Any) -> tuple[dict[str, Any], Activation]:
    """torchvision's Conv2dNormActivation (conv, BatchNorm[, activation]): the conv's settings (``conv``:
    :meth:`TorchReader.conv`'s checks) and the activation (``'identity'`` when it has none)."""
    expect_type(seq, where, ("Conv2dNormActivation",), "a conv-norm-activation")
    if len(seq) not in (2, 3):
        raise ConversionError(f"{where}: {len(seq)} layers; expected a conv, a BatchNorm and an activation")
    out = r.conv(seq[0], f"{where}.0", **conv)
    r.bn(seq[1], f"{where}.1")
    return out, r.act(seq[2], f"{where}.2") if len(seq) > 2 else "identity"


def _linear_projection(r: TorchReader, seq: Any, where: str) -> dict[str, Any]:
    conv, act = _cna(r, seq, where, kernel=1, stride=1)
    if act != "identity":
        raise ConversionError(f"{where}.2: activation {act} after the projection; expected none")
    return conv


def _stochastic_depth(r: TorchReader, blk: Any, where: str) -> float:
    """A block's StochasticDepth rate; only row mode (one draw per example) is what the Flax blocks do."""
    at = f"{where}.stochastic_depth"
    expect_type(blk.stochastic_depth, at, ("StochasticDepth",), "stochastic depth")
    if blk.stochastic_depth.mode != "row":
        raise ConversionError(f"{at}: StochasticDepth(mode={blk.stochastic_depth.mode!r}) drops the branch of the "
                              "whole batch at once; the Flax blocks drop per example (mode='row')")  # fmt: skip
    r.claim(blk.stochastic_depth, at)
    return float(blk.stochastic_depth.p)


def _se(r: TorchReader, se: Any, where: str) -> dict[str, Any]:
    expect_type(se, where, ("SqueezeExcitation",), "squeeze-excite")
    r.avg_pool(se.avgpool, f"{where}.avgpool")
    reduce = r.conv(se.fc1, f"{where}.fc1", kernel=1, stride=1)
    r.conv(se.fc2, f"{where}.fc2", kernel=1, stride=1)
    return dict(se_channels=reduce["out"], se_act=r.act(se.activation, f"{where}.activation"),
                se_gate=r.act(se.scale_activation, f"{where}.scale_activation"))  # fmt: skip


def _efficientnet_block(r: TorchReader, blk: Any, where: str) -> BlockConfig:
    """One MBConv ([expand,] depthwise, squeeze-excite, project) or FusedMBConv (k x k expand, project; or one
    k x k conv when it does not expand)."""
    expect_type(blk, where, ("MBConv", "FusedMBConv"), "an MBConv or FusedMBConv block")
    layers, at = list(blk.block), f"{where}.block"
    common = dict(skip=blk.use_res_connect, drop_path=_stochastic_depth(r, blk, where))
    if type(blk).__name__ == "FusedMBConv":
        if len(layers) not in (1, 2):
            raise ConversionError(f"{at}: {len(layers)} layers; expected a k x k conv [and a 1x1 projection]")
        exp, act = _cna(r, layers[0], f"{at}.0")
        shape = dict(kernel_size=exp["k"], stride=exp["s"], dilation=exp["d"], act=act, **common)
        if len(layers) == 1:
            return ConvBNActConfig(out_channels=exp["out"], **shape)
        pwl = _linear_projection(r, layers[1], f"{at}.1")
        return EdgeResidualConfig(out_channels=pwl["out"], expand_channels=exp["out"], **shape)
    if len(layers) not in (3, 4):
        raise ConversionError(f"{at}: {len(layers)} layers; expected [expansion,] depthwise, squeeze-excite, "
                              "projection")  # fmt: skip
    n = len(layers)
    expand = [_cna(r, layers[0], f"{at}.0", kernel=1, stride=1)] if n == 4 else []
    dw, act = _cna(r, layers[n - 3], f"{at}.{n - 3}", depthwise=True)
    se = _se(r, layers[n - 2], f"{at}.{n - 2}")
    pwl = _linear_projection(r, layers[n - 1], f"{at}.{n - 1}")
    if expand and expand[0][1] != act:
        raise ConversionError(f"{at}.0.2: activation {expand[0][1]} after the expansion, but {act} after the "
                              "depthwise conv; the block has one activation")  # fmt: skip
    shape = dict(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"], act=act)
    if expand:
        return InvertedResidualConfig(**shape, expand_channels=expand[0][0]["out"], **se, **common)
    return SeparableConfig(**shape, **se, **common)


def _classifier(r: TorchReader, cls: Any) -> dict[str, Any]:
    if type(cls).__name__ != "Sequential" or len(cls) != 2:
        found = f"Sequential of {len(cls)} layers" if type(cls).__name__ == "Sequential" else type(cls).__name__
        raise ConversionError(f"classifier: {found}, expected torchvision's Sequential(Dropout, Linear)")
    return dict(dropout=r.dropout(cls[0], "classifier.0"), num_classes=r.linear(cls[1], "classifier.1")["out"])


def _efficientnet(r: TorchReader, model: Any) -> dict[str, Any]:
    # Paths by child name, not position: a module added to a Sequential is then named as torch names it.
    feats = list(model.features.named_children())
    stem, stem_act = _cna(r, feats[0][1], f"features.{feats[0][0]}")
    stages = []
    for s, stage in feats[1:-1]:
        expect_type(stage, f"features.{s}", ("Sequential",), "a stage of blocks")
        stages.append(tuple(_efficientnet_block(r, blk, f"features.{s}.{i}") for i, blk in stage.named_children()))
    head, head_act = _cna(r, feats[-1][1], f"features.{feats[-1][0]}", kernel=1, stride=1)
    r.avg_pool(model.avgpool, "avgpool")
    return dict(stages=tuple(stages), stem=stem, stem_act=stem_act, head_channels=head["out"], head_act=head_act,
                in_channels=feats[0][1][0].in_channels, **_classifier(r, model.classifier))  # fmt: skip


def _mnasnet_block(r: TorchReader, blk: Any, where: str) -> InvertedResidualConfig:
    """One ``_InvertedResidual``: ``layers`` = 1x1 conv, BN, act, depthwise conv, BN, act, 1x1 conv, BN."""
    expect_type(blk, where, ("_InvertedResidual",), "MNASNet's inverted residual block")
    seq, at = blk.layers, f"{where}.layers"
    if len(seq) != 8:
        raise ConversionError(f"{at}: {len(seq)} layers; expected 1x1 conv, BN, act, depthwise conv, BN, act, "
                              "1x1 conv, BN")  # fmt: skip
    exp = r.conv(seq[0], f"{at}.0", kernel=1, stride=1)
    r.bn(seq[1], f"{at}.1")
    act = r.act(seq[2], f"{at}.2")
    dw = r.conv(seq[3], f"{at}.3", depthwise=True)
    r.bn(seq[4], f"{at}.4")
    dw_act = r.act(seq[5], f"{at}.5")
    if dw_act != act:
        raise ConversionError(f"{at}.5: activation {dw_act} after the depthwise conv, but {act} after the "
                              "expansion; the block has one activation")  # fmt: skip
    pwl = r.conv(seq[6], f"{at}.6", kernel=1, stride=1)
    r.bn(seq[7], f"{at}.7")
    return InvertedResidualConfig(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"],
                                  expand_channels=exp["out"], act=act, skip=blk.apply_residual)  # fmt: skip


def _mnasnet(r: TorchReader, model: Any) -> dict[str, Any]:
    seq = model.layers
    if len(seq) != 17:
        raise ConversionError(f"layers: {len(seq)} layers; expected torchvision's MNASNet: stem conv, BN, act (0-2), "
                              "separable conv (3-7), six stacks (8-13), head conv, BN, act (14-16)")  # fmt: skip
    stem = r.conv(seq[0], "layers.0")
    r.bn(seq[1], "layers.1")
    stem_act = r.act(seq[2], "layers.2")
    dw = r.conv(seq[3], "layers.3", depthwise=True)
    r.bn(seq[4], "layers.4")
    act = r.act(seq[5], "layers.5")
    pw = r.conv(seq[6], "layers.6", kernel=1, stride=1)
    r.bn(seq[7], "layers.7")
    separable = SeparableConfig(out_channels=pw["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"],
                                act=act, pw_act=False)  # fmt: skip
    stages: list[tuple[BlockConfig, ...]] = [(separable,)]
    for s in range(8, 14):
        expect_type(seq[s], f"layers.{s}", ("Sequential",), "a stack of blocks")
        stages.append(tuple(_mnasnet_block(r, blk, f"layers.{s}.{i}") for i, blk in seq[s].named_children()))
    head = r.conv(seq[14], "layers.14", kernel=1, stride=1)
    r.bn(seq[15], "layers.15")
    return dict(stages=tuple(stages), stem=stem, stem_act=stem_act, head_channels=head["out"],
                head_act=r.act(seq[16], "layers.16"), in_channels=seq[0].in_channels,
                **_classifier(r, model.classifier))  # fmt: skip


def config(model: Any) -> tuple[MobileNetConfig, dict[int, str]]:
    """The Flax config of a torchvision EfficientNet or MNASNet, and the torch modules read (ids to paths)."""
    r = TorchReader()
    read = _efficientnet(r, model) if type(model).__name__ == "EfficientNet" else _mnasnet(r, model)
    stem = read.pop("stem")
    config = MobileNetConfig(stem_channels=stem["out"], stem_kernel=stem["k"], stem_stride=stem["s"], head="pre_pool",
                             padding=r.padding(), norm=r.norm(), **read)  # fmt: skip
    return config, r.claimed


def names(config: MobileNetConfig, mnasnet: bool) -> NameMap:
    """torchvision's layout: EfficientNet's ``features.{stage + 1}.{i}.block.{j}``, MNASNet's
    ``layers.{stage + 7}.{i}.layers.{j}`` (its stage 0, the separable conv, at ``layers.3``-``layers.7``)."""
    top = "layers" if mnasnet else "features"
    stem, bn, head, head_bn = (("layers.0", "layers.1", "layers.14", "layers.15") if mnasnet else
                               ("features.0.0", "features.0.1", *(f"features.{len(config.stages) + 1}.{j}"
                                                                  for j in (0, 1))))  # fmt: skip
    table: dict[tuple[str, ...], tuple[str, bool]] = {
        ("conv_stem",): (stem, False),
        ("bn1",): (bn, False),
        ("conv_head",): (head, False),
        ("bn2",): (head_bn, False),
        ("classifier",): ("classifier.1", False),
    }
    for s, stage in enumerate(config.stages):
        for i, b in enumerate(stage):
            if mnasnet:
                prefix, positions = (top, _MNASNET_DS) if s == 0 else (f"{top}.{s + 7}.{i}.layers", _MNASNET_IR)
            else:
                prefix, positions = f"{top}.{s + 1}.{i}.block", _EFFICIENTNET[b.kind]
            for path, pos in positions.items():
                table[(f"blocks_{s}_{i}", *path)] = (f"{prefix}.{pos}", False)

    def lookup(path: tuple[str, ...]) -> tuple[str, bool]:
        if path not in table:
            raise ConversionError(f"torchvision has no layer for Flax module {'/'.join(path)}")
        return table[path]

    return lookup


def skeleton(arch: str, config: dict[str, Any]) -> Any:
    """torchvision's ``arch`` built with ``config`` (torchvision's defaults for what a state_dict does not record:
    dropout, EfficientNet's stochastic depth)."""
    import torchvision

    kind = "MNASNet" if arch in MNASNET_ARCHS else "EfficientNet"
    unknown = sorted(config.keys() - set(ARGUMENTS[kind]))
    if unknown:
        raise ConversionError(f"torchvision {arch} takes no argument {unknown}; it takes {sorted(ARGUMENTS[kind])}")
    return getattr(torchvision.models, arch)(weights=None, **config)


@functools.cache
def _signatures(family: tuple[str, ...]) -> dict[tuple[int, int], str]:
    """(stem channels, number of blocks) of each arch of ``family``, from torchvision's own tables."""
    import torch
    import torchvision

    out = {}
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        for arch in family:
            model = getattr(torchvision.models, arch)()
            mnasnet = arch in MNASNET_ARCHS
            stem = model.layers[0] if mnasnet else model.features[0][0]
            blocks = sum(type(m).__name__ in ("MBConv", "FusedMBConv", "_InvertedResidual") for m in model.modules())
            out[(stem.out_channels, blocks + mnasnet)] = arch  # MNASNet's separable conv is a block here
    return out


def find_arch(config: MobileNetConfig) -> str | None:
    """The torchvision EfficientNet or MNASNet with ``config``'s stem width and block count, if one has them
    (SiLU stem: EfficientNet; ReLU stem, then a separable conv and a 1280-wide head: MNASNet)."""
    first = config.blocks[0] if config.blocks else None
    if config.head != "pre_pool" or first is None:
        return None
    if config.stem_act == "silu":
        family = EFFICIENTNET_ARCHS
    elif config.stem_act == "relu" and first.kind == "ds" and config.head_channels == 1280:
        family = MNASNET_ARCHS
    else:
        return None
    return _signatures(family).get((config.stem_channels, len(config.blocks)))
