"""The depthwise separable convolution block (MobileNet, Howard et al. 2017), and the seed notebook's variant."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.nn.common import add_residual, bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.conv import (
    PointwiseConv,
    block_depthwise,
    check_group_size,
    check_mixed_kernels,
    full_conv,
    pointwise_conv,
)
from flax_dsconv.nn.global_context import SeKind, channel_attention, check_se_kind
from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_layer
from flax_dsconv.nn.registry import BlockConfig, BlockContext, check_splits, register_block
from flax_dsconv.ops.activations import Activation
from flax_dsconv.ops.padding import PaddingLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeparableConfig(BlockConfig):
    """A :class:`DepthwiseSeparableConv` in a network. ``pw_act``: whether it activates after its pointwise conv
    (MobileNetV1 yes, V2/V3 no); ``se_channels`` > 0 adds squeeze-excite after the depthwise conv. MixNet's mixed
    convs: ``kernel_sizes`` (one per channel group of the depthwise conv; ``kernel_size`` is then the largest;
    empty: one ``kernel_size`` kernel) and ``project_splits`` (groups of the 1x1 conv; 1: a dense 1x1 conv).
    ``group_size``: channels per group of the k x k conv (1: depthwise; timm's ``_g8`` models: 8). ``se_kind``:
    ``'se'`` squeeze-excite or ``'gc'`` global context.
    ``space_to_depth``: EfficientNet-X/H's first block, which starts with a 2x2 stride-2 conv to 4x the channels
    (``conv_s2d``, then ``bn_s2d`` and the activation) and then runs at ``stride`` 1 on the result."""

    kind = "ds"
    pw_act: bool = False
    se_channels: int = 0
    se_act: Activation = "relu"
    se_gate: Activation = "hard_sigmoid"
    se_kind: SeKind = "se"
    kernel_sizes: tuple[int, ...] = ()
    project_splits: int = 1
    group_size: int = 1
    space_to_depth: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "kernel_sizes", check_mixed_kernels(self.kernel_size, self.kernel_sizes,
                                                                     "SeparableConfig"))  # fmt: skip
        check_splits(self, ("project_splits",))
        check_se_kind(self.se_kind, "SeparableConfig")
        check_group_size(self.group_size, self.kernel_sizes, "SeparableConfig")
        check_space_to_depth(self.space_to_depth, self.stride, self.skip, bool(self.kernel_sizes) or
                             self.project_splits != 1, "SeparableConfig")  # fmt: skip


def check_space_to_depth(space_to_depth: bool, stride: int, skip: bool, mixed: bool, where: str) -> None:
    """A space-to-depth block strides by its ``conv_s2d`` alone (so ``stride`` 1), changes the size (so no
    residual), and has one depthwise kernel and a dense 1x1 conv, as in timm."""
    if not space_to_depth:
        return
    if stride != 1 or skip or mixed:
        raise ValueError(f"{where}: space_to_depth=True with stride={stride}, skip={skip}, mixed convs={mixed}; "
                         "expected stride 1 (conv_s2d strides), no skip and no mixed convs")  # fmt: skip


class DepthwiseSeparableConv(nn.Module):
    """Depthwise separable convolution (MobileNet, Howard et al. 2017, Fig. 3).

    ``conv_dw`` (k x k depthwise, stride) → ``bn1`` → act → [``se``] → ``conv_pw`` (1x1) → ``bn2`` →
    [act]. Defaults follow the paper: the stride is applied once, by the depthwise conv, and the
    pointwise conv has no padding. The seed notebook's ``DSConv`` instead pads the 1x1 conv by 1 and
    strides it again (64x64 in, 66x66 out); :func:`seed_dsconv` builds that variant exactly.

    ``pw_act=False`` and ``se_channels``/``skip`` give the MobileNetV2/V3 first-stage block; ``group_size`` > 1
    makes ``conv_dw`` a grouped conv, ``se_kind='gc'`` the attention a :class:`GlobalContext`. ``kernel_sizes``
    makes ``conv_dw`` a :class:`MixedDepthwiseConv` and ``project_splits`` > 1 ``conv_pw`` a
    :class:`MixedPointwiseConv` (MixNet; neither with the seed's bias, pointwise stride or padding).

    ``space_to_depth`` (EfficientNet-X/H, timm's ``s2d``): first ``conv_s2d`` (2x2, stride 2, TF 'SAME', to 4x the
    channels) → ``bn_s2d`` → act, then the block on that, with ``conv_dw`` padded TF 'SAME' when its kernel is 2
    (timm halves the kernel there: 3 becomes 2) and by ``padding`` otherwise.

    >>> block = DepthwiseSeparableConv(features=128)
    >>> variables = block.init(key, jnp.ones((1, 64, 64, 32)))
    >>> block.apply(variables, x, train=False).shape
    (1, 64, 64, 128)
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    pw_act: bool = True
    se_channels: int = 0
    se_act: str = "relu"
    se_gate: str = "hard_sigmoid"
    se_kind: SeKind = "se"
    kernel_sizes: tuple[int, ...] = ()
    project_splits: int = 1
    group_size: int = 1
    space_to_depth: bool = False
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    use_bias: bool = False
    pointwise_strides: int = 1
    pointwise_padding: PaddingLike = 0
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None
    depthwise: str = "auto"  # DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        shortcut = x
        # Checked here, not only by conv_dw: its input may be padded below, which would garble the message.
        kernel = bound_kernel_shape(self, ("conv_s2d",) if self.space_to_depth else ("conv_dw",))
        check_nhwc(x, None if kernel is None else kernel[-2 if self.space_to_depth else -1], where(self))
        mixed = bool(self.kernel_sizes) or self.project_splits != 1
        if mixed and (self.use_bias or self.pointwise_strides != 1 or self.pointwise_padding != 0):
            raise ValueError(f"{where(self)}: mixed convs (kernel_sizes={tuple(self.kernel_sizes)}, project_splits="
                             f"{self.project_splits}) have no bias, pointwise stride or pointwise padding")  # fmt: skip
        check_space_to_depth(self.space_to_depth, self.strides, self.skip, mixed, where(self))
        padding = self.padding
        if self.space_to_depth:
            if self.use_bias or self.pointwise_strides != 1 or self.pointwise_padding != 0:
                raise ValueError(f"{where(self)}: space_to_depth has no bias, pointwise stride or pointwise padding")
            x = full_conv(4 * x.shape[-1], 2, 2, "SAME", dtype=self.dtype, name="conv_s2d")(x)
            x = norm(name="bn_s2d", act=self.act)(x)
            padding = "SAME" if self.kernel_size == 2 else padding
        x = block_depthwise(x, self.kernel_size, self.kernel_sizes, self.strides, padding, self.dilation,
                            implementation=self.depthwise, dtype=self.dtype, use_bias=self.use_bias,
                            group_size=self.group_size)  # fmt: skip
        x = norm(name="bn1", act=self.act)(x)
        if self.se_channels:
            x = channel_attention(self.se_kind, self.se_channels, self.se_act, self.se_gate, self.dtype)(x)
        if self.project_splits != 1:
            x = pointwise_conv(self.features, self.project_splits, dtype=self.dtype, name="conv_pw")(x)
        else:
            x = PointwiseConv(
                self.features,
                self.pointwise_strides,
                self.pointwise_padding,
                use_bias=self.use_bias,
                dtype=self.dtype,
                name="conv_pw",
            )(x)
        x = norm(name="bn2", act=self.act if self.pw_act else "identity")(x)
        return add_residual(x, shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(cls, config: SeparableConfig, context: BlockContext, name: str) -> DepthwiseSeparableConv:
        return cls(
            config.out_channels,
            kernel_size=config.kernel_size,
            strides=config.stride,
            dilation=config.dilation,
            padding=context.padding,
            act=config.act,
            pw_act=config.pw_act,
            se_channels=config.se_channels,
            se_act=config.se_act,
            se_gate=config.se_gate,
            se_kind=config.se_kind,
            kernel_sizes=config.kernel_sizes,
            project_splits=config.project_splits,
            group_size=config.group_size,
            space_to_depth=config.space_to_depth,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            depthwise=context.depthwise,
            name=name,
        )


def separable_in_channels(variables: Any) -> int | None:
    """A DepthwiseSeparableConv's input channels, read off its variables' 4-D ``params/conv_dw/kernel`` (depth
    multiplier 1; mixed: the sum over ``params/conv_dw/<i>/kernel``), or None when there is no such kernel (nor a
    tree of dicts to hold one)."""
    conv: Any = variables
    for key in ("params", "conv_dw"):
        conv = conv.get(key) if isinstance(conv, Mapping) else None
    if not isinstance(conv, Mapping):
        return None
    groups = [conv] if "kernel" in conv else [conv.get(str(i)) for i in range(len(conv))]
    channels = 0
    for group in groups:
        kernel = group.get("kernel") if isinstance(group, Mapping) else None
        if kernel is None or jnp.ndim(kernel) != 4:
            return None
        channels += int(jnp.shape(kernel)[-1])
    return channels or None


def seed_dsconv(out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> DepthwiseSeparableConv:
    """The seed notebook's ``DSConv(in, out, kernel_size, stride, padding)``, reproduced exactly.

    Both convs carry a bias (``nn.Conv2d``'s default), the pointwise conv is padded by 1 and strided
    again, BatchNorm uses PyTorch defaults and ReLU follows both convs. A 64x64 input gives 66x66.
    Prefer :class:`DepthwiseSeparableConv`'s defaults for new models.

    >>> seed_dsconv(128).init_with_output(key, jnp.ones((1, 64, 64, 32)))[0].shape
    (1, 66, 66, 128)
    """
    return DepthwiseSeparableConv(
        features=out_channels,
        kernel_size=kernel_size,
        strides=stride,
        padding=padding,
        use_bias=True,
        pointwise_strides=stride,
        pointwise_padding=1,
    )

register_block(SeparableConfig, DepthwiseSeparableConv)
