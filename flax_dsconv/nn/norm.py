"""A model's norm: BatchNorm with PyTorch's train-mode semantics, GroupNorm, LayerNorm over channels and
EvoNorm-S0, each with the activation that follows it inside (timm's norm-act layers); their settings, shared by
every norm of a model (:data:`NormConfig`), and :func:`norm_layer`, the one constructor blocks, stem and head use.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.nn import initializers
from flax_dsconv.nn.common import where
from flax_dsconv.ops.activations import Activation, activation
from flax_dsconv.ops.batch_norm import batch_count, batch_norm_train, normalise
from flax_dsconv.ops.norms import group_norm, group_std, layer_norm
from flax_dsconv.ops.sharding import vary_like


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """BatchNorm settings shared by every norm in a model.

    ``momentum`` uses Flax's convention (``ra = momentum * ra + (1 - momentum) * batch``): PyTorch's
    ``momentum=0.1`` is ``0.9`` here, torchvision MobileNetV3's ``0.01`` is ``0.99``.
    ``torch_running_var=True`` updates the running variance with the unbiased batch variance as
    PyTorch does; ``False`` keeps ``flax.linen.BatchNorm``'s biased update.
    """

    kind: ClassVar[str] = "batch"
    momentum: float = 0.9
    epsilon: float = 1e-5
    torch_running_var: bool = True


def _check_epsilon(config: Any) -> None:
    eps = config.epsilon
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{type(config).__name__}: epsilon must be a number above 0, got {eps!r}")


def _check_groups(config: Any) -> None:
    """Exactly one of ``groups`` (a fixed count) and ``group_size`` (channels per group, the count following
    each norm's width, as timm's ``group_size=``) is set."""
    for name in ("groups", "group_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{type(config).__name__}: {name} must be an int >= 0, got {value!r}")
    if (config.groups > 0) == (config.group_size > 0):
        raise ValueError(f"{type(config).__name__}: set exactly one of groups and group_size, got groups="
                         f"{config.groups}, group_size={config.group_size}")  # fmt: skip
    _check_epsilon(config)


def groups_for(channels: int, groups: int, group_size: int, at: str) -> int:
    """How many groups ``channels`` split into: ``groups``, or ``channels // group_size``; raises naming ``at``
    unless they split evenly."""
    count = groups or channels // group_size
    if count < 1 or channels % count or (group_size and channels % group_size):
        setting = f"groups={groups}" if groups else f"group_size={group_size}"
        raise ValueError(f"{at}: {channels} channels do not split into {setting}")
    return count


@dataclasses.dataclass(frozen=True)
class GroupNormConfig:
    """GroupNorm (Wu & He 2018) settings: ``groups`` per norm, or ``group_size`` channels per group (timm's
    ``GroupNormAct(group_size=8)``: a 96-channel norm has 12 groups); exactly one is nonzero."""

    kind: ClassVar[str] = "group"
    groups: int = 0
    group_size: int = 0
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        _check_groups(self)


@dataclasses.dataclass(frozen=True)
class LayerNormConfig:
    """LayerNorm over the channels at each position (timm's ``LayerNormAct2d`` on NCHW)."""

    kind: ClassVar[str] = "layer"
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        _check_epsilon(self)


@dataclasses.dataclass(frozen=True)
class EvoNormS0Config:
    """EvoNorm-S0 (Liu et al. 2020) settings, grouped as :class:`GroupNormConfig`. It keeps no running statistics
    (timm's ``EvoNorm2dS0``; the B0 variant is the one with a running variance)."""

    kind: ClassVar[str] = "evonorm_s0"
    groups: int = 0
    group_size: int = 0
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        _check_groups(self)


NormConfig = BatchNormConfig | GroupNormConfig | LayerNormConfig | EvoNormS0Config
_NORM_KINDS: dict[str, type[NormConfig]] = {
    c.kind: c for c in (BatchNormConfig, GroupNormConfig, LayerNormConfig, EvoNormS0Config)
}


def norm_to_dict(config: NormConfig) -> dict[str, Any]:
    """``config`` as JSON-ready data, its ``kind`` first."""
    return {"kind": config.kind, **dataclasses.asdict(config)}


def norm_from_dict(data: dict[str, Any]) -> NormConfig:
    """The config :func:`norm_to_dict` wrote; a dict without ``kind`` (saves from before other norms) is a
    BatchNorm's."""
    data = dict(data)
    kind = data.pop("kind", "batch")
    if kind not in _NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; expected one of {sorted(_NORM_KINDS)}")
    return _NORM_KINDS[kind](**data)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's train-mode semantics available.

    Variables are named as in ``flax.linen.BatchNorm`` (params ``scale``/``bias``, batch_stats
    ``mean``/``var``). Normalisation uses the biased batch variance in both frameworks; PyTorch updates
    ``running_var`` with the unbiased one (``n / (n - 1)``), which ``torch_running_var`` reproduces.
    ``act`` (an activation name) follows the normalisation, as in timm's ``BatchNormAct2d``.
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
    act: str = "identity"

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        return activation(self.act)(self._normalise(x, use_running_average))

    def _normalise(self, x: jax.Array, use_running_average: bool | None) -> jax.Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", initializers.full, (features,), 0.0, jnp.float32)
        ra_var = self.variable("batch_stats", "var", initializers.full, (features,), 1.0, jnp.float32)
        scale = self.param("scale", initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", initializers.zeros, (features,), self.param_dtype)

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


def _affine(module: nn.Module, y: jax.Array, x: jax.Array, dtype: Any) -> jax.Array:
    """``y · scale + bias`` with per-channel params ``scale`` (ones) and ``bias`` (zeros), in ``dtype`` or
    ``x``'s."""
    features = x.shape[-1]
    scale = module.param("scale", initializers.ones, (features,), jnp.float32)
    bias = module.param("bias", initializers.zeros, (features,), jnp.float32)
    out = jnp.dtype(dtype or x.dtype)
    return y.astype(out) * scale.astype(out) + bias.astype(out)


class GroupNorm(nn.Module):
    """GroupNorm over NHWC input, then ``act`` (timm's ``GroupNormAct``): ``groups`` groups, or ``group_size``
    channels per group; params ``scale``/``bias`` (torch's ``weight``/``bias``). No running statistics: train
    and eval compute the same.

    >>> GroupNorm(group_size=8, act="silu").init_with_output(key, jnp.ones((1, 8, 8, 32)))[0].shape
    (1, 8, 8, 32)
    """

    groups: int = 0
    group_size: int = 0
    epsilon: float = 1e-5
    act: str = "identity"
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = groups_for(x.shape[-1], self.groups, self.group_size, where(self))
        return activation(self.act)(_affine(self, group_norm(x, groups, self.epsilon), x, self.dtype))


class LayerNorm(nn.Module):
    """LayerNorm over the channels of NHWC input at each position, then ``act`` (timm's ``LayerNormAct2d``, and
    with ``act='identity'`` its ``LayerNorm2d``); params ``scale``/``bias``.

    >>> LayerNorm(epsilon=1e-6).init_with_output(key, jnp.ones((1, 8, 8, 32)))[0].shape
    (1, 8, 8, 32)
    """

    epsilon: float = 1e-5
    act: str = "identity"
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return activation(self.act)(_affine(self, layer_norm(x, self.epsilon), x, self.dtype))


# EvoNorm-S0 brings its own nonlinearity; configs record a norm that applies it with this activation's name.
EVONORM_ACT: Activation = "silu"


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020; timm's ``EvoNorm2dS0``) over NHWC input: ``x · sigmoid(v · x) /
    group_std(x) · scale + bias``, a learned swish divided by each group's standard deviation.

    The nonlinearity is the norm's own: ``act='silu'`` (the name configs give it, :data:`EVONORM_ACT`) applies it,
    with the per-channel param ``v``; ``act='identity'`` is timm's ``apply_act=False``, only ``scale`` and
    ``bias`` (no normalisation at all). Any other activation is refused: EvoNorm-S0 has no place for one. No
    running statistics.

    >>> EvoNormS0(group_size=8, act="silu").init_with_output(key, jnp.ones((1, 8, 8, 32)))[0].shape
    (1, 8, 8, 32)
    """

    groups: int = 0
    group_size: int = 0
    epsilon: float = 1e-5
    act: str = "identity"
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.act not in ("identity", EVONORM_ACT):
            raise ValueError(f"{where(self)}: EvoNorm-S0 with act={self.act!r}; its nonlinearity is its own "
                             f"x·σ(v·x)/std: expected act={EVONORM_ACT!r} (apply it) or 'identity' (scale and bias "
                             "only)")  # fmt: skip
        y = x
        if self.act != "identity":
            groups = groups_for(x.shape[-1], self.groups, self.group_size, where(self))
            v = self.param("v", initializers.ones, (x.shape[-1],), jnp.float32)
            xd = x.astype(jnp.dtype(self.dtype or x.dtype))
            y = xd * jax.nn.sigmoid(xd * v.astype(xd.dtype)) / group_std(xd, groups, self.epsilon)
        return _affine(self, y, x, self.dtype)


def norm_layer(config: NormConfig, *, train: bool, axis_name: str | None = None, dtype: Any | None = None
               ) -> Callable[..., nn.Module]:  # fmt: skip
    """The constructor of a model's norms: call it with ``name=`` and ``act=`` (the activation after the norm)
    per norm. ``train`` picks BatchNorm's batch statistics (the other norms have no running ones).

    >>> norm = norm_layer(GroupNormConfig(group_size=8), train=False)
    >>> bn1 = norm(name="bn1", act="silu")  # a GroupNorm module, SiLU after it
    """
    if isinstance(config, BatchNormConfig):
        return BatchNorm.partial(config, use_running_average=not train, axis_name=axis_name, dtype=dtype)
    if isinstance(config, GroupNormConfig):
        return functools.partial(GroupNorm, config.groups, config.group_size, config.epsilon, dtype=dtype)
    if isinstance(config, LayerNormConfig):
        return functools.partial(LayerNorm, config.epsilon, dtype=dtype)
    if isinstance(config, EvoNormS0Config):
        return functools.partial(EvoNormS0, config.groups, config.group_size, config.epsilon, dtype=dtype)
    raise TypeError(f"norm config must be one of {sorted(_NORM_KINDS)} configs, got {config!r}")

