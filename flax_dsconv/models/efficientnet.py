"""EfficientNet (Tan & Le 2019), EfficientNet-Lite, EfficientNet-EdgeTPU-S/M/L (Gupta & Tan 2019) and TinyNet
(Han et al. 2020): stage tables as data, their :class:`~flax_dsconv.models.table.Recipe` (compound scaling is
``table.build``'s width and depth multipliers), and timm's names for them.

:data:`EFFICIENTNET` is the recipe ``efficientnet_v2.py`` and ``edgetpu.py`` vary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.table import CONV, DS, EFFICIENTNET_SE, ER, IR, TF_PORT, Recipe, Table, build
from flax_dsconv.nn import (
    EvoNormS0Config,
    GroupNormConfig,
    InvertedResidualConfig,
    LayerNormConfig,
    NormConfig,
    SeparableConfig,
)
from flax_dsconv.ops.antialias import AntiAlias

# EfficientNet-B0, Table 1: MBConv1 (no expansion: a depthwise separable block), then MBConv6; SE 0.25 throughout.
B0_TABLE: Table = (
    (DS(out=16, se=0.25),),
    (IR(out=24, repeats=2, stride=2, expand=6, se=0.25),),
    (IR(out=40, repeats=2, kernel=5, stride=2, expand=6, se=0.25),),
    (IR(out=80, repeats=3, stride=2, expand=6, se=0.25),),
    (IR(out=112, repeats=3, kernel=5, expand=6, se=0.25),),
    (IR(out=192, repeats=4, kernel=5, stride=2, expand=6, se=0.25),),
    (IR(out=320, expand=6, se=0.25),),
)
# EfficientNet-X (timm's version 1) and -H (version 2, narrower expansions early): B0's table with a space-to-depth
# first stage and fused MBConvs (ReLU) in stages 1-2; the first of them closes the space-to-depth region.
X_TABLE: Table = (
    (DS(out=16, se=0.25, space_to_depth=True),),
    (ER(out=24, repeats=2, stride=2, expand=6, se=0.25, act="relu"),),
    (ER(out=40, repeats=2, kernel=5, stride=2, expand=6, se=0.25, act="relu"),),
    *B0_TABLE[3:],
)
H_TABLE: Table = (
    X_TABLE[0],
    *(tuple(dataclasses.replace(row, expand=4.0) for row in stage) for stage in X_TABLE[1:4]),
    *X_TABLE[4:],
)

# EfficientNet-CondConv (Yang et al. 2019): B0 with CondConv in the last three stages, 4 experts each before the
# model's experts multiplier (timm's ``cc4``).
CONDCONV_TABLE: Table = (
    *B0_TABLE[:4],
    *(tuple(dataclasses.replace(row, experts=4) for row in stage) for stage in B0_TABLE[4:]),
)
LITE0_TABLE: Table = tuple(tuple(dataclasses.replace(row, se=0.0) for row in stage) for stage in B0_TABLE)

# EfficientNet-EdgeTPU-S: fused MBConvs (edge residuals) in the early stages, no SE; the first block expands
# from 24 channels whatever the stem's width (the reference implementation's quirk), and has no skip.
EDGE_TABLE: Table = (
    (ER(out=24, expand=4, expand_from=24, skip=False),),
    (ER(out=32, repeats=2, stride=2, expand=8),),
    (ER(out=48, repeats=4, stride=2, expand=8),),
    (IR(out=96, repeats=5, kernel=5, stride=2, expand=8),),
    (IR(out=144, repeats=4, kernel=5, expand=8),),
    (IR(out=192, repeats=2, kernel=5, stride=2, expand=8),),
)

# timm's test_efficientnet: a minimal EfficientNet (a conv, two fused and two SE MBConvs) for its norm experiments.
TEST_TABLE: Table = (
    (CONV(out=16, kernel=3, skip=True),),
    (ER(out=24, stride=2, expand=4),),
    (ER(out=32, stride=2, expand=4),),
    (IR(out=48, stride=2, expand=4, se=0.25),),
    (IR(out=64, stride=2, expand=4, se=0.25),),
)

# B0's: SiLU, a 32-channel stem and a 1280 head before pooling, both width-scaled; repeats ceiled.
EFFICIENTNET = Recipe(stem=32, act="silu", se=EFFICIENTNET_SE, head="pre_pool", head_channels=1280,
                      head_scaling="width")  # fmt: skip
# Lite: ReLU6, stem and head fixed at 32 and 1280, first and last stages not deepened.
LITE = dataclasses.replace(EFFICIENTNET, act="relu6", fix_stem_below=math.inf, head_scaling="none",
                           fix_first_last=True)  # fmt: skip
EDGETPU_S = dataclasses.replace(EFFICIENTNET, act="relu")
# TinyNet: B0 shrunk; repeats rounded (not ceiled) so single-block stages stay single, stem fixed, head >= 1280.
TINYNET = dataclasses.replace(EFFICIENTNET, fix_stem_below=math.inf, head_scaling="up", depth_trunc="round")
# test_efficientnet: a 24-channel stem, a 256 head, widths rounded to the nearest multiple of 8.
TEST = dataclasses.replace(EFFICIENTNET, stem=24, head_channels=256, round_limit=0.0)


def efficientnet(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    norm: NormConfig | None = None,
    group_size: int = 1,
    divisor: int = 8,
    aa: AntiAlias = "none",
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet as timm builds it: B0's table, SiLU (swish), squeeze-excite, scaled by the compound
    coefficients (B1 is ``(1.0, 1.1)``, B7 ``(2.0, 3.1)``: see ``EFFICIENTNET_SCALES``). ``tf=True`` matches the
    TF-ported weights (timm's ``tf_efficientnet_*``: SAME padding, BatchNorm epsilon 1e-3). timm's experiments:
    ``norm`` in place of BatchNorm (e.g. ``GroupNormConfig(group_size=8)``), ``group_size`` channels per group in
    the depthwise convs (grouped convs), widths rounded to multiples of ``divisor``. ``aa``: anti-aliased
    downsampling in the strided blocks (``'blur'``: timm's ``efficientnet_blur_b0``).

    >>> model = efficientnet(1.2, 1.4, num_classes=10)  # B3
    >>> model = efficientnet(norm=GroupNormConfig(group_size=8), group_size=8)  # timm's efficientnet_b0_g8_gn
    """
    recipe = dataclasses.replace(EFFICIENTNET, norm=norm, group_size=group_size, divisor=divisor)
    return build(B0_TABLE, recipe, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, aa=aa, dtype=dtype, where="efficientnet",
                 **(TF_PORT if tf else {}))  # fmt: skip


def efficientnet_condconv(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    experts_multiplier: int = 1,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet-CondConv (timm's ``efficientnet_cc_*``): :func:`efficientnet` whose last three stages are
    :class:`~flax_dsconv.nn.CondConvResidual` blocks of ``4 · experts_multiplier`` experts; options as
    :func:`efficientnet`.

    >>> model = efficientnet_condconv(1.0, 1.1, experts_multiplier=2)  # CondConv-B1, 8 experts
    """
    if isinstance(experts_multiplier, bool) or not isinstance(experts_multiplier, int) or experts_multiplier < 1:
        raise ValueError(f"efficientnet_condconv: experts_multiplier must be a positive int, got "
                         f"{experts_multiplier!r}")  # fmt: skip
    table = tuple(tuple(dataclasses.replace(row, experts=row.experts * experts_multiplier) for row in stage)
                  for stage in CONDCONV_TABLE)  # fmt: skip
    return build(table, EFFICIENTNET, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="efficientnet_condconv",
                 **(TF_PORT if tf else {}))  # fmt: skip


def efficientnet_x(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    version: int = 1,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet-X (``version=1``) and -H (``version=2``) as timm builds them (``efficientnet_x_b3``, ``_x_b5``,
    ``efficientnet_h_b5``): a space-to-depth first stage (a 2x2 stride-2 conv to 4x the channels, then separable
    blocks 4x as wide), fused MBConvs with ReLU in stages 1-2, then B0's inverted residuals; scaled as
    :func:`efficientnet`.

    >>> model = efficientnet_x(1.2, 1.4)  # X-B3
    """
    if version not in (1, 2):
        raise ValueError(f"efficientnet_x: version must be 1 (EfficientNet-X) or 2 (-H), got {version!r}")
    return build(X_TABLE if version == 1 else H_TABLE, EFFICIENTNET, width_multiplier, depth_multiplier,
                 num_classes=num_classes, dropout=dropout, in_channels=in_channels, dtype=dtype,
                 where="efficientnet_x")  # fmt: skip


def efficientnet_lite(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet-Lite (for mobile accelerators): B0 without squeeze-excite, ReLU6, the stem and head fixed at
    32 and 1280 channels and the first and last stages at one block whatever the scaling; options as
    :func:`efficientnet`.

    >>> model = efficientnet_lite(1.4, 1.8)  # Lite4
    """
    return build(LITE0_TABLE, LITE, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="efficientnet_lite",
                 **(TF_PORT if tf else {}))  # fmt: skip


def efficientnet_edgetpu(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    tf: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """EfficientNet-EdgeTPU (timm's ``efficientnet_es/em/el``): fused MBConvs early, ReLU, no squeeze-excite;
    S is ``(1.0, 1.0)``, M ``(1.0, 1.1)``, L ``(1.2, 1.4)``. Options as :func:`efficientnet`.

    >>> model = efficientnet_edgetpu(1.0, 1.1)  # EdgeTPU-M
    """
    return build(EDGE_TABLE, EDGETPU_S, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="efficientnet_edgetpu",
                 **(TF_PORT if tf else {}))  # fmt: skip


def tinynet(
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """TinyNet (Han et al. 2020, "Model Rubik's Cube"): EfficientNet-B0 shrunk, with its 32-channel stem and a
    head of at least 1280, repeats rounded to the nearest; timm's A is ``(1.0, 1.2)``, E ``(0.51, 0.6)``.

    >>> model = tinynet(0.54, 0.85)  # TinyNet-C
    """
    return build(B0_TABLE, TINYNET, width_multiplier, depth_multiplier, num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="tinynet")  # fmt: skip


def efficientnet_pruned(
    tag: str, num_classes: int = 1000, *, dropout: float = 0.0, in_channels: int = 3, dtype: Any | None = None
) -> MobileNet:
    """EfficientNet-B1, B2 or B3 (``tag``) as pruned by knapsack pruning (Aflalo et al. 2020): the TF port's
    structure with each block's widths cut to :data:`PRUNED_WIDTHS`. Options as :func:`efficientnet`.

    >>> model = efficientnet_pruned("b1")
    """
    if tag not in PRUNED_WIDTHS:
        raise ValueError(f"efficientnet_pruned: tag is one of {sorted(PRUNED_WIDTHS)}, got {tag!r}")
    base = efficientnet(*EFFICIENTNET_SCALES[tag], num_classes, tf=True, dropout=dropout, in_channels=in_channels,
                        dtype=dtype)  # fmt: skip
    widths = iter(PRUNED_WIDTHS[tag])
    in_ch, stages = base.config.stem_channels, []
    for stage in base.config.stages:
        blocks = []
        for block in stage:
            mid, se, out = next(widths)
            assert isinstance(block, (SeparableConfig, InvertedResidualConfig))  # B0's table has only these
            cut: dict[str, Any] = dict(expand_channels=mid) if mid else {}
            blocks.append(dataclasses.replace(block, out_channels=out, se_channels=se, skip=block.skip and in_ch == out,
                                              **cut))  # fmt: skip
            in_ch = out
        stages.append(tuple(blocks))
    return base.clone(config=dataclasses.replace(base.config, stages=tuple(stages)))


# The pruned models' (expanded, squeeze-excite, output) channels, block by block (0: a separable block, which does
# not expand), as timm's pruned-model files give them.
PRUNED_WIDTHS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "b1": (
        (0, 8, 16), (0, 4, 16), (48, 4, 12), (62, 6, 12), (48, 6, 12), (70, 6, 35), (61, 10, 35), (51, 10, 35),
        (175, 10, 74), (188, 20, 74), (137, 20, 74), (164, 20, 74), (399, 20, 67), (201, 28, 67), (160, 28, 67),
        (213, 28, 67), (637, 27, 192), (806, 48, 192), (798, 48, 192), (891, 48, 192), (990, 48, 192),
        (1152, 48, 320), (1912, 80, 320),
    ),
    "b2": (
        (0, 8, 16), (0, 4, 16), (54, 4, 17), (69, 6, 17), (61, 6, 17), (86, 6, 42), (72, 12, 42), (98, 12, 42),
        (245, 12, 85), (274, 22, 85), (254, 22, 85), (292, 22, 85), (502, 22, 116), (315, 30, 116),
        (354, 30, 116), (443, 30, 116), (719, 30, 208), (1148, 52, 208), (1160, 52, 208), (1182, 52, 208),
        (1228, 52, 208), (1248, 52, 352), (2112, 88, 352),
    ),
    "b3": (
        (0, 10, 24), (0, 6, 24), (27, 6, 12), (49, 8, 12), (48, 8, 12), (83, 8, 40), (90, 12, 40), (85, 12, 40),
        (215, 12, 93), (261, 24, 93), (219, 24, 93), (254, 24, 93), (236, 24, 93), (480, 24, 120),
        (235, 34, 120), (217, 34, 120), (226, 33, 120), (340, 34, 120), (802, 34, 232), (1030, 58, 232),
        (924, 58, 232), (1016, 58, 232), (1130, 58, 232), (1266, 58, 232), (1392, 58, 384), (2301, 96, 384),
    ),
}  # fmt: skip


def efficientnet_test(
    norm: NormConfig | None = None,
    num_classes: int = 1000,
    *,
    dropout: float = 0.0,
    in_channels: int = 3,
    dtype: Any | None = None,
) -> MobileNet:
    """timm's ``test_efficientnet``: a conv, two fused MBConvs and two SE MBConvs, SiLU, a 256 head; ``norm`` in
    place of BatchNorm (timm's ``test_efficientnet_gn/ln/evos``).

    >>> model = efficientnet_test(LayerNormConfig())  # test_efficientnet_ln
    """
    return build(TEST_TABLE, dataclasses.replace(TEST, norm=norm), num_classes=num_classes, dropout=dropout,
                 in_channels=in_channels, dtype=dtype, where="test_efficientnet")  # fmt: skip


# width, depth — the compound coefficients: B0-B7 from the paper, B8 from AdvProp, L2 from Noisy Student.
EFFICIENTNET_SCALES: dict[str, tuple[float, float]] = {
    "b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4), "b4": (1.4, 1.8),
    "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1), "b8": (2.2, 3.6), "l2": (4.3, 5.3),
}  # fmt: skip
LITE_SCALES: dict[str, tuple[float, float]] = {
    "lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2), "lite3": (1.2, 1.4), "lite4": (1.4, 1.8),
}  # fmt: skip
EDGETPU_SCALES: dict[str, tuple[float, float]] = {"es": (1.0, 1.0), "em": (1.0, 1.1), "el": (1.2, 1.4)}
# CondConv: (width, depth, experts multiplier) — 4 or 8 experts.
CONDCONV_SCALES: dict[str, tuple[float, float, int]] = {
    "b0_4e": (1.0, 1.0, 1), "b0_8e": (1.0, 1.0, 2), "b1_8e": (1.0, 1.1, 2),
}  # fmt: skip
TINYNET_SCALES: dict[str, tuple[float, float]] = {
    "a": (1.0, 1.2), "b": (0.75, 1.1), "c": (0.54, 0.85), "d": (0.54, 0.695), "e": (0.51, 0.6),
}  # fmt: skip

# timm's names; the tf_ ports differ only in padding and BatchNorm epsilon. efficientnet_es/el_pruned are
# es/el with pruned weights, not pruned channels.
TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    **{f"{p}efficientnet_{tag}": functools.partial(efficientnet, w, d, tf=p == "tf_")
       for tag, (w, d) in EFFICIENTNET_SCALES.items() for p in ("", "tf_")},
    **{f"{p}efficientnet_{tag}": functools.partial(efficientnet_lite, w, d, tf=p == "tf_")
       for tag, (w, d) in LITE_SCALES.items() for p in ("", "tf_")},
    **{f"{p}efficientnet_{tag}": functools.partial(efficientnet_edgetpu, w, d, tf=p == "tf_")
       for tag, (w, d) in EDGETPU_SCALES.items() for p in ("", "tf_")},
    **{f"{p}efficientnet_cc_{tag}": functools.partial(efficientnet_condconv, w, d, e, tf=p == "tf_")
       for tag, (w, d, e) in CONDCONV_SCALES.items() for p in ("", "tf_")},
    "efficientnet_blur_b0": functools.partial(efficientnet, *EFFICIENTNET_SCALES["b0"], aa="blur"),
    "efficientnet_x_b3": functools.partial(efficientnet_x, *EFFICIENTNET_SCALES["b3"]),
    "efficientnet_x_b5": functools.partial(efficientnet_x, *EFFICIENTNET_SCALES["b5"]),
    "efficientnet_h_b5": functools.partial(efficientnet_x, 1.92, 2.2, version=2),
    "efficientnet_es_pruned": functools.partial(efficientnet_edgetpu, *EDGETPU_SCALES["es"]),
    "efficientnet_el_pruned": functools.partial(efficientnet_edgetpu, *EDGETPU_SCALES["el"]),
    **{f"tinynet_{tag}": functools.partial(tinynet, w, d) for tag, (w, d) in TINYNET_SCALES.items()},
    **{f"efficientnet_{tag}_pruned": functools.partial(efficientnet_pruned, tag) for tag in PRUNED_WIDTHS},
    # timm's GroupNorm / grouped-conv experiments. Despite its name, _g16_evos has BatchNorm (timm leaves its
    # EvoNorm commented out): grouped convs of 16 and widths in multiples of 16.
    "efficientnet_b0_gn": functools.partial(efficientnet, norm=GroupNormConfig(group_size=8)),
    "efficientnet_b0_g8_gn": functools.partial(efficientnet, norm=GroupNormConfig(group_size=8), group_size=8),
    "efficientnet_b0_g16_evos": functools.partial(efficientnet, group_size=16, divisor=16),
    "efficientnet_b3_gn": functools.partial(efficientnet, *EFFICIENTNET_SCALES["b3"],
                                            norm=GroupNormConfig(group_size=16), divisor=16),
    "efficientnet_b3_g8_gn": functools.partial(efficientnet, *EFFICIENTNET_SCALES["b3"],
                                               norm=GroupNormConfig(group_size=16), group_size=8, divisor=16),
    "test_efficientnet": efficientnet_test,
    "test_efficientnet_gn": functools.partial(efficientnet_test, GroupNormConfig(group_size=8)),
    "test_efficientnet_ln": functools.partial(efficientnet_test, LayerNormConfig()),
    "test_efficientnet_evos": functools.partial(efficientnet_test, EvoNormS0Config(group_size=8)),
}  # fmt: skip
