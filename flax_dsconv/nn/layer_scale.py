"""LayerScale (CaiT, Touvron et al. 2021): a learned per-channel scale on a residual branch."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from flax_dsconv.nn import initializers


class LayerScale(nn.Module):
    """``x * gamma`` with one ``gamma`` per channel of the last axis (timm's ``LayerScale2d``, which scales axis 1
    of NCHW input).

    ``gamma`` starts at ``init_value``: timm's 1e-5 makes a fresh residual block nearly the identity.

    >>> LayerScale().init_with_output(key, jnp.ones((1, 7, 7, 96)))[0].max()
    1e-05
    """

    init_value: float = 1e-5
    dtype: Any | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype)
        x, gamma = promote_dtype(x, gamma, dtype=self.dtype)
        return x * gamma
