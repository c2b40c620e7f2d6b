"""Preprocessing that matches a checkpoint: timm's evaluation transform (resize, center crop, normalise) on PIL
images, giving the NHWC float32 arrays the models take.

>>> transform = eval_transform(flax_dsconv.hub.pretrained_cfg("hf-hub:timm/mobilenetv3_large_100.ra_in1k"))
>>> batch = np.stack([transform(image) for image in images])     # (N, 224, 224, 3) float32
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# timm's names for PIL's resampling filters.
_FILTERS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def eval_transform(pretrained_cfg: Mapping[str, Any]) -> Callable[[Any], np.ndarray]:
    """A function from an RGB image (a ``PIL.Image`` or an ``(H, W, 3)`` uint8 array) to the ``(H, W, 3)``
    float32 array a model with this ``pretrained_cfg`` was evaluated on, as timm's ``resolve_data_config`` +
    ``create_transform`` (eval) compute it: the shorter side resized (PIL, the cfg's ``interpolation``) to
    ``floor(size / crop_pct)`` (``crop_mode='center'``; ``'squash'`` resizes both sides), the center crop of the
    cfg's ``input_size``, then ``(x / 255 - mean) / std``.
    """
    size = tuple(pretrained_cfg.get("input_size", (3, 224, 224)))
    if len(size) != 3 or size[0] != 3:
        raise ValueError(f"eval_transform: input_size {size}; expected (3, height, width) (RGB images)")
    height, width = int(size[1]), int(size[2])
    crop_pct = float(pretrained_cfg.get("crop_pct") or 0.875)
    mode = pretrained_cfg.get("crop_mode") or "center"
    interpolation = pretrained_cfg.get("interpolation") or "bilinear"
    if interpolation not in _FILTERS:
        raise ValueError(f"eval_transform: interpolation {interpolation!r}; expected one of {list(_FILTERS)}")
    if mode not in ("center", "squash"):
        raise ValueError(f"eval_transform: crop_mode {mode!r}; 'center' and 'squash' are implemented ('border' pads)")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"eval_transform: crop_pct {crop_pct}; expected a fraction in (0, 1] (above 1 would pad)")
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if mode == "center" and scale[0] != scale[1]:
        raise ValueError(f"eval_transform: a non-square input_size {size[1:]} with crop_mode 'center' keeps the "
                         "ratio in a way not implemented here; use crop_mode 'squash'")  # fmt: skip
    mean = np.asarray(pretrained_cfg.get("mean", (0.485, 0.456, 0.406)), np.float32)
    std = np.asarray(pretrained_cfg.get("std", (0.229, 0.224, 0.225)), np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"eval_transform: mean {mean.tolist()} and std {std.tolist()} must have 3 values (RGB)")

    def transform(image: Any) -> np.ndarray:
        from PIL import Image

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"eval_transform: an array image must be (H, W, 3) uint8 RGB, got {image.shape} "
                                 f"{image.dtype}")  # fmt: skip
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise ValueError(f"eval_transform: expected an RGB PIL image, got {getattr(image, 'mode', type(image))}"
                             " (convert it with image.convert('RGB'))")  # fmt: skip
        w, h = image.size
        if mode == "squash":
            new = scale
        elif w <= h:  # torchvision's Resize(int): the shorter side to the size, the longer side truncated
            new = (int(scale[0] * h / w), scale[0])
        else:
            new = (scale[0], int(scale[0] * w / h))
        if new != (h, w):
            image = image.resize((new[1], new[0]), getattr(Image.Resampling, interpolation.upper()))
        top, left = round((new[0] - height) / 2.0), round((new[1] - width) / 2.0)
        pixels = np.asarray(image, dtype=np.float32)[top : top + height, left : left + width] / np.float32(255)
        return (pixels - mean) / std

    return transform
