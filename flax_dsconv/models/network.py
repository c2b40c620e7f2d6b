"""The one generic network: stem, stages of registered blocks, head, classifier, driven by a config.

Sub-module names follow timm (``conv_stem``, ``bn1``, ``blocks_{stage}_{i}``, ``conv_head``, ``bn2``,
``norm_head``, ``classifier``), so a model converted from torchvision or timm and one built here are the same module.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# Importing the package registers every block kind with flax_dsconv.nn.registry.
from flax_dsconv.models.config import MobileNetConfig
from flax_dsconv.nn import BlockContext, PointwiseConv, build_block, full_conv, norm_layer
from flax_dsconv.nn.common import check_nhwc
from flax_dsconv.ops.activations import activation


class MobileNet(nn.Module):
    """The one generic network: a MobileNet from a :class:`MobileNetConfig`; use the builders
    (:func:`~flax_dsconv.models.mobilenet_v2.mobilenet_v2`, ...) or :func:`flax_dsconv.create_model`.

    ``__call__(x, train=False)`` takes NHWC float input. ``train=True`` normalises with batch statistics
    and updates ``batch_stats`` (pass ``mutable=['batch_stats']``) and enables dropout (``rngs={'dropout':
    key}``). Stage outputs are sown into ``'intermediates'`` (``stem``, ``stage0``, ..., ``pre_logits``).
    ``num_classes=0`` returns the pooled features.

    >>> model = mobilenet_v2()
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    >>> logits = jax.jit(model.apply)(variables, images)
    """

    config: MobileNetConfig
    dtype: Any | None = None
    axis_name: str | None = None
    depthwise: str = "auto"  # every DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.config
        check_nhwc(x, c.in_channels, "MobileNet")
        norm = norm_layer(c.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        context = BlockContext(c.padding, c.norm, self.axis_name, self.dtype, self.depthwise)
        x = full_conv(c.stem_channels, c.stem_kernel, c.stem_stride, c.padding, dtype=self.dtype, name="conv_stem")(x)
        x = norm(name="bn1", act=c.stem_act)(x)
        self.sow("intermediates", "stem", x)
        for s, stage in enumerate(c.stages):
            for i, block in enumerate(stage):
                x = build_block(block, context, f"blocks_{s}_{i}")(x, train)
            self.sow("intermediates", f"stage{s}", x)
        if c.head == "pre_pool":
            x = PointwiseConv(c.head_channels, use_bias=c.head_bias, dtype=self.dtype, name="conv_head")(x)
            x = norm(name="bn2", act=c.head_act)(x)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        if c.head == "post_pool":
            x = PointwiseConv(c.head_channels, use_bias=c.head_bias, dtype=self.dtype, name="conv_head")(x)
            x = norm(name="norm_head", act=c.head_act)(x) if c.head_norm else activation(c.head_act)(x)
        x = x.reshape(x.shape[0], x.shape[-1])  # the pooled map is 1x1 (an explicit size: batch 0 works too)
        self.sow("intermediates", "pre_logits", x)
        if not c.num_classes:
            return x
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        return nn.Dense(c.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01), name="classifier")(x)
