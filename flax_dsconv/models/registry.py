"""Models by name: the torchvision and timm names whose architecture the builders reproduce exactly.

Each timm name is checked against the config read off timm's own model (``parity_tests/test_registry.py``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from flax_dsconv.models.edgetpu import TIMM_MODELS as EDGETPU_TIMM
from flax_dsconv.models.efficientnet import TIMM_MODELS as EFFICIENTNET_TIMM
from flax_dsconv.models.efficientnet_v2 import TIMM_MODELS as EFFICIENTNET_V2_TIMM
from flax_dsconv.models.features import DEFAULT_OUT_INDICES
from flax_dsconv.models.hardcorenas import TIMM_MODELS as HARDCORENAS_TIMM
from flax_dsconv.models.mixnet import TIMM_MODELS as MIXNET_TIMM
from flax_dsconv.models.mobilenet_v1 import TIMM_MODELS as V1_TIMM
from flax_dsconv.models.mobilenet_v1 import mobilenet_v1
from flax_dsconv.models.mobilenet_v2 import TIMM_MODELS as V2_TIMM
from flax_dsconv.models.mobilenet_v2 import mobilenet_v2
from flax_dsconv.models.mobilenet_v3 import TIMM_MODELS as V3_TIMM
from flax_dsconv.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from flax_dsconv.models.mobilenet_v4 import TIMM_MODELS as V4_TIMM
from flax_dsconv.models.nas import TIMM_MODELS as NAS_TIMM
from flax_dsconv.models.network import MobileNet

# The builders under their own (torchvision's) names, with their paper / torchvision defaults.
BUILDERS: dict[str, Callable[..., MobileNet]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}

# timm's names, each family's next to its builders.
_MODELS: dict[str, Callable[..., MobileNet]] = {
    **BUILDERS,
    **V1_TIMM,
    **V2_TIMM,
    **V3_TIMM,
    **V4_TIMM,
    **NAS_TIMM,
    **HARDCORENAS_TIMM,
    **EFFICIENTNET_TIMM,
    **EFFICIENTNET_V2_TIMM,
    **EDGETPU_TIMM,
    **MIXNET_TIMM,
}


def list_models() -> list[str]:
    """Every name :func:`create_model` takes, sorted."""
    return sorted(_MODELS)


def create_model(
    name: str,
    *,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
    **kwargs: Any,
) -> MobileNet:
    """The model called ``name`` (torchvision's or timm's name for it); ``kwargs`` go to its builder
    (``num_classes=10``, ``in_channels=1``, ``dropout=0.2``...; timm's ``in_chans`` and ``drop_rate`` are taken
    for ``in_channels`` and ``dropout``). ``drop_path_rate``: stochastic depth as timm's (see
    :meth:`~flax_dsconv.models.config.MobileNetConfig.with_drop_path`). ``features_only=True``: the backbone
    timm builds for it, without head, returning the feature maps at ``out_indices`` (see
    :class:`~flax_dsconv.models.features.FeatureInfo`).

    >>> model = create_model("efficientnet_b0", num_classes=10, in_chans=1, drop_path_rate=0.2)
    >>> backbone = create_model("mobilenetv4_conv_small", features_only=True, out_indices=(2, 3, 4))
    """
    if name not in _MODELS:
        near = difflib.get_close_matches(str(name), list_models(), n=8, cutoff=0.6)
        raise ValueError(f"unknown model {name!r}; close names: {near} (flax_dsconv.list_models() has all "
                         f"{len(_MODELS)})")  # fmt: skip
    for timm_name, ours in (("in_chans", "in_channels"), ("drop_rate", "dropout")):
        if timm_name in kwargs:
            if ours in kwargs:
                raise TypeError(f"create_model({name!r}): give {ours}= or {timm_name}=, not both")
            kwargs[ours] = kwargs.pop(timm_name)
    if not isinstance(features_only, bool):
        raise TypeError(f"create_model({name!r}): features_only must be True or False, got {features_only!r}")
    if not features_only and tuple(out_indices) != DEFAULT_OUT_INDICES:
        raise ValueError(f"create_model({name!r}): out_indices={out_indices!r} picks feature maps; it needs "
                         "features_only=True")  # fmt: skip
    model = _MODELS[name](**kwargs)
    config = model.config.with_drop_path(drop_path_rate) if drop_path_rate else model.config
    if features_only:
        return model.clone(config=config.without_head(), features_only=True, out_indices=out_indices)
    return model.clone(config=config) if drop_path_rate else model
