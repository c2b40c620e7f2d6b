"""Reading checkpoint files into state_dicts: safetensors without torch, torch files never unpickled."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax_dsconv.convert.errors import ConversionError


def checkpoint_format(path: Path) -> str:
    """``'safetensors'`` or ``'torch'``, read off the file's first bytes (never its name): a safetensors file
    opens with the 8-byte length of its JSON header and then ``{``; a torch file is a zip archive (``PK``) or, in
    the legacy format, a pickle (protocol byte ``0x80``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    raise ConversionError(
        f"{path}: neither a safetensors nor a torch checkpoint (the file starts with {head[:8]!r}); "
        "expected a .safetensors file or a torch.save file (.pth/.pt/.bin/.ckpt)"
    )


def load_state_dict(path: str | os.PathLike | bytes) -> dict[str, Any]:
    """Read a safetensors (no torch needed) or a ``torch.save`` file into a state_dict; the format is read off the
    file's first bytes, whatever its name.

    Torch files are read with ``torch.load(weights_only=True)``: never a full unpickle. A checkpoint that
    wraps its weights (``{'state_dict': ...}``, ``{'model': ...}``) is unwrapped.
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a checkpoint path is a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    kind = checkpoint_format(path)
    try:
        if kind == "safetensors":
            from safetensors.numpy import load_file

            obj: Any = load_file(path)
        else:
            import torch

            with open(path, "rb") as f:  # a file object: torch.load would pick a reader by the name's suffix
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise assorted errors for corrupt files
        # (torch's own message may advise weights_only=False, which would unpickle arbitrary code: not repeated)
        reason = str(e).split("\n")[0] if "weights_only" not in str(e) else "it holds objects other than tensors"
        raise ConversionError(f"could not read the {kind} checkpoint {path} (truncated, or not a state_dict?): "
                              f"{reason}") from e  # fmt: skip
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
