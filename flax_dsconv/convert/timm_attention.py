"""The timm reader's MobileNetV4-hybrid part: ``MobileAttention`` (its norm, ``MultiQueryAttention2d`` with
the key/value down-convs and query pools, the output projection) and ``LayerScale2d``, read structurally."""

from __future__ import annotations

from typing import Any

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.torch_layers import TorchReader, expect_type
from flax_dsconv.nn import MobileAttentionConfig


def read_layer_scale(r: TorchReader, blk: Any, where: str) -> bool:
    """Whether the block scales its output (timm's ``LayerScale2d``; Identity: no)."""
    if type(blk.layer_scale).__name__ == "Identity":
        r.identity(blk.layer_scale, f"{where}.layer_scale")
        return False
    expect_type(blk.layer_scale, f"{where}.layer_scale", ("LayerScale2d",), "a layer scale")
    r.claim(blk.layer_scale, f"{where}.layer_scale")
    return True


def _children(r: TorchReader, seq: Any, where: str, names: tuple[str, ...]) -> None:
    """A ``Sequential`` holding exactly the modules ``names``, in that order."""
    expect_type(seq, where, ("Sequential",), "a sequence of layers")
    if tuple(seq._modules) != names:
        raise ConversionError(f"{where}: holds {list(seq._modules)}; expected {list(names)}")
    r.claim(seq, where)


def _no_dropout(r: TorchReader, module: Any, where: str) -> None:
    rate = r.dropout(module, where)
    if rate:
        raise ConversionError(f"{where}: dropout {rate} inside the attention: the Flax block has none; build the "
                              "torch model with attn_drop=0 and proj_drop=0")  # fmt: skip


def _query_pool(r: TorchReader, pool: Any, where: str, stride: int) -> None:
    """The queries' ``stride`` x ``stride`` average pool (torch's, or timm's SAME-padded one, which pads nothing on
    the sizes the Flax block accepts: multiples of the stride)."""
    expect_type(pool, where, ("AvgPool2d", "AvgPool2dSame"), "an average pool")
    kernel = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
    strides = pool.stride if isinstance(pool.stride, tuple) else (pool.stride,) * 2
    padding = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,) * 2
    if (tuple(kernel), tuple(strides), tuple(padding), pool.ceil_mode) != ((stride,) * 2, (stride,) * 2, (0, 0), False):
        raise ConversionError(f"{where}: AvgPool2d(kernel_size={pool.kernel_size}, stride={pool.stride}, padding="
                              f"{pool.padding}, ceil_mode={pool.ceil_mode}); expected a {stride}x{stride} pool at "
                              f"stride {stride}, no padding")  # fmt: skip
    r.claim(pool, where)


def read_mobile_attention(r: TorchReader, blk: Any, where: str) -> MobileAttentionConfig:
    """timm's ``MobileAttention`` with ``MultiQueryAttention2d`` (``use_multi_query``, as every MobileNetV4
    hybrid): its norm, the query / key / value / output projections (no biases), the key and value ``down_conv``
    + ``norm`` when ``kv_stride`` > 1, the query's ``down_pool`` + ``norm`` and the output's bilinear ``upsample``
    when it has (equal) query strides, and the layer scale."""
    cpe = getattr(blk, "conv_cpe_dw", None)
    if cpe is not None:
        raise ConversionError(f"{where}.conv_cpe_dw: a positional encoding conv ({type(cpe).__name__}) before the "
                              "attention is not supported (timm's use_cpe)")  # fmt: skip
    if r.bn(blk.norm, f"{where}.norm") != "identity":
        raise ConversionError(f"{where}.norm.act: activation {r.act(blk.norm.act, f'{where}.norm.act')} before the "
                              "attention; expected none")  # fmt: skip
    attn, at = blk.attn, f"{where}.attn"
    expect_type(attn, at, ("MultiQueryAttention2d",), "multi-query attention")
    r.claim(attn, at)
    qs = attn.query_strides[0] if attn.has_query_strides else 1
    if attn.has_query_strides and len(set(attn.query_strides)) > 1:
        raise ConversionError(f"{at}.query.down_pool: query strides {attn.query_strides}; only equal strides are "
                              "supported")  # fmt: skip
    heads, key_dim, value_dim = attn.num_heads, attn.key_dim, attn.value_dim
    if not attn.fused_attn and attn.scale != key_dim**-0.5:  # the fused path always scales by key_dim ** -0.5
        raise ConversionError(f"{at}: scale {attn.scale}; expected key_dim ** -0.5 = {key_dim**-0.5}")
    projections: dict[str, dict[str, Any]] = {}
    downs: dict[str, dict[str, Any]] = {}
    for name, want in (("query", heads * key_dim), ("key", key_dim), ("value", value_dim)):
        seq, path = getattr(attn, name), f"{at}.{name}"
        strided = name != "query" and attn.kv_stride > 1
        pooled = name == "query" and qs > 1
        _children(r, seq, path, ("down_conv", "norm", "proj") if strided else ("down_pool", "norm", "proj") if pooled
                  else ("proj",))  # fmt: skip
        if pooled:
            _query_pool(r, seq.down_pool, f"{path}.down_pool", qs)
            if r.bn(seq.norm, f"{path}.norm") != "identity":
                raise ConversionError(f"{path}.norm: an activation after the down_pool; expected none")
        if strided:
            downs[name] = r.conv(seq.down_conv, f"{path}.down_conv", depthwise=True)
            if downs[name]["s"] != attn.kv_stride:
                raise ConversionError(f"{path}.down_conv: stride {downs[name]['s']}; expected kv_stride "
                                      f"{attn.kv_stride}")  # fmt: skip
            if r.bn(seq.norm, f"{path}.norm") != "identity":
                raise ConversionError(f"{path}.norm: an activation after the down_conv; expected none")
        projections[name] = r.conv(seq.proj, f"{path}.proj", kernel=1, stride=1)
        if projections[name]["out"] != want:
            raise ConversionError(f"{path}.proj: {projections[name]['out']} output channels; expected {want} "
                                  f"(num_heads {heads}, key_dim {key_dim}, value_dim {value_dim})")  # fmt: skip
    _no_dropout(r, attn.attn_drop, f"{at}.attn_drop")
    _children(r, attn.output, f"{at}.output", ("upsample", "proj", "drop") if qs > 1 else ("proj", "drop"))
    if qs > 1:
        up = attn.output.upsample
        expect_type(up, f"{at}.output.upsample", ("Upsample",), "bilinear upsampling")
        factor = up.scale_factor if isinstance(up.scale_factor, tuple) else (up.scale_factor,) * 2
        if (up.mode, up.align_corners, tuple(map(float, factor)), up.size) != ("bilinear", False, (qs, qs), None):
            raise ConversionError(f"{at}.output.upsample: Upsample(mode={up.mode!r}, align_corners="
                                  f"{up.align_corners}, scale_factor={up.scale_factor}, size={up.size}); expected "
                                  f"bilinear, align_corners=False, scale_factor {qs}")  # fmt: skip
        r.claim(up, f"{at}.output.upsample")
    projections["output"] = r.conv(attn.output.proj, f"{at}.output.proj", kernel=1, stride=1)
    _no_dropout(r, attn.output.drop, f"{at}.output.drop")
    biased = [f"{at}.{name}.proj" for name, p in projections.items() if p["bias"]]
    if biased:
        raise ConversionError(f"{biased[0]}: a bias; the attention's projections have none (timm's use_bias=False)")
    settings = {name: (d["k"], d["d"]) for name, d in downs.items()}
    if len(set(settings.values())) > 1:
        raise ConversionError(f"{at}: key and value down_conv (kernel, dilation) differ: {settings}")
    kernel, dilation = next(iter(settings.values()), (3, 1))
    layer_scale = read_layer_scale(r, blk, where)
    return MobileAttentionConfig(out_channels=projections["output"]["out"], kernel_size=kernel, dilation=dilation,
                                 num_heads=heads, key_dim=key_dim, value_dim=value_dim, kv_stride=attn.kv_stride,
                                 query_stride=qs, layer_scale=layer_scale, skip=blk.has_skip)  # fmt: skip
