"""A whole network's config: stem, stages of block configs, head; resolved and JSON-serialisable."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_from_dict, norm_to_dict
from flax_dsconv.nn.registry import BlockConfig, block_from_dict, block_to_dict
from flax_dsconv.ops.activations import Activation

Head = Literal["none", "pre_pool", "post_pool"]
Padding = Literal["torch", "SAME"]


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below ``divisor`` nor under ``round_limit · value``.

    The rounding torchvision and timm apply to every width-multiplied channel count (FBNetV3 uses
    ``round_limit=0.95``; timm's EfficientNetV2-B series 0: the nearest multiple, however far under).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def check_multiplier(value: float, name: str, where: str) -> None:
    """A width or depth multiplier (``name``) is a finite number above 0: ``make_divisible`` would turn 0, -1 or
    nan into 8 channels, and depth scaling would keep one block per row."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: {name} must be a finite number above 0, got {value!r}")


def check_width(width_multiplier: float, where: str) -> None:
    check_multiplier(width_multiplier, "width_multiplier", where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MobileNetConfig:
    """A whole network. ``head``: ``'none'``; ``'pre_pool'`` (1x1 conv + BN + act before pooling, V2);
    ``'post_pool'`` (1x1 conv after pooling, then act, V3's Linear(960, 1280) + hard-swish), with a BatchNorm
    between conv and act when ``head_norm`` (V4's ``norm_head``, on the pooled 1x1 map: in train mode it
    normalises over the batch alone, so it needs a batch of 2 or more, as in torch).
    ``padding``: ``'torch'`` (symmetric) or ``'SAME'`` (TF-ported weights). ``norm``: every norm's kind and
    settings (:data:`~flax_dsconv.nn.norm.NormConfig`: BatchNorm, GroupNorm, LayerNorm or EvoNorm-S0)."""

    stages: tuple[tuple[BlockConfig, ...], ...]
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_act: Activation = "relu"
    head: Head = "none"
    head_channels: int = 0
    head_act: Activation = "relu"
    head_bias: bool = False
    head_norm: bool = False
    num_classes: int = 1000
    dropout: float = 0.0
    in_channels: int = 3
    padding: Padding = "torch"
    norm: NormConfig = BatchNormConfig()

    def __post_init__(self) -> None:
        for name in ("num_classes", "in_channels", "stem_channels", "stem_kernel", "stem_stride", "head_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"MobileNetConfig: {name} must be an int, got {value!r}")
        for name, least in (("num_classes", 0), ("in_channels", 1), ("stem_channels", 1), ("stem_kernel", 1),
                            ("stem_stride", 1), ("head_channels", 0)):  # fmt: skip
            if getattr(self, name) < least:
                raise ValueError(f"MobileNetConfig: {name} must be at least {least}, got {getattr(self, name)}")
        if self.head != "none" and self.head_channels < 1:
            raise ValueError(f"MobileNetConfig: head={self.head!r} needs head_channels >= 1, got {self.head_channels}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout <= 1:
            raise ValueError(f"MobileNetConfig: dropout is a probability in [0, 1], got {self.dropout!r}")
        if self.head_norm and self.head != "post_pool":
            raise ValueError(f"head_norm=True is the post_pool head's norm; head={self.head!r} has none "
                             "(pre_pool's BatchNorm is always there)")  # fmt: skip

    def with_drop_path(self, rate: float) -> MobileNetConfig:
        """This config with stochastic depth growing linearly over the blocks: block ``i`` of ``n`` (counted over
        all stages from 0) drops its residual branch with probability ``rate · i / n``, the rule of timm's
        ``drop_path_rate`` and torchvision's ``stochastic_depth_prob``; ``rate=0`` turns it off.

        >>> config = create_model("efficientnet_b0").config.with_drop_path(0.2)
        """
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"MobileNetConfig: a drop path rate is a probability in [0, 1), got {rate!r}")
        n = len(self.blocks)
        stages, i = [], 0
        for stage in self.stages:
            blocks = []
            for block in stage:
                blocks.append(dataclasses.replace(block, drop_path=rate * i / n))
                i += 1
            stages.append(tuple(blocks))
        return dataclasses.replace(self, stages=tuple(stages))

    def without_head(self) -> MobileNetConfig:
        """This config without head conv and classifier: the trunk a ``features_only`` model runs."""
        return dataclasses.replace(self, head="none", head_channels=0, head_act="relu", head_bias=False,
                                   head_norm=False, num_classes=0)  # fmt: skip

    @property
    def num_features(self) -> int:
        """The width of the pooled features the classifier takes (timm's ``num_features``)."""
        if self.head != "none":
            return self.head_channels
        blocks = self.blocks
        return blocks[-1].out_channels if blocks else self.stem_channels

    @property
    def blocks(self) -> tuple[BlockConfig, ...]:
        """Every block, stage after stage."""
        return tuple(b for stage in self.stages for b in stage)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stages"] = [[block_to_dict(b) for b in stage] for stage in self.stages]
        d["norm"] = norm_to_dict(self.norm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MobileNetConfig:
        """The config :meth:`to_dict` wrote; fields added since (``head_norm``) take their defaults when absent, and
        a ``norm`` without ``kind`` (saves from before GroupNorm and the others) is a BatchNorm's."""
        d = dict(d)
        d["stages"] = tuple(tuple(block_from_dict(b) for b in stage) for stage in d["stages"])
        d["norm"] = norm_from_dict(d["norm"])
        return cls(**d)
