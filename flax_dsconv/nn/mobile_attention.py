"""Mobile attention (MobileNetV4's hybrids, Qin et al. 2024): a residual block of BatchNorm then multi-query
attention whose keys and values may come from a map downsampled by a strided depthwise conv."""

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
from flax_dsconv.nn.registry import BlockConfig, BlockContext, check_splits, register_block
from flax_dsconv.ops.activations import Activation
from flax_dsconv.ops.attention import multi_query_attention
from flax_dsconv.ops.padding import PaddingLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class MobileAttentionConfig(BlockConfig):
    """A :class:`MobileAttention` in a network: ``num_heads`` query heads of ``key_dim`` channels over one key
    head (``key_dim``) and one value head (``value_dim``), keys and values computed on the input downsampled by
    ``kv_stride`` (1: not downsampled) with a ``kernel_size`` depthwise conv (the inherited field; unused, and read
    as 3, when ``kv_stride`` is 1). ``query_stride`` > 1: the queries come from the input average-pooled by it, and
    the attention's output is upsampled back bilinearly (timm's ``query_strides``; no MobileNetV4 uses them).

    The block keeps its input's size (``stride`` 1) and has no activation (``act`` ``'identity'``): timm's
    ``MobileAttention`` takes both arguments but uses the stride only to decide its skip, and its norm has no
    activation. ``layer_scale``: a learned per-channel scale on the attention's output (every hybrid has one).
    """

    kind = "mqa"
    act: Activation = "identity"
    num_heads: int
    key_dim: int
    value_dim: int
    kv_stride: int = 1
    query_stride: int = 1
    layer_scale: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_splits(self, ("num_heads", "key_dim", "value_dim", "kv_stride", "query_stride", "kernel_size",
                            "dilation"))  # fmt: skip
        if self.stride != 1:
            raise ValueError(f"MobileAttentionConfig: stride must be 1 (the block keeps its input's size), got "
                             f"{self.stride!r}")  # fmt: skip
        if self.act != "identity":
            raise ValueError(f"MobileAttentionConfig: act must be 'identity' (the block has no activation), got "
                             f"{self.act!r}")  # fmt: skip


class _Branch(nn.Module):
    """One of timm's ``query`` / ``key`` / ``value`` / ``output`` sequences: [``down_conv`` (strided depthwise) →
    ``norm``] when ``strides`` > 1, or [a ``pool`` x ``pool`` average pool → ``norm``] when ``pool`` > 1, then
    ``proj`` (1x1, no bias)."""

    features: int
    norm: Callable[..., nn.Module] | None = None
    kernel_size: int = 3
    strides: int = 1
    pool: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    dtype: Any | None = None
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if (self.strides > 1 or self.pool > 1) and self.norm is None:
            raise ValueError(f"{where(self)}: downsampling needs a norm after it")
        if self.strides > 1:
            x = block_depthwise(x, self.kernel_size, (), self.strides, self.padding, self.dilation,
                                implementation=self.implementation, dtype=self.dtype, name="down_conv")  # fmt: skip
            x = self.norm(name="norm")(x)  # type: ignore[misc]
        elif self.pool > 1:
            x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
            x = self.norm(name="norm")(x)  # type: ignore[misc]
        return PointwiseConv(self.features, dtype=self.dtype, name="proj")(x)


class MultiQueryAttention(nn.Module):
    """Multi-query attention on an NHWC map (timm's ``MultiQueryAttention2d``).

    ``query.proj`` (1x1 to ``num_heads · key_dim``, head-major); ``key`` and ``value``: a ``kernel_size``
    depthwise ``down_conv`` with stride ``kv_stride`` and its own ``norm`` when ``kv_stride`` > 1, then ``proj``
    (1x1 to ``key_dim`` / ``value_dim``: one head shared by every query head); ``softmax(q·kᵀ/√key_dim)·v``
    (:func:`~flax_dsconv.ops.attention.multi_query_attention`); ``output.proj`` (1x1 to ``features``). No biases.
    ``query_stride`` > 1: ``query`` average-pools its input first (then its ``norm``), and the attention's output
    is upsampled back bilinearly (half-pixel centres, torch's ``align_corners=False``) before ``output.proj``; the
    input's height and width must then be multiples of it. ``norm``: the constructor of the downsampling norms
    (``nn.norm_layer(...)``).

    >>> MultiQueryAttention(160, 4, 64, 64, kv_stride=2, norm=norm).init(key, jnp.ones((1, 14, 14, 160)))
    """

    features: int
    num_heads: int
    key_dim: int
    value_dim: int
    norm: Callable[..., nn.Module]
    kv_stride: int = 1
    kernel_size: int = 3
    dilation: int = 1
    padding: PaddingLike = "torch"
    dtype: Any | None = None
    depthwise: str = "auto"
    query_stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        qs = self.query_stride
        if h % qs or w % qs:
            raise ValueError(f"{where(self)}: query_stride={qs} needs height and width divisible by it, got input "
                             f"shape {tuple(x.shape)}")  # fmt: skip

        def key_value(features: int, name: str) -> jax.Array:
            return _Branch(features, self.norm, self.kernel_size, self.kv_stride, dilation=self.dilation,
                           padding=self.padding, dtype=self.dtype, implementation=self.depthwise, name=name)(x)

        q = _Branch(self.num_heads * self.key_dim, self.norm, pool=qs, dtype=self.dtype, name="query")(x)
        k = key_value(self.key_dim, "key")
        v = key_value(self.value_dim, "value")
        o = multi_query_attention(q, k, v, self.num_heads)
        if qs > 1:
            o = jax.image.resize(o, (b, h, w, o.shape[-1]), "bilinear")
        return _Branch(self.features, dtype=self.dtype, name="output")(o)


class MobileAttention(nn.Module):
    """Mobile attention block (timm's ``MobileAttention`` with ``use_multi_query=True``).

    ``norm`` (BatchNorm, no activation) → ``attn`` (:class:`MultiQueryAttention`) → [``layer_scale``], plus the
    input when ``skip``. The output has the input's height and width; ``kv_stride`` downsamples keys and values
    only (its depthwise conv pads as ``padding`` says, as the other blocks' do), ``query_stride`` the queries.

    >>> MobileAttention(160, num_heads=4, key_dim=64, value_dim=64, kv_stride=2, skip=True).init(
    ...     key, jnp.ones((1, 14, 14, 160)))
    """

    features: int
    num_heads: int
    key_dim: int
    value_dim: int
    kv_stride: int = 1
    query_stride: int = 1
    kernel_size: int = 3
    dilation: int = 1
    padding: PaddingLike = "torch"
    layer_scale: bool = True
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None
    depthwise: str = "auto"  # the key/value down_conv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = bound_kernel_shape(self, ("attn", "query", "proj"))
        check_nhwc(x, None if kernel is None else kernel[-2], where(self))
        for name in ("num_heads", "key_dim", "value_dim", "kv_stride", "query_stride", "kernel_size", "dilation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where(self)}: {name} must be a positive int, got {value!r}")
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        shortcut = x
        x = norm(name="norm")(x)
        x = MultiQueryAttention(self.features, self.num_heads, self.key_dim, self.value_dim, norm, self.kv_stride,
                                self.kernel_size, self.dilation, self.padding, self.dtype, self.depthwise,
                                self.query_stride, name="attn")(x)  # fmt: skip
        if self.layer_scale:
            x = LayerScale(dtype=self.dtype, name="layer_scale")(x)
        return add_residual(x, shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(cls, config: MobileAttentionConfig, context: BlockContext, name: str) -> MobileAttention:
        return cls(
            config.out_channels,
            config.num_heads,
            config.key_dim,
            config.value_dim,
            kv_stride=config.kv_stride,
            query_stride=config.query_stride,
            kernel_size=config.kernel_size,
            dilation=config.dilation,
            padding=context.padding,
            layer_scale=config.layer_scale,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            depthwise=context.depthwise,
            name=name,
        )


register_block(MobileAttentionConfig, MobileAttention)
