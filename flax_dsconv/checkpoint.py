"""The library's one checkpoint format: ``variables.msgpack`` (``flax.serialization``) + ``config.json``, and an
optional ``opt_state.msgpack`` (an optimizer state, for resuming training).

>>> flax_dsconv.save("out/mnv3", model, variables)
>>> model, variables = flax_dsconv.load("out/mnv3")

A save is all or nothing: everything is serialised and checked in memory, written to a hidden directory beside
the target, synced to disk, then moved into place, so an interrupted or failed save leaves the previous one
loadable. ``config.json`` holds the sha256 of each data file, checked on reading (saves from before checksums
load unchecked).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import serialization, traverse_util

from flax_dsconv.models import MobileNet, MobileNetConfig
from flax_dsconv.nn import DepthwiseSeparableConv, norm_from_dict, norm_to_dict, separable_in_channels
from flax_dsconv.ops.depthwise import DEPTHWISE_IMPLEMENTATIONS
from flax_dsconv.shapes import abstract_variables, listed, misfits

FORMAT_VERSION = 1
_VARIABLES, _CONFIG, _OPT_STATE = "variables.msgpack", "config.json", "opt_state.msgpack"
_CHECKSUMS = "sha256"  # config.json's map from each data file's name to the sha256 of its bytes
_MODULES = ("DepthwiseSeparableConv", "MobileNet")


# Module fields besides the architecture: the compute dtype (by name), the depthwise implementation, axis_name.
_RUN_FIELDS = ("dtype", "depthwise", "axis_name")


def _run_fields(module: nn.Module) -> dict[str, Any]:
    fields = {name: getattr(module, name) for name in _RUN_FIELDS}
    fields["dtype"] = None if fields["dtype"] is None else jnp.dtype(fields["dtype"]).name
    return fields


def _config_fields(module_name: str) -> dict[str, bool]:
    """The fields of the saved ``config`` of a ``module_name``, each with whether it is required."""
    skip: tuple[str, ...] = ()
    if module_name == "MobileNet":
        fields = dataclasses.fields(MobileNetConfig)
    else:
        fields, skip = dataclasses.fields(DepthwiseSeparableConv), ("parent", "name", *_RUN_FIELDS)
    no_default = dataclasses.MISSING
    return {f.name: f.default is no_default and f.default_factory is no_default for f in fields if f.name not in skip}


def _check_fits(module: nn.Module, variables: Any, where: str) -> None:
    """Refuse ``variables`` unless they hold exactly what ``module`` uses (keys, collections, shapes)."""
    in_channels: int | None
    if isinstance(module, MobileNet):
        in_channels, size = module.config.in_channels, 64
    else:  # a DepthwiseSeparableConv (depth multiplier 1): its input channels are its depthwise kernel's
        in_channels = separable_in_channels(variables)
        if in_channels is None:
            raise ValueError(f"{where}: the variables do not fit DepthwiseSeparableConv: params/conv_dw/kernel missing "
                             "or not 4-D")  # fmt: skip
        size = max(64, (module.kernel_size - 1) * module.dilation + 1)  # an input its window fits in
    problems = misfits(abstract_variables(module, in_channels, size), variables)
    if problems:
        raise ValueError(f"{where}: the variables do not fit {type(module).__name__}: {listed(problems)}")


def _describe(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, MobileNet):
        features = {"features_only": True, "out_indices": list(module.out_indices)} if module.features_only else {}
        return {"module": "MobileNet", "config": module.config.to_dict(), **_run_fields(module), **features}
    if isinstance(module, DepthwiseSeparableConv):
        fields = {name: getattr(module, name) for name in _config_fields("DepthwiseSeparableConv")}
        fields["norm"] = norm_to_dict(module.norm)
        return {"module": "DepthwiseSeparableConv", "config": fields, **_run_fields(module)}
    raise ValueError(f"cannot save {type(module).__name__}: expected a MobileNet or DepthwiseSeparableConv")


def _as_json_number(value: Any) -> Any:
    """``json.dumps``'s fallback: a 0-d numeric array or numpy scalar (a step, a loss) as a Python number."""
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        if np.ndim(value) != 0:
            raise TypeError(f"an array of shape {np.shape(value)}: only 0-d arrays are stored, as numbers")
        for kind, cast in ((jnp.bool_, bool), (jnp.integer, int), (jnp.floating, float)):
            if jnp.issubdtype(value.dtype, kind):
                return cast(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _json_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    plain = {}
    for key, value in metadata.items():
        try:
            plain[key] = json.loads(json.dumps(value, default=_as_json_number))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"metadata {key!r} cannot be saved in config.json ({e}); pass numbers, strings, booleans, None, "
                "and lists and dicts of them (0-d numeric arrays become numbers)"
            ) from e
    return plain


def save(
    directory: str | os.PathLike,
    module: nn.Module,
    variables: Any,
    *,
    opt_state: Any = None,
    format: str = "flax",
    arch: str | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
    **metadata: Any,
) -> Path:
    """Write ``module``'s config and ``variables`` (``params`` and ``batch_stats``, both as ``module`` makes
    them; anything else in ``variables`` is left out) to ``directory``; ``opt_state`` (an optax state), if
    given, beside them (read it back with :func:`load_opt_state`).

    ``metadata`` (JSON-serialisable keywords; 0-d numeric arrays are stored as numbers) is stored beside the
    config; its keys must not be the config's own (``format_version``, ``module``, ``config``, ``dtype``,
    ``depthwise``, ``axis_name``, ``sha256``).

    The save replaces ``directory`` as a whole, or, if anything fails, leaves it as it was: nothing is written
    before every argument has been checked and serialised. An existing ``directory`` must hold nothing but a
    previous save's files (it is replaced, not merged into).

    ``format='hub'`` writes timm's Hugging Face hub layout instead (``config.json`` + ``model.safetensors``,
    :func:`flax_dsconv.hub.hub_files`), which ``timm.create_model("local-dir:DIR", pretrained=True)`` and
    :func:`flax_dsconv.from_pretrained` load: ``arch`` is the timm name (found from the network when not given),
    ``pretrained_cfg`` overrides the preprocessing fields (``mean``, ``std``, ``input_size``, ``crop_pct``...);
    no ``opt_state`` or metadata.
    """
    if format == "hub":
        from flax_dsconv.hub import HUB_FILES, TORCH_BIN, hub_files

        if opt_state is not None or metadata:
            raise ValueError(f"save(format='hub'): timm's layout has no place for opt_state or metadata "
                             f"{sorted(metadata)}; save them with format='flax'")  # fmt: skip
        _replace_directory(Path(directory), hub_files(module, variables, arch, pretrained_cfg), (*HUB_FILES, TORCH_BIN))
        return Path(directory)
    if format != "flax":
        raise ValueError(f"save: unknown format {format!r}; expected 'flax' (this library's) or 'hub' (timm's)")
    # In this library's format both are metadata: what the weights were converted from, how they were trained.
    metadata.update({k: v for k, v in (("arch", arch), ("pretrained_cfg", pretrained_cfg)) if v is not None})
    info = {"format_version": FORMAT_VERSION, **_describe(module)}
    clash = sorted((info.keys() | {_CHECKSUMS, "features_only", "out_indices"}) & metadata.keys())
    if clash:
        raise ValueError(f"metadata keys {clash} would overwrite the saved module description; rename them")
    state = {k: jax.tree.map(np.asarray, variables[k]) for k in ("params", "batch_stats") if k in variables}
    _check_fits(module, state, "save")
    files = {_VARIABLES: serialization.msgpack_serialize(state)}
    if opt_state is not None:
        files[_OPT_STATE] = serialization.to_bytes(opt_state)
    info.update(_json_metadata(metadata))
    info[_CHECKSUMS] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files[_CONFIG] = (json.dumps(info, indent=2) + "\n").encode()
    _replace_directory(Path(directory), files)
    return Path(directory)


def _replace_directory(
    directory: Path, files: dict[str, bytes], owned: tuple[str, ...] = (_CONFIG, _VARIABLES, _OPT_STATE)
) -> None:
    """Make ``directory`` hold exactly ``files`` (name to bytes), all or nothing; an existing ``directory`` may
    hold only ``owned`` names (a previous save's)."""
    target = Path(os.path.realpath(directory))  # through a symlink: the link stays, its target is replaced
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{directory} is a file; save writes a directory ({_CONFIG}, {_VARIABLES}): pass "
                              "a directory path")  # fmt: skip
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise FileExistsError(f"{directory} holds {listed(foreign)}, which are not part of a save; save replaces "
                                  "the whole directory: pass a new or empty one, or one written by save")  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)  # hidden names beside the target, unique to this save
    staging = target.with_name(f".{target.name}.{token}.saving")
    aside = target.with_name(f".{target.name}.{token}.replaced")
    staging.mkdir()
    moved_aside = moved_in = False
    try:
        for name, data in files.items():
            _write_synced(staging / name, data)
        _sync_directory(staging)
        if target.exists():
            os.replace(target, aside)
            moved_aside = True
        os.replace(staging, target)
        moved_in = True
        _sync_directory(target.parent)
    except BaseException as error:  # interrupted too: put the previous save back
        if moved_in:
            with contextlib.suppress(OSError):
                os.replace(target, staging)
        if moved_aside:
            try:
                os.replace(aside, target)
            except OSError:
                error.add_note(f"the previous save of {directory} could not be moved back from {aside}")
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if moved_aside:
        try:
            shutil.rmtree(aside)
        except OSError as e:  # the new save is in place; only the old copy remains to delete
            warnings.warn(f"saved {directory}, but could not delete the previous save, moved to {aside}: {e}",
                          stacklevel=3)  # fmt: skip


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    """Make the names just created in ``path`` durable (POSIX; Windows has no directory fsync)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _require(directory: Path, name: str, hint: str = "expected a directory written by flax_dsconv.save") -> None:
    if not (directory / name).is_file():
        raise FileNotFoundError(f"{directory} has no {name}; {hint}")


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / _CONFIG
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(info).__name__}")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {info.get('format_version')}, expected {FORMAT_VERSION}")
    if "module" not in info:
        raise ValueError(f"{path}: no 'module' entry; expected one of {list(_MODULES)}")
    if info["module"] not in _MODULES:
        raise ValueError(f"{path}: unknown module {info['module']!r}; expected one of {list(_MODULES)}")
    checksums = info.get(_CHECKSUMS, {})
    if not (isinstance(checksums, dict) and all(isinstance(v, str) for v in checksums.values())):
        raise ValueError(f"{path}: {_CHECKSUMS!r} must map file names to hex digests, got {checksums!r}")
    return info


def _build_module(info: dict[str, Any], path: Path) -> nn.Module:
    """The module ``info`` (a checked config.json, read from ``path``) describes."""
    defaults: tuple[Any, ...] = (None, "auto", None)
    run = {name: info.get(name, default) for name, default in zip(_RUN_FIELDS, defaults, strict=True)}
    if run["dtype"] is not None:
        try:
            run["dtype"] = jnp.dtype(run["dtype"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: dtype {run['dtype']!r} is not a dtype name (e.g. 'float32', 'bfloat16')") from e
    if run["depthwise"] not in DEPTHWISE_IMPLEMENTATIONS:
        raise ValueError(f"{path}: depthwise {run['depthwise']!r}, expected one of {list(DEPTHWISE_IMPLEMENTATIONS)}")
    name, config = info["module"], info.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'config' must be a JSON object describing the {name}, got {config!r}")
    fields = _config_fields(name)
    unexpected = sorted(config.keys() - fields.keys())
    if unexpected:
        raise ValueError(f"{path}: unexpected config fields {unexpected} for a {name}")
    missing = sorted(k for k, required in fields.items() if required and k not in config)
    if missing:
        raise ValueError(f"{path}: the config of a {name} has no {missing}")
    try:
        if name == "MobileNet":
            features: dict[str, Any] = {}
            if info.get("features_only"):
                features = {"features_only": True, "out_indices": tuple(info["out_indices"])}
            return MobileNet(MobileNetConfig.from_dict(config), **run, **features)
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}  # JSON lists
        values["norm"] = norm_from_dict(config.get("norm", {}))
        return DepthwiseSeparableConv(**values, **run)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: the config does not describe a {name}: {type(e).__name__}: {e}") from e


def _read_data(directory: Path, name: str, info: dict[str, Any]) -> dict[str, Any]:
    """The tree in data file ``name``, its bytes checked against config.json's checksum (when it has one)."""
    path = directory / name
    data = path.read_bytes()
    checksums = info.get(_CHECKSUMS)
    if checksums is not None:  # a save written before checksums has none
        if name not in checksums:
            raise ValueError(f"{path}: not part of this save ({directory / _CONFIG} lists no {_CHECKSUMS} for it)")
        digest = hashlib.sha256(data).hexdigest()
        if digest != checksums[name]:
            raise ValueError(f"{path}: corrupt or not from this save: its sha256 is {digest}, "
                             f"{directory / _CONFIG} records {checksums[name]}")  # fmt: skip
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # whatever the decoder trips on, the bytes are not a save's
        raise ValueError(f"{path}: not readable as flax msgpack, truncated or corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: holds a {type(tree).__name__}, expected a tree of arrays")
    return tree


def load(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Read a directory written by :func:`save` (or ``flax-dsconv convert``) into ``(module, variables)``.

    Anything that does not read back as written (a file corrupt, truncated or edited, a config that describes
    no module, variables that do not fit it) is refused with a ValueError naming the file.
    """
    directory = Path(directory)
    _require(directory, _CONFIG)
    _require(directory, _VARIABLES)
    info = _read_config(directory)
    module = _build_module(info, directory / _CONFIG)
    variables = _read_data(directory, _VARIABLES, info)
    leaves = traverse_util.flatten_dict(variables)
    odd = ["/".join(map(str, k)) for k, v in leaves.items() if not isinstance(v, np.ndarray | np.generic)]
    if odd:
        raise ValueError(f"{directory / _VARIABLES}: {listed(odd)} are not arrays")
    # A config edited or swapped since: refused, not half-loaded.
    _check_fits(module, variables, str(directory / _VARIABLES))
    return module, jax.tree.map(jax.numpy.asarray, variables)


def load_opt_state(directory: str | os.PathLike, like: Any) -> Any:
    """The optimizer state that :func:`save` wrote with ``opt_state=``, restored into the structure of ``like``
    (``tx.init(params)`` for the same optimizer and parameters); a state of another structure or other shapes
    is refused.

    >>> opt_state = flax_dsconv.checkpoint.load_opt_state("run/epoch_3", tx.init(variables["params"]))
    """
    directory = Path(directory)
    _require(directory, _OPT_STATE, "save it with flax_dsconv.save(..., opt_state=)")
    _require(directory, _CONFIG)
    state = _read_data(directory, _OPT_STATE, _read_config(directory))
    problems = misfits(serialization.to_state_dict(like), state)
    if problems:
        raise ValueError(f"{directory / _OPT_STATE}: the optimizer state does not fit `like`: {listed(problems)}")
    return serialization.from_state_dict(like, state)
