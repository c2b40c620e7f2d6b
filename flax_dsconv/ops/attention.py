"""Attention maths on NHWC feature maps, as pure functions: multi-query attention (Shazeer 2019), the form
MobileNetV4's hybrids use, where every query head attends over one shared key head and one shared value head.

Channel layouts are timm's ``MultiQueryAttention2d``'s: the projected query holds its heads one after another
(channel ``h · key_dim + d`` is head ``h``'s component ``d``), and so does the attention's output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """``(B, H, W, heads · d)`` → ``(B, heads, H · W, d)``: head-major channels into one head axis, positions
    flattened row by row."""
    b, h, w, c = x.shape
    if c % num_heads:
        raise ValueError(f"split_heads: {c} channels do not split into {num_heads} heads")
    return x.reshape(b, h * w, num_heads, c // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: jax.Array, height: int, width: int) -> jax.Array:
    """The inverse of :func:`split_heads`: ``(B, heads, H · W, d)`` → ``(B, H, W, heads · d)``."""
    b, heads, n, d = x.shape
    if n != height * width:
        raise ValueError(f"merge_heads: {n} positions are not a {height}x{width} map")
    return x.transpose(0, 2, 1, 3).reshape(b, height, width, heads * d)


def multi_query_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, num_heads: int, scale: float | None = None
) -> jax.Array:
    """``softmax(q · kᵀ · scale) · v`` for each of ``num_heads`` query heads over one shared key/value head.

    ``query``: ``(B, H, W, num_heads · key_dim)``, head-major channels; ``key``: ``(B, Hk, Wk, key_dim)``;
    ``value``: ``(B, Hk, Wk, value_dim)`` (keys and values may sit on a coarser map than the queries).
    ``scale`` defaults to ``key_dim ** -0.5``. Returns ``(B, H, W, num_heads · value_dim)``, head-major.
    The softmax runs in the inputs' dtype, over every key position.

    >>> q, kv = jnp.ones((1, 8, 8, 4 * 16)), jnp.ones((1, 4, 4, 16))
    >>> multi_query_attention(q, kv, kv, num_heads=4).shape
    (1, 8, 8, 64)
    """
    b, h, w, _ = query.shape
    key_dim = key.shape[-1]
    if query.shape[-1] != num_heads * key_dim:
        raise ValueError(f"multi_query_attention: query has {query.shape[-1]} channels; expected num_heads · key_dim"
                         f" = {num_heads} · {key_dim}")  # fmt: skip
    if key.shape[:-1] != value.shape[:-1] or key.shape[0] != b:
        raise ValueError(f"multi_query_attention: key {key.shape} and value {value.shape} must share batch and "
                         f"positions (query {query.shape})")  # fmt: skip
    scale = key_dim**-0.5 if scale is None else scale
    q = split_heads(query, num_heads)  # (B, heads, N, kd)
    k = key.reshape(b, -1, key_dim)  # (B, M, kd)
    v = value.reshape(b, -1, value.shape[-1])  # (B, M, vd)
    logits = jnp.einsum("bhnd,bmd->bhnm", q * jnp.asarray(scale, q.dtype), k)
    weights = jax.nn.softmax(logits, axis=-1)
    return merge_heads(jnp.einsum("bhnm,bmd->bhnd", weights, v), h, w)
