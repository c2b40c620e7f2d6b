"""Save and load converted models: ``variables.msgpack`` (``flax.serialization``) + ``config.json``.

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
import numpy as np
from flax import linen as nn
from flax import serialization

from flax_dsconv.layers import BatchNormConfig, DepthwiseSeparableConv
from flax_dsconv.mobilenet import MobileNet, MobileNetConfig

FORMAT_VERSION = 1
_VARIABLES, _CONFIG = "variables.msgpack", "config.json"


def _describe(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, MobileNet):
        return {"module": "MobileNet", "config": module.config.to_dict()}
    if isinstance(module, DepthwiseSeparableConv):
        fields = {
            f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in ("parent", "name")
        }
        fields["norm"] = dataclasses.asdict(module.norm)
        if fields.get("dtype") is not None:
            raise ValueError("save a float32 DepthwiseSeparableConv; set dtype after loading")
        return {"module": "DepthwiseSeparableConv", "config": fields}
    raise ValueError(f"cannot save {type(module).__name__}: expected a MobileNet or DepthwiseSeparableConv")


def save(directory: str | os.PathLike, module: nn.Module, variables: Any, **metadata: Any) -> Path:
    """Write ``module``'s config and ``variables`` (``params`` and ``batch_stats``) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: jax.tree.map(np.asarray, variables[k]) for k in ("params", "batch_stats") if k in variables}
    (directory / _VARIABLES).write_bytes(serialization.msgpack_serialize(state))
    info = {"format_version": FORMAT_VERSION, **_describe(module), **metadata}
    (directory / _CONFIG).write_text(json.dumps(info, indent=2) + "\n")
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
    if info["module"] == "MobileNet":
        module: nn.Module = MobileNet(MobileNetConfig.from_dict(info["config"]))
    elif info["module"] == "DepthwiseSeparableConv":
        config = dict(info["config"])
        config["norm"] = BatchNormConfig(**config["norm"])
        module = DepthwiseSeparableConv(**config)
    else:
        raise ValueError(f"{directory / _CONFIG}: unknown module {info['module']!r}")
    variables = serialization.msgpack_restore((directory / _VARIABLES).read_bytes())
    return module, jax.tree.map(jax.numpy.asarray, variables)
