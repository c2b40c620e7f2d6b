"""Deployment: every family exports to a serialized StableHLO inference function that a fresh process, without
this library, runs at any batch size, its logits as close to PyTorch's float64 logits as the suite's rule asks."""

import copy
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_as_close_as_torch, random_timm, randomize_batchnorm
from test_features import FAMILIES

from flax_dsconv import create_model, from_torch, save
from flax_dsconv.export import export_stablehlo, load_stablehlo, save_stablehlo
from flax_dsconv.tools import cli

SIZE = 64
# The builders' models (V1, V2, V3-Large/Small) and MobileNetV4-Hybrid, run by a fresh process at two batch sizes.
FRESH_PROCESS_MODELS = ("mobilenetv1_100", "mobilenetv2_050", "mobilenetv3_large_075", "mobilenetv3_small_050",
                        "mobilenetv4_hybrid_medium")  # fmt: skip

_RUN_EXPORTED = r"""
import json, sys
import jax, numpy as np
paths, inputs, out = json.loads(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
results = {}
for i, path in enumerate(paths):
    exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
    for batch in (1, 7):
        results[f"{i}_{batch}"] = np.asarray(exported.call(inputs[f"b{batch}"]))
assert not any(name.startswith("flax_dsconv") for name in sys.modules), "the exported files need no flax_dsconv"
np.savez(out, **results)
"""


def _converted(name):
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32))
    model = randomize_batchnorm(random_timm(name, num_classes=10).eval(), images)
    module, variables = from_torch(model)
    return module, variables, model


def _assert_logits_rule(got: dict, model, inputs: dict, label: str) -> None:
    """The exported logits as close to PyTorch's float64 logits as the suite's rule asks of any Flax fp32 result
    (the weights are constants in the exported program, so XLA folds and fuses them otherwise than model.apply)."""
    with torch.no_grad():
        nchw = {k: torch.from_numpy(v).permute(0, 3, 1, 2) for k, v in inputs.items()}
        torch32 = {k: model(x).numpy() for k, x in nchw.items()}
        exact = {k: copy.deepcopy(model).double()(x.double()).numpy() for k, x in nchw.items()}
    assert all(np.abs(v).max() > 1e-1 for v in exact.values()), label  # logits that can show a difference
    assert_as_close_as_torch("output", got, torch32, exact, label)


def _inputs():
    rng = np.random.default_rng(1)
    return {f"b{b}": rng.standard_normal((b, SIZE, SIZE, 3)).astype(np.float32) for b in (1, 7)}


def test_exported_files_run_in_a_fresh_process_without_the_library_at_any_batch(tmp_path):
    inputs = _inputs()
    np.savez(tmp_path / "inputs.npz", **inputs)
    paths, models = [], []
    for i, name in enumerate(FRESH_PROCESS_MODELS):
        module, variables, model = _converted(name)
        paths.append(str(save_stablehlo(tmp_path / f"{i}.stablehlo", module, variables, input_size=(SIZE, SIZE))))
        models.append(model)
    subprocess.run([sys.executable, "-c", _RUN_EXPORTED, json.dumps(paths), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "out.npz")], check=True, capture_output=True, text=True)  # fmt: skip
    got = np.load(tmp_path / "out.npz")
    for i, name in enumerate(FRESH_PROCESS_MODELS):
        assert got[f"{i}_1"].shape == (1, 10) and got[f"{i}_7"].shape == (7, 10)
        _assert_logits_rule({k: got[f"{i}_{k[1:]}"] for k in inputs}, models[i], inputs, name)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_exports_with_a_symbolic_batch_and_gives_its_logits(name, tmp_path):
    module, variables, model = _converted(name)
    exported = load_stablehlo(save_stablehlo(tmp_path / "m.stablehlo", module, variables, input_size=(SIZE, SIZE)))
    (images,) = exported.in_avals
    assert not isinstance(images.shape[0], int) and images.shape[1:] == (SIZE, SIZE, 3)
    inputs = {"b7": _inputs()["b7"]}
    _assert_logits_rule({"b7": np.asarray(exported.call(inputs["b7"]))}, model, inputs, name)


# 1x1 convs are matrix products (dot_general); every k x k conv is one convolution, and MobileNetV3's head conv
# (a 1x1 nn.Conv with bias) one more.
@pytest.mark.parametrize("name,extra", [("mobilenetv2_050", 0), ("mobilenetv3_small_050", 1), ("mixnet_s", 0)])
def test_the_exported_depthwise_layers_are_plain_convolutions(name, extra):
    module = create_model(name, num_classes=10)
    variables = module.init(jax.random.key(0), jnp.ones((1, SIZE, SIZE, 3)))
    exported = export_stablehlo(module, variables, input_size=(SIZE, SIZE))
    assert exported.out_avals[0].shape[1:] == (10,) and exported.platforms == (jax.default_backend(),)
    spatial = sum(leaf.ndim == 4 and leaf.shape[0] * leaf.shape[1] > 1 for leaf in jax.tree.leaves(variables))
    assert exported.mlir_module().count("stablehlo.convolution") == spatial + extra


def test_export_refuses_what_it_cannot_deploy_and_leaves_no_partial_file(tmp_path):
    module = create_model("mobilenetv2_050", num_classes=10)
    variables = module.init(jax.random.key(0), jnp.ones((1, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="train=True is not exportable"):
        export_stablehlo(module, variables, train=True)
    with pytest.raises(ValueError, match="'pallas' runs on CUDA GPUs only"):
        export_stablehlo(module, variables, depthwise="pallas", platforms=["cpu"])
    with pytest.raises(ValueError, match=r"input_size must be \(height, width\)"):
        export_stablehlo(module, variables, input_size=(224,))
    other = create_model("mobilenetv2_100", num_classes=10).init(jax.random.key(0), jnp.ones((1, SIZE, SIZE, 3)))
    target = tmp_path / "model.stablehlo"
    with pytest.raises(ValueError, match=r"do not fit MobileNet.*expected"):
        save_stablehlo(target, module, other)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match="do not fit"):
        save_stablehlo(target, module, other)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_stablehlo(tmp_path, module, variables)
    with pytest.raises(ValueError, match=r"is not a serialized jax\.export module"):
        load_stablehlo(target)


def test_cli_exports_a_convert_output_and_refuses_an_unknown_format(tmp_path, capsys):
    module, variables, _ = _converted("mobilenetv3_small_050")
    save(tmp_path / "flax", module, variables, arch="mobilenetv3_small_050", source="timm",
         pretrained_cfg={"input_size": (3, SIZE, SIZE)})  # fmt: skip
    out = tmp_path / "model.stablehlo"
    assert cli.main(["export", str(tmp_path / "flax"), "--format", "stablehlo", "--out", str(out)]) == 0
    assert f"(batch, {SIZE}, {SIZE}, 3)" in capsys.readouterr().out
    x = np.random.default_rng(2).standard_normal((3, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(load_stablehlo(out).call(x), jax.jit(module.apply)(variables, x), rtol=0, atol=1e-4)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(tmp_path / "flax"), "--format", "tflite", "--out", str(out)])
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
