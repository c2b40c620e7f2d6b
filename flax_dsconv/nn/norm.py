"""BatchNorm with PyTorch's train-mode semantics, and the settings a model shares across its norms."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.ops.batch_norm import batch_count, batch_norm_train, normalise
from flax_dsconv.ops.sharding import vary_like


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """BatchNorm settings shared by every norm in a model.

    ``momentum`` uses Flax's convention (``ra = momentum * ra + (1 - momentum) * batch``): PyTorch's
    ``momentum=0.1`` is ``0.9`` here, torchvision MobileNetV3's ``0.01`` is ``0.99``.
    ``torch_running_var=True`` updates the running variance with the unbiased batch variance as
    PyTorch does; ``False`` keeps ``flax.linen.BatchNorm``'s biased update.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    torch_running_var: bool = True



class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's train-mode semantics available.

    Variables are named as in ``flax.linen.BatchNorm`` (params ``scale``/``bias``, batch_stats
    ``mean``/``var``). Normalisation uses the biased batch variance in both frameworks; PyTorch updates
    ``running_var`` with the unbiased one (``n / (n - 1)``), which ``torch_running_var`` reproduces.
    Statistics are computed in float32 whatever ``dtype`` is (float64 for float64 inputs under x64). Under
    ``jit`` with a batch sharded over devices, the means are global (synchronised BN); under
    ``shard_map``/``pmap`` name the axis and differentiate inside the mapped function (under ``vmap`` with an
    axis name, a ``jax.grad`` taken outside the ``vmap`` fails: JAX runs the custom backward unbound).

    >>> bn = BatchNorm(use_running_average=False)
    >>> y, updates = bn.apply(bn.init(key, x), x, mutable=["batch_stats"])
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    torch_running_var: bool = True
    axis_name: str | None = None
    dtype: Any | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

        if use_ra:
            y = normalise(x, ra_mean.value, jax.lax.rsqrt(ra_var.value + self.epsilon), scale, bias)
            return y.astype(self.dtype or x.dtype)
        n = batch_count(x, self.axis_name)
        if n < 2:
            raise ValueError(
                f"BatchNorm in train mode needs more than 1 value per channel, got input shape "
                f"{tuple(x.shape)} (PyTorch raises here too)"
            )
        scale, bias = vary_like(x, scale, bias)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name, jnp.dtype(self.dtype or x.dtype))
        if not self.is_initializing():  # the statistics keep their dtype (float32) whatever they were computed in
            update = var * (n / (n - 1)) if self.torch_running_var else var
            new_mean = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
            new_var = self.momentum * ra_var.value + (1.0 - self.momentum) * update
            ra_mean.value, ra_var.value = new_mean.astype(ra_mean.value.dtype), new_var.astype(ra_var.value.dtype)
        return y

    @classmethod
    def partial(cls, config: BatchNormConfig, **kwargs: Any) -> Callable[..., BatchNorm]:
        """A constructor with ``config`` and ``kwargs`` bound; call it with ``name=...`` per norm."""
        return functools.partial(cls, **dataclasses.asdict(config), **kwargs)

