"""Models by name: the torchvision and timm names whose architecture the builders reproduce exactly.

Each timm name is checked against the config read off timm's own model (``parity_tests/test_registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax_dsconv.models.edgetpu import TIMM_MODELS as EDGETPU_TIMM
from flax_dsconv.models.efficientnet import TIMM_MODELS as EFFICIENTNET_TIMM
from flax_dsconv.models.efficientnet_v2 import TIMM_MODELS as EFFICIENTNET_V2_TIMM
from flax_dsconv.models.hardcorenas import TIMM_MODELS as HARDCORENAS_TIMM
from flax_dsconv.models.mobilenet_v1 import TIMM_MODELS as V1_TIMM
from flax_dsconv.models.mobilenet_v1 import mobilenet_v1
from flax_dsconv.models.mobilenet_v2 import TIMM_MODELS as V2_TIMM
from flax_dsconv.models.mobilenet_v2 import mobilenet_v2
from flax_dsconv.models.mobilenet_v3 import TIMM_MODELS as V3_TIMM
from flax_dsconv.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from flax_dsconv.models.mobilenet_v4 import TIMM_MODELS as V4_TIMM
from flax_dsconv.models.nas import TIMM_MODELS as NAS_TIMM
from flax_dsconv.models.network import MobileNet

# The builders under their own (torchvision's) names, with their paper / torchvision defaults.
BUILDERS: dict[str, Callable[..., MobileNet]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}

# timm's names, each family's next to its builders.
_MODELS: dict[str, Callable[..., MobileNet]] = {
    **BUILDERS,
    **V1_TIMM,
    **V2_TIMM,
    **V3_TIMM,
    **V4_TIMM,
    **NAS_TIMM,
    **HARDCORENAS_TIMM,
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
