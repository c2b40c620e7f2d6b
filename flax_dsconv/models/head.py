"""Head swap for fine-tuning (a new classifier on a trained network, as timm's ``reset_classifier`` makes it) and
the backbone of a network (its ``features_only`` model with the trunk's variables)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from flax_dsconv.models.features import DEFAULT_OUT_INDICES
from flax_dsconv.models.network import MobileNet


def reset_classifier(
    model: MobileNet, variables: Mapping[str, Any], num_classes: int, key: jax.Array | None = None
) -> tuple[MobileNet, dict[str, Any]]:
    """``(model, variables)`` with a new ``num_classes``-way classifier; every other variable is kept as it is
    (the same arrays). ``num_classes=0`` removes the classifier, so the model returns its pooled features.

    The new classifier is initialised as timm's ``reset_classifier`` does it (a fresh ``torch.nn.Linear``): kernel
    and bias uniform in ±1/√in_features, drawn from ``key`` (default ``jax.random.key(0)``).

    >>> model, variables = from_torch(timm.create_model("mobilenetv3_large_100"))
    >>> model, variables = reset_classifier(model, variables, 10, jax.random.key(1))
    """
    if not isinstance(model, MobileNet):
        raise TypeError(f"reset_classifier takes a MobileNet, got {type(model).__name__}")
    if model.features_only:
        raise ValueError("reset_classifier: a features_only model has no head; build it without features_only")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"reset_classifier: num_classes must be an int >= 0, got {num_classes!r}")
    if "params" not in variables:
        raise ValueError(f"reset_classifier: variables have no 'params' collection (got {sorted(variables)})")
    params = dict(variables["params"])
    config = model.config
    has = "classifier" in params
    if has != bool(config.num_classes):
        raise ValueError(f"reset_classifier: the model has {config.num_classes} classes but the variables "
                         f"{'hold' if has else 'have no'} a classifier; are they this model's?")  # fmt: skip
    params.pop("classifier", None)
    if num_classes:
        bound = 1.0 / math.sqrt(config.num_features)
        k_kernel, k_bias = jax.random.split(jax.random.key(0) if key is None else key)
        params["classifier"] = {
            "kernel": jax.random.uniform(k_kernel, (config.num_features, num_classes), minval=-bound, maxval=bound),
            "bias": jax.random.uniform(k_bias, (num_classes,), minval=-bound, maxval=bound),
        }
    new = {**variables, "params": params}
    return model.clone(config=dataclasses.replace(config, num_classes=num_classes)), new


def to_features(
    model: MobileNet, variables: Mapping[str, Any], out_indices: Sequence[int] = DEFAULT_OUT_INDICES
) -> tuple[MobileNet, dict[str, Any]]:
    """The backbone of ``(model, variables)``: the ``features_only`` model returning the maps at ``out_indices``
    (as ``create_model(name, features_only=True)`` builds it) and the stem's and blocks' variables (the same
    arrays; the head's are left out).

    >>> backbone, variables = to_features(*from_torch(torchvision.models.mobilenet_v3_large()), (1, 2, 3, 4))
    """
    if not isinstance(model, MobileNet):
        raise TypeError(f"to_features takes a MobileNet, got {type(model).__name__}")
    backbone = model.clone(config=model.config.without_head(), features_only=True, out_indices=tuple(out_indices))
    trunk = {
        collection: {k: v for k, v in tree.items() if k in ("conv_stem", "bn1") or k.startswith("blocks_")}
        for collection, tree in variables.items()
        if collection in ("params", "batch_stats")
    }
    return backbone, trunk
