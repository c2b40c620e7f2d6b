"""What custom VJPs need under ``shard_map``."""

from __future__ import annotations

import jax


def vary_like(x: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Under ``shard_map``, mark ``arrays`` (parameters) as varying over ``x``'s manual axes, as JAX's own ops do
    implicitly: a custom VJP's per-device gradients then type-check, and autodiff sums them over the devices.
    Elsewhere (and for arrays already varying) a no-op."""
    varying = jax.typeof(x).manual_axis_type.varying
    out = []
    for a in arrays:
        missing = tuple(varying - jax.typeof(a).manual_axis_type.varying)
        out.append(jax.lax.pcast(a, missing, to="varying") if missing else a)
    return tuple(out)
