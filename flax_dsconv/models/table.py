"""Architecture tables as data: typed rows of blocks, the scaling rules timm applies to them, and the one builder
that turns a table and its family's :class:`Recipe` into a :class:`~flax_dsconv.models.network.MobileNet`.

A row is a run of identical blocks with its expansion and squeeze-excite *ratios*; the widths follow from the
block's input: ``make_divisible(in · expand)`` inside, as timm (and the MnasNet / MobileNetV3 references) compute
them, so a width multiplier scales a table exactly as timm scales it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

from flax_dsconv.models.config import Head, MobileNetConfig, Padding, check_multiplier, check_width, make_divisible
from flax_dsconv.models.network import MobileNet
from flax_dsconv.nn import (
    BatchNormConfig,
    BlockConfig,
    CondConvResidualConfig,
    ConvBNActConfig,
    EdgeResidualConfig,
    InvertedResidualConfig,
    MobileAttentionConfig,
    NormConfig,
    SeparableConfig,
    UniversalInvertedResidualConfig,
)
from flax_dsconv.nn.global_context import SeKind
from flax_dsconv.ops.activations import Activation
from flax_dsconv.ops.antialias import AntiAlias

BlockKind = Literal["ds", "ir", "er", "uir", "mqa", "conv"]
DepthTrunc = Literal["ceil", "round"]
HeadScaling = Literal["none", "width", "up"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """``repeats`` blocks of one ``block`` kind with ``out`` channels (before the width multiplier); only the first
    has ``stride``.

    ``block``: ``'ds'`` depthwise separable, ``'ir'`` inverted residual, ``'er'`` edge residual (fused MBConv),
    ``'uir'`` universal inverted residual, ``'mqa'`` mobile (multi-query) attention, ``'conv'`` dense conv + BN +
    act. ``kernel``: the depthwise kernel (ds, ir; uir's middle one, 0 for none; mqa's key/value down_conv) or the
    dense one (er, conv); ``start_kernel`` / ``end_kernel``: uir's
    depthwise convs before the expansion and after the projection (0: none). ``expand``: the expansion ratio over
    the block's input channels. ``se``: the squeeze-excite ratio (0: none), applied as the family's
    :class:`SqueezeExciteRule` says. ``act``: None for the network's. ``pw_act``: a ds block activates after its
    pointwise conv too (MobileNetV1, LCNet). ``skip``: False forbids the residual even where shapes allow it
    (:data:`CONV` rows default to False, as timm's ``cn`` blocks). ``group_size``: channels per group of an er
    block's k x k conv (0: dense). ``expand_from``: expand from this many channels (width-scaled) instead of the
    block's input (the EdgeTPU models' first block). MixNet's mixed convs: ``kernels`` (ds, ir): one depthwise
    kernel size per channel group (``kernel`` unused; empty: one ``kernel``); ``expand_splits`` (ir) /
    ``project_splits`` (ds, ir): channel groups of the 1x1 expansion / projection.
    ``heads``, ``key_dim``, ``kv_stride``: an mqa block's query heads, its key and value width (timm's ``d``, both),
    and the stride of its keys and values (1: full size).
    ``experts``: an ir block's CondConv experts (0: plain convs; else a :class:`~flax_dsconv.nn.CondConvResidual`).
    ``space_to_depth``: a ds row (stride 1) that opens a space-to-depth region (EfficientNet-X/H, as timm's builder
    does it): its first block starts with a 2x2 stride-2 conv to 4x the channels and halves its depthwise kernel
    (``(k + 1) // 2``); every block of the region has 4x ``out`` channels; the next strided block closes it, at
    stride 1 (the space-to-depth conv did its striding) and a quarter of its expansion ratio (its input is 4x as
    wide).
    """

    block: BlockKind
    out: int
    repeats: int = 1
    kernel: int = 3
    stride: int = 1
    expand: float = 1.0
    se: float = 0.0
    act: Activation | None = None
    pw_act: bool = False
    skip: bool = True
    start_kernel: int = 0
    end_kernel: int = 0
    group_size: int = 0
    expand_from: int = 0
    kernels: tuple[int, ...] = ()
    expand_splits: int = 1
    project_splits: int = 1
    heads: int = 0
    key_dim: int = 0
    kv_stride: int = 1
    experts: int = 0
    space_to_depth: bool = False

    def __post_init__(self) -> None:
        # A setting the block kind has no place for would be dropped silently by the builder: refuse it.
        mixed = ("kernels", "expand_splits", "project_splits")
        attention = ("heads", "key_dim", "kv_stride")
        unused = {
            "conv": ("se", "expand", "pw_act", "start_kernel", "end_kernel", "group_size", "expand_from", *mixed,
                     *attention, "experts", "space_to_depth"),
            "uir": ("se", "pw_act", "group_size", *mixed, *attention, "experts", "space_to_depth"),
            "mqa": ("se", "expand", "pw_act", "start_kernel", "end_kernel", "group_size", "expand_from", "act",
                    *mixed, "experts", "space_to_depth"),
            "ds": ("expand", "start_kernel", "end_kernel", "group_size", "expand_from", "expand_splits", *attention,
                   "experts"),
            "ir": ("pw_act", "start_kernel", "end_kernel", "group_size", *attention, "space_to_depth"),
            "er": ("pw_act", "start_kernel", "end_kernel", *mixed, *attention, "experts", "space_to_depth"),
        }[self.block]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        given = [name for name in unused if getattr(self, name) != defaults[name]]
        if given:
            raise ValueError(f"Row: a {self.block!r} block has no {', '.join(given)} (got "
                             f"{', '.join(f'{n}={getattr(self, n)!r}' for n in given)})")  # fmt: skip
        if self.space_to_depth and self.stride != 1:
            raise ValueError(f"Row: space_to_depth=True with stride={self.stride}; expected 1 (the space-to-depth "
                             "conv strides)")  # fmt: skip


Stage = tuple[Row, ...]
Table = tuple[Stage, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SqueezeExciteRule:
    """How a family sizes its squeeze-excite. The reduced width is ``ratio · expanded width`` when
    ``from_expansion`` (MobileNetV3), else ``ratio · block input`` measured on the expanded width, i.e.
    ``(ratio / expand) · expanded width`` (MnasNet, FBNetV3); rounded by ``make_divisible`` when ``divisible``,
    else to the nearest integer. ``act``: the SE's activation, None for the block's. ``kind``: ``'se'``, or
    ``'gc'`` for timm's GlobalContext in its place (which rounds half up, ``make_divisible(·, 1, 0)``)."""

    from_expansion: bool
    divisible: bool
    act: Activation | None = "relu"
    gate: Activation = "hard_sigmoid"
    kind: SeKind = "se"


# timm's EfficientNet class (EfficientNet, MnasNet, FBNet, ...): a sigmoid-gated SE with the block's activation,
# sized off the block input and rounded to the nearest integer.
EFFICIENTNET_SE = SqueezeExciteRule(from_expansion=False, divisible=False, act=None, gate="sigmoid")

# timm's ``tf_`` models, ported from TF weights: SAME padding and BatchNorm epsilon 1e-3 (``build``'s keywords).
TF_PORT: dict[str, Any] = {"padding": "SAME", "bn_epsilon": 1e-3}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """What a family fixes beside its table: a ``stem_kernel`` stride-2 stem of ``stem`` channels (kept unscaled
    for width multipliers below ``fix_stem_below``; ``math.inf``: always), the network's activation, its SE rule,
    and its head: ``'pre_pool'`` (timm's EfficientNet class: 1x1 conv + BN + act before pooling) or
    ``'post_pool'`` (the MobileNetV3 class), ``head_channels`` wide, width-scaled as ``head_scaling`` says
    (``'none'``: kept, ``'width'``: scaled, ``'up'``: scaled up only). ``depth_trunc``: a stage's scaled repeats
    are ``ceil(n·d)`` or ``round(n·d)`` (TinyNet); ``fix_first_last``: the first and last stages keep their depth
    (EfficientNet-Lite). ``round_limit``: ``make_divisible``'s, for every width (0 for EfficientNetV2-B);
    ``divisor``: the multiple every width-scaled channel count is rounded to (timm's ``channel_divisor``; 16 in
    some GroupNorm EfficientNets). ``group_size``: channels per group of every ds and ir block's k x k conv (1:
    depthwise; timm's model-wide ``group_size``, the ``_g8``/``_g16`` models). ``norm``: every norm's config;
    None: BatchNorm with PyTorch's momentum and ``build``'s ``bn_epsilon``.
    ``layer_scale``: every uir and mqa block scales its output per channel (the MobileNetV4 hybrids)."""

    stem: int
    act: Activation
    se: SqueezeExciteRule
    head: Head
    head_channels: int
    head_bias: bool = False
    head_norm: bool = False
    head_scaling: HeadScaling = "none"
    stem_kernel: int = 3
    fix_stem_below: float = 0.0
    depth_trunc: DepthTrunc = "ceil"
    fix_first_last: bool = False
    round_limit: float = 0.9
    divisor: int = 8
    group_size: int = 1
    norm: NormConfig | None = None
    layer_scale: bool = False


def check_depth(depth_multiplier: float, where: str) -> None:
    check_multiplier(depth_multiplier, "depth_multiplier", where)


def scale_depth(repeats: tuple[int, ...], multiplier: float, trunc: DepthTrunc = "ceil") -> tuple[int, ...]:
    """One stage's repeats scaled by ``multiplier``: the stage's total rounded up (EfficientNet's ``'ceil'``) or
    to the nearest, at least 1 (TinyNet's ``'round'``), then shared out from the last row backwards, each row
    keeping at least one block (the first row, often the strided one, is the last to grow).

    >>> scale_depth((1, 1, 2), 1.2)
    (1, 2, 2)
    """
    total = sum(repeats)
    left = math.ceil(total * multiplier) if trunc == "ceil" else max(1, round(total * multiplier))
    scaled = []
    for r in reversed(repeats):
        share = max(1, round(r / total * left))  # Python's round, half to even, as timm's
        scaled.append(share)
        total -= r
        left -= share
    return tuple(reversed(scaled))


def _se_channels(row: Row, mid: int, rule: SqueezeExciteRule, round_limit: float) -> int:
    if not row.se:
        return 0
    reduced = mid * (row.se if rule.from_expansion else row.se / row.expand)
    if rule.kind == "gc":
        return make_divisible(reduced, 1, round_limit=0.0)
    return make_divisible(reduced, round_limit=round_limit) if rule.divisible else round(reduced)


def _block(row: Row, in_ch: int, expand_in: int, out: int, stride: int, recipe: Recipe, aa: AntiAlias = "none"
           ) -> BlockConfig:  # fmt: skip
    act = row.act or recipe.act
    skip = row.skip and stride == 1 and in_ch == out and not row.space_to_depth
    aa = aa if stride > 1 else "none"  # timm anti-aliases the strided blocks only
    if aa != "none" and (row.block in ("conv", "ds") or row.experts):
        raise ValueError(f"build: aa={aa!r} on a strided {row.block!r}{' CondConv' if row.experts else ''} block; "
                         "anti-aliasing is implemented for ir, er and uir blocks")  # fmt: skip
    if row.block == "mqa":
        return MobileAttentionConfig(out_channels=out, kernel_size=row.kernel, stride=stride, num_heads=row.heads,
                                     key_dim=row.key_dim, value_dim=row.key_dim, kv_stride=row.kv_stride,
                                     layer_scale=recipe.layer_scale, skip=skip)  # fmt: skip
    if row.block == "conv":
        return ConvBNActConfig(out_channels=out, kernel_size=row.kernel, stride=stride, act=act, skip=skip)
    mid = in_ch if row.block == "ds" else make_divisible(expand_in * row.expand)
    if row.block == "uir":
        return UniversalInvertedResidualConfig(
            out_channels=out, expand_channels=mid, start_kernel_size=row.start_kernel, kernel_size=row.kernel,
            end_kernel_size=row.end_kernel, stride=stride, act=act, layer_scale=recipe.layer_scale, skip=skip, aa=aa,
        )  # fmt: skip
    se_channels = _se_channels(row, mid, recipe.se, recipe.round_limit)
    # Without SE the configs keep their own SE defaults, as conversion reads them.
    se: dict[str, Any] = {}
    if se_channels:
        se = dict(se_channels=se_channels, se_act=recipe.se.act or act, se_gate=recipe.se.gate)
        if recipe.se.kind != "se":  # global context (the CondConv block has squeeze-excite only)
            se["se_kind"] = recipe.se.kind
    kernel = max(row.kernels) if row.kernels else row.kernel
    if row.block == "ds":
        return SeparableConfig(out_channels=out, kernel_size=kernel, stride=stride, act=act, pw_act=row.pw_act,
                               skip=skip, kernel_sizes=row.kernels, project_splits=row.project_splits,
                               group_size=recipe.group_size, space_to_depth=row.space_to_depth, **se)  # fmt: skip
    if row.block == "ir" and row.experts:
        mixed = row.kernels or row.expand_splits != 1 or row.project_splits != 1 or recipe.group_size != 1
        if mixed or recipe.se.kind != "se":
            raise ValueError(f"build: a CondConv row (experts={row.experts}) has plain convs and squeeze-excite "
                             "only: no kernels, splits, group_size or global context")  # fmt: skip
        return CondConvResidualConfig(out_channels=out, kernel_size=kernel, stride=stride, expand_channels=mid,
                                      num_experts=row.experts, act=act, skip=skip, **se)  # fmt: skip
    if row.block == "ir":
        return InvertedResidualConfig(out_channels=out, kernel_size=kernel, stride=stride, expand_channels=mid,
                                      act=act, skip=skip, kernel_sizes=row.kernels, expand_splits=row.expand_splits,
                                      project_splits=row.project_splits, group_size=recipe.group_size, aa=aa,
                                      **se)  # fmt: skip
    return EdgeResidualConfig(out_channels=out, kernel_size=row.kernel, stride=stride, expand_channels=mid, act=act,
                              groups=mid // row.group_size if row.group_size else 1, skip=skip, aa=aa,
                              **se)  # fmt: skip


def build(
    table: Table,
    recipe: Recipe,
    width_multiplier: float = 1.0,
    depth_multiplier: float | tuple[float, ...] = 1.0,
    *,
    num_classes: int = 1000,
    dropout: float = 0.0,
    in_channels: int = 3,
    padding: Padding = "torch",
    bn_epsilon: float = 1e-5,
    aa: AntiAlias = "none",
    dtype: Any | None = None,
    where: str = "build",
) -> MobileNet:
    """The network ``table`` describes under ``recipe``: every row's channels ``make_divisible(c · width)``, every
    stage's repeats :func:`scale_depth`-ed (``depth_multiplier``: one for all stages or one per stage), PyTorch's
    BatchNorm momentum. ``aa``: anti-aliased downsampling in every strided block (timm's ``aa_layer``; the stem
    keeps its strided conv). ``where`` names the builder in errors.

    >>> model = build(((Row(block="ds", out=16),), (Row(block="ir", out=24, stride=2, expand=6),)), recipe)
    """
    check_width(width_multiplier, where)
    depths = depth_multiplier if isinstance(depth_multiplier, tuple) else (depth_multiplier,) * len(table)
    if len(depths) != len(table):
        raise ValueError(f"{where}: depth_multiplier must be one number or one per stage ({len(table)}), "
                         f"got {depth_multiplier!r}")  # fmt: skip
    for depth in depths:
        check_depth(depth, where)
    if recipe.group_size != 1:  # timm's model-wide group_size reaches every block; these tables take it in ds/ir only
        others = sorted({row.block for stage in table for row in stage} - {"ds", "ir"})
        if others:
            raise ValueError(f"{where}: group_size={recipe.group_size} applies to ds and ir blocks; the table has "
                             f"{others} blocks")  # fmt: skip
    ch = lambda c: make_divisible(c * width_multiplier, recipe.divisor, round_limit=recipe.round_limit)  # noqa: E731
    stem = recipe.stem if width_multiplier < recipe.fix_stem_below else ch(recipe.stem)
    in_ch = stem
    stages: list[tuple[BlockConfig, ...]] = []
    space_to_depth = False  # inside a space-to-depth region (see Row)
    for s, (stage, depth) in enumerate(zip(table, depths, strict=True)):
        fixed = recipe.fix_first_last and s in (0, len(table) - 1)
        repeats = scale_depth(tuple(r.repeats for r in stage), 1.0 if fixed else depth, recipe.depth_trunc)
        blocks: list[BlockConfig] = []
        for row, n in zip(stage, repeats, strict=True):
            expand_in = ch(row.expand_from) if row.expand_from else 0
            for i in range(n):
                stride, block_row = row.stride if i == 0 else 1, dataclasses.replace(row, space_to_depth=False)
                if space_to_depth and stride > 1:
                    stride, space_to_depth = 1, False
                    block_row = dataclasses.replace(block_row, expand=row.expand / 4)
                elif row.space_to_depth and not space_to_depth:
                    space_to_depth = True
                    block_row = dataclasses.replace(row, kernel=(row.kernel + 1) // 2)
                out = ch(row.out) * (4 if space_to_depth else 1)
                blocks.append(_block(block_row, in_ch, expand_in or in_ch, out, stride, recipe, aa))
                in_ch = blocks[-1].out_channels
        stages.append(tuple(blocks))
    head = recipe.head_channels
    if recipe.head_scaling != "none":
        head = ch(head) if recipe.head_scaling == "width" else max(head, ch(head))
    config = MobileNetConfig(
        stages=tuple(stages),
        stem_channels=stem,
        stem_kernel=recipe.stem_kernel,
        stem_act=recipe.act,
        head=recipe.head,
        head_channels=head,
        head_act=recipe.act,
        head_bias=recipe.head_bias,
        head_norm=recipe.head_norm,
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding=padding,
        norm=recipe.norm or BatchNormConfig(0.9, bn_epsilon),
    )
    return MobileNet(config, dtype=dtype)


# One constructor per block kind, for readable tables: ``IR(out=24, stride=2, expand=6)``.
DS = functools.partial(Row, block="ds")
IR = functools.partial(Row, block="ir")
ER = functools.partial(Row, block="er")
UIR = functools.partial(Row, block="uir")
MQA = functools.partial(Row, block="mqa")
CONV = functools.partial(Row, block="conv", kernel=1, skip=False)
