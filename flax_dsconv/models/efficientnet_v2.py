"""EfficientNetV2 (Tan & Le 2021): the stage tables of V2-B0/S/M/L/XL (and timm's own early V2-S) as data, and
their builder.

Fused MBConvs (edge residuals) in the early stages, MBConvs with squeeze-excite after, SiLU; every depthwise or
fused conv is 3x3. The tables follow the reference implementation (google/automl efficientnetv2), which timm's
``efficientnetv2_*`` and ``tf_efficientnetv2_*`` reproduce.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.efficientnet import EFFICIENTNET
from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, ER, IR, TF_PORT, Recipe, Stage, Table, build
from flax_dsconv.nn.global_context import SeKind


def _conv(repeats: int, out: int) -> Stage:
    """The first stage: plain 3x3 conv + BN + act blocks, with a residual where the widths match."""
    return (CONV(out=out, repeats=repeats, kernel=3, skip=True),)


def _fused(repeats: int, out: int, stride: int = 2, expand: float = 4) -> Stage:
    return (ER(out=out, repeats=repeats, stride=stride, expand=expand),)


def _mbconv(repeats: int, out: int, stride: int, expand: float) -> Stage:
    return (IR(out=out, repeats=repeats, stride=stride, expand=expand, se=0.25),)


# The EfficientNetV2 paper's Table 4 (S) and the reference implementation's B0, M, L, XL: one stage per line,
# (repeats, output channels[, stride, expansion]).
V2_B0: Table = (
    _conv(1, 16), _fused(2, 32), _fused(2, 48),
    _mbconv(3, 96, 2, 4), _mbconv(5, 112, 1, 6), _mbconv(8, 192, 2, 6),
)  # fmt: skip
V2_S: Table = (
    _conv(2, 24), _fused(4, 48), _fused(4, 64),
    _mbconv(6, 128, 2, 4), _mbconv(9, 160, 1, 6), _mbconv(15, 256, 2, 6),
)  # fmt: skip
# timm's V2-S from the paper's figure, before the reference code: a fused first stage, wider last stage.
V2_RW_S: Table = (
    _fused(2, 24, stride=1, expand=1), *V2_S[1:-1], _mbconv(15, 272, 2, 6),
)  # fmt: skip
V2_M: Table = (
    _conv(3, 24), _fused(5, 48), _fused(5, 80),
    _mbconv(7, 160, 2, 4), _mbconv(14, 176, 1, 6), _mbconv(18, 304, 2, 6), _mbconv(5, 512, 1, 6),
)  # fmt: skip
V2_L: Table = (
    _conv(4, 32), _fused(7, 64), _fused(7, 96),
    _mbconv(10, 192, 2, 4), _mbconv(19, 224, 1, 6), _mbconv(25, 384, 2, 6), _mbconv(7, 640, 1, 6),
)  # fmt: skip
V2_XL: Table = (
    _conv(4, 32), _fused(8, 64), _fused(8, 96),
    _mbconv(16, 192, 2, 4), _mbconv(24, 256, 1, 6), _mbconv(32, 512, 2, 6), _mbconv(8, 640, 1, 6),
)  # fmt: skip

Variant = Literal["b", "s", "rw_s", "m", "l", "xl"]
# The B series rounds widths to the nearest multiple of 8 (round_limit 0); M, L and XL keep a 1280 head.
_FIXED_HEAD = dataclasses.replace(EFFICIENTNET, head_scaling="none")
ARCHS: dict[Variant, tuple[Table, Recipe]] = {
    "b": (V2_B0, dataclasses.replace(EFFICIENTNET, round_limit=0.0)),
    "s": (V2_S, dataclasses.replace(EFFICIENTNET, stem=24)),
    "rw_s": (V2_RW_S, dataclasses.replace(EFFICIENTNET, stem=24, head_channels=1792)),
    "m": (V2_M, dataclasses.replace(_FIXED_HEAD, stem=24)),
    "l": (V2_L, _FIXED_HEAD),
    "xl": (V2_XL, _FIXED_HEAD),
}


def efficientnet_v2(
    variant: Variant = "s",
    width_multiplier: float = 1.0,
    depth_multiplier: float | tuple[float, ...] = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    se_kind: SeKind = "se",
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNetV2 as timm builds it: ``variant`` ``'b'`` (B0; B1-B3 by the multipliers), ``'s'``, ``'m'``,
    ``'l'``, ``'xl'``, or ``'rw_s'`` (timm's early V2-S); ``depth_multiplier`` is one for all stages or one per
    stage. ``tf=True`` matches the TF-ported weights (SAME padding, BatchNorm epsilon 1e-3). ``se_kind='gc'``:
    global context attention in place of squeeze-excite (timm's ``gc_efficientnetv2_rw_t``).

    >>> model = efficientnet_v2("b", 1.1, 1.2, num_classes=10, tf=True)  # V2-B2
    """
    if variant not in ARCHS:
        raise ValueError(f"efficientnet_v2: variant must be one of {sorted(ARCHS)}, got {variant!r}")
    table, recipe = ARCHS[variant]
    recipe = dataclasses.replace(recipe, se=dataclasses.replace(recipe.se, kind=se_kind))
    return build(table, recipe, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="efficientnet_v2", **(TF_PORT if tf else {}))  # fmt: skip


# timm's names: its own rw_ models (PyTorch padding), the reference models with PyTorch padding and as TF ports.
TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    "efficientnetv2_rw_t": functools.partial(efficientnet_v2, "s", 0.8, 0.9),
    "gc_efficientnetv2_rw_t": functools.partial(efficientnet_v2, "s", 0.8, 0.9, se_kind="gc"),
    "efficientnetv2_rw_s": functools.partial(efficientnet_v2, "rw_s"),
    "efficientnetv2_rw_m": functools.partial(efficientnet_v2, "rw_s", 1.2, (1.2,) * 4 + (1.6,) * 2),
    **{f"{p}efficientnetv2_{v}": functools.partial(efficientnet_v2, v, tf=p == "tf_")
       for v in ("s", "m", "l", "xl") for p in ("", "tf_")},
    **{f"tf_efficientnetv2_b{i}": functools.partial(efficientnet_v2, "b", w, d, tf=True)
       for i, (w, d) in enumerate(((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4)))},
}  # fmt: skip
