"""A model as a serialized StableHLO inference function (``jax.export``), its weights inside, its batch size
symbolic.

The file is what ``Exported.serialize()`` writes; anything with jax reads it back with
``jax.export.deserialize(data).call(images)``, without this library or the model's code. The input is ``images``:
float32 NHWC ``(batch, height, width, channels)`` for any batch; the output the module's (``logits``
``(batch, num_classes)``, or a features model's list of maps). The depthwise convolutions are exported as plain
grouped convolutions (``depthwise='xla'``), which every XLA backend compiles, rather than the CPU's shifted-slice
or the GPU's Pallas kernels.

>>> save_stablehlo("mnv3.stablehlo", model, variables, input_size=(224, 224))
>>> exported = jax.export.deserialize(open("mnv3.stablehlo", "rb").read())
>>> logits = exported.call(images)                     # any batch of (224, 224, 3) float32 images
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.shapes import listed, misfits


def export_stablehlo(module: nn.Module, variables: Mapping[str, Any], *, input_size: Sequence[int] = (224, 224),
                     in_channels: int = 3, platforms: Sequence[str] | None = None, depthwise: str = "xla",
                     train: bool = False) -> jax.export.Exported:  # fmt: skip
    """``module.apply(variables, images)`` in eval mode as a ``jax.export.Exported`` with a symbolic batch.

    ``input_size`` is ``(height, width)``; ``platforms`` the backends it is lowered for (default: this process's,
    e.g. ``('cpu', 'cuda')`` for both); ``depthwise`` the depthwise convolutions' implementation (``'xla'``: a
    plain grouped convolution, for every backend). Refuses train mode (BatchNorm's batch statistics and dropout
    are training, not a deployed model's computation) and variables that do not fit ``module``.
    """
    if train:
        raise ValueError("export_stablehlo: train=True is not exportable: a deployed model runs in eval mode "
                         "(BatchNorm running statistics, no dropout)")  # fmt: skip
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        raise ValueError(f"export_stablehlo: input_size must be (height, width), two positive ints, got {input_size!r}")
    targets = tuple(platforms) if platforms is not None else (jax.default_backend(),)
    if isinstance(getattr(module, "depthwise", None), str):
        if depthwise == "pallas" and any(p != "cuda" for p in targets):
            raise ValueError(f"export_stablehlo: depthwise='pallas' runs on CUDA GPUs only, not on {list(targets)}; "
                             "use 'xla' (a grouped convolution every backend compiles)")  # fmt: skip
        module = module.clone(depthwise=depthwise)
    spec = jax.ShapeDtypeStruct((1, *size, in_channels), jnp.float32)
    expected = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), spec)
    problems = misfits(expected, dict(variables))
    if problems:
        raise ValueError(f"export_stablehlo: the variables do not fit {type(module).__name__} on {size} images: "
                         f"{listed(problems)}")  # fmt: skip
    weights = jax.tree.map(jnp.asarray, dict(variables))

    def infer(images: jax.Array) -> Any:
        return module.apply(weights, images)

    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *size, in_channels), jnp.float32)
    return jax.export.export(jax.jit(infer), platforms=targets)(images)


def save_stablehlo(path: str | os.PathLike[str], module: nn.Module, variables: Mapping[str, Any],
                   **options: Any) -> Path:  # fmt: skip
    """:func:`export_stablehlo` serialized to ``path``: written to a temporary file beside it and renamed, so a
    failed export or an interrupted write leaves no partial file (and any previous one as it was)."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"save_stablehlo: {target} is a directory; give a file path (e.g. model.stablehlo)")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"save_stablehlo: no directory {target.parent} to write {target.name} in")
    data = export_stablehlo(module, variables, **options).serialize()
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def load_stablehlo(path: str | os.PathLike[str]) -> jax.export.Exported:
    """The ``jax.export.Exported`` in ``path`` (``.call(images)`` runs it); a clear error for a file that is not a
    serialized export."""
    data = Path(path).read_bytes()
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers raises assorted errors on foreign bytes
        what = f"{type(e).__name__}: {e}"
        raise ValueError(f"load_stablehlo: {path} is not a serialized jax.export module ({what})") from e
