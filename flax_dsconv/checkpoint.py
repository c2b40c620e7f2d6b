"""The library's one checkpoint format: ``variables.msgpack`` (``flax.serialization``) + ``config.json``, and an
optional ``opt_state.msgpack`` (an optimizer state, for resuming training).

>>> flax_dsconv.save("out/mnv3", model, variables)
>>> model, variables = flax_dsconv.load("out/mnv3")
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import serialization

from flax_dsconv.models import MobileNet, MobileNetConfig
from flax_dsconv.nn import BatchNormConfig, DepthwiseSeparableConv, separable_in_channels
from flax_dsconv.shapes import abstract_variables, listed, misfits

FORMAT_VERSION = 1
_VARIABLES, _CONFIG, _OPT_STATE = "variables.msgpack", "config.json", "opt_state.msgpack"


# Module fields besides the architecture: the compute dtype (by name), the depthwise implementation, axis_name.
_RUN_FIELDS = ("dtype", "depthwise", "axis_name")


def _run_fields(module: nn.Module) -> dict[str, Any]:
    fields = {name: getattr(module, name) for name in _RUN_FIELDS}
    fields["dtype"] = None if fields["dtype"] is None else jnp.dtype(fields["dtype"]).name
    return fields


def _check_fits(module: nn.Module, variables: Any, where: str) -> None:
    """Refuse ``variables`` unless they hold exactly what ``module`` uses (keys, collections, shapes)."""
    in_channels: int | None
    if isinstance(module, MobileNet):
        in_channels, size = module.config.in_channels, 64
    else:  # a DepthwiseSeparableConv (depth multiplier 1): its input channels are its depthwise kernel's
        in_channels = separable_in_channels(variables)
        if in_channels is None:
            raise ValueError(f"{where}: the variables do not fit DepthwiseSeparableConv: params/conv_dw/kernel missing "
                             "or not 4-D")  # fmt: skip
        size = max(64, (module.kernel_size - 1) * module.dilation + 1)  # an input its window fits in
    problems = misfits(abstract_variables(module, in_channels, size), variables)
    if problems:
        raise ValueError(f"{where}: the variables do not fit {type(module).__name__}: {listed(problems)}")


def _describe(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, MobileNet):
        return {"module": "MobileNet", "config": module.config.to_dict(), **_run_fields(module)}
    if isinstance(module, DepthwiseSeparableConv):
        skip = ("parent", "name", *_RUN_FIELDS)
        fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in skip}
        fields["norm"] = dataclasses.asdict(module.norm)
        return {"module": "DepthwiseSeparableConv", "config": fields, **_run_fields(module)}
    raise ValueError(f"cannot save {type(module).__name__}: expected a MobileNet or DepthwiseSeparableConv")


def save(
    directory: str | os.PathLike, module: nn.Module, variables: Any, *, opt_state: Any = None, **metadata: Any
) -> Path:
    """Write ``module``'s config and ``variables`` (``params`` and ``batch_stats``, both as ``module`` makes
    them; anything else in ``variables`` is left out) to ``directory``; ``opt_state`` (an optax state), if
    given, beside them (read it back with :func:`load_opt_state`).

    ``metadata`` (JSON-serialisable keywords) is stored beside the config; its keys must not be the
    config's own (``format_version``, ``module``, ``config``, ``dtype``, ``depthwise``, ``axis_name``).
    """
    info = {"format_version": FORMAT_VERSION, **_describe(module)}
    clash = sorted(info.keys() & metadata.keys())
    if clash:
        raise ValueError(f"metadata keys {clash} would overwrite the saved module description; rename them")
    state = {k: jax.tree.map(np.asarray, variables[k]) for k in ("params", "batch_stats") if k in variables}
    _check_fits(module, state, "save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _VARIABLES).write_bytes(serialization.msgpack_serialize(state))
    info.update(metadata)
    (directory / _CONFIG).write_text(json.dumps(info, indent=2) + "\n")
    if opt_state is not None:
        (directory / _OPT_STATE).write_bytes(serialization.to_bytes(opt_state))
    return directory


def load(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Read a directory written by :func:`save` (or ``flax-dsconv convert``) into ``(module, variables)``."""
    directory = Path(directory)
    for name in (_CONFIG, _VARIABLES):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name}; expected a directory written by flax_dsconv.save")
    info = json.loads((directory / _CONFIG).read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / _CONFIG}: format_version {info.get('format_version')}, expected {FORMAT_VERSION}"
        )
    run = {name: info.get(name, default) for name, default in zip(_RUN_FIELDS, (None, "auto", None), strict=True)}
    run["dtype"] = None if run["dtype"] is None else jnp.dtype(run["dtype"])
    if info["module"] == "MobileNet":
        module: nn.Module = MobileNet(MobileNetConfig.from_dict(info["config"]), **run)
    elif info["module"] == "DepthwiseSeparableConv":
        config = dict(info["config"])
        config["norm"] = BatchNormConfig(**config["norm"])
        module = DepthwiseSeparableConv(**config, **run)
    else:
        raise ValueError(f"{directory / _CONFIG}: unknown module {info['module']!r}")
    variables = serialization.msgpack_restore((directory / _VARIABLES).read_bytes())
    _check_fits(module, variables, str(directory))  # a config edited or swapped since: refused, not half-loaded
    return module, jax.tree.map(jax.numpy.asarray, variables)


def load_opt_state(directory: str | os.PathLike, like: Any) -> Any:
    """The optimizer state that :func:`save` wrote with ``opt_state=``, restored into the structure of ``like``
    (``tx.init(params)`` for the same optimizer and parameters).

    >>> opt_state = flax_dsconv.checkpoint.load_opt_state("run/epoch_3", tx.init(variables["params"]))
    """
    path = Path(directory) / _OPT_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {_OPT_STATE}; save it with flax_dsconv.save(..., opt_state=)")
    return serialization.from_bytes(like, path.read_bytes())
