"""Configs, the one generic network, and one file per family holding its paper's table and builders.

Every builder that :func:`create_model` calls for a name is exported here, so a model can also be built with
arguments no timm name takes (``efficientnet(1.1, 1.2, num_classes=10)``, ``mobilenet_v4_conv('small', 0.75)``).
"""

from flax_dsconv.models.config import MobileNetConfig, make_divisible
from flax_dsconv.models.edgetpu import mobilenet_edgetpu
from flax_dsconv.models.efficientnet import (
    efficientnet,
    efficientnet_condconv,
    efficientnet_edgetpu,
    efficientnet_lite,
    efficientnet_pruned,
    efficientnet_test,
    efficientnet_x,
    tinynet,
)
from flax_dsconv.models.efficientnet_v2 import efficientnet_v2
from flax_dsconv.models.hardcorenas import hardcorenas
from flax_dsconv.models.mixnet import mixnet
from flax_dsconv.models.mobilenet_v1 import mobilenet_v1
from flax_dsconv.models.mobilenet_v2 import mobilenet_v2
from flax_dsconv.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_rw, mobilenet_v3_small, timm_mobilenet_v3
from flax_dsconv.models.mobilenet_v4 import mobilenet_v4_conv, mobilenet_v4_hybrid
from flax_dsconv.models.nas import fbnet_c, fbnet_v3, lcnet, mnasnet, mnasnet_small, semnasnet, spnasnet
from flax_dsconv.models.network import MobileNet
from flax_dsconv.models.registry import BUILDERS, create_model, list_models

__all__ = [
    "BUILDERS",
    "MobileNet",
    "MobileNetConfig",
    "create_model",
    "efficientnet",
    "efficientnet_condconv",
    "efficientnet_edgetpu",
    "efficientnet_lite",
    "efficientnet_pruned",
    "efficientnet_test",
    "efficientnet_v2",
    "efficientnet_x",
    "fbnet_c",
    "fbnet_v3",
    "hardcorenas",
    "lcnet",
    "list_models",
    "make_divisible",
    "mixnet",
    "mnasnet",
    "mnasnet_small",
    "mobilenet_edgetpu",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_rw",
    "mobilenet_v3_small",
    "mobilenet_v4_conv",
    "mobilenet_v4_hybrid",
    "semnasnet",
    "spnasnet",
    "timm_mobilenet_v3",
    "tinynet",
]
