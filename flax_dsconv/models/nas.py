"""Searched MobileNets: MnasNet-A1/B1/small (Tan et al. 2019), Single-Path NAS (Stamoulis et al. 2019), FBNet-C
(Wu et al. 2019), FBNetV3-B/D/G (Dai et al. 2021) and PP-LCNet (Cui et al. 2021): their tables as data, their
builders, and timm's names for them. HardCoRe-NAS is in ``hardcorenas.py``.

The tables are the papers' networks as timm (and for MnasNet the TF reference) builds them; timm's
``semnasnet_*`` is MnasNet-A1 (with squeeze-excite), ``mnasnet_*`` is MnasNet-B1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, DS, EFFICIENTNET_SE, IR, Recipe, SqueezeExciteRule, Table, build


def _mnas_recipe(stem: int, head_channels: int = 1280) -> Recipe:
    """timm's EfficientNet class: ReLU, its sigmoid-gated SE, a 1x1 conv head before pooling."""
    return Recipe(stem=stem, act="relu", se=EFFICIENTNET_SE, head="pre_pool", head_channels=head_channels)


# MnasNet-B1, the TF reference's model without squeeze-excite.
MNASNET_B1: Table = (
    (DS(out=16, skip=False),),
    (IR(out=24, repeats=3, stride=2, expand=3),),
    (IR(out=40, repeats=3, kernel=5, stride=2, expand=3),),
    (IR(out=80, repeats=3, kernel=5, stride=2, expand=6),),
    (IR(out=96, repeats=2, expand=6),),
    (IR(out=192, repeats=4, kernel=5, stride=2, expand=6),),
    (IR(out=320, expand=6, skip=False),),
)

# MnasNet-A1, the paper's searched model (squeeze-excite in three stages).
MNASNET_A1: Table = (
    (DS(out=16, skip=False),),
    (IR(out=24, repeats=2, stride=2, expand=6),),
    (IR(out=40, repeats=3, kernel=5, stride=2, expand=3, se=0.25),),
    (IR(out=80, repeats=4, stride=2, expand=6),),
    (IR(out=112, repeats=2, expand=6, se=0.25),),
    (IR(out=160, repeats=3, kernel=5, stride=2, expand=6, se=0.25),),
    (IR(out=320, expand=6),),
)

MNASNET_SMALL: Table = (
    (DS(out=8),),
    (IR(out=16, stride=2, expand=3),),
    (IR(out=16, repeats=2, stride=2, expand=6),),
    (IR(out=32, repeats=4, kernel=5, stride=2, expand=6, se=0.25),),
    (IR(out=32, repeats=3, expand=6, se=0.25),),
    (IR(out=88, repeats=3, kernel=5, stride=2, expand=6, se=0.25),),
    (IR(out=144, expand=6),),
)

# Single-Path NAS, searched for the Pixel 1.
SPNASNET: Table = (
    (DS(out=16, skip=False),),
    (IR(out=24, repeats=3, stride=2, expand=3),),
    (IR(out=40, kernel=5, stride=2, expand=6), IR(out=40, repeats=3, expand=3)),
    (IR(out=80, kernel=5, stride=2, expand=6), IR(out=80, repeats=3, expand=3)),
    (IR(out=96, kernel=5, expand=6), IR(out=96, repeats=3, kernel=5, expand=3)),
    (IR(out=192, repeats=4, kernel=5, stride=2, expand=6),),
    (IR(out=320, expand=6, skip=False),),
)

# FBNet-C as timm derives it from the paper (expansion 1 is an inverted residual, not a separable conv).
FBNET_C: Table = (
    (IR(out=16, expand=1),),
    (IR(out=24, stride=2, expand=6), IR(out=24, repeats=2, expand=1)),
    (
        IR(out=32, kernel=5, stride=2, expand=6),
        IR(out=32, kernel=5, expand=3),
        IR(out=32, kernel=5, expand=6),
        IR(out=32, expand=6),
    ),
    (
        IR(out=64, kernel=5, stride=2, expand=6),
        IR(out=64, kernel=5, expand=3),
        IR(out=64, repeats=2, kernel=5, expand=6),
    ),
    (IR(out=112, repeats=3, kernel=5, expand=6), IR(out=112, kernel=5, expand=3)),
    (IR(out=184, repeats=4, kernel=5, stride=2, expand=6),),
    (IR(out=352, expand=6),),
)

# FBNetV3 as timm reads it from the paper (timm marks it preliminary), hard-swish throughout.
FBNetV3Variant = Literal["b", "d", "g"]
FBNET_V3: dict[FBNetV3Variant, tuple[int, Table]] = {  # variant: stem channels, table
    "b": (16, (
        (DS(out=16, repeats=2),),
        (IR(out=24, kernel=5, stride=2, expand=4), IR(out=24, repeats=3, kernel=5, expand=2)),
        (IR(out=40, kernel=5, stride=2, expand=5, se=0.25), IR(out=40, repeats=4, kernel=5, expand=3, se=0.25)),
        (IR(out=72, kernel=5, stride=2, expand=5), IR(out=72, repeats=4, expand=3)),
        (IR(out=120, expand=5, se=0.25), IR(out=120, repeats=5, kernel=5, expand=3, se=0.25)),
        (
            IR(out=184, stride=2, expand=6, se=0.25),
            IR(out=184, repeats=5, kernel=5, expand=4, se=0.25),
            IR(out=224, kernel=5, expand=6, se=0.25),
        ),
        (CONV(out=1344),),
    )),
    "d": (24, (
        (DS(out=16, repeats=2),),
        (IR(out=24, stride=2, expand=5), IR(out=24, repeats=5, expand=2)),
        (IR(out=40, kernel=5, stride=2, expand=4, se=0.25), IR(out=40, repeats=4, expand=3, se=0.25)),
        (IR(out=72, stride=2, expand=5), IR(out=72, repeats=4, expand=3)),
        (IR(out=128, expand=5, se=0.25), IR(out=128, repeats=6, kernel=5, expand=3, se=0.25)),
        (
            IR(out=208, stride=2, expand=6, se=0.25),
            IR(out=208, repeats=5, kernel=5, expand=5, se=0.25),
            IR(out=240, kernel=5, expand=6, se=0.25),
        ),
        (CONV(out=1440),),
    )),
    "g": (32, (
        (DS(out=24, repeats=3),),
        (IR(out=40, kernel=5, stride=2, expand=4), IR(out=40, repeats=4, kernel=5, expand=2)),
        (IR(out=56, kernel=5, stride=2, expand=4, se=0.25), IR(out=56, repeats=4, kernel=5, expand=3, se=0.25)),
        (IR(out=104, kernel=5, stride=2, expand=5), IR(out=104, repeats=4, expand=3)),
        (IR(out=160, expand=5, se=0.25), IR(out=160, repeats=8, kernel=5, expand=3, se=0.25)),
        (
            IR(out=264, stride=2, expand=6, se=0.25),
            IR(out=264, repeats=6, kernel=5, expand=5, se=0.25),
            IR(out=288, repeats=2, kernel=5, expand=6, se=0.25),
        ),
        (CONV(out=1728),),
    )),
}  # fmt: skip

# PP-LCNet: MobileNetV1-style separable convs (activated pointwise, no residual), hard-swish.
_LC = functools.partial(DS, pw_act=True, skip=False)
LCNET: Table = (
    (_LC(out=32),),
    (_LC(out=64, repeats=2, stride=2),),
    (_LC(out=128, repeats=2, stride=2),),
    (_LC(out=256, stride=2), _LC(out=256, kernel=5)),
    (_LC(out=256, repeats=4, kernel=5),),
    (_LC(out=512, repeats=2, kernel=5, stride=2, se=0.25),),
)


def mnasnet(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """MnasNet-B1 (timm's ``mnasnet_*``): channels ``make_divisible(c·w, 8)``, a fixed 1280 head.

    >>> model = mnasnet(0.5, num_classes=10)
    """
    return build(MNASNET_B1, _mnas_recipe(32), width_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="mnasnet")  # fmt: skip


def semnasnet(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """MnasNet-A1, with squeeze-excite (timm's ``semnasnet_*``); options as :func:`mnasnet`.

    >>> model = semnasnet(0.75)
    """
    return build(MNASNET_A1, _mnas_recipe(32), width_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="semnasnet")  # fmt: skip


def mnasnet_small(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """The small MnasNet of the TF reference (8-channel stem); options as :func:`mnasnet`.

    >>> model = mnasnet_small(num_classes=10)
    """
    return build(MNASNET_SMALL, _mnas_recipe(8), width_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="mnasnet_small")  # fmt: skip


def spnasnet(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """Single-Path NAS (Pixel 1); options as :func:`mnasnet`.

    >>> model = spnasnet()
    """
    return build(SPNASNET, _mnas_recipe(32), width_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="spnasnet")  # fmt: skip


def fbnet_c(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """FBNet-C: a 16-channel stem and a 1984 head; options as :func:`mnasnet`.

    >>> model = fbnet_c()
    """
    return build(FBNET_C, _mnas_recipe(16, 1984), width_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="fbnet_c")  # fmt: skip


def fbnet_v3(
    variant: FBNetV3Variant = "b", num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """FBNetV3-B, -D or -G: hard-swish, SE sized off the block input and rounded to multiples of 8 (within 5%, as
    every width here), a 1984 conv head after pooling.

    >>> model = fbnet_v3("d", num_classes=10)
    """
    if variant not in FBNET_V3:
        raise ValueError(f"fbnet_v3: variant must be one of {sorted(FBNET_V3)}, got {variant!r}")
    stem, table = FBNET_V3[variant]
    se = SqueezeExciteRule(from_expansion=False, divisible=True, act=None, gate="hard_sigmoid")
    recipe = Recipe(stem=stem, act="hard_swish", se=se, head="post_pool", head_channels=1984, round_limit=0.95)
    return build(table, recipe, num_classes=num_classes, dropout=dropout, in_channels=in_channels, dtype=dtype,
                 where="fbnet_v3")  # fmt: skip


def lcnet(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """PP-LCNet: hard-swish, a ReLU / hard-sigmoid SE in the last stage, a 1280 conv head (with bias) after pooling.

    >>> model = lcnet(0.5, num_classes=10)
    """
    se = SqueezeExciteRule(from_expansion=True, divisible=False)
    recipe = Recipe(stem=16, act="hard_swish", se=se, head="post_pool", head_channels=1280, head_bias=True)
    return build(LCNET, recipe, width_multiplier, num_classes=num_classes, dropout=dropout, in_channels=in_channels,
                 dtype=dtype, where="lcnet")  # fmt: skip


def _widths(builder: Callable[..., MobileNet], prefix: str, tags: str) -> dict[str, Callable[..., MobileNet]]:
    """``prefix_050`` → ``builder(0.5)``, one name per three-digit tag in ``tags``."""
    return {f"{prefix}_{tag}": functools.partial(builder, int(tag) / 100) for tag in tags.split()}


TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    **_widths(mnasnet, "mnasnet", "050 075 100 140"),
    "mnasnet_small": mnasnet_small,
    **_widths(semnasnet, "semnasnet", "050 075 100 140"),
    "spnasnet_100": spnasnet,
    "fbnetc_100": fbnet_c,
    **{f"fbnetv3_{v}": functools.partial(fbnet_v3, v) for v in FBNET_V3},
    **_widths(lcnet, "lcnet", "035 050 075 100 150"),
}
