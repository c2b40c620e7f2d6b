"""The one generic network: stem, stages of registered blocks, head, classifier, driven by a config.

Sub-module names follow timm (``conv_stem``, ``bn1``, ``blocks_{stage}_{i}``, ``conv_head``, ``bn2``,
``norm_head``, ``classifier``), so a model converted from torchvision or timm and one built here are the same module.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.models.config import MobileNetConfig
from flax_dsconv.models.features import DEFAULT_OUT_INDICES, FeatureInfo, check_out_indices, feature_levels

# Importing the package registers every block kind with flax_dsconv.nn.registry.
from flax_dsconv.nn import BlockContext, PointwiseConv, build_block, full_conv, initializers, norm_layer
from flax_dsconv.nn.common import check_nhwc
from flax_dsconv.ops.activations import activation


class MobileNet(nn.Module):
    """The one generic network: a MobileNet from a :class:`MobileNetConfig`; use the builders
    (:func:`~flax_dsconv.models.mobilenet_v2.mobilenet_v2`, ...) or :func:`flax_dsconv.create_model`.

    ``__call__(x, train=False)`` takes NHWC float input. ``train=True`` normalises with batch statistics
    and updates ``batch_stats`` (pass ``mutable=['batch_stats']``) and enables dropout (``rngs={'dropout':
    key}``). Stage outputs are sown into ``'intermediates'`` (``stem``, ``stage0``, ..., ``pre_logits``).
    ``num_classes=0`` returns the pooled features.

    As in timm, ``forward_features`` gives the map before pooling (after the head conv where it comes first,
    as in V2 and EfficientNet) and ``forward_head(features, pre_logits=False)`` the rest; call them with
    ``model.apply(variables, x, method="forward_features")``. ``features_only=True`` (a backbone: no head, no
    head variables) returns the list of NHWC maps at the :attr:`feature_info` levels ``out_indices``, in depth
    order.

    >>> model = mobilenet_v2()
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    >>> logits = jax.jit(model.apply)(variables, images)
    """

    config: MobileNetConfig
    dtype: Any | None = None
    axis_name: str | None = None
    depthwise: str = "auto"  # every DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'
    features_only: bool = False
    out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES

    def __post_init__(self) -> None:
        if self.features_only:
            levels = feature_levels(self.config)
            object.__setattr__(self, "out_indices", check_out_indices(self.out_indices, len(levels), "MobileNet"))
        super().__post_init__()

    @property
    def feature_info(self) -> FeatureInfo:
        """The feature levels (timm's ``feature_info``: ``channels()``, ``reduction()``, ``module_name()``) and,
        as ``out_indices``, the ones a ``features_only`` model returns."""
        return FeatureInfo(feature_levels(self.config), self.out_indices)

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any:
        """Flax's ``init`` (same arguments, same variables) without its eager forward pass: a fraction of a
        second instead of one compilation per layer; see :func:`flax_dsconv.nn.initializers.init`."""
        return initializers.init(self, rngs, *args, **kwargs)

    def __call__(self, x: jax.Array, train: bool = False) -> Any:
        return self._forward(x, train, start="input", stop="levels" if self.features_only else "logits")

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The NHWC map before global pooling (timm's ``forward_features``)."""
        self._has_head("forward_features")
        return self._forward(x, train, start="input", stop="features")

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        """Pooling and the rest of the head on :meth:`forward_features`' map: the logits, or with ``pre_logits``
        the pooled features the classifier takes (timm's ``forward_head``)."""
        self._has_head("forward_head")
        return self._forward(x, train, start="features", stop="pre_logits" if pre_logits else "logits")

    def _has_head(self, method: str) -> None:
        if self.features_only:
            raise ValueError(f"MobileNet.{method}: a features_only model has no head; its __call__ returns the "
                             "feature maps (build it without features_only for the head)")  # fmt: skip

    @nn.compact
    def _forward(self, x: jax.Array, train: bool, *, start: str, stop: str) -> Any:
        c = self.config
        norm = norm_layer(c.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        if start == "input":
            check_nhwc(x, c.in_channels, "MobileNet")
            x = self._trunk(x, train, norm, stop)
            if stop in ("levels", "features"):
                return x
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        if c.head == "post_pool":
            x = PointwiseConv(c.head_channels, use_bias=c.head_bias, dtype=self.dtype, name="conv_head")(x)
            x = norm(name="norm_head", act=c.head_act)(x) if c.head_norm else activation(c.head_act)(x)
        x = x.reshape(x.shape[0], x.shape[-1])  # the pooled map is 1x1 (an explicit size: batch 0 works too)
        self.sow("intermediates", "pre_logits", x)
        if not c.num_classes or stop == "pre_logits":
            return x
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        return nn.Dense(c.num_classes, dtype=self.dtype, kernel_init=initializers.normal(0.01),
                        bias_init=initializers.zeros, name="classifier")(x)

    def _trunk(self, x: jax.Array, train: bool, norm: Any, stop: str) -> Any:
        """Stem and stages (and a head conv before pooling): the map before pooling, or at ``stop='levels'`` the
        feature maps at ``out_indices``. Runs inside :meth:`_forward`, so its layers are that method's."""
        c = self.config
        context = BlockContext(c.padding, c.norm, self.axis_name, self.dtype, self.depthwise)
        levels = {level["module"]: i for i, level in enumerate(feature_levels(c))} if stop == "levels" else {}
        wanted = {i % len(levels) for i in self.out_indices} if levels else set()
        maps = []
        x = full_conv(c.stem_channels, c.stem_kernel, c.stem_stride, c.padding, dtype=self.dtype, name="conv_stem")(x)
        x = norm(name="bn1", act=c.stem_act)(x)
        self.sow("intermediates", "stem", x)
        if levels.get("bn1") in wanted:
            maps.append(x)
        for s, stage in enumerate(c.stages):
            for i, block in enumerate(stage):
                x = build_block(block, context, f"blocks_{s}_{i}")(x, train)
            self.sow("intermediates", f"stage{s}", x)
            if levels.get(f"blocks.{s}") in wanted:
                maps.append(x)
        if stop == "levels":
            return maps
        if c.head == "pre_pool":
            x = PointwiseConv(c.head_channels, use_bias=c.head_bias, dtype=self.dtype, name="conv_head")(x)
            x = norm(name="bn2", act=c.head_act)(x)
        return x
