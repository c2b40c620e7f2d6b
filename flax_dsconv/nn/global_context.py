"""Global context attention (GCNet, Cao et al. 2019) as timm's EfficientNets use it in place of squeeze-excite, and
the one constructor of a block's channel attention of either kind."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.nn.common import bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.conv import PointwiseConv
from flax_dsconv.nn.norm import LayerNorm
from flax_dsconv.nn.squeeze_excite import SqueezeExcite
from flax_dsconv.ops.activations import activation

# A block's channel attention: squeeze-excite (mean-pooled context) or global context (attention-pooled).
SeKind = Literal["se", "gc"]
SE_KINDS: tuple[SeKind, ...] = ("se", "gc")

# timm's GlobalContext normalises its bottleneck with LayerNorm2d at this epsilon (its default, not the model's).
GC_EPSILON = 1e-6


class _ContextMlp(nn.Module):
    """``fc1`` (1x1, bias) → ``norm`` (LayerNorm over channels) → act → ``fc2`` (1x1, bias): timm's ``ConvMlp``."""

    reduced_channels: int
    features: int
    act: str
    dtype: Any | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = PointwiseConv(self.reduced_channels, use_bias=True, dtype=self.dtype, name="fc1")(x)
        x = LayerNorm(GC_EPSILON, act=self.act, dtype=self.dtype, name="norm")(x)
        return PointwiseConv(self.features, use_bias=True, dtype=self.dtype, name="fc2")(x)


class GlobalContext(nn.Module):
    """Global context attention, scaling form (timm's ``GlobalContext`` defaults: ``fuse_scale``, no
    ``fuse_add``): a softmax over positions of ``conv_attn`` (1x1 to one channel, bias) pools the context,
    ``mlp_scale`` (1x1 reduce, LayerNorm, act, 1x1 expand) maps it, and the gate scales the input.

    >>> GlobalContext(12, act="silu").init_with_output(key, jnp.ones((1, 8, 8, 192)))[0].shape
    (1, 8, 8, 192)
    """

    reduced_channels: int
    act: str = "relu"
    gate: str = "sigmoid"
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        attn = bound_kernel_shape(self, ("conv_attn",))
        check_nhwc(x, None if attn is None else attn[-2], where(self))
        logits = PointwiseConv(1, use_bias=True, dtype=self.dtype, name="conv_attn")(x)
        n, h, w, c = x.shape
        weights = jax.nn.softmax(logits.reshape(n, h * w, 1), axis=1)
        context = jnp.einsum("npc,npo->noc", x.reshape(n, h * w, c), weights.astype(x.dtype)).reshape(n, 1, 1, c)
        scale = _ContextMlp(self.reduced_channels, c, self.act, self.dtype, name="mlp_scale")(context)
        return x * activation(self.gate)(scale)


def check_se_kind(kind: object, where: str) -> None:
    """Refuse a channel-attention kind the blocks cannot build, naming ``where`` (a block config, at construction)."""
    if kind not in SE_KINDS:
        raise ValueError(f"{where}: se_kind must be one of {list(SE_KINDS)}, got {kind!r}")


def channel_attention(kind: SeKind, reduced_channels: int, act: str, gate: str, dtype: Any | None = None,
                      name: str = "se") -> nn.Module:  # fmt: skip
    """A block's channel attention (timm's ``se`` attribute): :class:`SqueezeExcite` or :class:`GlobalContext`."""
    if kind == "gc":
        return GlobalContext(reduced_channels, act, gate, dtype, name=name)
    check_se_kind(kind, "channel_attention")
    return SqueezeExcite(reduced_channels, act, gate, dtype, name=name)
