"""flax_dsconv: MobileNet's depthwise separable convolution and the MobileNet family in Flax (Linen),
with strict weight conversion from and to PyTorch (torch_ref, torchvision, timm).

>>> import flax_dsconv
>>> model, variables = flax_dsconv.from_torch(torch_model)      # or a .pth / .safetensors path
>>> logits = jax.jit(model.apply)(variables, images_nhwc)
>>> model, variables = flax_dsconv.from_pretrained("local-dir:path/to/timm_checkpoint", num_classes=10)

The package reads one way: :mod:`~flax_dsconv.ops` (functions on arrays) → :mod:`~flax_dsconv.nn` (Linen layers
and blocks) → :mod:`~flax_dsconv.models` (configs, the network, the builders) → :mod:`~flax_dsconv.convert`
(torch ↔ Flax) → :mod:`~flax_dsconv.tools` (CLI, parity report, bench, digits trainer).
"""

from flax_dsconv import data
from flax_dsconv.checkpoint import load, save
from flax_dsconv.convert import ConversionError, from_torch, load_state_dict, to_torch_state_dict
from flax_dsconv.counting import count_macs, count_params, layer_counts, summary
from flax_dsconv.hub import from_pretrained, pretrained_cfg
from flax_dsconv.models import (
    BUILDERS,
    MobileNet,
    MobileNetConfig,
    create_model,
    list_models,
    make_divisible,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from flax_dsconv.models.features import FeatureInfo
from flax_dsconv.models.head import reset_classifier, to_features
from flax_dsconv.nn import (
    BatchNorm,
    BatchNormConfig,
    BlockConfig,
    ConvBNAct,
    ConvBNActConfig,
    DepthwiseConv,
    DepthwiseSeparableConv,
    InvertedResidual,
    InvertedResidualConfig,
    PointwiseConv,
    SeparableConfig,
    SqueezeExcite,
    seed_dsconv,
)
from flax_dsconv.ops.depthwise import DEPTHWISE_IMPLEMENTATIONS

__all__ = [
    "BUILDERS",
    "DEPTHWISE_IMPLEMENTATIONS",
    "BatchNorm",
    "BatchNormConfig",
    "BlockConfig",
    "ConvBNAct",
    "ConvBNActConfig",
    "ConversionError",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "FeatureInfo",
    "InvertedResidual",
    "InvertedResidualConfig",
    "MobileNet",
    "MobileNetConfig",
    "PointwiseConv",
    "SeparableConfig",
    "SqueezeExcite",
    "count_macs",
    "count_params",
    "create_model",
    "data",
    "from_pretrained",
    "from_torch",
    "layer_counts",
    "list_models",
    "load",
    "load_state_dict",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "pretrained_cfg",
    "reset_classifier",
    "save",
    "seed_dsconv",
    "summary",
    "to_features",
    "to_torch_state_dict",
]
