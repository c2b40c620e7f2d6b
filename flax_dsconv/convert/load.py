"""``from_torch``: a torch module, state_dict or checkpoint file into ``(flax_module, variables)``, strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.files import load_state_dict
from flax_dsconv.convert.plan import Variables, check_keys, plan, to_flax, to_numpy
from flax_dsconv.convert.protocol import check_arguments, describe, reader_for
from flax_dsconv.shapes import abstract_variables


def from_torch(
    src: Any,
    *,
    arch: str | None = None,
    source: str | None = None,
    **config: Any,
) -> tuple[nn.Module, Variables]:
    """Convert PyTorch weights into ``(flax_module, {'params', 'batch_stats'})``.

    ``src`` is a ``torch.nn.Module`` (arch, source and config are read off it), a state_dict, or a path to
    a ``.safetensors``/``.pth``/``.pt``/``.bin`` file. For a state_dict or file, name the ``source``
    (``'torch_ref'``, ``'timm'``, ``'torchvision'``), the ``arch`` (``'dsconv'``, ``'depthwise_separable'`` or
    ``'mobilenet_v1'`` for torch_ref, a timm model name such as ``'mobilenetv3_large_100'``, or a torchvision
    builder name) and any non-default constructor arguments of that torch model (``width_mult=0.75``,
    ``num_classes=10``...).

    Raises :class:`ConversionError` listing every missing, unexpected and mis-shaped key.

    >>> model, variables = from_torch(torchvision.models.mobilenet_v3_small())
    >>> logits = jax.jit(model.apply)(variables, images_nhwc)
    """
    if isinstance(src, (str, os.PathLike, bytes)):
        src = load_state_dict(src)
    if isinstance(src, Mapping):
        state_dict = src
        reader = reader_for(source, "a state_dict")
        check_arguments(f"{source} {arch}", config)
        try:
            torch_model = reader.skeleton(arch, state_dict, config)
        except ConversionError:
            raise
        except Exception as error:  # the torch constructor refusing an argument (a type, a value, a name)
            raise ConversionError(f"cannot build the {source} {arch!r} from arguments {config}: "
                                  f"{type(error).__name__}: {error}") from error  # fmt: skip
    else:
        if config:
            raise TypeError(f"from a torch module everything is inferred; unexpected arguments {sorted(config)}")
        torch_model, state_dict = src, src.state_dict()
    described = describe(torch_model)
    if source is not None and source != described.source:
        raise ConversionError(f"source={source!r} but the module is a {described.source} model")
    if arch is not None and not isinstance(src, Mapping) and arch != described.arch:
        raise ConversionError(f"arch={arch!r} but the module is {described.arch!r}")
    entries = plan(abstract_variables(described.module, described.in_channels), described.name_map)
    check_keys(entries, state_dict, f"{described.source} {described.arch}")
    flat, problems = {}, []
    for e in entries:
        try:
            arr = to_flax(e, to_numpy(state_dict[e.torch_key], e.torch_key))
        except ConversionError as error:  # every bad tensor in one error, as for the keys
            problems.append(str(error))
            continue
        # Copy: numpy views torch's memory and jnp.asarray may alias it on CPU, so a later in-place torch
        # update (a train-mode forward's running statistics) would silently change the Flax variables. The cast
        # is numpy's: jnp.array(arr, dtype=...) runs one eager XLA conversion per distinct shape (seconds a model).
        flat[e.flax_key] = jax.device_put(np.array(arr, dtype=np.float32, copy=True))
    if problems:
        raise ConversionError(f"{len(problems)} tensors cannot be converted:\n  " + "\n  ".join(problems))
    return described.module, traverse_util.unflatten_dict(flat)
