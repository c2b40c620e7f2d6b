"""MobileNetV3 (Howard et al. 2019): the paper's Tables 1-2 as data, and the builders (torchvision's choices);
timm's tables (expansion ratios, its minimal variants, its ``mobilenetv3_rw``), their builders, and timm's names.

torchvision and timm scale the paper's widths differently: torchvision rounds each table width times the
multiplier, timm rounds each block's input times the expansion ratio (72 = 4.5 · 16), and fixes the head's width.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

from flax_dsconv.models.config import MobileNetConfig, Padding, check_width, make_divisible
from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, DS, IR, Recipe, SqueezeExciteRule, Table, build
from flax_dsconv.nn import BatchNormConfig, BlockConfig, ConvBNActConfig, InvertedResidualConfig, SeparableConfig


@dataclasses.dataclass(frozen=True)
class Bneck:
    """One row of the MobileNetV3 tables (Tables 1-2): a bottleneck with its expansion size."""

    kernel: int
    expand: int
    out: int
    se: bool
    act: Literal["relu", "hard_swish"]
    stride: int


_RE: Literal["relu"] = "relu"
_HS: Literal["hard_swish"] = "hard_swish"

# MobileNetV3-Large, Table 1; one tuple per stage (the last stage is the one dilation/reduced_tail alter).
V3_LARGE: tuple[tuple[Bneck, ...], ...] = (
    (Bneck(kernel=3, expand=16, out=16, se=False, act=_RE, stride=1),),
    (
        Bneck(kernel=3, expand=64, out=24, se=False, act=_RE, stride=2),
        Bneck(kernel=3, expand=72, out=24, se=False, act=_RE, stride=1),
    ),
    (
        Bneck(kernel=5, expand=72, out=40, se=True, act=_RE, stride=2),
        Bneck(kernel=5, expand=120, out=40, se=True, act=_RE, stride=1),
        Bneck(kernel=5, expand=120, out=40, se=True, act=_RE, stride=1),
    ),
    (
        Bneck(kernel=3, expand=240, out=80, se=False, act=_HS, stride=2),
        Bneck(kernel=3, expand=200, out=80, se=False, act=_HS, stride=1),
        Bneck(kernel=3, expand=184, out=80, se=False, act=_HS, stride=1),
        Bneck(kernel=3, expand=184, out=80, se=False, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=3, expand=480, out=112, se=True, act=_HS, stride=1),
        Bneck(kernel=3, expand=672, out=112, se=True, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=5, expand=672, out=160, se=True, act=_HS, stride=2),
        Bneck(kernel=5, expand=960, out=160, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=960, out=160, se=True, act=_HS, stride=1),
    ),
)

# MobileNetV3-Small, Table 2.
V3_SMALL: tuple[tuple[Bneck, ...], ...] = (
    (Bneck(kernel=3, expand=16, out=16, se=True, act=_RE, stride=2),),
    (
        Bneck(kernel=3, expand=72, out=24, se=False, act=_RE, stride=2),
        Bneck(kernel=3, expand=88, out=24, se=False, act=_RE, stride=1),
    ),
    (
        Bneck(kernel=5, expand=96, out=40, se=True, act=_HS, stride=2),
        Bneck(kernel=5, expand=240, out=40, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=240, out=40, se=True, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=5, expand=120, out=48, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=144, out=48, se=True, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=5, expand=288, out=96, se=True, act=_HS, stride=2),
        Bneck(kernel=5, expand=576, out=96, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=576, out=96, se=True, act=_HS, stride=1),
    ),
)


def _mobilenet_v3(
    table: tuple[tuple[Bneck, ...], ...],
    head_channels: int,
    width_multiplier: float,
    num_classes: int,
    dilated: bool,
    reduced_tail: bool,
    dropout: float,
    in_channels: int,
    bn_momentum: float,
    bn_epsilon: float,
    padding: Padding,
    dtype: Any | None,
) -> MobileNet:
    check_width(width_multiplier, "mobilenet_v3")
    ch = lambda c: make_divisible(c * width_multiplier)  # noqa: E731
    divider = 2 if reduced_tail else 1
    in_ch = ch(16)
    stages: list[tuple[BlockConfig, ...]] = []
    for s, stage in enumerate(table):
        tail = s == len(table) - 1
        blocks: list[BlockConfig] = []
        for i, row in enumerate(stage):
            # torchvision divides the tail's widths (all but the first block's expansion) by 2.
            out = ch(row.out // divider if tail else row.out)
            expand = ch(row.expand // divider if tail and i > 0 else row.expand)
            dilation = 2 if tail and dilated else 1
            stride = 1 if dilation > 1 else row.stride
            se = make_divisible(expand // 4) if row.se else 0
            skip = row.stride == 1 and in_ch == out  # the table's stride, as torchvision tests it, not dilation's 1
            block: BlockConfig
            if expand == in_ch:
                block = SeparableConfig(out_channels=out, kernel_size=row.kernel, stride=stride, dilation=dilation,
                                        se_channels=se, act=row.act, skip=skip)  # fmt: skip
            else:
                block = InvertedResidualConfig(out_channels=out, kernel_size=row.kernel, stride=stride,
                                               dilation=dilation, expand_channels=expand, se_channels=se, act=row.act,
                                               skip=skip)  # fmt: skip
            blocks.append(block)
            in_ch = out
        stages.append(tuple(blocks))
    stages.append((ConvBNActConfig(out_channels=6 * in_ch, kernel_size=1, act=_HS),))
    config = MobileNetConfig(
        stages=tuple(stages),
        stem_channels=ch(16),
        stem_act=_HS,
        head="post_pool",
        head_channels=ch(head_channels // divider),
        head_act=_HS,
        head_bias=True,
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding=padding,
        norm=BatchNormConfig(bn_momentum, bn_epsilon),
    )
    return MobileNet(config, dtype=dtype)


def mobilenet_v3_large(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dilated: bool = False,
    reduced_tail: bool = False,
    dropout: float = 0.2,
    in_channels: int = 3,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    padding: Padding = "torch",
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV3-Large as torchvision builds it (BN eps 1e-3, torch momentum 0.01 → Flax 0.99).

    ``dilated`` gives the last stage dilation 2 and stride 1; ``reduced_tail`` halves its channels
    (both for segmentation backbones). ``padding='SAME'`` matches TF-ported weights.

    >>> model = mobilenet_v3_large(num_classes=10)
    """
    return _mobilenet_v3(
        V3_LARGE, 1280, width_multiplier, num_classes, dilated, reduced_tail, dropout,
        in_channels, bn_momentum, bn_epsilon, padding, dtype,
    )  # fmt: skip


def mobilenet_v3_small(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dilated: bool = False,
    reduced_tail: bool = False,
    dropout: float = 0.2,
    in_channels: int = 3,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    padding: Padding = "torch",
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV3-Small as torchvision builds it; options as :func:`mobilenet_v3_large`.

    >>> model = mobilenet_v3_small(width_multiplier=0.75)
    """
    return _mobilenet_v3(
        V3_SMALL, 1024, width_multiplier, num_classes, dilated, reduced_tail, dropout,
        in_channels, bn_momentum, bn_epsilon, padding, dtype,
    )  # fmt: skip


# timm's MobileNetV3-Large: Table 1 as expansion ratios over each block's input, one row per run of equal blocks.
TIMM_V3_LARGE: Table = (
    (DS(out=16, act=_RE),),
    (IR(out=24, stride=2, expand=4, act=_RE), IR(out=24, expand=3, act=_RE)),
    (IR(out=40, repeats=3, kernel=5, stride=2, expand=3, se=0.25, act=_RE),),
    (IR(out=80, stride=2, expand=6), IR(out=80, expand=2.5), IR(out=80, repeats=2, expand=2.3)),
    (IR(out=112, repeats=2, expand=6, se=0.25),),
    (IR(out=160, repeats=3, kernel=5, stride=2, expand=6, se=0.25),),
    (CONV(out=960),),
)

# timm's MobileNetV3-Small, Table 2 likewise (88 = 3.67 · 24).
TIMM_V3_SMALL: Table = (
    (DS(out=16, stride=2, se=0.25, act=_RE),),
    (IR(out=24, stride=2, expand=4.5, act=_RE), IR(out=24, expand=3.67, act=_RE)),
    (IR(out=40, kernel=5, stride=2, expand=4, se=0.25), IR(out=40, repeats=2, kernel=5, expand=6, se=0.25)),
    (IR(out=48, repeats=2, kernel=5, expand=3, se=0.25),),
    (IR(out=96, repeats=3, kernel=5, stride=2, expand=6, se=0.25),),
    (CONV(out=576),),
)

# The minimal variants (the TF reference's): 3x3 kernels, no squeeze-excite, ReLU throughout.
TIMM_V3_LARGE_MINIMAL: Table = (
    (DS(out=16),),
    (IR(out=24, stride=2, expand=4), IR(out=24, expand=3)),
    (IR(out=40, repeats=3, stride=2, expand=3),),
    (IR(out=80, stride=2, expand=6), IR(out=80, expand=2.5), IR(out=80, repeats=2, expand=2.3)),
    (IR(out=112, repeats=2, expand=6),),
    (IR(out=160, repeats=3, stride=2, expand=6),),
    (CONV(out=960),),
)

TIMM_V3_SMALL_MINIMAL: Table = (
    (DS(out=16, stride=2),),
    (IR(out=24, stride=2, expand=4.5), IR(out=24, expand=3.67)),
    (IR(out=40, stride=2, expand=4), IR(out=40, repeats=2, expand=6)),
    (IR(out=48, repeats=2, expand=3),),
    (IR(out=96, repeats=3, stride=2, expand=6),),
    (CONV(out=576),),
)

_TIMM_V3: dict[tuple[str, bool], tuple[Table, int]] = {  # (size, minimal): table, head width
    ("large", False): (TIMM_V3_LARGE, 1280),
    ("small", False): (TIMM_V3_SMALL, 1024),
    ("large", True): (TIMM_V3_LARGE_MINIMAL, 1280),
    ("small", True): (TIMM_V3_SMALL_MINIMAL, 1024),
}


def timm_mobilenet_v3(
    size: Literal["large", "small"] = "large",
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    depth_multiplier: float = 1.0,
    minimal: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    padding: Padding = "torch",
    bn_epsilon: float = 1e-5,
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV3 as timm builds it: block widths ``make_divisible(in · ratio)``, the head 1280 (large) or 1024
    (small) whatever the width, the stem unscaled below width 0.75, each stage's repeats times ``depth_multiplier``
    (rounded up), PyTorch's BatchNorm momentum. ``minimal``: the minimal variant. The TF-ported ``tf_*`` weights
    need ``padding='SAME'`` and ``bn_epsilon=1e-3``.

    >>> model = timm_mobilenet_v3("large", 1.5, depth_multiplier=1.2)
    """
    if (size, minimal) not in _TIMM_V3:
        raise ValueError(f"timm_mobilenet_v3: size must be 'large' or 'small', got {size!r}")
    table, head_channels = _TIMM_V3[size, minimal]
    se = SqueezeExciteRule(from_expansion=True, divisible=True)
    recipe = Recipe(stem=16, act="relu" if minimal else _HS, se=se, head="post_pool", head_channels=head_channels,
                    head_bias=True, fix_stem_below=0.75)  # fmt: skip
    return build(table, recipe, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, padding=padding, bn_epsilon=bn_epsilon, dtype=dtype,
                 where="timm_mobilenet_v3")  # fmt: skip


def mobilenet_v3_rw(
    width_multiplier: float = 1.0, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3,
    bn_epsilon: float = 1e-3, dtype: Any | None = None,
) -> MobileNet:  # fmt: skip
    """timm's own MobileNetV3-Large (``mobilenetv3_rw``): no residual in the first block, SE with the block's
    activation and widths rounded to the nearest integer, a 1280 head without bias, BatchNorm eps 1e-3 (timm's
    setting for it, with torch padding).

    >>> model = mobilenet_v3_rw()
    """
    first = dataclasses.replace(TIMM_V3_LARGE[0][0], skip=False)
    se = SqueezeExciteRule(from_expansion=True, divisible=False, act=None)
    recipe = Recipe(stem=16, act=_HS, se=se, head="post_pool", head_channels=1280)
    return build(((first,), *TIMM_V3_LARGE[1:]), recipe, width_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, bn_epsilon=bn_epsilon, dtype=dtype, where="mobilenet_v3_rw")  # fmt: skip


_TF = functools.partial(timm_mobilenet_v3, padding="SAME", bn_epsilon=1e-3)

TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    "mobilenetv3_large_075": functools.partial(timm_mobilenet_v3, "large", 0.75),
    "mobilenetv3_large_100": functools.partial(timm_mobilenet_v3, "large", 1.0),
    "mobilenetv3_large_150d": functools.partial(timm_mobilenet_v3, "large", 1.5, depth_multiplier=1.2),
    "mobilenetv3_small_050": functools.partial(timm_mobilenet_v3, "small", 0.5),
    "mobilenetv3_small_075": functools.partial(timm_mobilenet_v3, "small", 0.75),
    "mobilenetv3_small_100": functools.partial(timm_mobilenet_v3, "small", 1.0),
    "mobilenetv3_rw": mobilenet_v3_rw,
    "tf_mobilenetv3_large_075": functools.partial(_TF, "large", 0.75),
    "tf_mobilenetv3_large_100": functools.partial(_TF, "large", 1.0),
    "tf_mobilenetv3_large_minimal_100": functools.partial(_TF, "large", 1.0, minimal=True),
    "tf_mobilenetv3_small_075": functools.partial(_TF, "small", 0.75),
    "tf_mobilenetv3_small_100": functools.partial(_TF, "small", 1.0),
    "tf_mobilenetv3_small_minimal_100": functools.partial(_TF, "small", 1.0, minimal=True),
}
