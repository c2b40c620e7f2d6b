"""EfficientNet (Tan & Le 2019), EfficientNet-Lite, EfficientNet-EdgeTPU-S/M/L (Gupta & Tan 2019) and TinyNet
(Han et al. 2020): stage tables as data, compound scaling as one function, and timm's names for them.

The table rows, :class:`Arch` and :func:`build_efficientnet` are shared with ``efficientnet_v2.py`` and
``edgetpu.py``: every EfficientNet-family network is a table plus the rules that scale it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.config import MobileNetConfig, check_width, make_divisible
from flax_dsconv.models.network import MobileNet
from flax_dsconv.nn import (
    BatchNormConfig,
    BlockConfig,
    ConvBNActConfig,
    EdgeResidualConfig,
    InvertedResidualConfig,
    SeparableConfig,
)
from flax_dsconv.ops.activations import Activation

Kind = Literal["ds", "ir", "er", "conv"]
DepthTrunc = Literal["ceil", "round"]
HeadScaling = Literal["width", "none", "up"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One row of a stage table: ``repeats`` blocks of one ``kind`` (``'ds'`` depthwise separable, ``'ir'``
    inverted residual / MBConv, ``'er'`` edge residual / fused MBConv, ``'conv'`` conv + BN + act), the first
    with ``stride``, the others with stride 1.

    ``expand``: the expansion ratio (of the block's input channels); ``se``: the squeeze-excite width as a
    fraction of the block's input channels (0: none); ``group_size``: channels per group of an edge residual's
    k x k conv (0: dense); ``skip=False``: never add the input (otherwise added at stride 1 with equal
    channels); ``expand_from``: expand from this many channels (width-scaled) instead of the input's, the
    EdgeTPU models' first block.
    """

    kind: Kind
    repeats: int
    kernel: int
    stride: int
    out: int
    expand: float = 1.0
    se: float = 0.0
    group_size: int = 0
    skip: bool = True
    expand_from: int = 0


Stage = tuple[Row, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arch:
    """A base network (its stage table, stem, head and activation) and the rules that scale it.

    ``scale_stem``: width-scale the stem's channels (Lite and TinyNet keep 32); ``head_scaling``: ``'width'``
    scales the head's channels, ``'none'`` keeps them, ``'up'`` scales them up only; ``depth_trunc``: a
    stage's scaled repeats are ``ceil(n·d)`` or ``round(n·d)`` (TinyNet); ``fix_first_last``: the first and last
    stages keep their depth (Lite); ``round_limit``: :func:`make_divisible`'s (0 for EfficientNetV2-B).
    """

    table: tuple[Stage, ...]
    act: Activation
    stem_channels: int = 32
    stem_kernel: int = 3
    head_channels: int = 1280
    scale_stem: bool = True
    head_scaling: HeadScaling = "width"
    depth_trunc: DepthTrunc = "ceil"
    fix_first_last: bool = False
    round_limit: float = 0.9


def scale_depth(repeats: tuple[int, ...], multiplier: float, trunc: DepthTrunc = "ceil") -> tuple[int, ...]:
    """A stage's repeats per row, scaled by ``multiplier``: the stage's total is scaled (``ceil`` or ``round``,
    at least 1), then shared out to its rows from the last, so the first row (often the strided one) grows last.

    >>> scale_depth((1, 3), 1.1)  # ceil(4.4) = 5 blocks, the extra one in the second row
    (1, 4)
    """
    total = sum(repeats)
    target = math.ceil(total * multiplier) if trunc == "ceil" else max(1, round(total * multiplier))
    scaled: list[int] = []
    for n in reversed(repeats):
        share = max(1, round(n / total * target))
        scaled.insert(0, share)
        total, target = total - n, target - share
    return tuple(scaled)


def _block(row: Row, in_ch: int, out: int, stride: int, act: Activation, expand_from: int) -> BlockConfig:
    skip = row.skip and stride == 1 and in_ch == out
    if row.kind == "conv":
        return ConvBNActConfig(out_channels=out, kernel_size=row.kernel, stride=stride, act=act, skip=skip)
    mid = in_ch if row.kind == "ds" else make_divisible((expand_from or in_ch) * row.expand)
    common: dict[str, Any] = dict(out_channels=out, kernel_size=row.kernel, stride=stride, act=act, skip=skip)
    if row.se:  # a fraction of the input, taken of the expanded width (mid·se/expand): it rounds as timm's does
        common.update(se_channels=round(mid * (row.se / row.expand)), se_act=act, se_gate="sigmoid")
    if row.kind == "ds":
        return SeparableConfig(**common)
    if row.kind == "ir":
        return InvertedResidualConfig(expand_channels=mid, **common)
    return EdgeResidualConfig(expand_channels=mid, groups=mid // row.group_size if row.group_size else 1, **common)


def build_efficientnet(
    arch: Arch,
    width_multiplier: float,
    depth_multiplier: float | tuple[float, ...],
    *,
    num_classes: int,
    tf: bool,
    dropout: float,
    in_channels: int,
    dtype: Any | None,
    where: str,
) -> MobileNet:
    """``arch`` scaled: every width ``make_divisible(c·width_multiplier, 8, arch.round_limit)``, every stage's
    repeats by :func:`scale_depth` (``depth_multiplier``: one for all stages or one per stage). ``tf``: the
    TF-ported weights' SAME padding and BatchNorm epsilon 1e-3. ``where`` names the builder in errors.

    >>> model = build_efficientnet(EFFICIENTNET_B0, 1.1, 1.2, num_classes=10, tf=False, dropout=0.0,
    ...                            in_channels=3, dtype=None, where="efficientnet")
    """
    check_width(width_multiplier, where)
    depths = depth_multiplier if isinstance(depth_multiplier, tuple) else (depth_multiplier,) * len(arch.table)
    if len(depths) != len(arch.table) or not all(
        isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d > 0 for d in depths
    ):
        raise ValueError(f"{where}: depth_multiplier must be a finite number above 0, or one per stage "
                         f"({len(arch.table)}), got {depth_multiplier!r}")  # fmt: skip

    def ch(channels: int) -> int:
        return make_divisible(channels * width_multiplier, round_limit=arch.round_limit)

    stem = ch(arch.stem_channels) if arch.scale_stem else arch.stem_channels
    in_ch = stem
    stages: list[tuple[BlockConfig, ...]] = []
    for s, (stage, depth) in enumerate(zip(arch.table, depths, strict=True)):
        fixed = arch.fix_first_last and s in (0, len(arch.table) - 1)
        repeats = scale_depth(tuple(row.repeats for row in stage), 1.0 if fixed else depth, arch.depth_trunc)
        blocks: list[BlockConfig] = []
        for row, n in zip(stage, repeats, strict=True):
            for i in range(n):
                out = ch(row.out)
                expand_from = ch(row.expand_from) if row.expand_from else 0
                blocks.append(_block(row, in_ch, out, row.stride if i == 0 else 1, arch.act, expand_from))
                in_ch = out
        stages.append(tuple(blocks))
    head = arch.head_channels
    if arch.head_scaling == "width":
        head = ch(head)
    elif arch.head_scaling == "up":
        head = max(head, ch(head))
    config = MobileNetConfig(
        stages=tuple(stages),
        stem_channels=stem,
        stem_kernel=arch.stem_kernel,
        stem_act=arch.act,
        head="pre_pool",
        head_channels=head,
        head_act=arch.act,
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding="SAME" if tf else "torch",
        norm=BatchNormConfig(epsilon=1e-3) if tf else BatchNormConfig(),
    )
    return MobileNet(config, dtype=dtype)


# EfficientNet-B0, Table 1: MBConv1 (no expansion: a depthwise separable block), then MBConv6; SE 0.25 throughout.
B0_TABLE: tuple[Stage, ...] = (
    (Row(kind="ds", repeats=1, kernel=3, stride=1, out=16, se=0.25),),
    (Row(kind="ir", repeats=2, kernel=3, stride=2, out=24, expand=6, se=0.25),),
    (Row(kind="ir", repeats=2, kernel=5, stride=2, out=40, expand=6, se=0.25),),
    (Row(kind="ir", repeats=3, kernel=3, stride=2, out=80, expand=6, se=0.25),),
    (Row(kind="ir", repeats=3, kernel=5, stride=1, out=112, expand=6, se=0.25),),
    (Row(kind="ir", repeats=4, kernel=5, stride=2, out=192, expand=6, se=0.25),),
    (Row(kind="ir", repeats=1, kernel=3, stride=1, out=320, expand=6, se=0.25),),
)

# EfficientNet-EdgeTPU-S: fused MBConvs (edge residuals) in the early stages, no SE; the first block expands
# from 24 channels whatever the stem's width (the reference implementation's quirk), and has no skip.
EDGE_TABLE: tuple[Stage, ...] = (
    (Row(kind="er", repeats=1, kernel=3, stride=1, out=24, expand=4, expand_from=24, skip=False),),
    (Row(kind="er", repeats=2, kernel=3, stride=2, out=32, expand=8),),
    (Row(kind="er", repeats=4, kernel=3, stride=2, out=48, expand=8),),
    (Row(kind="ir", repeats=5, kernel=5, stride=2, out=96, expand=8),),
    (Row(kind="ir", repeats=4, kernel=5, stride=1, out=144, expand=8),),
    (Row(kind="ir", repeats=2, kernel=5, stride=2, out=192, expand=8),),
)

EFFICIENTNET_B0 = Arch(table=B0_TABLE, act="silu")
# Lite: no SE, ReLU6, stem and head fixed at 32 and 1280, first and last stages not deepened.
EFFICIENTNET_LITE0 = Arch(
    table=tuple(tuple(dataclasses.replace(row, se=0.0) for row in stage) for stage in B0_TABLE),
    act="relu6",
    scale_stem=False,
    head_scaling="none",
    fix_first_last=True,
)
EFFICIENTNET_EDGETPU_S = Arch(table=EDGE_TABLE, act="relu")
# TinyNet: B0 shrunk; repeats rounded (not ceiled) so single-block stages stay single, stem fixed, head >= 1280.
TINYNET = Arch(table=B0_TABLE, act="silu", scale_stem=False, head_scaling="up", depth_trunc="round")


def efficientnet(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet as timm builds it: B0's table, SiLU (swish), squeeze-excite, scaled by the compound
    coefficients (B1 is ``(1.0, 1.1)``, B7 ``(2.0, 3.1)``: see ``EFFICIENTNET_SCALES``). ``tf=True`` matches the
    TF-ported weights (timm's ``tf_efficientnet_*``: SAME padding, BatchNorm epsilon 1e-3).

    >>> model = efficientnet(1.2, 1.4, num_classes=10)  # B3
    """
    return build_efficientnet(EFFICIENTNET_B0, width_multiplier, depth_multiplier, num_classes=num_classes, tf=tf,
                              dropout=dropout, in_channels=in_channels, dtype=dtype, where="efficientnet")  # fmt: skip


def efficientnet_lite(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet-Lite (for mobile accelerators): B0 without squeeze-excite, ReLU6, the stem and head fixed at
    32 and 1280 channels and the first and last stages at one block whatever the scaling; options as
    :func:`efficientnet`.

    >>> model = efficientnet_lite(1.4, 1.8)  # Lite4
    """
    return build_efficientnet(EFFICIENTNET_LITE0, width_multiplier, depth_multiplier, num_classes=num_classes,
                              tf=tf, dropout=dropout, in_channels=in_channels, dtype=dtype,
                              where="efficientnet_lite")  # fmt: skip


def efficientnet_edgetpu(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet-EdgeTPU (timm's ``efficientnet_es/em/el``): fused MBConvs early, ReLU, no squeeze-excite;
    S is ``(1.0, 1.0)``, M ``(1.0, 1.1)``, L ``(1.2, 1.4)``. Options as :func:`efficientnet`.

    >>> model = efficientnet_edgetpu(1.0, 1.1)  # EdgeTPU-M
    """
    return build_efficientnet(EFFICIENTNET_EDGETPU_S, width_multiplier, depth_multiplier, num_classes=num_classes,
                              tf=tf, dropout=dropout, in_channels=in_channels, dtype=dtype,
                              where="efficientnet_edgetpu")  # fmt: skip


def tinynet(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """TinyNet (Han et al. 2020, "Model Rubik's Cube"): EfficientNet-B0 shrunk, with its 32-channel stem and a
    head of at least 1280, repeats rounded to the nearest; timm's A is ``(1.0, 1.2)``, E ``(0.51, 0.6)``.

    >>> model = tinynet(0.54, 0.85)  # TinyNet-C
    """
    return build_efficientnet(TINYNET, width_multiplier, depth_multiplier, num_classes=num_classes, tf=False,
                              dropout=dropout, in_channels=in_channels, dtype=dtype, where="tinynet")  # fmt: skip


# width, depth — the compound coefficients: B0-B7 from the paper, B8 from AdvProp, L2 from Noisy Student.
EFFICIENTNET_SCALES: dict[str, tuple[float, float]] = {
    "b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4), "b4": (1.4, 1.8),
    "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1), "b8": (2.2, 3.6), "l2": (4.3, 5.3),
}  # fmt: skip
LITE_SCALES: dict[str, tuple[float, float]] = {
    "lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2), "lite3": (1.2, 1.4), "lite4": (1.4, 1.8),
}  # fmt: skip
EDGETPU_SCALES: dict[str, tuple[float, float]] = {"es": (1.0, 1.0), "em": (1.0, 1.1), "el": (1.2, 1.4)}
TINYNET_SCALES: dict[str, tuple[float, float]] = {
    "a": (1.0, 1.2), "b": (0.75, 1.1), "c": (0.54, 0.85), "d": (0.54, 0.695), "e": (0.51, 0.6),
}  # fmt: skip

# timm's names; the tf_ ports differ only in padding and BatchNorm epsilon. efficientnet_es/el_pruned are
# es/el with pruned weights, not pruned channels.
TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    **{f"{p}efficientnet_{tag}": functools.partial(efficientnet, w, d, tf=p == "tf_")
       for tag, (w, d) in EFFICIENTNET_SCALES.items() for p in ("", "tf_")},
    **{f"{p}efficientnet_{tag}": functools.partial(efficientnet_lite, w, d, tf=p == "tf_")
       for tag, (w, d) in LITE_SCALES.items() for p in ("", "tf_")},
    **{f"{p}efficientnet_{tag}": functools.partial(efficientnet_edgetpu, w, d, tf=p == "tf_")
       for tag, (w, d) in EDGETPU_SCALES.items() for p in ("", "tf_")},
    "efficientnet_es_pruned": functools.partial(efficientnet_edgetpu, *EDGETPU_SCALES["es"]),
    "efficientnet_el_pruned": functools.partial(efficientnet_edgetpu, *EDGETPU_SCALES["el"]),
    **{f"tinynet_{tag}": functools.partial(tinynet, w, d) for tag, (w, d) in TINYNET_SCALES.items()},
}  # fmt: skip
