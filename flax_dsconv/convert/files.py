"""Reading checkpoint files into state_dicts: safetensors without torch, torch files never unpickled."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax_dsconv.convert.errors import ConversionError


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.safetensors`` (no torch needed) or ``.pth``/``.pt``/``.bin`` file into a state_dict.

    Torch files are read with ``torch.load(weights_only=True)``: never a full unpickle. A checkpoint that
    wraps its weights (``{'state_dict': ...}``, ``{'model': ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            obj: Any = load_file(path)
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConversionError(
                f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors, .pth, .pt, .bin or .ckpt"
            )
    except ConversionError:
        raise
    except Exception as e:  # torch and safetensors raise assorted errors for corrupt files
        raise ConversionError(f"could not read checkpoint {path} (truncated or not a checkpoint?): {e}") from e
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{where}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    if all(hasattr(v, "shape") for v in obj.values()):
        return dict(obj)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(wrapper), Mapping):
            return unwrap_state_dict(obj[wrapper], f"{where}[{wrapper!r}]")
    raise ConversionError(f"{where}: no state_dict found; top-level keys are {sorted(obj)[:10]}")


# ------------------------------------------------------------------------------------------ torch → config
