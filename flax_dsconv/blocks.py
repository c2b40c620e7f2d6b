"""MobileNetV2/V3 blocks built from :mod:`flax_dsconv.layers`; names mirror timm's for conversion."""

from __future__ import annotations

from flax import linen as nn

from flax_dsconv.layers import (
    Array,
    BatchNorm,
    BatchNormConfig,
    DepthwiseConv,
    Dtype,
    PointwiseConv,
    SqueezeExcite,
    _where,
    activation,
    add_residual,
    check_nhwc,
    full_conv,
    pad_for_depthwise,
)
from flax_dsconv.padding import PaddingLike


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018), with MobileNetV3's optional SE.

    ``conv_pw`` (1x1 expand) → ``bn1`` → act → ``conv_dw`` (k x k, stride, dilation) → ``bn2`` → act →
    [``se``] → ``conv_pwl`` (1x1 linear projection) → ``bn3``, plus the input when ``skip``.

    >>> InvertedResidual(features=24, expand_channels=96, strides=2).init(key, jnp.ones((1, 56, 56, 16)))
    """

    features: int
    expand_channels: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu6"
    se_channels: int = 0
    se_act: str = "relu"
    se_gate: str = "hard_sigmoid"
    skip: bool = False
    norm: BatchNormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Dtype | None = None
    depthwise: str = "auto"  # DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        norm = BatchNorm.partial(self.norm, use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype)
        act = activation(self.act)
        shortcut = x
        x = PointwiseConv(self.expand_channels, dtype=self.dtype, name="conv_pw")(x)
        x = act(norm(name="bn1")(x))
        x, padding = pad_for_depthwise(x, self.kernel_size, self.strides, self.padding, self.dilation, self.depthwise)
        x = DepthwiseConv(
            self.kernel_size,
            self.strides,
            padding,
            self.dilation,
            dtype=self.dtype,
            implementation=self.depthwise,
            name="conv_dw",
        )(x)
        x = act(norm(name="bn2")(x))
        if self.se_channels:
            x = SqueezeExcite(self.se_channels, self.se_act, self.se_gate, self.dtype, name="se")(x)
        x = PointwiseConv(self.features, dtype=self.dtype, name="conv_pwl")(x)
        x = norm(name="bn3")(x)
        return add_residual(x, shortcut, self.skip)


class ConvBNAct(nn.Module):
    """A dense conv → ``bn1`` → act block (timm's ``ConvBnAct``; the full-convolution MobileNet's layer)."""

    features: int
    kernel_size: int = 1
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    skip: bool = False
    norm: BatchNormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kernel = self.variables.get("params", {}).get("conv", {}).get("kernel")
        check_nhwc(x, None if kernel is None else kernel.shape[-2], _where(self))
        shortcut = x
        x = full_conv(
            self.features, self.kernel_size, self.strides, self.padding, self.dilation, dtype=self.dtype, name="conv"
        )(x)
        x = BatchNorm.partial(self.norm, use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype)(
            name="bn1"
        )(x)
        return add_residual(activation(self.act)(x), shortcut, self.skip)
