"""MixNet (Tan & Le 2019, "MixConv: Mixed Depthwise Convolutional Kernels"): depthwise convs whose channel groups
have different kernel sizes, and 1x1 convs split into groups; the S and M tables as data, L/XL/XXL as M scaled, and
timm's names for them."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import DS, EFFICIENTNET_SE, IR, TF_PORT, Recipe, Table, build
from flax_dsconv.ops.activations import Activation

IR_MIX = functools.partial(IR, expand_splits=2, project_splits=2)  # the 1x1 convs in two groups ('a1.1_p1.1')
SW: Activation = "silu"  # the paper's swish, from the third stage on

# MixNet-S (paper Figure 8): ReLU first, swish with squeeze-excite from the third stage on.
S_TABLE: Table = (
    (DS(out=16),),
    (IR_MIX(out=24, stride=2, expand=6), IR_MIX(out=24, expand=3)),
    (IR(out=40, kernels=(3, 5, 7), stride=2, expand=6, se=0.5, act=SW),
     IR_MIX(out=40, repeats=3, kernels=(3, 5), expand=6, se=0.5, act=SW)),
    (IR(out=80, kernels=(3, 5, 7), project_splits=2, stride=2, expand=6, se=0.25, act=SW),
     IR(out=80, repeats=2, kernels=(3, 5), project_splits=2, expand=6, se=0.25, act=SW)),
    (IR_MIX(out=120, kernels=(3, 5, 7), expand=6, se=0.5, act=SW),
     IR_MIX(out=120, repeats=2, kernels=(3, 5, 7, 9), expand=3, se=0.5, act=SW)),
    (IR(out=200, kernels=(3, 5, 7, 9, 11), stride=2, expand=6, se=0.5, act=SW),
     IR(out=200, repeats=2, kernels=(3, 5, 7, 9), project_splits=2, expand=6, se=0.5, act=SW)),
)  # fmt: skip

# MixNet-M (paper Figure 9): wider stem, larger kernels, deeper.
M_TABLE: Table = (
    (DS(out=24),),
    (IR_MIX(out=32, kernels=(3, 5, 7), stride=2, expand=6), IR_MIX(out=32, expand=3)),
    (IR(out=40, kernels=(3, 5, 7, 9), stride=2, expand=6, se=0.5, act=SW),
     IR_MIX(out=40, repeats=3, kernels=(3, 5), expand=6, se=0.5, act=SW)),
    (IR(out=80, kernels=(3, 5, 7), stride=2, expand=6, se=0.25, act=SW),
     IR_MIX(out=80, repeats=3, kernels=(3, 5, 7, 9), expand=6, se=0.25, act=SW)),
    (IR(out=120, expand=6, se=0.5, act=SW),
     IR_MIX(out=120, repeats=3, kernels=(3, 5, 7, 9), expand=3, se=0.5, act=SW)),
    (IR(out=200, kernels=(3, 5, 7, 9), stride=2, expand=6, se=0.5, act=SW),
     IR(out=200, repeats=3, kernels=(3, 5, 7, 9), project_splits=2, expand=6, se=0.5, act=SW)),
)  # fmt: skip

# EfficientNet's SE (sigmoid gate, the block's activation), a width-scaled stem, a fixed 1536 head; repeats rounded.
MIXNET = Recipe(stem=16, act="relu", se=EFFICIENTNET_SE, head="pre_pool", head_channels=1536, depth_trunc="round")
MIXNET_M = dataclasses.replace(MIXNET, stem=24)


def mixnet(
    size: str = "s",
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """MixNet-S (``size='s'``) or -M (``'m'``), scaled by width and depth (timm's L is M at ``(1.3, 1.0)``, XL at
    ``(1.6, 1.2)``, XXL at ``(2.4, 1.3)``); ``tf=True`` matches the TF-ported weights (``tf_mixnet_*``: SAME
    padding, BatchNorm epsilon 1e-3).

    >>> model = mixnet("m", 1.3)  # MixNet-L
    """
    if size not in ("s", "m"):
        raise ValueError(f"mixnet: size is 's' or 'm', got {size!r}")
    table, recipe = (S_TABLE, MIXNET) if size == "s" else (M_TABLE, MIXNET_M)
    return build(table, recipe, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="mixnet", **(TF_PORT if tf else {}))  # fmt: skip


# size, width, depth
MIXNET_SCALES: dict[str, tuple[str, float, float]] = {
    "s": ("s", 1.0, 1.0), "m": ("m", 1.0, 1.0), "l": ("m", 1.3, 1.0), "xl": ("m", 1.6, 1.2), "xxl": ("m", 2.4, 1.3),
}  # fmt: skip

TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    **{f"mixnet_{tag}": functools.partial(mixnet, *scale) for tag, scale in MIXNET_SCALES.items()},
    **{f"tf_mixnet_{tag}": functools.partial(mixnet, *MIXNET_SCALES[tag], tf=True) for tag in ("s", "m", "l")},
}
