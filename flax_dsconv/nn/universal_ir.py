"""The universal inverted bottleneck (MobileNetV4, Qin et al. 2024): an inverted residual with optional depthwise
convs before the expansion, between expansion and projection, and after the projection."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import linen as nn

from flax_dsconv.nn.common import add_residual, bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.conv import PointwiseConv, block_depthwise
from flax_dsconv.nn.layer_scale import LayerScale
from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_layer
from flax_dsconv.nn.registry import BlockConfig, BlockContext, register_block
from flax_dsconv.ops.antialias import AntiAlias, anti_alias, check_anti_alias
from flax_dsconv.ops.padding import PaddingLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniversalInvertedResidualConfig(BlockConfig):
    """A :class:`UniversalInvertedResidual` in a network, ``expand_channels`` wide inside.

    Depthwise kernel sizes, 0 where the conv is absent: ``start_kernel_size`` before the expansion,
    ``kernel_size`` (the inherited field) between expansion and projection, ``end_kernel_size`` after the
    projection — timm's ``dw_kernel_size_start/mid/end``. The paper's variants: ExtraDW (start and middle),
    IB (middle only), ConvNeXt-like (start only), FFN (none). ``layer_scale``: a learned per-channel scale on
    the output (MobileNetV4's hybrids). ``aa``: anti-aliased downsampling on the strided depthwise conv
    (``'avg'``, ``'blur'``: that conv at stride 1, then the pool strides; ``dw_mid`` or ``dw_start``, not ``dw_end``,
    as in timm).
    """

    kind = "uir"
    expand_channels: int
    start_kernel_size: int = 0
    end_kernel_size: int = 0
    layer_scale: bool = False
    aa: AntiAlias = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_anti_alias(self.aa, self.stride, "UniversalInvertedResidualConfig")
        if self.aa != "none" and not (self.kernel_size or self.start_kernel_size):
            raise ValueError(f"UniversalInvertedResidualConfig: aa={self.aa!r} needs dw_mid or dw_start to stride "
                             "(timm anti-aliases no dw_end)")  # fmt: skip


class _ConvNorm(nn.Module):
    """timm's ``ConvNormAct`` as the block uses it: ``conv`` then ``bn``, then ``act``, then the anti-aliasing pool
    ``aa`` (which then does the striding: the conv runs at stride 1)."""

    features: int | None  # a 1x1 conv to this many channels; None: a depthwise kernel_size conv
    norm: Callable[..., nn.Module]
    kernel_size: int = 1
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "identity"
    dtype: Any | None = None
    implementation: str = "auto"
    aa: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.features is not None:
            x = PointwiseConv(self.features, dtype=self.dtype, name="conv")(x)
        else:
            strides = 1 if self.aa != "none" else self.strides
            x = block_depthwise(x, self.kernel_size, (), strides, self.padding, self.dilation,
                                implementation=self.implementation, dtype=self.dtype, name="conv")  # fmt: skip
        return anti_alias(self.norm(name="bn", act=self.act)(x), self.aa, self.strides)


class UniversalInvertedResidual(nn.Module):
    """Universal inverted bottleneck (timm's ``UniversalInvertedResidual``).

    [``dw_start`` (depthwise, BN, no act)] → ``pw_exp`` (1x1 expand, BN, act) → [``dw_mid`` (depthwise, BN,
    act)] → ``pw_proj`` (1x1 project, BN, no act) → [``dw_end`` (depthwise, BN, no act)] → [``layer_scale``],
    plus the input when ``skip``. Each bracketed conv exists when its kernel size is not 0. The stride goes on
    ``dw_mid`` if it exists, else ``dw_start``, else ``dw_end`` (timm's and the TF reference's placement);
    ``dilation`` applies to every depthwise conv. ``aa`` (``'avg'``, ``'blur'``): the strided conv (``dw_mid`` or
    ``dw_start``) runs at stride 1 and that pool strides after its norm and activation (timm's ``aa_layer``).

    >>> UniversalInvertedResidual(96, 288, start_kernel_size=5, kernel_size=5, strides=2).init(
    ...     key, jnp.ones((1, 28, 28, 64)))
    """

    features: int
    expand_channels: int
    start_kernel_size: int = 0
    kernel_size: int = 3
    end_kernel_size: int = 0
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    layer_scale: bool = False
    aa: str = "none"
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None
    depthwise: str = "auto"  # DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = bound_kernel_shape(self, ("pw_exp", "conv"))
        check_nhwc(x, None if kernel is None else kernel[-2], where(self))
        kernels = {"dw_start": self.start_kernel_size, "dw_mid": self.kernel_size, "dw_end": self.end_kernel_size}
        strided = next((name for name in ("dw_mid", "dw_start", "dw_end") if kernels[name]), None)
        if self.strides != 1 and strided is None:
            raise ValueError(f"{where(self)}: strides={self.strides} needs a depthwise conv to stride, but every "
                             "depthwise kernel size is 0")  # fmt: skip
        check_anti_alias(self.aa, self.strides, where(self))
        if self.aa != "none" and strided == "dw_end":
            raise ValueError(f"{where(self)}: aa={self.aa!r} on dw_end; timm anti-aliases dw_mid or dw_start only")
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)

        def conv(x: jax.Array, name: str, features: int | None = None, act: str = "identity") -> jax.Array:
            return _ConvNorm(features, norm, kernels.get(name, 1), self.strides if name == strided else 1,
                             self.dilation, self.padding, act, self.dtype, self.depthwise,
                             self.aa if name == strided else "none", name=name)(x)  # fmt: skip

        shortcut = x
        if self.start_kernel_size:
            x = conv(x, "dw_start")
        x = conv(x, "pw_exp", self.expand_channels, self.act)
        if self.kernel_size:
            x = conv(x, "dw_mid", act=self.act)
        x = conv(x, "pw_proj", self.features)
        if self.end_kernel_size:
            x = conv(x, "dw_end")
        if self.layer_scale:
            x = LayerScale(dtype=self.dtype, name="layer_scale")(x)
        return add_residual(x, shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(
        cls, config: UniversalInvertedResidualConfig, context: BlockContext, name: str
    ) -> UniversalInvertedResidual:
        return cls(
            config.out_channels,
            config.expand_channels,
            start_kernel_size=config.start_kernel_size,
            kernel_size=config.kernel_size,
            end_kernel_size=config.end_kernel_size,
            strides=config.stride,
            dilation=config.dilation,
            padding=context.padding,
            act=config.act,
            layer_scale=config.layer_scale,
            aa=config.aa,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            depthwise=context.depthwise,
            name=name,
        )


register_block(UniversalInvertedResidualConfig, UniversalInvertedResidual)
