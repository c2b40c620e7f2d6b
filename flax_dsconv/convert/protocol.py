"""The reader protocol: what each source of torch models (``timm.py``, ``torchvision.py``, ``torch_ref.py``)
provides, and the registry that picks the reader for a torch module or a source name.

Adding a source adds a reader module that registers itself here; nothing else branches on the source.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, Protocol

from flax import linen as nn

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import NameMap, StateDict, Variables
from flax_dsconv.convert.torch_layers import unclaimed
from flax_dsconv.shapes import listed


@dataclasses.dataclass(frozen=True)
class Described:
    """A torch module read into Flax terms: its arch name, its source, the equivalent Flax module, the number of
    input channels, the map from Flax module paths to torch key prefixes, and the torch modules the reader
    accounted for (ids to paths; :func:`describe` refuses a model holding any other)."""

    arch: str
    source: str
    module: nn.Module
    in_channels: int
    name_map: NameMap
    claimed: Mapping[int, str]


class Reader(Protocol):
    source: str  # 'timm', 'torchvision', 'torch_ref': the top-level package its torch classes come from

    def describe(self, model: Any) -> Described:
        """Read ``model`` (a torch module of this source) into a :class:`Described`, or raise ConversionError.

        Every torch module the description accounts for goes into ``claimed``, each after a check of its type
        and of the settings the Flax config does not carry (a 1x1 conv's stride, a pooling's kind...)."""
        ...

    def skeleton(self, arch: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
        """The torch model a bare ``state_dict`` of this source claims to be (``arch`` and constructor arguments
        ``config``), built to read its structure."""
        ...

    def export_target(
        self, module: nn.Module, variables: Variables, arch: str | None, config: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """``(arch, constructor arguments)`` of the torch model ``module`` exports to, defaults read off
        ``module`` and overridden by ``config``."""
        ...


# Constructor arguments shared by the sources, with the values a model can be built from: (check, what it must be).
_ARGUMENTS: dict[str, tuple[Any, str]] = {
    "width_mult": (lambda v: _real(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "width_multiplier": (lambda v: _real(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "num_classes": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "in_chans": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "in_channels": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "out_channels": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "dropout": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "drop_rate": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
}


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_arguments(what: str, config: Mapping[str, Any]) -> None:
    """Refuse constructor arguments a model cannot be built from (``width_mult='abc'``, ``num_classes=-5``...),
    naming each, before the torch constructor fails somewhere inside or rounds them into another model."""
    bad = [f"{k}={v!r} (must be {_ARGUMENTS[k][1]})" for k, v in config.items()
           if k in _ARGUMENTS and not _ARGUMENTS[k][0](v)]  # fmt: skip
    if bad:
        raise ConversionError(f"{what}: invalid arguments " + ", ".join(bad))


_READERS: dict[str, Reader] = {}


def register_reader(reader: Reader) -> None:
    _READERS[reader.source] = reader


def sources() -> tuple[str, ...]:
    """The registered sources, in registration order."""
    return tuple(_READERS)


def reader_for(source: str | None, what: str) -> Reader:
    """The reader of ``source``, or a ConversionError that says what needed one (``what``)."""
    if source not in _READERS:
        raise ConversionError(f"{what} needs source= one of {sources()}, got source={source!r}")
    return _READERS[source]


_WRAPPERS = {"DataParallel": "module", "DistributedDataParallel": "module", "OptimizedModule": "_orig_mod"}


def describe(model: Any) -> Described:
    """Infer arch, source and the equivalent Flax module of a torch module, by the package its class comes from."""
    cls = type(model)
    origin = cls.__module__.split(".")[0]
    if origin == "torch" and cls.__name__ in _WRAPPERS:
        raise ConversionError(f"{cls.__name__} wraps the model: pass model.{_WRAPPERS[cls.__name__]}")
    if origin not in _READERS:
        *others, last = sources()
        raise ConversionError(
            f"cannot convert {cls.__module__}.{cls.__name__}: expected a {', '.join(others)} or {last} MobileNet"
        )
    described = _READERS[origin].describe(model)
    missed = unclaimed(model, described.claimed)
    if missed:
        raise ConversionError(
            f"{len(missed)} modules of this {described.source} model are not part of the {described.arch} it was "
            f"read as (added or replaced?), so converting would silently drop them: " + listed(missed, 10)
        )
    return described
