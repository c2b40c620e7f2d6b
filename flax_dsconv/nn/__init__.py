"""Linen modules on :mod:`flax_dsconv.ops`: layers, and one file per block family with its config.

Submodule names (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``, ``se``, ``conv_pwl``, ``conv_exp``; the universal
inverted residual's ``dw_start``, ``pw_exp``, ``dw_mid``, ``pw_proj``, ``dw_end``, each holding ``conv`` and ``bn``;
the mobile attention block's ``norm``, ``attn`` (``query``, ``key``, ``value``, ``output``, each holding ``proj``,
the key and value also ``down_conv`` and ``norm``) and ``layer_scale``; MixNet's mixed convs hold their channel
groups as ``'0'``, ``'1'``... as timm's ``MixedConv2d`` does) mirror timm's attribute names: they are the
conversion keys, and never depend on Flax's automatic naming.
"""

from flax_dsconv.nn.cond_conv import CondConv, CondConvResidual, CondConvResidualConfig
from flax_dsconv.nn.conv import (
    DepthwiseConv,
    MixedDepthwiseConv,
    MixedPointwiseConv,
    PointwiseConv,
    conv_kernel_init,
    full_conv,
    split_channels,
)
from flax_dsconv.nn.conv_bn_act import ConvBNAct, ConvBNActConfig
from flax_dsconv.nn.edge_residual import EdgeResidual, EdgeResidualConfig
from flax_dsconv.nn.global_context import GlobalContext
from flax_dsconv.nn.inverted_residual import InvertedResidual, InvertedResidualConfig
from flax_dsconv.nn.layer_scale import LayerScale
from flax_dsconv.nn.mobile_attention import MobileAttention, MobileAttentionConfig, MultiQueryAttention
from flax_dsconv.nn.norm import (
    BatchNorm,
    BatchNormConfig,
    EvoNormS0,
    EvoNormS0Config,
    GroupNorm,
    GroupNormConfig,
    LayerNorm,
    LayerNormConfig,
    NormConfig,
    norm_from_dict,
    norm_layer,
    norm_to_dict,
)
from flax_dsconv.nn.registry import BlockConfig, BlockContext, block_from_dict, block_to_dict, build_block
from flax_dsconv.nn.separable import DepthwiseSeparableConv, SeparableConfig, seed_dsconv, separable_in_channels
from flax_dsconv.nn.squeeze_excite import SqueezeExcite
from flax_dsconv.nn.universal_ir import UniversalInvertedResidual, UniversalInvertedResidualConfig

__all__ = [
    "BatchNorm",
    "BatchNormConfig",
    "BlockConfig",
    "BlockContext",
    "CondConv",
    "CondConvResidual",
    "CondConvResidualConfig",
    "ConvBNAct",
    "ConvBNActConfig",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "EdgeResidual",
    "EdgeResidualConfig",
    "EvoNormS0",
    "EvoNormS0Config",
    "GlobalContext",
    "GroupNorm",
    "GroupNormConfig",
    "InvertedResidual",
    "InvertedResidualConfig",
    "LayerNorm",
    "LayerNormConfig",
    "LayerScale",
    "MixedDepthwiseConv",
    "MixedPointwiseConv",
    "MobileAttention",
    "MobileAttentionConfig",
    "MultiQueryAttention",
    "NormConfig",
    "PointwiseConv",
    "SeparableConfig",
    "SqueezeExcite",
    "UniversalInvertedResidual",
    "UniversalInvertedResidualConfig",
    "block_from_dict",
    "block_to_dict",
    "build_block",
    "conv_kernel_init",
    "full_conv",
    "norm_from_dict",
    "norm_layer",
    "norm_to_dict",
    "seed_dsconv",
    "separable_in_channels",
    "split_channels",
]
