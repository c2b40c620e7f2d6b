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
from flax_dsconv.convert.plan import NameMap, Variables, check_keys, plan, to_flax, to_numpy
from flax_dsconv.convert.protocol import Described, check_arguments, describe, reader_for
from flax_dsconv.models import MobileNet
from flax_dsconv.models.head import reset_classifier
from flax_dsconv.shapes import abstract_variables


def from_torch(
    src: Any,
    *,
    arch: str | None = None,
    source: str | None = None,
    head_key: jax.Array | None = None,
    **config: Any,
) -> tuple[nn.Module, Variables]:
    """Convert PyTorch weights into ``(flax_module, {'params', 'batch_stats'})``.

    ``src`` is a ``torch.nn.Module`` (arch, source and config are read off it), a state_dict, or a path to
    a ``.safetensors``/``.pth``/``.pt``/``.bin`` file. For a state_dict or file, name the ``source``
    (``'torch_ref'``, ``'timm'``, ``'torchvision'``), the ``arch`` (``'dsconv'``, ``'depthwise_separable'`` or
    ``'mobilenet_v1'`` for torch_ref, a timm model name such as ``'mobilenetv3_large_100'``, or a torchvision
    builder name) and any non-default constructor arguments of that torch model (``width_mult=0.75``,
    ``features_only=True`` for timm...).

    ``num_classes`` (for a module too) is the number of classes the returned model has, as with timm's
    ``create_model(..., pretrained=True, num_classes=N)``: where the weights' classifier has another size, every
    other variable is converted and the classifier is replaced by a new one, initialised as
    :func:`~flax_dsconv.models.head.reset_classifier` does from ``head_key``; ``num_classes=0`` drops it.

    Raises :class:`ConversionError` listing every missing, unexpected and mis-shaped key.

    >>> model, variables = from_torch(torchvision.models.mobilenet_v3_small())
    >>> logits = jax.jit(model.apply)(variables, images_nhwc)
    >>> model, variables = from_torch(timm_model, num_classes=10)   # fine-tune: a new 10-way head
    """
    wanted = config.pop("num_classes", None)
    head = {} if wanted is None else {"num_classes": wanted}
    if isinstance(src, (str, os.PathLike, bytes)):
        src = load_state_dict(src)
    if isinstance(src, Mapping):
        state_dict = src
        reader = reader_for(source, "a state_dict")
        check_arguments(f"{source} {arch}", {**config, **head})
        described = describe(_skeleton(reader, source, arch, state_dict, config))
        have = _classes_in(described, state_dict)
        if have is None and wanted is not None:  # no classifier weight to read: num_classes builds the skeleton
            described = describe(_skeleton(reader, source, arch, state_dict, {**config, **head}))
        elif have is not None and have != described.module.config.num_classes:
            described = describe(_skeleton(reader, source, arch, state_dict, {**config, "num_classes": have}))
    else:
        check_arguments("from_torch", head)
        if config:
            raise TypeError(f"from a torch module everything is inferred but num_classes; unexpected arguments "
                            f"{sorted(config)}")  # fmt: skip
        state_dict = src.state_dict()
        described = describe(src)
    if source is not None and source != described.source:
        raise ConversionError(f"source={source!r} but the module is a {described.source} model")
    if arch is not None and not isinstance(src, Mapping) and arch != described.arch:
        raise ConversionError(f"arch={arch!r} but the module is {described.arch!r}")
    module, variables = described.module, convert_state_dict(
        described.module, described.in_channels, described.name_map, state_dict, f"{described.source} {described.arch}"
    )
    if wanted is not None and isinstance(module, MobileNet) and wanted != module.config.num_classes:
        module, variables = reset_classifier(module, variables, wanted, head_key)
    return module, variables


def _skeleton(reader: Any, source: str | None, arch: str | None, state_dict: Any, config: dict[str, Any]) -> Any:
    try:
        return reader.skeleton(arch, state_dict, config)
    except ConversionError:
        raise
    except Exception as error:  # the torch constructor refusing an argument (a type, a value, a name)
        raise ConversionError(f"cannot build the {source} {arch!r} from arguments {config}: "
                              f"{type(error).__name__}: {error}") from error  # fmt: skip


def _classes_in(described: Described, state_dict: Mapping[str, Any]) -> int | None:
    """The classifier rows of a checkpoint for ``described``'s network, or None when it has no classifier weight
    where that network keeps it (or the module is not a classifier network)."""
    module = described.module
    if not isinstance(module, MobileNet) or module.features_only:
        return None
    prefix, _ = described.name_map(("classifier",))
    weight = state_dict.get(f"{prefix}.weight")
    return int(weight.shape[0]) if weight is not None and len(getattr(weight, "shape", ())) == 2 else None


def convert_state_dict(
    module: nn.Module, in_channels: int, name_map: NameMap, state_dict: Mapping[str, Any], what: str
) -> Variables:
    """``module``'s variables from ``state_dict``, whose keys ``name_map`` names: every key accounted for (else a
    ConversionError listing the missing, unexpected and mis-shaped ones), every tensor laid out for Flax."""
    entries = plan(abstract_variables(module, in_channels), name_map)
    check_keys(entries, state_dict, what)
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
    return traverse_util.unflatten_dict(flat)
