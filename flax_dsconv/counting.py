"""Parameters and multiply-adds, per layer, as the MobileNet paper counts them (Tables 1-2).

Mult-adds count convolutions, dense layers and the mobile attention block's two products (queries with keys,
weights with values), per image; not BatchNorm, activations, pooling nor the softmax.
Layers are found with ``flax.linen.intercept_methods`` on an abstract ``init``: nothing is computed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.nn import CondConv, DepthwiseConv, MultiQueryAttention, PointwiseConv


def count_params(variables: Any) -> int:
    """Trainable parameters (the ``params`` collection; BN running statistics excluded), as
    ``sum(p.numel() for p in torch_model.parameters())`` counts them."""
    params = variables["params"] if "params" in variables else variables
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


@dataclasses.dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


_KINDS = ((DepthwiseConv, "depthwise"), (PointwiseConv, "pointwise"), (nn.Conv, "conv"), (nn.Dense, "dense"),
          (CondConv, "condconv"))  # fmt: skip


def layer_counts(module: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCount]:
    """Every conv and dense layer (and attention product) in call order with its output shape, weights (+bias) and
    mult-adds (an attention's weights are its projections', counted as their own layers).

    ``input_shape`` is NHWC, e.g. ``(1, 224, 224, 3)``; counts are per image.
    """
    records: list[LayerCount] = []

    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, MultiQueryAttention) and context.method_name == "__call__":
            m, (height, width) = context.module, args[0].shape[1:3]
            queries = (height // m.query_stride) * (width // m.query_stride)
            keys = -(-height // m.kv_stride) * -(-width // m.kv_stride)  # the strided conv's output, as padded
            macs = queries * keys * m.num_heads * (m.key_dim + m.value_dim)  # q·kᵀ, then weights·v, per head
            name = "/".join(m.scope.path if m.scope is not None else ())
            records.append(LayerCount(name, "attention", tuple(out.shape[1:]), 0, macs))
            return out
        kind = next((k for cls, k in _KINDS if isinstance(context.module, cls)), None)
        if kind is not None and context.method_name == "__call__":
            params = context.module.variables["params"]
            weights = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
            # A CondConv convolves each image with one mixture of its experts (mixing them is not counted).
            kernel = math.prod(params["kernel"].shape[1:] if kind == "condconv" else params["kernel"].shape)
            positions = math.prod(out.shape[1:-1])  # output pixels (1 for dense layers)
            name = "/".join(context.module.scope.path)
            if kind == "conv" and params["kernel"].shape[:-2] == (1, 1):
                kind = "pointwise"  # a 1x1 conv built as nn.Conv (MobileNetV3's last stage) is one too
            records.append(LayerCount(name, kind, tuple(out.shape[1:]), weights, positions * kernel))
        return out

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    return records


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds per image of all convs and dense layers (the paper's "Mult-Adds")."""
    return sum(r.macs for r in layer_counts(module, input_shape))


def summary(module: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The per-layer table (name, type, output shape, params, mult-adds, share) with totals."""
    rows = layer_counts(module, input_shape)
    total_macs = sum(r.macs for r in rows) or 1
    variables = jax.eval_shape(
        lambda x: module.init(jax.random.key(0), x), jax.ShapeDtypeStruct(input_shape, jnp.float32)
    )
    width = max(len(r.name) for r in rows)
    header = f"{'layer':<{width}}  {'type':<10} {'output (HWC)':<16} {'params':>11} {'mult-adds':>14} {'share':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {r.kind:<10} {'x'.join(map(str, r.output_shape)):<16} {r.params:>11,} "
            f"{r.macs:>14,} {100 * r.macs / total_macs:>6.2f}%"
        )
    lines.append("-" * len(header))
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        acc = by_kind.setdefault(r.kind, [0, 0])
        acc[0] += r.macs
        acc[1] += r.params
    for kind, (macs, params) in by_kind.items():
        lines.append(f"  {kind:<10} mult-adds {100 * macs / total_macs:6.2f}%   conv/dense params {params:,}")
    lines.append(f"total params (incl. BatchNorm scale/bias): {count_params(variables):,}")
    lines.append(f"total mult-adds: {sum(r.macs for r in rows):,} ({sum(r.macs for r in rows) / 1e6:.1f} M)")
    return "\n".join(lines)
