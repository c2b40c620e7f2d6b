"""Models by name: the torchvision and timm names whose architecture the builders reproduce exactly.

Each timm name is checked against the config read off timm's own model (``parity_tests/test_registry.py``); the
EfficientNet-family names come from their family files' ``TIMM_MODELS``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flax_dsconv.models.edgetpu import TIMM_MODELS as EDGETPU_TIMM
from flax_dsconv.models.efficientnet import TIMM_MODELS as EFFICIENTNET_TIMM
from flax_dsconv.models.efficientnet_v2 import TIMM_MODELS as EFFICIENTNET_V2_TIMM
from flax_dsconv.models.mobilenet_v1 import mobilenet_v1
from flax_dsconv.models.mobilenet_v2 import mobilenet_v2
from flax_dsconv.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from flax_dsconv.models.network import MobileNet

# The builders under their own (torchvision's) names, with their paper / torchvision defaults.
BUILDERS: dict[str, Callable[..., MobileNet]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}

# timm builds these with PyTorch's BatchNorm defaults and no dropout before the classifier.
_TIMM: dict[str, Callable[..., MobileNet]] = {
    "mobilenetv1_100": functools.partial(mobilenet_v1, 1.0, act="relu6"),
    "mobilenetv1_125": functools.partial(mobilenet_v1, 1.25, act="relu6"),
    **{
        f"mobilenetv2_{tag}": functools.partial(mobilenet_v2, width, dropout=0.0)
        for tag, width in (("035", 0.35), ("050", 0.5), ("075", 0.75), ("100", 1.0), ("140", 1.4))
    },
    "mobilenetv3_large_100": functools.partial(mobilenet_v3_large, 1.0, dropout=0.0, bn_momentum=0.9, bn_epsilon=1e-5),
    "mobilenetv3_small_100": functools.partial(mobilenet_v3_small, 1.0, dropout=0.0, bn_momentum=0.9, bn_epsilon=1e-5),
}

_MODELS: dict[str, Callable[..., MobileNet]] = {
    **BUILDERS,
    **_TIMM,
    **EFFICIENTNET_TIMM,
    **EFFICIENTNET_V2_TIMM,
    **EDGETPU_TIMM,
}


def list_models() -> list[str]:
    """Every name :func:`create_model` takes, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> MobileNet:
    """The model called ``name`` (torchvision's or timm's name for it); ``kwargs`` go to its builder
    (``num_classes=10``, ``in_channels=1``, ...).

    >>> model = create_model("mobilenetv3_large_100", num_classes=10)
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; flax_dsconv.list_models() has {len(_MODELS)}: {list_models()}")
    return _MODELS[name](**kwargs)
