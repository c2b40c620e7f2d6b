"""save / load: the library's one checkpoint format (msgpack variables + config.json, optional optimizer state)."""

import errno
import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_variables
from flax import serialization

import flax_dsconv
from flax_dsconv.checkpoint import load_opt_state
from flax_dsconv.models import MobileNetConfig
from flax_dsconv.nn import InvertedResidualConfig, SeparableConfig, block_to_dict

# Before each block kind had its own config type (flax_dsconv 0.1's first saves), every block carried every
# kind's fields; these are the ones a block of another kind had at their defaults.
_LEGACY_FIELDS = {"expand_channels": 0, "se_channels": 0, "pw_act": False, "se_act": "relu", "se_gate": "hard_sigmoid"}


def test_load_reads_saves_written_before_block_configs_had_types(tmp_path):
    model = flax_dsconv.mobilenet_v3_small(0.5, num_classes=10)  # separable, inverted residual and conv blocks
    variables = random_variables(model, jnp.ones((1, 64, 64, 3)))
    flax_dsconv.save(tmp_path, model, variables)
    info = json.loads((tmp_path / "config.json").read_text())
    stages = model.config.stages
    info["config"]["stages"] = [[{**_LEGACY_FIELDS, **block_to_dict(b)} for b in stage] for stage in stages]
    (tmp_path / "config.json").write_text(json.dumps(info))
    loaded, loaded_variables = flax_dsconv.load(tmp_path)
    assert loaded.config == model.config
    assert {type(b).__name__ for b in loaded.config.blocks} == {"SeparableConfig", "InvertedResidualConfig",
                                                                 "ConvBNActConfig"}  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, loaded_variables, variables)


@pytest.mark.parametrize("name", ["test_efficientnet_gn", "test_efficientnet_ln", "test_efficientnet_evos",
                                  "gc_efficientnetv2_rw_t", "efficientnet_b0_g8_gn"])  # fmt: skip
def test_a_model_with_another_norm_grouped_convs_or_global_context_round_trips_through_save_and_load(tmp_path, name):
    model = flax_dsconv.create_model(name, num_classes=10)
    flax_dsconv.save(tmp_path, model, random_variables(model, jnp.ones((1, 32, 32, 3))))
    loaded, _ = flax_dsconv.load(tmp_path)
    assert loaded.config == model.config


def test_a_saved_norm_without_a_kind_is_a_batchnorm():
    """Saves from before GroupNorm and the others wrote the norm as BatchNormConfig's fields alone."""
    from flax_dsconv.nn import BatchNormConfig

    config = flax_dsconv.mobilenet_v2(0.5).config
    data = config.to_dict()
    assert data["norm"].pop("kind") == "batch"
    assert MobileNetConfig.from_dict(data) == config
    assert MobileNetConfig.from_dict(data).norm == BatchNormConfig(0.9, 1e-5)


def _mixnet_like() -> flax_dsconv.MobileNet:
    mixed = (
        (SeparableConfig(out_channels=16, kernel_size=5, kernel_sizes=(3, 5), project_splits=2),),
        (InvertedResidualConfig(out_channels=24, expand_channels=40, kernel_size=7, kernel_sizes=(3, 5, 7), stride=2,
                                expand_splits=2, project_splits=2, act="silu", se_channels=4, se_gate="sigmoid"),
         InvertedResidualConfig(out_channels=24, expand_channels=48, skip=True)),
    )  # fmt: skip
    return flax_dsconv.MobileNet(MobileNetConfig(stages=mixed, stem_channels=16, num_classes=10))


@pytest.mark.parametrize("kind", ["MobileNet", "DepthwiseSeparableConv"])
def test_a_mixed_conv_config_round_trips_through_save_and_load(tmp_path, kind):
    if kind == "MobileNet":
        model, x = _mixnet_like(), jnp.ones((1, 32, 32, 3))
    else:
        model = flax_dsconv.DepthwiseSeparableConv(24, kernel_size=7, kernel_sizes=(3, 5, 7))
        x = jnp.ones((1, 8, 8, 18))
    variables = random_variables(model, x)
    flax_dsconv.save(tmp_path, model, variables)
    loaded, loaded_variables = flax_dsconv.load(tmp_path)
    if kind == "MobileNet":
        assert loaded.config == model.config
        assert loaded.config.stages[1][0].kernel_sizes == (3, 5, 7)  # a tuple again, not JSON's list
    else:
        assert loaded == model
    jax.tree.map(np.testing.assert_array_equal, loaded_variables, variables)


def test_optimizer_state_round_trips_beside_the_variables(tmp_path):
    model = flax_dsconv.mobilenet_v1(0.25, num_classes=4)
    variables = random_variables(model, jnp.ones((1, 32, 32, 3)))
    tx = optax.adamw(1e-3)
    opt_state = tx.init(variables["params"])
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, variables["params"]), opt_state, variables["params"])
    flax_dsconv.save(tmp_path, model, variables, opt_state=opt_state, step=1)
    restored = load_opt_state(tmp_path, tx.init(variables["params"]))
    jax.tree.map(np.testing.assert_array_equal, restored, opt_state)
    assert json.loads((tmp_path / "config.json").read_text())["step"] == 1


def test_a_block_field_its_kind_does_not_have_is_refused_by_name(tmp_path):
    from flax_dsconv.nn import block_from_dict

    with pytest.raises(ValueError, match=r"a 'conv' block has no \['se_channels'\]"):
        block_from_dict({"kind": "conv", "out_channels": 8, "se_channels": 4})
    with pytest.raises(ValueError, match=r"unknown block kind 'edge'"):
        block_from_dict({"kind": "edge", "out_channels": 8})


# The tests below use one small block: saving one takes a shape trace, not an init.
def _block(seed: int = 0, features: int = 8):
    block = flax_dsconv.DepthwiseSeparableConv(features)
    return block, random_variables(block, jnp.ones((1, 8, 8, 4)), seed=seed)


def _assert_equal(got, expected):
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def _edit_config(directory, edit):
    info = json.loads((directory / "config.json").read_text())
    edit(info)
    (directory / "config.json").write_text(json.dumps(info))


def _drop_checksums(directory):  # what a save written before checksums looks like
    _edit_config(directory, lambda info: info.pop("sha256"))


def test_save_stores_0d_arrays_as_numbers_and_refuses_other_metadata_before_writing(tmp_path):
    block, variables = _block()
    d = tmp_path / "ckpt"
    flax_dsconv.save(d, block, _block(seed=1)[1])
    flax_dsconv.save(d, block, variables, step=jnp.array(3), loss=np.float32(0.5), best=np.bool_(True))
    info = json.loads((d / "config.json").read_text())
    assert (info["step"], info["loss"], info["best"]) == (3, 0.5, True)
    for bad in (jnp.ones(3), object(), {"nested": 1j}):
        with pytest.raises(ValueError, match=r"metadata 'note' cannot be saved in config\.json"):
            flax_dsconv.save(d, block, _block(seed=2)[1], note=bad)
    _assert_equal(flax_dsconv.load(d)[1], variables)  # the previous save, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_refuses_a_path_that_is_a_file(tmp_path):
    block, variables = _block()
    (tmp_path / "model").write_text("mine")
    with pytest.raises(FileExistsError, match=r"model is a file; save writes a directory"):
        flax_dsconv.save(tmp_path / "model", block, variables)
    assert (tmp_path / "model").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_refuses_a_directory_that_holds_other_files(tmp_path):
    # A save replaces its directory as a whole: into one holding other files it would delete them.
    block, variables = _block()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds notes\.txt, which are not part of a save"):
        flax_dsconv.save(tmp_path, block, variables)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_save_replaces_the_previous_one_as_a_whole(tmp_path):
    block, variables = _block()
    flax_dsconv.save(tmp_path / "ckpt", block, variables, opt_state=variables["params"])
    flax_dsconv.save(tmp_path / "ckpt", block, variables)  # no optimizer state: the old one must not linger
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "variables.msgpack"]
    with pytest.raises(FileNotFoundError, match=r"no opt_state\.msgpack"):
        load_opt_state(tmp_path / "ckpt", variables["params"])


class _Faults:
    """Records the file-system calls a save makes (writes, fsyncs, renames, deletions) and makes call number
    ``fail_at`` raise, as a full disk or a failing device would (a write writes half its bytes first)."""

    def __init__(self, monkeypatch):
        self.calls, self.fail_at = [], None
        for module, name in ((os, "write"), (os, "fsync"), (os, "replace"), (shutil, "rmtree")):
            monkeypatch.setattr(module, name, self._wrap(name, getattr(module, name)))

    def arm(self, fail_at):
        self.calls, self.fail_at = [], fail_at

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            self.calls.append(name)
            if len(self.calls) - 1 == self.fail_at:
                if name == "write":
                    real(args[0], args[1][: len(args[1]) // 2])
                raise OSError(errno.ENOSPC, f"injected failure of {name}")
            return real(*args, **kwargs)

        return call


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-save", "first-save"])
def test_a_save_that_fails_at_any_step_leaves_the_previous_one_and_nothing_beside_it(tmp_path, monkeypatch, previous):
    block, old = _block(seed=0)
    _, new = _block(seed=1)
    faults = _Faults(monkeypatch)

    def save_over_old(parent, fail_at):
        if previous:
            flax_dsconv.save(parent / "ckpt", block, old, opt_state=old["params"], step=0)
        faults.arm(fail_at)
        try:
            flax_dsconv.save(parent / "ckpt", block, new, opt_state=new["params"], step=1)
        finally:
            steps, faults.fail_at = list(faults.calls), None
        return steps

    steps = save_over_old(tmp_path / "dry", None)
    # Each of the three files, the new directory, and the directory holding it (for the renames) reach the disk;
    # the previous save is renamed aside, the new one renamed in, then the previous one deleted.
    assert steps.count("write") == 3 and steps.count("fsync") == 5
    if previous:
        assert steps[-5:] == ["fsync", "replace", "replace", "fsync", "rmtree"]
    else:
        assert steps[-3:] == ["fsync", "replace", "fsync"]
    for k, step in enumerate(steps):
        parent = tmp_path / f"fail_at_{k}"
        parent.mkdir()
        if step == "rmtree":  # the last step: the new save is in place, only deleting the old copy failed
            with pytest.warns(UserWarning, match="could not delete the previous save") as warned:
                save_over_old(parent, k)
            _assert_equal(flax_dsconv.load(parent / "ckpt")[1], new)
            leftover = {p.name for p in parent.iterdir()} - {"ckpt"}
            assert len(leftover) == 1 and leftover.pop() in str(warned[0].message)
            continue
        with pytest.raises(OSError, match=f"injected failure of {step}"):
            save_over_old(parent, k)
        assert [p.name for p in parent.iterdir()] == (["ckpt"] if previous else []), (k, step)
        if previous:
            _assert_equal(flax_dsconv.load(parent / "ckpt")[1], old)
            _assert_equal(load_opt_state(parent / "ckpt", old["params"]), old["params"])
            assert json.loads((parent / "ckpt" / "config.json").read_text())["step"] == 0


def test_checksums_are_recorded_and_saves_without_them_still_load(tmp_path):
    block, variables = _block()
    flax_dsconv.save(tmp_path, block, variables, opt_state=variables["params"])
    recorded = json.loads((tmp_path / "config.json").read_text())["sha256"]
    assert recorded == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
                        for name in ("variables.msgpack", "opt_state.msgpack")}  # fmt: skip
    _drop_checksums(tmp_path)
    module, loaded = flax_dsconv.load(tmp_path)
    assert module == block
    _assert_equal(loaded, variables)
    _assert_equal(load_opt_state(tmp_path, variables["params"]), variables["params"])


@pytest.mark.parametrize("name", ["variables.msgpack", "opt_state.msgpack"])
def test_one_flipped_bit_in_a_data_file_is_refused_by_name(tmp_path, name):
    block, variables = _block()
    flax_dsconv.save(tmp_path, block, variables, opt_state=variables["params"])
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 0x01  # in the last array's bytes: still readable msgpack, one value changed
    (tmp_path / name).write_bytes(bytes(data))
    read = {"variables.msgpack": lambda: flax_dsconv.load(tmp_path)[1]["params"],
            "opt_state.msgpack": lambda: load_opt_state(tmp_path, variables["params"])}[name]  # fmt: skip
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: corrupt or not from this save: its sha256"):
        read()
    _drop_checksums(tmp_path)  # without the checksum the flip goes unnoticed: it is the checksum that caught it
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), read(), variables["params"])
    assert sum(jax.tree.leaves(changed)) == 1


_CONFIG_FAULTS = {
    "not JSON": (lambda info: "{", r"not valid JSON"),
    "a list": (lambda info: [info], r"expected a JSON object, got a list"),
    "no module": (lambda info: {k: v for k, v in info.items() if k != "module"}, r"no 'module' entry"),
    "unexpected field": (lambda info: {**info, "config": {**info["config"], "colour": "red"}},
                         r"unexpected config fields \['colour'\] for a DepthwiseSeparableConv"),
    "missing field": (lambda info: {**info, "config": {k: v for k, v in info["config"].items() if k != "features"}},
                      r"the config of a DepthwiseSeparableConv has no \['features'\]"),
    "bad norm": (lambda info: {**info, "config": {**info["config"], "norm": {"eps": 1e-5}}},
                 r"the config does not describe a DepthwiseSeparableConv: TypeError"),
    "float99": (lambda info: {**info, "dtype": "float99"}, r"dtype 'float99' is not a dtype name"),
    "depthwise": (lambda info: {**info, "depthwise": "fast"}, r"depthwise 'fast', expected one of \['auto'"),
    "checksums": (lambda info: {**info, "sha256": "0" * 64}, r"'sha256' must map file names to hex digests"),
}  # fmt: skip
_HEADER_FAULTS = ("not JSON", "a list", "no module", "checksums")


@pytest.mark.parametrize("fault", sorted(_CONFIG_FAULTS))
def test_load_names_config_json_and_what_is_wrong_with_it(tmp_path, fault):
    block, variables = _block()
    flax_dsconv.save(tmp_path, block, variables, opt_state=variables["params"])
    edit, problem = _CONFIG_FAULTS[fault]
    edited = edit(json.loads((tmp_path / "config.json").read_text()))
    (tmp_path / "config.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ValueError, match=r"config\.json: .*" + problem):
        flax_dsconv.load(tmp_path)
    if fault in _HEADER_FAULTS:  # load_opt_state builds no module: it reads config.json's header and checksums
        with pytest.raises(ValueError, match=r"config\.json: .*" + problem):
            load_opt_state(tmp_path, variables["params"])


def test_load_names_config_json_when_a_mobilenet_config_has_an_unexpected_field(tmp_path):
    model = flax_dsconv.mobilenet_v1(0.25, num_classes=4)
    flax_dsconv.save(tmp_path, model, random_variables(model, jnp.ones((1, 32, 32, 3))))
    _edit_config(tmp_path, lambda info: info["config"].update(colour="red"))
    with pytest.raises(ValueError, match=r"config\.json: unexpected config fields \['colour'\] for a MobileNet"):
        flax_dsconv.load(tmp_path)


_DATA_FAULTS = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"\xc1 not msgpack at all",
    "a list": lambda data: serialization.msgpack_serialize([1, 2, 3]),
}


@pytest.mark.parametrize("checksum", [True, False], ids=["checksummed", "unchecksummed"])
@pytest.mark.parametrize("fault", sorted(_DATA_FAULTS))
@pytest.mark.parametrize("name", ["variables.msgpack", "opt_state.msgpack"])
def test_load_names_a_data_file_that_is_truncated_or_garbage(tmp_path, name, fault, checksum):
    block, variables = _block()
    flax_dsconv.save(tmp_path, block, variables, opt_state=variables["params"])
    if not checksum:
        _drop_checksums(tmp_path)
    (tmp_path / name).write_bytes(_DATA_FAULTS[fault]((tmp_path / name).read_bytes()))
    problem = "corrupt or not from this save" if checksum else "not readable as flax msgpack|holds a list"
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: ({problem})"):
        if name == "variables.msgpack":
            flax_dsconv.load(tmp_path)
        else:
            load_opt_state(tmp_path, variables["params"])


_TREE_FAULTS = {
    "another block's": (lambda v: _block(features=16)[1], r"params/conv_pw/kernel \(1, 1, 4, 16\) \(expected"),
    "an array for a layer": (lambda v: {**v, "params": {**v["params"], "conv_dw": np.ones((3, 3, 1, 4))}},
                             r"params/conv_dw/kernel missing or not 4-D"),
    "a string for an array": (lambda v: {**v, "params": {**v["params"], "conv_pw": {"kernel": "x"}}},
                              r"params/conv_pw/kernel are not arrays"),
}  # fmt: skip


@pytest.mark.parametrize("fault", sorted(_TREE_FAULTS))
def test_load_names_variables_msgpack_when_its_tree_does_not_fit_the_config(tmp_path, fault):
    # A consistent file (its checksum recorded) whose tree is not the saved module's: swapped, or written by hand.
    block, variables = _block()
    flax_dsconv.save(tmp_path, block, variables)
    change, problem = _TREE_FAULTS[fault]
    data = serialization.msgpack_serialize(change(variables))
    (tmp_path / "variables.msgpack").write_bytes(data)
    _edit_config(tmp_path, lambda info: info["sha256"].update({"variables.msgpack": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(ValueError, match=r"variables\.msgpack: .*" + problem):
        flax_dsconv.load(tmp_path)


def test_load_opt_state_refuses_a_state_of_other_shapes_by_name(tmp_path):
    block, variables = _block()
    tx = optax.adam(1e-3)
    flax_dsconv.save(tmp_path, block, variables, opt_state=tx.init(variables["params"]))
    other = tx.init(_block(features=16)[1]["params"])
    fits = r"opt_state\.msgpack: the optimizer state does not fit `like`: "
    with pytest.raises(ValueError, match=fits + r".*0/mu/conv_pw/kernel \(1, 1, 4, 8\) \(expected \(1, 1, 4, 16\)\)"):
        load_opt_state(tmp_path, other)
    with pytest.raises(ValueError, match=r"opt_state\.msgpack: .* missing 0/trace"):
        load_opt_state(tmp_path, optax.sgd(1e-3, momentum=0.9).init(variables["params"]))


def test_convert_reports_an_out_path_save_refuses_in_one_line(tmp_path, capsys):
    import torch

    from flax_dsconv.tools import cli
    from torch_ref import DSConv

    torch.save(DSConv(4, 8).state_dict(), tmp_path / "m.pth")
    (tmp_path / "out").write_text("mine")
    argv = ["convert", str(tmp_path / "m.pth"), "--arch", "dsconv", "--source", "torch_ref", "--config",
            "in_channels=4", "out_channels=8", "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "out is a file; save writes a directory" in err and "Traceback" not in err
    assert (tmp_path / "out").read_text() == "mine"
