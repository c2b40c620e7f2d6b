"""flax_dsconv: MobileNet's depthwise separable convolution and the MobileNet family in Flax (Linen),
with strict weight conversion from and to PyTorch (torch_ref, torchvision, timm).

>>> import flax_dsconv
>>> model, variables = flax_dsconv.from_torch(torch_model)      # or a .pth / .safetensors path
>>> logits = jax.jit(model.apply)(variables, images_nhwc)
"""

from flax_dsconv.blocks import ConvBNAct, InvertedResidual
from flax_dsconv.checkpoint import load, save
from flax_dsconv.convert import ConversionError, from_torch, load_state_dict, to_torch_state_dict
from flax_dsconv.counting import count_macs, count_params, layer_counts, summary
from flax_dsconv.layers import (
    BatchNorm,
    BatchNormConfig,
    DepthwiseConv,
    DepthwiseSeparableConv,
    PointwiseConv,
    SqueezeExcite,
    seed_dsconv,
)
from flax_dsconv.mobilenet import (
    BlockConfig,
    MobileNet,
    MobileNetConfig,
    make_divisible,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)

__all__ = [
    "BatchNorm",
    "BatchNormConfig",
    "BlockConfig",
    "ConvBNAct",
    "ConversionError",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "MobileNet",
    "MobileNetConfig",
    "PointwiseConv",
    "SqueezeExcite",
    "count_macs",
    "count_params",
    "from_torch",
    "layer_counts",
    "load",
    "load_state_dict",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "save",
    "seed_dsconv",
    "summary",
    "to_torch_state_dict",
]
