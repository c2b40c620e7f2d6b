"""``to_torch_state_dict``: Flax variables back into a state_dict that a torch model loads strictly and that
reproduces the Flax module's outputs there (checked before anything is returned)."""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import LEAF_NAMES, TO_TORCH, Variables, check_keys, plan
from flax_dsconv.convert.protocol import check_arguments, describe, reader_for
from flax_dsconv.models import MobileNet
from flax_dsconv.nn import BatchNormConfig, DepthwiseSeparableConv, NormConfig
from flax_dsconv.shapes import abstract_variables, listed, misfits

if TYPE_CHECKING:
    import torch


# What a module computes beyond its weights' shapes, compared field by field when exporting. Left out: dropout,
# stochastic depth, BatchNorm momentum and running-variance rule, dtype, the depthwise implementation and
# axis_name — training or execution choices that the torch model makes for itself, which do not change its
# eval-mode outputs.
_NOT_COMPARED = ("dropout, stochastic depth, BatchNorm momentum and running-variance rule, dtype, depthwise "
                 "implementation, axis_name")  # fmt: skip


def _norm_fields(norm: NormConfig) -> dict[str, Any]:
    """A norm's settings that change eval-mode outputs: BatchNorm's epsilon, any other norm whole."""
    return {"BatchNorm epsilon": norm.epsilon} if isinstance(norm, BatchNormConfig) else {"norm": norm}


def _computation(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, MobileNet):
        c = module.config
        fields = {
            f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in ("stages", "dropout", "norm")
        }
        fields["number of blocks"] = len(c.blocks)
        fields.update({f"block {i}": dataclasses.replace(b, drop_path=0.0) for i, b in enumerate(c.blocks)})
        fields.update(_norm_fields(c.norm))
        fields["features_only"] = module.features_only
        if module.features_only:
            fields["out_indices"] = module.out_indices
        return fields
    if isinstance(module, DepthwiseSeparableConv):
        skip = ("parent", "name", "norm", "axis_name", "dtype", "depthwise")
        fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in skip}
        return {**fields, **_norm_fields(module.norm)}
    raise ConversionError(
        f"no torch counterpart for {type(module).__name__}; expected a MobileNet or DepthwiseSeparableConv"
    )


def _target_for(module: nn.Module, variables: Variables, source: str | None, arch: str | None,
                config: dict[str, Any]) -> Any:  # fmt: skip
    """The torch model to export to, built from ``source``/``arch``/``config`` with defaults read off ``module``."""
    reader = reader_for(source, "to_torch_state_dict without model= (a torch module)")
    _computation(module)  # raises for a module no source has
    arch, base = reader.export_target(module, variables, arch, config)
    check_arguments(f"{source} {arch}", config)
    try:
        return reader.skeleton(arch, {}, {**base, **config})
    except ConversionError:
        raise
    except Exception as e:  # a constructor rejecting an argument the module implies
        raise ConversionError(
            f"cannot build the {source} {arch} this module exports to, from arguments "
            f"{ {**base, **config} }: {e}; pass model= (the torch module to load into)"
        ) from e


def _check_same_computation(module: nn.Module, target: nn.Module, what: str) -> None:
    ours, theirs = _computation(module), _computation(target)
    diffs = [
        f"{k}: Flax {ours.get(k)!r}, torch {theirs.get(k)!r}"
        for k in {**ours, **theirs}
        if ours.get(k) != theirs.get(k)
    ]
    if diffs:
        raise ConversionError(
            f"the Flax module does not compute what {what} computes ({len(diffs)} differences; not compared: "
            f"{_NOT_COMPARED}):\n  "
            + listed(diffs, sep="\n  ")
            + "\nPass model= (the torch module to load into), or the torch constructor's arguments as keywords."
        )


def to_torch_state_dict(
    module: nn.Module,
    variables: Variables,
    *,
    model: Any = None,
    source: str | None = None,
    arch: str | None = None,
    **config: Any,
) -> dict[str, torch.Tensor]:
    """Export Flax variables as a state_dict that the torch model loads with ``strict=True`` and that
    reproduces the Flax module's eval-mode outputs there.

    The torch target is ``model`` (the module to load into), or, as for :func:`from_torch`'s state_dict path,
    ``source`` (``'torch_ref'``, ``'timm'``, ``'torchvision'``), ``arch`` and the torch constructor's
    arguments as keywords. Defaults are read off ``module``: torchvision's arch, ``width_mult`` and ``dilated``
    (an EfficientNet's or MNASNet's arch by its stem width and block count, and its ``dropout``); torch_ref's
    arch (``'dsconv'`` for a :func:`seed_dsconv`-shaped block) and arguments; every ``num_classes``. timm needs
    ``arch`` (or ``model``). The state_dict carries the target's module versions (``_metadata``), as torch's own
    do.

    Checked before anything is returned: the target computes what ``module`` computes (activations, strides,
    dilation, padding, BatchNorm epsilon, blocks; not dropout, BatchNorm momentum, dtype, implementation), and
    its state_dict has exactly the exported keys and shapes. ``variables`` may hold ``'params'``,
    ``'batch_stats'`` or both (``{'params': grads}`` exports gradients). BatchNorms get
    ``num_batches_tracked = 0``. Tensors are contiguous float32 (float64 arrays stay float64).

    Raises :class:`ConversionError` naming what differs.
    """
    import torch

    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    if not variables:
        raise ConversionError("variables hold neither 'params' nor 'batch_stats'")
    if model is not None:
        if config or arch is not None:
            raise TypeError("with model=, arch and the constructor arguments are read off the torch module")
        target = model
    else:
        target = _target_for(module, variables, source, arch, config)
    described = describe(target)
    if source is not None and source != described.source:
        raise ConversionError(f"source={source!r} but model= is a {described.source} model")
    what = f"the {described.source} {described.arch}"
    _check_same_computation(module, described.module, what)
    abstract = abstract_variables(described.module, described.in_channels)
    for collection, tree in variables.items():
        problems = misfits(abstract.get(collection, {}), tree)
        if problems:
            raise ConversionError(f"{collection} do not fit {what}: " + listed(problems, 20))
    entries = plan(jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables), described.name_map)
    kept = tuple(LEAF_NAMES[(c, leaf)] for c, leaf in LEAF_NAMES if c in variables)
    target_state = target.state_dict()
    target_keys = {k: v for k, v in target_state.items() if k.rsplit(".", 1)[-1] in kept}
    check_keys(entries, target_keys, what)
    flat = traverse_util.flatten_dict(variables)
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    # torch's own state_dicts carry each module's version (``_metadata``), which torchvision's MNASNet requires
    # to load one; the exported keys are the target's, so are its versions.
    if hasattr(target_state, "_metadata"):
        out._metadata = copy.deepcopy(target_state._metadata)  # type: ignore[attr-defined]
    for e in entries:
        value = flat[e.flax_key]  # float64 (x64) stays float64; every other float type becomes float32
        arr = np.asarray(value, dtype=np.float64 if value.dtype == np.float64 else np.float32)
        out[e.torch_key] = torch.from_numpy(np.array(TO_TORCH[e.layout](arr), order="C", copy=True))
        if e.torch_key.endswith(".running_var"):
            out[e.torch_key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out
