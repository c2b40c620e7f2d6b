"""The key plan: for every Flax variable, its torch key, torch shape and layout rule; strict key checks.

The Flax module is built first; its abstract variables give the plan. Module names map to torch prefixes by one
name map per source (timm and torch_ref use Flax's names, ``blocks_1_0`` ↔ ``blocks.1.0``). Layouts: ``conv``
HWIO↔OIHW, ``linear`` (in, out)↔(out, in), ``conv_as_linear`` for a 1x1 conv that torch holds as ``nn.Linear``,
``experts`` for CondConv's expert kernels (Flax ``(E, kh, kw, in, out)``, timm ``(E, out·in·kh·kw)`` flattened from
OIHW), ``vector``. ``num_batches_tracked`` is the only torch key ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.shapes import listed

Variables = dict[str, Any]
StateDict = Mapping[str, Any]

LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "gamma"): "gamma",  # LayerScale: timm's LayerScale2d holds its per-channel scale as `gamma` too
    ("params", "v"): "v",  # EvoNorm-S0's nonlinearity, as timm's EvoNorm2dS0 names it
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

TO_TORCH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda k: k.transpose(3, 2, 0, 1),
    "linear": lambda k: k.T,
    "conv_as_linear": lambda k: k[0, 0].T,
    "experts": lambda k: k.transpose(0, 4, 3, 1, 2).reshape(k.shape[0], -1),
    "vector": lambda k: k,
}
TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),
    "linear": lambda w: w.T,
    "conv_as_linear": lambda w: w.T[None, None],
    "vector": lambda w: w,
}


@dataclasses.dataclass(frozen=True)
class Entry:
    flax_key: tuple[str, ...]
    torch_key: str
    torch_shape: tuple[int, ...]
    layout: str
    flax_shape: tuple[int, ...] = ()


def to_flax(entry: Entry, w: np.ndarray) -> np.ndarray:
    """The torch tensor ``w`` of ``entry`` in Flax's layout (:data:`TO_FLAX`; ``experts`` unflattens to the
    entry's Flax shape first, which the flat torch tensor does not carry)."""
    if entry.layout == "experts":
        experts, kh, kw, cin, cout = entry.flax_shape
        return w.reshape(experts, cout, cin, kh, kw).transpose(0, 3, 4, 2, 1)
    return TO_FLAX[entry.layout](w)


# A name map takes a Flax module path (without collection and leaf) and returns the torch prefix
# and whether torch holds that layer as nn.Linear.
NameMap = Callable[[tuple[str, ...]], tuple[str, bool]]


def dotted(path: tuple[str, ...]) -> tuple[str, bool]:
    """timm/torch_ref rule: same names, with Flax's ``blocks_1_0`` spelling torch's ``blocks.1.0``."""
    parts = []
    for segment in path:
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*?(?:_[A-Za-z][A-Za-z0-9]*)*)((?:_\d+)+)", segment)
        parts.extend([m.group(1), *m.group(2)[1:].split("_")] if m else [segment])
    return ".".join(parts), False



def plan(abstract: Variables, name_map: NameMap) -> list[Entry]:
    entries = []
    for key, leaf in traverse_util.flatten_dict(abstract).items():
        collection, *path, leaf_name = key
        if (collection, leaf_name) not in LEAF_NAMES:
            raise ConversionError(f"no torch counterpart for Flax variable {'/'.join(key)}")
        prefix, linear = name_map(tuple(path))
        if leaf_name != "kernel":
            layout = "vector"
        elif len(leaf.shape) == 2:
            layout = "linear"
        elif len(leaf.shape) == 5:
            layout = "experts"
        else:
            layout = "conv_as_linear" if linear else "conv"
        torch_shape = TO_TORCH[layout](np.empty(leaf.shape, np.bool_)).shape
        entries.append(Entry(key, f"{prefix}.{LEAF_NAMES[(collection, leaf_name)]}", torch_shape, layout,
                             tuple(leaf.shape)))
    return entries


# ------------------------------------------------------------------------------------------ helpers


def to_numpy(value: Any, key: str) -> np.ndarray:
    """A checkpoint tensor as a float numpy array; float types numpy lacks (bfloat16, float8) become float32."""
    if hasattr(value, "detach"):  # a torch tensor
        if value.is_meta:
            raise ConversionError(f"{key}: a meta tensor holds no data; materialise the model's weights first")
        if not value.is_floating_point():
            raise ConversionError(f"{key}: expected a floating-point tensor, got dtype {value.dtype}")
        value = value.detach().cpu()
        if str(value.dtype) not in ("torch.float16", "torch.float32", "torch.float64"):
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):  # jnp's also knows ml_dtypes' bfloat16 and float8 types
        raise ConversionError(f"{key}: expected a floating-point tensor, got dtype {arr.dtype}")
    return arr if arr.dtype in (np.float16, np.float32, np.float64) else arr.astype(np.float32)


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """If every expected key is present under one prefix (DataParallel's 'module.', torch.compile's '_orig_mod.'),
    say so: the keys fit once it is stripped."""
    prefixes = {u[: -len(m)] for m in missing[:1] for u in unexpected if u.endswith("." + m)}
    given = set(unexpected)
    for prefix in sorted(prefixes):
        if all(prefix + m in given for m in missing):
            return (
                f"\n  every expected key is present with the prefix {prefix!r} (DataParallel/DDP: 'module.', "
                f"torch.compile: '_orig_mod.'); strip it: {{k.removeprefix({prefix!r}): v for k, v in sd.items()}}"
            )
    return ""


def check_keys(entries: list[Entry], state_dict: StateDict, what: str) -> None:
    not_tensors = sorted(k for k, v in state_dict.items() if not hasattr(v, "shape"))
    if not_tensors:
        raise ConversionError(f"state_dict values must be tensors or arrays; not: {listed(not_tensors)}")
    expected = {e.torch_key: e.torch_shape for e in entries}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
    if not (missing or unexpected or mismatched):
        return
    lines = [f"state_dict does not fit {what}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + listed(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + listed(unexpected))
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines += [f"    {k}: checkpoint {given[k]}, expected {expected[k]}" for k in mismatched]
    raise ConversionError("\n".join(lines) + _prefix_hint(missing, unexpected))


# ------------------------------------------------------------------------------------------ loading
