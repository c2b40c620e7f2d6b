"""MobileNet-EdgeTPU (v1, Google 2019) and MobileNet-EdgeTPU-V2 (Google 2021, tensorflow/models
official/projects/edgetpu/vision): the stage tables as data, and their builder.

A 1x1 conv first, fused MBConvs (edge residuals, V2's some grouped) early, MBConvs after; ReLU, no squeeze-excite,
a fixed head. Each stage opens with a strided (or wider) block of expansion 8 followed by blocks of expansion 4.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.efficientnet import Arch, Row, Stage, build_efficientnet
from flax_dsconv.models.network import MobileNet

_STEM: Stage = (Row(kind="conv", repeats=1, kernel=1, stride=1, out=16, skip=False),)

# MobileNet-EdgeTPU (v1): stages of (first block, then its followers).
EDGETPU_V1: tuple[Stage, ...] = (
    _STEM,
    (Row(kind="er", repeats=1, kernel=3, stride=2, out=32, expand=8),
     Row(kind="er", repeats=3, kernel=3, stride=1, out=32, expand=4)),
    (Row(kind="er", repeats=1, kernel=3, stride=2, out=48, expand=8),
     Row(kind="er", repeats=3, kernel=3, stride=1, out=48, expand=4)),
    (Row(kind="ir", repeats=1, kernel=3, stride=2, out=96, expand=8),
     Row(kind="ir", repeats=3, kernel=3, stride=1, out=96, expand=4)),
    (Row(kind="ir", repeats=1, kernel=3, stride=1, out=96, expand=8, skip=False),
     Row(kind="ir", repeats=3, kernel=3, stride=1, out=96, expand=4)),
    (Row(kind="ir", repeats=1, kernel=5, stride=2, out=160, expand=8),
     Row(kind="ir", repeats=3, kernel=5, stride=1, out=160, expand=4)),
    (Row(kind="ir", repeats=1, kernel=3, stride=1, out=192, expand=8),),
)  # fmt: skip


def edgetpu_v2_table(channels: tuple[int, ...], group_size: int) -> tuple[Stage, ...]:
    """MobileNet-EdgeTPU-V2's stages for its seven stage widths; some of the fused MBConvs are grouped, in
    groups of ``group_size`` channels. The first stage is a 1x1 conv (an expansion-1 block is just its
    projection in the reference implementation)."""
    c = channels

    def er(out: int, stride: int = 1, expand: float = 4, grouped: bool = False) -> Row:
        return Row(kind="er", repeats=1, kernel=3, stride=stride, out=out, expand=expand,
                   group_size=group_size if grouped else 0)  # fmt: skip

    def ir(out: int, repeats: int = 1, stride: int = 1, expand: float = 4) -> Row:
        return Row(kind="ir", repeats=repeats, kernel=3, stride=stride, out=out, expand=expand)

    return (
        (dataclasses.replace(_STEM[0], out=c[0]),),
        (er(c[1], stride=2, expand=8), er(c[1], grouped=True)),
        (er(c[2], stride=2, expand=8), er(c[2], grouped=True), er(c[2]), er(c[2], grouped=True)),
        (er(c[3], stride=2, expand=8), ir(c[3], repeats=3)),
        (ir(c[4], expand=8), ir(c[4], repeats=3)),
        (ir(c[5], stride=2, expand=8), ir(c[5], repeats=3)),
        (ir(c[6], expand=8),),
    )


Variant = Literal["v1", "v2_xs", "v2_s", "v2_m", "v2_l"]
ARCHS: dict[Variant, Arch] = {
    "v1": Arch(table=EDGETPU_V1, act="relu", head_scaling="none"),
    "v2_xs": Arch(table=edgetpu_v2_table((16, 32, 48, 96, 144, 160, 192), 64), act="relu", head_scaling="none"),
    "v2_s": Arch(table=edgetpu_v2_table((24, 48, 64, 128, 160, 192, 256), 64), act="relu", stem_channels=64,
                 stem_kernel=5, head_scaling="none"),
    "v2_m": Arch(table=edgetpu_v2_table((32, 64, 80, 160, 192, 240, 320), 64), act="relu", stem_channels=64,
                 stem_kernel=5, head_channels=1344, head_scaling="none"),
    "v2_l": Arch(table=edgetpu_v2_table((32, 64, 96, 192, 240, 256, 384), 128), act="relu", stem_channels=64,
                 stem_kernel=7, head_channels=1408, head_scaling="none"),
}  # fmt: skip


def mobilenet_edgetpu(
    variant: Variant = "v1",
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNet-EdgeTPU as timm builds it: ``variant`` ``'v1'`` (timm's ``mobilenet_edgetpu_100``) or V2's
    ``'v2_xs'``, ``'v2_s'``, ``'v2_m'``, ``'v2_l'``; the head keeps its width whatever ``width_multiplier``.
    ``tf=True``: SAME padding and BatchNorm epsilon 1e-3.

    >>> model = mobilenet_edgetpu("v2_s", num_classes=10)
    """
    if variant not in ARCHS:
        raise ValueError(f"mobilenet_edgetpu: variant must be one of {sorted(ARCHS)}, got {variant!r}")
    return build_efficientnet(ARCHS[variant], width_multiplier, depth_multiplier, num_classes=num_classes, tf=tf,
                              dropout=dropout, in_channels=in_channels, dtype=dtype,
                              where="mobilenet_edgetpu")  # fmt: skip


TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    "mobilenet_edgetpu_100": functools.partial(mobilenet_edgetpu, "v1"),
    **{f"mobilenet_edgetpu_{v}": functools.partial(mobilenet_edgetpu, v) for v in ("v2_xs", "v2_s", "v2_m", "v2_l")},
}
