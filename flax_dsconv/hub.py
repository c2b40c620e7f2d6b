"""Checkpoints in the Hugging Face hub layout that timm reads and writes, offline: a directory with timm's
``config.json`` (``architecture``, ``num_classes``, ``model_args``, ``pretrained_cfg``) and ``model.safetensors``
(or ``pytorch_model.bin``, read with ``torch.load(weights_only=True)``, never unpickled).

>>> model, variables = flax_dsconv.from_pretrained("hf-hub:timm/mobilenetv3_large_100.ra_in1k")  # from the cache
>>> flax_dsconv.save("out/finetuned", model, variables, format="hub")   # timm: create_model("local-dir:out/...")

Reading a safetensors checkpoint needs no torch: the network is built by :func:`~flax_dsconv.create_model` under
the timm name (whose config equals timm's, a tested promise) and the keys follow timm's module names.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flax_dsconv.convert.files import load_state_dict
from flax_dsconv.convert.load import convert_state_dict
from flax_dsconv.convert.plan import TO_TORCH, dotted, plan
from flax_dsconv.models import BUILDERS, MobileNet, MobileNetConfig, create_model, list_models
from flax_dsconv.models.features import DEFAULT_OUT_INDICES
from flax_dsconv.models.head import reset_classifier, to_features
from flax_dsconv.shapes import abstract_variables, listed, misfits

HUB_CONFIG, SAFETENSORS, TORCH_BIN = "config.json", "model.safetensors", "pytorch_model.bin"
HUB_FILES = (HUB_CONFIG, SAFETENSORS)  # what save(format='hub') writes

# model_args a checkpoint's config may carry: the create_model arguments that shape these networks.
_MODEL_ARGS = frozenset({"num_classes", "in_chans", "drop_rate", "drop_path_rate", "global_pool"})

# timm's defaults for the preprocessing fields of a pretrained_cfg (its ImageNet mean and std).
_CFG_DEFAULTS: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


def resolve(path: str | os.PathLike) -> Path:
    """The directory ``path`` names: a directory, ``local-dir:DIR`` (timm's spelling), or ``hf-hub:org/name``
    (``@revision`` optional), looked up in the local Hugging Face cache only; nothing is downloaded."""
    spec = os.fspath(path)
    if spec.startswith("hf-hub:"):
        return _cached(spec[len("hf-hub:"):])
    if spec.startswith("local-dir:"):
        spec = spec[len("local-dir:"):]
    directory = Path(spec)
    if not directory.is_dir():
        what = "a file" if directory.exists() else "no such directory"
        raise FileNotFoundError(f"{spec}: {what}; expected a hub-layout directory ({HUB_CONFIG} + {SAFETENSORS} or "
                                f"{TORCH_BIN}), local-dir:DIR or hf-hub:org/name")  # fmt: skip
    return directory


def _cached(repo: str) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError as e:
        raise ImportError("hf-hub: ids are looked up with huggingface_hub: pip install huggingface_hub") from e
    repo_id, _, revision = repo.partition("@")
    try:
        found = huggingface_hub.snapshot_download(repo_id, revision=revision or None, local_files_only=True)
    except (errors.LocalEntryNotFoundError, errors.HFValidationError, FileNotFoundError) as e:
        raise FileNotFoundError(f"hf-hub:{repo} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                                f"nothing is downloaded here: fetch it first (huggingface-cli download {repo_id}), "
                                "or pass the directory") from e  # fmt: skip
    return Path(found)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``config.json`` of the checkpoint at ``path`` (see :func:`resolve`)."""
    directory = resolve(path)
    file = directory / HUB_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no {HUB_CONFIG}; expected a hub-layout directory ({HUB_CONFIG} "
                                f"naming the architecture, beside {SAFETENSORS} or {TORCH_BIN})")  # fmt: skip
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ValueError(f"{file}: expected a JSON object with an 'architecture' (a timm model name)")
    arch = config["architecture"]
    if arch not in list_models():
        near = difflib.get_close_matches(arch, list_models(), n=6, cutoff=0.6)
        raise ValueError(f"{file}: unknown architecture {arch!r}; this library builds {len(list_models())} models "
                         f"(flax_dsconv.list_models()), close names: {near}")  # fmt: skip
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{file}: model_args must be an object, got {args!r}")
    unknown = sorted(args.keys() - _MODEL_ARGS)
    if unknown:
        raise ValueError(f"{file}: model_args {unknown} are not arguments these networks take; accepted: "
                         f"{sorted(_MODEL_ARGS)}")  # fmt: skip
    if args.get("global_pool", "avg") != "avg":
        raise ValueError(f"{file}: global_pool {args['global_pool']!r}; only average pooling ('avg') is built")
    return config


def pretrained_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``pretrained_cfg`` with timm's defaults filled in (``input_size``, ``interpolation``,
    ``crop_pct``, ``crop_mode``, ``mean``, ``std``): what :func:`flax_dsconv.data.eval_transform` takes."""
    config = read_config(path)
    cfg = {**_CFG_DEFAULTS, **(config.get("pretrained_cfg") or {})}
    cfg.setdefault("num_classes", config.get("num_classes"))
    cfg["architecture"] = config["architecture"]
    return cfg


def from_pretrained(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    head_key: jax.Array | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
) -> tuple[MobileNet, dict[str, Any]]:
    """``(model, variables)`` from a hub-layout checkpoint: a directory, ``local-dir:DIR`` or ``hf-hub:org/name``
    from the local cache (see :func:`resolve`). Strict: every tensor is accounted for, with its shape.

    ``num_classes``: a new classifier where the checkpoint's has another size (as :func:`~flax_dsconv.from_torch`);
    ``features_only``/``out_indices``: the backbone, as ``create_model`` builds it. :func:`pretrained_cfg` gives
    the preprocessing the checkpoint was trained with.
    """
    directory = resolve(path)
    config = read_config(directory)
    args = config.get("model_args") or {}
    kwargs = {k: args[k] for k in ("in_chans", "drop_rate", "drop_path_rate") if k in args}
    have = config.get("num_classes", args.get("num_classes", 1000))
    model = create_model(config["architecture"], num_classes=have, **kwargs)
    weights = next((directory / name for name in (SAFETENSORS, TORCH_BIN) if (directory / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{directory} has no {SAFETENSORS} or {TORCH_BIN} beside its {HUB_CONFIG}")
    state_dict = load_state_dict(weights)
    what = f"{weights} (timm {config['architecture']})"
    variables = convert_state_dict(model, model.config.in_channels, dotted, state_dict, what)
    if num_classes is not None and num_classes != have:
        model, variables = reset_classifier(model, variables, num_classes, head_key)
    if features_only:
        model, variables = to_features(model, variables, out_indices)
    return model, variables


def timm_arch(module: MobileNet) -> str:
    """The timm name whose network ``module`` is (with its classes and input channels), or a ValueError."""
    matches = [name for name in list_models() if name not in BUILDERS and _builds(name, module.config)]
    if not matches:
        raise ValueError("no timm architecture builds this network; a hub checkpoint names one (pass arch=, a name "
                         "from flax_dsconv.list_models() whose network this is)")  # fmt: skip
    return matches[0]


def _builds(arch: str, config: MobileNetConfig) -> bool:
    """Whether timm's ``arch`` with ``config``'s classes and input channels is ``config``'s network (dropout and
    drop path are training settings, not part of it)."""
    theirs = create_model(arch, num_classes=config.num_classes, in_channels=config.in_channels).config
    return dataclasses.replace(theirs, dropout=0.0) == dataclasses.replace(config.with_drop_path(0.0), dropout=0.0)


def hub_files(module: nn.Module, variables: Mapping[str, Any], arch: str | None = None,
              cfg: Mapping[str, Any] | None = None) -> dict[str, bytes]:  # fmt: skip
    """The files of a hub-layout checkpoint of ``module`` (timm's ``config.json`` and a ``model.safetensors`` with
    timm's keys and layouts), as bytes; :func:`flax_dsconv.save` with ``format='hub'`` writes them."""
    from safetensors.numpy import save

    if not isinstance(module, MobileNet) or module.features_only:
        raise ValueError("a hub checkpoint holds a whole timm network: a MobileNet without features_only")
    c = module.config
    if arch is None:
        arch = timm_arch(module)
    elif arch not in list_models() or arch in BUILDERS:
        raise ValueError(f"arch {arch!r} is not a timm name this library builds (flax_dsconv.list_models())")
    elif not _builds(arch, c):
        raise ValueError(f"arch {arch!r}: timm's {arch} with {c.num_classes} classes and {c.in_channels} input "
                         "channels is another network than this module")  # fmt: skip
    state = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    abstract = abstract_variables(module, c.in_channels)
    problems = misfits(abstract, state)
    if problems:
        raise ValueError(f"the variables do not fit the module: {listed(problems)}")
    flat = traverse_util.flatten_dict(state)
    tensors: dict[str, np.ndarray] = {}
    for e in plan(abstract, dotted):
        tensors[e.torch_key] = np.ascontiguousarray(TO_TORCH[e.layout](np.asarray(flat[e.flax_key], np.float32)))
        if e.torch_key.endswith(".running_var"):
            tensors[e.torch_key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    pretrained = {**_CFG_DEFAULTS, **(cfg or {})}
    pretrained["input_size"] = (c.in_channels, *tuple(pretrained["input_size"])[1:])
    pretrained.update(num_classes=c.num_classes, first_conv="conv_stem", classifier="classifier")
    config = {
        "architecture": arch,
        "num_classes": c.num_classes,
        "num_features": c.num_features,
        "global_pool": "avg",
        "model_args": {"num_classes": c.num_classes, "in_chans": c.in_channels, "global_pool": "avg"},
        "pretrained_cfg": json.loads(json.dumps(pretrained)),
    }
    return {SAFETENSORS: save(tensors), HUB_CONFIG: (json.dumps(config, indent=2) + "\n").encode()}

