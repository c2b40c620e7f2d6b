"""MobileNetV2 (Sandler et al. 2018): the paper's Table 2 as data, and its builder (torchvision's choices)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flax_dsconv.models.config import MobileNetConfig, Padding, check_width, make_divisible
from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import check_depth, scale_depth
from flax_dsconv.nn import BatchNormConfig, BlockConfig, InvertedResidualConfig, SeparableConfig

# t, c, n, s — Table 2: expansion, output channels, repeats, first stride; one stage per row.
V2_TABLE: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dropout: float = 0.2,
    depth_multiplier: float = 1.0,
    fix_stem_head: bool = False,
    in_channels: int = 3,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    padding: Padding = "torch",
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV2 as torchvision builds it: ReLU6, ``make_divisible(c·w, 8)`` channels, a 1280 head
    (scaled up for w > 1), dropout 0.2, PyTorch's BatchNorm defaults.

    ``depth_multiplier`` scales each stage's repeats (rounded up); ``fix_stem_head`` keeps the stem (32), the
    head (1280) and the first and last stages' depths unscaled (timm's ``mobilenetv2_110d`` / ``_120d``).

    >>> model = mobilenet_v2(width_multiplier=0.5, num_classes=10)
    """
    check_width(width_multiplier, "mobilenet_v2")
    check_depth(depth_multiplier, "mobilenet_v2")
    ch = lambda c: make_divisible(c * width_multiplier)  # noqa: E731
    stem = 32 if fix_stem_head else ch(32)
    in_ch = stem
    stages = []
    for row, (t, c, n, s) in enumerate(V2_TABLE):
        fixed = fix_stem_head and row in (0, len(V2_TABLE) - 1)
        n = scale_depth((n,), 1.0 if fixed else depth_multiplier)[0]
        out = ch(c)
        blocks = []
        for i in range(n):
            stride = s if i == 0 else 1
            skip = stride == 1 and in_ch == out
            block: BlockConfig
            if t == 1:
                block = SeparableConfig(out_channels=out, stride=stride, act="relu6", skip=skip)
            else:
                block = InvertedResidualConfig(
                    out_channels=out, stride=stride, expand_channels=round(in_ch * t), act="relu6", skip=skip
                )
            blocks.append(block)
            in_ch = out
        stages.append(tuple(blocks))
    config = MobileNetConfig(
        stages=tuple(stages),
        stem_channels=stem,
        stem_act="relu6",
        head="pre_pool",
        head_channels=1280 if fix_stem_head else make_divisible(1280 * max(1.0, width_multiplier)),
        head_act="relu6",
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding=padding,
        norm=BatchNormConfig(bn_momentum, bn_epsilon),
    )
    return MobileNet(config, dtype=dtype)


# timm builds these with PyTorch's BatchNorm defaults and no dropout before the classifier.
TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    **{
        f"mobilenetv2_{tag}": functools.partial(mobilenet_v2, width, dropout=0.0)
        for tag, width in (("035", 0.35), ("050", 0.5), ("075", 0.75), ("100", 1.0), ("140", 1.4))
    },
    "mobilenetv2_110d": functools.partial(mobilenet_v2, 1.1, dropout=0.0, depth_multiplier=1.2, fix_stem_head=True),
    "mobilenetv2_120d": functools.partial(mobilenet_v2, 1.2, dropout=0.0, depth_multiplier=1.4, fix_stem_head=True),
}
