"""Variables against the module they are meant for: what ``init`` would create, and how given ones differ."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util


def abstract_variables(module: nn.Module, in_channels: int, size: int = 64) -> dict[str, Any]:
    """What ``module.init`` creates for a ``size``x``size`` NHWC input of ``in_channels`` channels, as shapes and
    dtypes (nothing runs; the variables do not depend on ``size`` once it covers the module's windows)."""
    for field in ("depthwise", "implementation"):
        # Nor on the depthwise implementation: lax's convolution traces in a third of the time of the shifted
        # kernels and their custom VJPs, which 'auto' picks on a CPU (from_torch traces once per conversion).
        if isinstance(getattr(module, field, None), str):
            settings: dict[str, Any] = {field: "xla"}
            module = module.clone(**settings)
    x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)


def misfits(expected: Any, given: Any) -> list[str]:
    """How the tree ``given`` differs from ``expected`` (nested dicts of arrays): what is missing, what is
    unexpected (a whole absent subtree named once, e.g. ``missing batch_stats``), then shapes; one readable
    item each, empty when every key and shape matches."""
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
    have = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(given).items()}
    return [
        *(f"missing {name}" for name in _subtrees(want.keys() - have.keys(), have)),
        *(f"unexpected {name}" for name in _subtrees(have.keys() - want.keys(), want)),
        *(f"{'/'.join(k)} {have[k]} (expected {want[k]})" for k in sorted(want.keys() & have.keys())
          if have[k] != want[k]),
    ]  # fmt: skip


def _subtrees(keys: Any, other: Any) -> list[str]:
    """Each of ``keys`` (flattened paths) shortened to its first prefix that ``other`` has no key under (the whole
    path where ``other`` has an array at a prefix of it, or a subtree below it)."""
    present = {k[:i] for k in other for i in range(1, len(k) + 1)}
    roots = {next((k[:i] for i in range(1, len(k) + 1) if k[:i] not in present), k) for k in keys}
    return ["/".join(r) for r in sorted(roots)]


def listed(items: list[str], limit: int = 12, sep: str = ", ") -> str:
    """The first ``limit`` of ``items`` joined with ``sep``, and a count of the rest."""
    return sep.join(items[:limit]) + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")
