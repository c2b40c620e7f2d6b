"""Configs, the one generic network, and one file per family holding its paper's table and builders."""

from flax_dsconv.models.config import MobileNetConfig, make_divisible
from flax_dsconv.models.efficientnet import efficientnet
from flax_dsconv.models.efficientnet_v2 import efficientnet_v2
from flax_dsconv.models.mobilenet_v1 import mobilenet_v1
from flax_dsconv.models.mobilenet_v2 import mobilenet_v2
from flax_dsconv.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.registry import BUILDERS, create_model, list_models

__all__ = [
    "BUILDERS",
    "MobileNet",
    "MobileNetConfig",
    "create_model",
    "efficientnet",
    "efficientnet_v2",
    "list_models",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]
