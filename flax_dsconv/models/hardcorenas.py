"""HardCoRe-NAS (Nayman et al. 2021): the six searched networks A-F as data, their builder, and timm's names.

Each is a MobileNetV3-like network (hard-swish, ReLU in the first stages, a ReLU / hard-sigmoid SE sized off the
expanded width), searched under a latency bound that grows from A to F.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, DS, IR, Recipe, SqueezeExciteRule, Table, build

_RE: Literal["relu"] = "relu"

# The searched architectures as the authors released them (Alibaba-MIIL/HardCoReNAS), one block per row.
Variant = Literal["a", "b", "c", "d", "e", "f"]
HARDCORENAS: dict[Variant, Table] = {
    "a": (
        (DS(out=16, act=_RE),),
        (
            IR(out=24, kernel=5, stride=2, expand=3, act=_RE),
            IR(out=24, kernel=5, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=40, kernel=5, stride=2, expand=3, act=_RE),
            IR(out=40, kernel=5, expand=6, se=0.25, act=_RE),
        ),
        (
            IR(out=80, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=80, kernel=5, expand=6, se=0.25),
        ),
        (
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, kernel=5, expand=6, se=0.25),
        ),
        (
            IR(out=192, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
        ),
        (CONV(out=960),),
    ),
    "b": (
        (DS(out=16, act=_RE),),
        (
            IR(out=24, kernel=5, stride=2, expand=3, act=_RE),
            IR(out=24, kernel=5, expand=3, se=0.25, act=_RE),
            IR(out=24, expand=3, act=_RE),
        ),
        (
            IR(out=40, kernel=5, stride=2, expand=3, act=_RE),
            IR(out=40, kernel=5, expand=3, act=_RE),
            IR(out=40, kernel=5, expand=3, act=_RE),
        ),
        (
            IR(out=80, kernel=5, stride=2, expand=3),
            IR(out=80, kernel=5, expand=3),
            IR(out=80, expand=3),
            IR(out=80, expand=3),
        ),
        (
            IR(out=112, kernel=5, expand=3),
            IR(out=112, expand=3),
            IR(out=112, expand=3),
            IR(out=112, expand=3),
        ),
        (
            IR(out=192, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, expand=3, se=0.25),
        ),
        (CONV(out=960),),
    ),
    "c": (
        (DS(out=16, act=_RE),),
        (
            IR(out=24, kernel=5, stride=2, expand=3, act=_RE),
            IR(out=24, kernel=5, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=40, kernel=5, stride=2, expand=3, act=_RE),
            IR(out=40, kernel=5, expand=3, act=_RE),
            IR(out=40, kernel=5, expand=3, act=_RE),
            IR(out=40, kernel=5, expand=3, act=_RE),
        ),
        (
            IR(out=80, kernel=5, stride=2, expand=4),
            IR(out=80, kernel=5, expand=6, se=0.25),
            IR(out=80, expand=3),
            IR(out=80, expand=3),
        ),
        (
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, expand=3),
            IR(out=112, expand=3),
            IR(out=112, expand=3),
        ),
        (
            IR(out=192, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, expand=3, se=0.25),
        ),
        (CONV(out=960),),
    ),
    "d": (
        (DS(out=16, act=_RE),),
        (
            IR(out=24, kernel=5, stride=2, expand=3, se=0.25, act=_RE),
            IR(out=24, kernel=5, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=40, kernel=5, stride=2, expand=3, se=0.25, act=_RE),
            IR(out=40, kernel=5, expand=4, se=0.25, act=_RE),
            IR(out=40, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=80, kernel=5, stride=2, expand=4, se=0.25),
            IR(out=80, expand=3, se=0.25),
            IR(out=80, expand=3, se=0.25),
            IR(out=80, expand=3, se=0.25),
        ),
        (
            IR(out=112, expand=4, se=0.25),
            IR(out=112, kernel=5, expand=4, se=0.25),
            IR(out=112, expand=3, se=0.25),
            IR(out=112, kernel=5, expand=3, se=0.25),
        ),
        (
            IR(out=192, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, expand=6, se=0.25),
        ),
        (CONV(out=960),),
    ),
    "e": (
        (DS(out=16, act=_RE),),
        (
            IR(out=24, kernel=5, stride=2, expand=3, se=0.25, act=_RE),
            IR(out=24, kernel=5, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=40, kernel=5, stride=2, expand=6, se=0.25, act=_RE),
            IR(out=40, kernel=5, expand=4, se=0.25, act=_RE),
            IR(out=40, kernel=5, expand=4, se=0.25, act=_RE),
            IR(out=40, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=80, kernel=5, stride=2, expand=4, se=0.25),
            IR(out=80, expand=6, se=0.25),
        ),
        (
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, kernel=5, expand=3, se=0.25),
        ),
        (
            IR(out=192, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, expand=6, se=0.25),
        ),
        (CONV(out=960),),
    ),
    "f": (
        (DS(out=16, act=_RE),),
        (
            IR(out=24, kernel=5, stride=2, expand=3, se=0.25, act=_RE),
            IR(out=24, kernel=5, expand=3, se=0.25, act=_RE),
        ),
        (
            IR(out=40, kernel=5, stride=2, expand=6, se=0.25, act=_RE),
            IR(out=40, kernel=5, expand=6, se=0.25, act=_RE),
        ),
        (
            IR(out=80, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=80, kernel=5, expand=6, se=0.25),
            IR(out=80, expand=3, se=0.25),
            IR(out=80, expand=3, se=0.25),
        ),
        (
            IR(out=112, expand=6, se=0.25),
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, kernel=5, expand=6, se=0.25),
            IR(out=112, expand=3, se=0.25),
        ),
        (
            IR(out=192, kernel=5, stride=2, expand=6, se=0.25),
            IR(out=192, kernel=5, expand=6, se=0.25),
            IR(out=192, expand=6, se=0.25),
            IR(out=192, expand=6, se=0.25),
        ),
        (CONV(out=960),),
    ),
}


def hardcorenas(
    variant: Variant = "a", num_classes: int = 1000, *, dropout: float = 0.0,
    in_channels: int = 3, dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """HardCoRe-NAS ``variant`` (A: the fastest, F: the largest): a 32-channel stem, a 1280 conv head (with bias)
    after pooling.

    >>> model = hardcorenas("c", num_classes=10)
    """
    if variant not in HARDCORENAS:
        raise ValueError(f"hardcorenas: variant must be one of {sorted(HARDCORENAS)}, got {variant!r}")
    se = SqueezeExciteRule(from_expansion=True, divisible=True)
    recipe = Recipe(stem=32, act="hard_swish", se=se, head="post_pool", head_channels=1280, head_bias=True)
    return build(HARDCORENAS[variant], recipe, num_classes=num_classes, dropout=dropout, in_channels=in_channels,
                 dtype=dtype, where="hardcorenas")  # fmt: skip


TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    f"hardcorenas_{v}": functools.partial(hardcorenas, v) for v in HARDCORENAS
}
