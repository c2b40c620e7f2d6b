"""Block configs and the registry from a config's type to the module that builds it.

Each block family (``separable.py``, ``inverted_residual.py``, ...) defines a frozen, keyword-only config (a
subclass of :class:`BlockConfig`, with a ``kind`` name used in saved configs) and a Linen module with a
``from_config`` constructor, and registers the pair with :func:`register_block`. The generic network builds any
block with :func:`build_block`, so adding a block kind adds a file, not a branch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

from flax import linen as nn

from flax_dsconv.ops.activations import Activation


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """What every block has. ``skip`` says whether the block adds its input (stride 1 and equal channels, unless
    disabled); ``drop_path``: the probability, in training, of dropping the residual branch of an example
    (stochastic depth; it acts only where ``skip``); ``kind`` names the config type in saved configs."""

    kind: ClassVar[str]
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    act: Activation = "relu"
    skip: bool = False
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        rate = self.drop_path
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"{type(self).__name__}: drop_path is a probability in [0, 1), got {rate!r}")


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """What a block takes from the network around it, beside its own config."""

    padding: str
    norm: Any  # nn.norm.NormConfig
    axis_name: str | None
    dtype: Any
    depthwise: str


class BlockModule(Protocol):
    @classmethod
    def from_config(cls, config: Any, context: BlockContext, name: str) -> nn.Module: ...


_KINDS: dict[str, type[BlockConfig]] = {}
_MODULES: dict[type[BlockConfig], type[BlockModule]] = {}


def register_block(config: type[BlockConfig], module: type[BlockModule]) -> None:
    """Make ``module.from_config`` the builder of blocks configured by ``config``."""
    if config.kind in _KINDS and _KINDS[config.kind] is not config:
        raise ValueError(f"block kind {config.kind!r} is registered twice")
    _KINDS[config.kind] = config
    _MODULES[config] = module


def build_block(config: BlockConfig, context: BlockContext, name: str) -> nn.Module:
    """The module for ``config``, named ``name``."""
    module = _MODULES.get(type(config))
    if module is None:
        raise ValueError(f"{name}: no module is registered for {type(config).__name__}; known: {sorted(_KINDS)}")
    return module.from_config(config, context, name)


def check_splits(config: BlockConfig, names: tuple[str, ...]) -> None:
    """Raise unless each of ``config``'s fields ``names`` (a 1x1 conv's channel groups) is a positive int."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}: {name} must be a positive int, got {value!r}")


def block_to_dict(config: BlockConfig) -> dict[str, Any]:
    """``config`` as JSON-ready data, its ``kind`` first."""
    return {"kind": config.kind, **dataclasses.asdict(config)}


# Saves written before each kind had its own config type carry every kind's fields, at these defaults.
_SHARED_DEFAULTS = {
    "expand_channels": 0,
    "se_channels": 0,
    "pw_act": False,
    "se_act": "relu",
    "se_gate": "hard_sigmoid",
}


def block_from_dict(data: dict[str, Any]) -> BlockConfig:
    """The config :func:`block_to_dict` wrote (or an older save, whose blocks carry other kinds' fields at their
    defaults)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown block kind {kind!r}; expected one of {sorted(_KINDS)}")
    config = _KINDS[kind]
    fields = {f.name for f in dataclasses.fields(config)}
    foreign = {k: v for k, v in data.items() if k not in fields}
    unexpected = {k: v for k, v in foreign.items() if k not in _SHARED_DEFAULTS or _SHARED_DEFAULTS[k] != v}
    if unexpected:
        raise ValueError(f"a {kind!r} block has no {sorted(unexpected)} (got {unexpected})")
    # JSON has no tuples: a list is a tuple field (MixNet's kernel_sizes).
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
    return config(**values)
