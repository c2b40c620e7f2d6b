"""MobileNetV4 (Qin et al. 2024): the conv and hybrid models' architectures as data, their builders, and timm's
names.

Universal inverted bottlenecks named by their depthwise convs: ExtraDW (``start_kernel`` and ``kernel``), IB
(``kernel`` only), ConvNeXt-like (``start_kernel`` only), FFN (neither). The hybrids add mobile multi-query
attention blocks (:data:`MQA` rows: query heads, key/value width, key/value stride) and a layer scale on every
universal inverted bottleneck and attention block. The anti-aliased variants (timm's ``_aa_`` and ``_blur_``)
stride their blocks by a pool after a stride-1 conv.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, ER, MQA, UIR, Recipe, SqueezeExciteRule, Table, build
from flax_dsconv.ops.activations import Activation
from flax_dsconv.ops.antialias import AntiAlias

# MobileNetV4-Conv-S, as timm and the TF reference define it.
V4_SMALL: Table = (
    (
        CONV(out=32, kernel=3, stride=2),
        CONV(out=32),
    ),
    (
        CONV(out=96, kernel=3, stride=2),
        CONV(out=64),
    ),
    (
        UIR(out=96, start_kernel=5, kernel=5, stride=2, expand=3),
        UIR(out=96, repeats=4, kernel=3, expand=2),
        UIR(out=96, start_kernel=3, kernel=0, expand=4),
    ),
    (
        UIR(out=128, start_kernel=3, kernel=3, stride=2, expand=6),
        UIR(out=128, start_kernel=5, kernel=5, expand=4),
        UIR(out=128, kernel=5, expand=4),
        UIR(out=128, kernel=5, expand=3),
        UIR(out=128, repeats=2, kernel=3, expand=4),
    ),
    (CONV(out=960),),
)

# MobileNetV4-Conv-M, the same.
V4_MEDIUM: Table = (
    (ER(out=48, stride=2, expand=4),),
    (
        UIR(out=80, start_kernel=3, kernel=5, stride=2, expand=4),
        UIR(out=80, start_kernel=3, kernel=3, expand=2),
    ),
    (
        UIR(out=160, start_kernel=3, kernel=5, stride=2, expand=6),
        UIR(out=160, repeats=2, start_kernel=3, kernel=3, expand=4),
        UIR(out=160, start_kernel=3, kernel=5, expand=4),
        UIR(out=160, start_kernel=3, kernel=3, expand=4),
        UIR(out=160, start_kernel=3, kernel=0, expand=4),
        UIR(out=160, kernel=0, expand=2),
        UIR(out=160, start_kernel=3, kernel=0, expand=4),
    ),
    (
        UIR(out=256, start_kernel=5, kernel=5, stride=2, expand=6),
        UIR(out=256, start_kernel=5, kernel=5, expand=4),
        UIR(out=256, repeats=2, start_kernel=3, kernel=5, expand=4),
        UIR(out=256, kernel=0, expand=4),
        UIR(out=256, start_kernel=3, kernel=0, expand=4),
        UIR(out=256, start_kernel=3, kernel=5, expand=2),
        UIR(out=256, start_kernel=5, kernel=5, expand=4),
        UIR(out=256, repeats=2, kernel=0, expand=4),
        UIR(out=256, start_kernel=5, kernel=0, expand=2),
    ),
    (CONV(out=960),),
)

# MobileNetV4-Conv-L, the same.
V4_LARGE: Table = (
    (ER(out=48, stride=2, expand=4),),
    (
        UIR(out=96, start_kernel=3, kernel=5, stride=2, expand=4),
        UIR(out=96, start_kernel=3, kernel=3, expand=4),
    ),
    (
        UIR(out=192, start_kernel=3, kernel=5, stride=2, expand=4),
        UIR(out=192, repeats=3, start_kernel=3, kernel=3, expand=4),
        UIR(out=192, start_kernel=3, kernel=5, expand=4),
        UIR(out=192, repeats=5, start_kernel=5, kernel=3, expand=4),
        UIR(out=192, start_kernel=3, kernel=0, expand=4),
    ),
    (
        UIR(out=512, repeats=4, start_kernel=5, kernel=5, stride=2, expand=4),
        UIR(out=512, start_kernel=5, kernel=0, expand=4),
        UIR(out=512, start_kernel=5, kernel=3, expand=4),
        UIR(out=512, repeats=2, start_kernel=5, kernel=0, expand=4),
        UIR(out=512, start_kernel=5, kernel=3, expand=4),
        UIR(out=512, start_kernel=5, kernel=5, expand=4),
        UIR(out=512, repeats=3, start_kernel=5, kernel=0, expand=4),
    ),
    (CONV(out=960),),
)

# MobileNetV4-Hybrid-M, as timm and the TF reference define it: attention with keys and values at stride 2 in the
# stride-16 stage, at full size in the stride-32 one.
V4_HYBRID_MEDIUM: Table = (
    (ER(out=48, stride=2, expand=4),),
    (
        UIR(out=80, start_kernel=3, kernel=5, stride=2, expand=4),
        UIR(out=80, start_kernel=3, kernel=3, expand=2),
    ),
    (
        UIR(out=160, start_kernel=3, kernel=5, stride=2, expand=6),
        UIR(out=160, kernel=0, expand=2),
        UIR(out=160, start_kernel=3, kernel=3, expand=4),
        UIR(out=160, start_kernel=3, kernel=5, expand=4),
        MQA(out=160, heads=4, key_dim=64, kv_stride=2),
        UIR(out=160, start_kernel=3, kernel=3, expand=4),
        MQA(out=160, heads=4, key_dim=64, kv_stride=2),
        UIR(out=160, start_kernel=3, kernel=0, expand=4),
        MQA(out=160, heads=4, key_dim=64, kv_stride=2),
        UIR(out=160, start_kernel=3, kernel=3, expand=4),
        MQA(out=160, heads=4, key_dim=64, kv_stride=2),
        UIR(out=160, start_kernel=3, kernel=0, expand=4),
    ),
    (
        UIR(out=256, start_kernel=5, kernel=5, stride=2, expand=6),
        UIR(out=256, start_kernel=5, kernel=5, expand=4),
        UIR(out=256, repeats=2, start_kernel=3, kernel=5, expand=4),
        UIR(out=256, kernel=0, expand=2),
        UIR(out=256, start_kernel=3, kernel=5, expand=2),
        UIR(out=256, kernel=0, expand=2),
        UIR(out=256, kernel=0, expand=4),
        MQA(out=256, heads=4, key_dim=64),
        UIR(out=256, start_kernel=3, kernel=0, expand=4),
        MQA(out=256, heads=4, key_dim=64),
        UIR(out=256, start_kernel=5, kernel=5, expand=4),
        MQA(out=256, heads=4, key_dim=64),
        UIR(out=256, start_kernel=5, kernel=0, expand=4),
        MQA(out=256, heads=4, key_dim=64),
        UIR(out=256, start_kernel=5, kernel=0, expand=4),
    ),
    (CONV(out=960),),
)

# MobileNetV4-Hybrid-L, the same.
V4_HYBRID_LARGE: Table = (
    (ER(out=48, stride=2, expand=4),),
    (
        UIR(out=96, start_kernel=3, kernel=5, stride=2, expand=4),
        UIR(out=96, start_kernel=3, kernel=3, expand=4),
    ),
    (
        UIR(out=192, start_kernel=3, kernel=5, stride=2, expand=4),
        UIR(out=192, repeats=3, start_kernel=3, kernel=3, expand=4),
        UIR(out=192, start_kernel=3, kernel=5, expand=4),
        UIR(out=192, repeats=2, start_kernel=5, kernel=3, expand=4),
        MQA(out=192, heads=8, key_dim=48, kv_stride=2),
        UIR(out=192, start_kernel=5, kernel=3, expand=4),
        MQA(out=192, heads=8, key_dim=48, kv_stride=2),
        UIR(out=192, start_kernel=5, kernel=3, expand=4),
        MQA(out=192, heads=8, key_dim=48, kv_stride=2),
        UIR(out=192, start_kernel=5, kernel=3, expand=4),
        MQA(out=192, heads=8, key_dim=48, kv_stride=2),
        UIR(out=192, start_kernel=3, kernel=0, expand=4),
    ),
    (
        UIR(out=512, repeats=4, start_kernel=5, kernel=5, stride=2, expand=4),
        UIR(out=512, start_kernel=5, kernel=0, expand=4),
        UIR(out=512, start_kernel=5, kernel=3, expand=4),
        UIR(out=512, repeats=2, start_kernel=5, kernel=0, expand=4),
        UIR(out=512, start_kernel=5, kernel=3, expand=4),
        UIR(out=512, start_kernel=5, kernel=5, expand=4),
        MQA(out=512, heads=8, key_dim=64),
        UIR(out=512, start_kernel=5, kernel=0, expand=4),
        MQA(out=512, heads=8, key_dim=64),
        UIR(out=512, start_kernel=5, kernel=0, expand=4),
        MQA(out=512, heads=8, key_dim=64),
        UIR(out=512, start_kernel=5, kernel=0, expand=4),
        MQA(out=512, heads=8, key_dim=64),
        UIR(out=512, start_kernel=5, kernel=0, expand=4),
    ),
    (CONV(out=960),),
)

V4_TABLES: dict[str, tuple[int, Table]] = {"small": (32, V4_SMALL), "medium": (32, V4_MEDIUM), "large": (24, V4_LARGE)}


def mobilenet_v4_conv(
    size: Literal["small", "medium", "large"] = "small",
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    aa: AntiAlias = "none",
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV4-Conv-S/M/L: ReLU, a 1280 conv head after pooling followed by BatchNorm (timm's ``norm_head``).
    A width multiplier below 1 keeps the stem unscaled, as timm does. ``aa``: anti-aliased downsampling in every
    strided block (``'avg'``: timm's ``mobilenetv4_conv_aa_*``, ``'blur'``: ``mobilenetv4_conv_blur_medium``).

    >>> model = mobilenet_v4_conv("medium", num_classes=10)
    """
    if size not in V4_TABLES:
        raise ValueError(f"mobilenet_v4_conv: size must be one of {sorted(V4_TABLES)}, got {size!r}")
    stem, table = V4_TABLES[size]
    se = SqueezeExciteRule(from_expansion=True, divisible=True)  # no MobileNetV4 block has squeeze-excite
    recipe = Recipe(stem=stem, act="relu", se=se, head="post_pool", head_channels=1280, head_norm=True,
                    fix_stem_below=1.0)  # fmt: skip
    return build(table, recipe, width_multiplier, num_classes=num_classes, dropout=dropout, in_channels=in_channels,
                 aa=aa, dtype=dtype, where="mobilenet_v4_conv")  # fmt: skip


# (stem channels, activation, table): Hybrid-L is MobileNetV4's one GELU model (exact, erf).
V4_HYBRID_TABLES: dict[str, tuple[int, Activation, Table]] = {
    "medium": (32, "relu", V4_HYBRID_MEDIUM),
    "large": (24, "gelu", V4_HYBRID_LARGE),
}


def mobilenet_v4_hybrid(
    size: Literal["medium", "large"] = "medium",
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV4-Hybrid-M/L: the conv models' recipe (a 1280 conv head after pooling, then BatchNorm; the stem
    unscaled below width 1) with mobile attention blocks, a layer scale on every universal inverted bottleneck and
    attention block, and GELU in Hybrid-L (ReLU in Hybrid-M).

    >>> model = mobilenet_v4_hybrid("medium", num_classes=10)
    """
    if size not in V4_HYBRID_TABLES:
        raise ValueError(f"mobilenet_v4_hybrid: size must be one of {sorted(V4_HYBRID_TABLES)}, got {size!r}")
    stem, act, table = V4_HYBRID_TABLES[size]
    se = SqueezeExciteRule(from_expansion=True, divisible=True)  # no MobileNetV4 block has squeeze-excite
    recipe = Recipe(stem=stem, act=act, se=se, head="post_pool", head_channels=1280, head_norm=True,
                    fix_stem_below=1.0, layer_scale=True)  # fmt: skip
    return build(table, recipe, width_multiplier, num_classes=num_classes, dropout=dropout, in_channels=in_channels,
                 dtype=dtype, where="mobilenet_v4_hybrid")  # fmt: skip


TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    "mobilenetv4_conv_small": functools.partial(mobilenet_v4_conv, "small"),
    "mobilenetv4_conv_small_035": functools.partial(mobilenet_v4_conv, "small", 0.35),
    "mobilenetv4_conv_small_050": functools.partial(mobilenet_v4_conv, "small", 0.5),
    "mobilenetv4_conv_medium": functools.partial(mobilenet_v4_conv, "medium"),
    "mobilenetv4_conv_large": functools.partial(mobilenet_v4_conv, "large"),
    "mobilenetv4_hybrid_medium": functools.partial(mobilenet_v4_hybrid, "medium"),
    "mobilenetv4_hybrid_medium_075": functools.partial(mobilenet_v4_hybrid, "medium", 0.75),
    "mobilenetv4_hybrid_large": functools.partial(mobilenet_v4_hybrid, "large"),
    "mobilenetv4_hybrid_large_075": functools.partial(mobilenet_v4_hybrid, "large", 0.75),
    "mobilenetv4_conv_aa_medium": functools.partial(mobilenet_v4_conv, "medium", aa="avg"),
    "mobilenetv4_conv_blur_medium": functools.partial(mobilenet_v4_conv, "medium", aa="blur"),
    "mobilenetv4_conv_aa_large": functools.partial(mobilenet_v4_conv, "large", aa="avg"),
}
