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

from flax_dsconv.models.efficientnet import EFFICIENTNET
from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, ER, IR, TF_PORT, Recipe, Row, Table, build

# MobileNet-EdgeTPU (v1): stages of (first block, then its followers).
EDGETPU_V1: Table = (
    (CONV(out=16),),
    (ER(out=32, stride=2, expand=8), ER(out=32, repeats=3, expand=4)),
    (ER(out=48, stride=2, expand=8), ER(out=48, repeats=3, expand=4)),
    (IR(out=96, stride=2, expand=8), IR(out=96, repeats=3, expand=4)),
    (IR(out=96, expand=8, skip=False), IR(out=96, repeats=3, expand=4)),
    (IR(out=160, kernel=5, stride=2, expand=8), IR(out=160, repeats=3, kernel=5, expand=4)),
    (IR(out=192, expand=8),),
)


def edgetpu_v2_table(channels: tuple[int, ...], group_size: int) -> Table:
    """MobileNet-EdgeTPU-V2's stages for its seven stage widths; some of the fused MBConvs are grouped, in
    groups of ``group_size`` channels. The first stage is a 1x1 conv (an expansion-1 block is just its
    projection in the reference implementation)."""
    c = channels

    def er(out: int, stride: int = 1, expand: float = 4, grouped: bool = False) -> Row:
        return ER(out=out, stride=stride, expand=expand, group_size=group_size if grouped else 0)

    def ir(out: int, repeats: int = 1, stride: int = 1, expand: float = 4) -> Row:
        return IR(out=out, repeats=repeats, stride=stride, expand=expand)

    return (
        (CONV(out=c[0]),),
        (er(c[1], stride=2, expand=8), er(c[1], grouped=True)),
        (er(c[2], stride=2, expand=8), er(c[2], grouped=True), er(c[2]), er(c[2], grouped=True)),
        (er(c[3], stride=2, expand=8), ir(c[3], repeats=3)),
        (ir(c[4], expand=8), ir(c[4], repeats=3)),
        (ir(c[5], stride=2, expand=8), ir(c[5], repeats=3)),
        (ir(c[6], expand=8),),
    )


Variant = Literal["v1", "v2_xs", "v2_s", "v2_m", "v2_l"]
# ReLU and a head of fixed width; V2-S, M and L have a wider stem with a larger kernel.
_V1 = dataclasses.replace(EFFICIENTNET, act="relu", head_scaling="none")
_V2 = dataclasses.replace(_V1, stem=64, stem_kernel=5)
ARCHS: dict[Variant, tuple[Table, Recipe]] = {
    "v1": (EDGETPU_V1, _V1),
    "v2_xs": (edgetpu_v2_table((16, 32, 48, 96, 144, 160, 192), 64), _V1),
    "v2_s": (edgetpu_v2_table((24, 48, 64, 128, 160, 192, 256), 64), _V2),
    "v2_m": (edgetpu_v2_table((32, 64, 80, 160, 192, 240, 320), 64), dataclasses.replace(_V2, head_channels=1344)),
    "v2_l": (edgetpu_v2_table((32, 64, 96, 192, 240, 256, 384), 128),
             dataclasses.replace(_V2, stem_kernel=7, head_channels=1408)),
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
    return build(*ARCHS[variant], width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="mobilenet_edgetpu",
                 **(TF_PORT if tf else {}))  # fmt: skip


TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    "mobilenet_edgetpu_100": functools.partial(mobilenet_edgetpu, "v1"),
    **{f"mobilenet_edgetpu_{v}": functools.partial(mobilenet_edgetpu, v) for v in ("v2_xs", "v2_s", "v2_m", "v2_l")},
}
