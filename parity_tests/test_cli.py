"""The command line: parity's table and exit code, summary, convert + load."""

import json
import re

import chex
import jax
import numpy as np
import pytest
import torch
import torchvision
from conftest import random_timm, random_variables, randomize_batchnorm, to_nhwc

import flax_dsconv
from flax_dsconv.tools import bench, cli, parity


def test_parity_prints_every_row_and_exits_zero(capsys):
    assert cli.main(["parity", "--models", "DSConv (seed)", "mobilenet_v3_small"]) == 0
    out = capsys.readouterr().out
    assert "DSConv (seed)" in out and "mobilenet_v3_small" in out and "FAIL" not in out


def test_parity_exits_nonzero_when_a_row_fails(capsys, monkeypatch):
    # A bound of 0: no fp32 result equals float64's to the last bit, so every row must fail.
    monkeypatch.setattr(parity, "FACTOR", 0.0)
    monkeypatch.setitem(parity.FLOOR, "output", 0.0)
    assert cli.main(["parity", "--models", "DSConv (seed)", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in rows] == [False]


def test_parity_default_cases_cover_every_source_and_family():
    cases = parity.default_cases()
    assert {c.source for c in cases} == {"torch_ref", "timm", "torchvision"}
    labels = " ".join(c.label for c in cases)
    families = ("mobilenet_v1", "mobilenetv1", "mobilenet_v2", "mobilenetv2", "mobilenet_v3_large",
                "mobilenetv3_small", "tf_mobilenetv3", "mobilenetv3_rw", "DSConv")  # fmt: skip
    for family in families:
        assert family in labels
    # every family file with timm names has a row of its own
    import importlib
    import pkgutil

    import flax_dsconv.models

    for info in pkgutil.iter_modules(flax_dsconv.models.__path__):
        names = getattr(importlib.import_module(f"flax_dsconv.models.{info.name}"), "TIMM_MODELS", {})
        assert not names or set(names) & {c.label for c in cases}, f"no parity row for models/{info.name}.py"


def test_summary_of_a_timm_name_refuses_a_width(capsys):
    assert cli.main(["summary", "--arch", "lcnet_050", "--width", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flax-dsconv summary: ValueError: --width: lcnet_050 is a timm name") and err.count("\n") == 1


@pytest.mark.parametrize(
    "arch", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "lcnet_050"]
)
def test_summary_prints_the_table(capsys, arch):
    width = ["--width", "0.75"] if arch in flax_dsconv.BUILDERS else []
    assert cli.main(["summary", "--arch", arch, *width, "--resolution", "160"]) == 0
    out = capsys.readouterr().out
    assert "total mult-adds" in out and "classifier" in out


def test_convert_writes_a_directory_that_load_reads_back(tmp_path):
    model = randomize_batchnorm(torchvision.models.mobilenet_v3_small(width_mult=0.75, num_classes=7), (2, 3, 64, 64))
    torch.save(model.state_dict(), tmp_path / "m.pth")
    out = tmp_path / "flax"
    argv = ["convert", str(tmp_path / "m.pth"), "--arch", "mobilenet_v3_small", "--source", "torchvision",
            "--config", "width_mult=0.75", "num_classes=7", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    module, variables = flax_dsconv.load(out)
    expected_module, expected = flax_dsconv.from_torch(model)
    assert module == expected_module
    chex.assert_trees_all_equal(variables, expected)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected_logits = model(x).numpy()
    got = jax.jit(module.apply)(variables, to_nhwc(x))
    np.testing.assert_allclose(np.asarray(got), expected_logits, atol=1e-5, rtol=0)


def test_save_load_round_trips_a_separable_block(tmp_path):
    block = flax_dsconv.seed_dsconv(16, stride=2)
    variables = block.init(jax.random.key(0), jax.numpy.ones((1, 8, 8, 4)))
    flax_dsconv.save(tmp_path, block, variables)
    module, loaded = flax_dsconv.load(tmp_path)
    assert module == block
    chex.assert_trees_all_equal(loaded, variables)


def test_load_refuses_variables_that_do_not_fit_the_saved_config(tmp_path):
    # A config.json edited (or swapped) after saving used to load, and failed only at apply time, in Flax's words.
    model = flax_dsconv.mobilenet_v3_small(num_classes=10)
    variables = random_variables(model, jax.numpy.ones((1, 32, 32, 3)))
    flax_dsconv.save(tmp_path, model, variables)
    info = json.loads((tmp_path / "config.json").read_text())
    info["config"]["num_classes"] = 12
    (tmp_path / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"do not fit MobileNet: params/classifier/bias \(10,\) \(expected \(12,\)\)"):
        flax_dsconv.load(tmp_path)


def test_save_refuses_variables_the_module_would_not_use(tmp_path):
    model = flax_dsconv.mobilenet_v3_small(num_classes=10)
    variables = random_variables(model, jax.numpy.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"do not fit MobileNet: missing batch_stats$"):
        flax_dsconv.save(tmp_path / "a", model, {"params": variables["params"]})
    params = {k: v for k, v in variables["params"].items() if k != "blocks_3_1"}
    with pytest.raises(ValueError, match=r"missing params/blocks_3_1$"):
        flax_dsconv.save(tmp_path / "b", model, {**variables, "params": params})
    block = flax_dsconv.seed_dsconv(16)
    block_variables = block.init(jax.random.key(0), jax.numpy.ones((1, 8, 8, 4)))
    extra = {**block_variables["params"], "head": {"kernel": jax.numpy.ones((16, 3))}}
    with pytest.raises(ValueError, match=r"do not fit DepthwiseSeparableConv: unexpected params/head$"):
        flax_dsconv.save(tmp_path / "c", block, {**block_variables, "params": extra})
    # A leaf where the module has a subtree (and the reverse) is named, not a StopIteration.
    flat_pw = {**block_variables["params"], "conv_pw": jax.numpy.ones((1, 1, 4, 16))}
    with pytest.raises(ValueError, match=r"missing params/conv_pw/kernel, unexpected params/conv_pw$"):
        flax_dsconv.save(tmp_path / "d", block, {**block_variables, "params": flat_pw})
    with pytest.raises(ValueError, match="do not fit DepthwiseSeparableConv: params/conv_dw/kernel missing"):
        flax_dsconv.save(tmp_path / "e", block, {"batch_stats": block_variables["batch_stats"]})
    assert not any(tmp_path.iterdir())  # nothing written


def test_save_load_round_trips_a_block_whose_window_exceeds_64_pixels(tmp_path):
    # The check traces init on an input the block's 73x73 window fits in, not a fixed 64x64.
    block = flax_dsconv.DepthwiseSeparableConv(8, kernel_size=7, dilation=12, padding="VALID")
    variables = random_variables(block, jax.numpy.ones((1, 80, 80, 4)))
    flax_dsconv.save(tmp_path, block, variables)
    module, loaded = flax_dsconv.load(tmp_path)
    assert module == block
    chex.assert_trees_all_equal(loaded, variables)


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        flax_dsconv.load(tmp_path)


def test_bench_times_every_workload_in_every_framework_and_reports_json(capsys, monkeypatch):
    import torch

    class Compiled(torch.nn.Module):  # like dynamo's OptimizedModule: a wrapping module with no len()
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

        def __len__(self):
            raise TypeError("no len()")

    monkeypatch.setattr(torch, "compile", Compiled)  # a real compile takes minutes on this CPU
    argv = ["bench", "--json", "--compile", "--models", "mobilenet_v3_small", "--layer-shape", "2", "9", "9", "8"]
    argv += ["--train-batch", "2", "--infer-batch", "2", "--resolution", "32", "--repeats", "2", "--depthwise", "xla"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["layer_shape"] == [2, 9, 9, 8] and "jax" in report["machine"]
    assert report["settings"]["depthwise"] == "xla"
    rows = {(r["workload"], r["framework"]): r for r in report["results"]}
    layers = [f"{layer} {mode}" for layer in ("depthwise 3x3", "pointwise 1x1", "separable block")
              for mode in ("fwd", "grad")]  # fmt: skip
    workloads = [*layers, "mobilenet_v3_small inference", "mobilenet_v3_small train step"]
    assert set(rows) == {(w, f) for w in workloads for f in ("flax", "torch", "torch.compile")}
    for r in rows.values():
        assert r["error"] is None and 0 < r["median_s"] and 0 < r["first_call_s"]
        assert r["images_per_s"] == pytest.approx(2 / r["median_s"])
    for w in workloads:  # Flax's first call includes its compilation (nothing compiled it before the timer)
        assert rows[w, "flax"]["first_call_s"] > 3 * rows[w, "flax"]["median_s"], w
    assert rows["depthwise 3x3 fwd", "flax"]["gbps"] > 0  # bytes moved are known for the depthwise rows only
    assert rows["pointwise 1x1 fwd", "flax"]["gbps"] is None


@pytest.mark.parametrize(
    "device_kind,gbps",
    [("NVIDIA H100 80GB HBM3", 3350), ("NVIDIA H100 PCIe", 2000), ("NVIDIA H100 NVL", 3900), ("NVIDIA H200", 4800),
     ("Tesla T4", None)],
)  # fmt: skip
def test_bench_knows_each_h100_variants_bandwidth(device_kind, gbps):
    # The PCIe and NVL cards contain "H100" too: the SXM figure would misstate their share of the bandwidth.
    assert bench.peak_gbps(device_kind) == gbps


def test_bench_table_shows_failed_and_missing_flax_rows_as_dashes():
    failed = bench.Result("w", "flax", 2, None, None, 0.0, error="RuntimeError('no GPU')")
    table = bench.format_table([failed, bench.Result("w", "torch", 2, 0.1, 0.2, 20.0)])
    assert table.splitlines()[2].split() == ["w", "2", "error", "100.0", "-", "-", "-"]
    table = bench.format_table([bench.Result("w", "torch", 2, 0.1, 0.2, 20.0)])  # no Flax row at all
    assert table.splitlines()[2].split() == ["w", "100.0", "-", "-"]


def test_bench_table_names_ratios_and_rejects_unknown_models(capsys):
    argv = ["bench", "--models", "--layer-shape", "1", "8", "8", "4", "--repeats", "1", "--depthwise", "shifted"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "flax/torch" in out and "depthwise 3x3 grad" in out and "mobilenet" not in out
    assert "depthwise 'shifted'" in out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--models", "resnet50"])


def test_convert_reads_python_literals_and_checks_argument_names(tmp_path, capsys):
    model = torchvision.models.mobilenet_v3_small(num_classes=7)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    base = ["convert", str(tmp_path / "m.pth"), "--arch", "mobilenet_v3_small", "--source", "torchvision", "--config"]
    # 'False' is Python's spelling: read as False, not as the (truthy) string "False"
    assert cli.main([*base, "num_classes=7", "dilated=False", "--out", str(tmp_path / "a")]) == 0
    module, _ = flax_dsconv.load(tmp_path / "a")
    assert {b.dilation for stage in module.config.stages for b in stage} == {1}
    assert module == flax_dsconv.from_torch(model)[0]
    assert cli.main([*base, "num_classes=7", "dilate=True", "--out", str(tmp_path / "b")]) == 2
    assert "takes no argument ['dilate']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["missing.pth", "--arch", "mobilenet_v2", "--source", "torchvision"], "no checkpoint at missing.pth"),
        (["{pth}", "--arch", "resnet50", "--source", "torchvision"], "torchvision arch must be one of"),
        (["{pth}", "--arch", "mobilenet_v3_small", "--source", "torchvision", "--config", "num_classes=ten"], "Error"),
    ],
)
def test_convert_reports_bad_input_in_one_line_and_exits_2(tmp_path, capsys, argv, match):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "m.pth")
    argv = [a.format(pth=tmp_path / "m.pth") for a in argv]
    assert cli.main(["convert", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_save_keeps_dtype_and_implementation_and_refuses_metadata_that_would_overwrite_them(tmp_path):
    model = flax_dsconv.mobilenet_v1(0.25, num_classes=4, dtype=jax.numpy.bfloat16).clone(depthwise="xla")
    variables = random_variables(model, jax.numpy.ones((1, 32, 32, 3)))
    flax_dsconv.save(tmp_path / "m", model, variables, note="kept")
    loaded, _ = flax_dsconv.load(tmp_path / "m")
    assert jax.numpy.dtype(loaded.dtype) == jax.numpy.bfloat16
    assert loaded.clone(dtype=None) == model.clone(dtype=None)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["note"] == "kept"
    with pytest.raises(ValueError, match=r"metadata keys \['config'\] would overwrite"):
        flax_dsconv.save(tmp_path / "n", model, variables, config={"note": "x"})
    assert not (tmp_path / "n").exists()


def test_train_rejects_settings_that_cannot_train(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path), "--quiet", "--limit", "10"]) == 2
    assert "at least one batch of 64 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--out", str(tmp_path), "--quiet", "--epochs", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_bench_inference_rows_run_eval_mode_models_on_the_inference_batch():
    from flax_dsconv.tools import bench_workloads as workloads

    settings = workloads.Settings(train_batch=2, infer_batch=3, resolution=32, models=("mobilenet_v3_small",),
                                  repeats=1)  # fmt: skip
    device, dtype, _ = workloads.torch_setup(settings)
    inference, train = workloads.model_workloads(settings, "mobilenet_v3_small", device, dtype)
    flax_logits, torch_logits = np.asarray(inference.flax()), inference.torch().numpy()
    assert inference.batch == 3 and flax_logits.shape == torch_logits.shape == (3, 1000)
    # Both in eval mode (running statistics, no dropout), on the same batch: the same logits. Built after it,
    # the train step puts its torch model in train mode; that must not reach the inference row.
    scale = np.abs(torch_logits).max()
    assert scale > 0 and np.abs(flax_logits - torch_logits).max() <= 1e-5 * scale
    assert np.isfinite(float(train.flax())) and np.isfinite(train.torch().item())


@pytest.mark.parametrize(
    "argv,match",
    [
        (["summary", "--resolution", "0"], "argument --resolution: must be at least 1, got 0"),
        (["summary", "--width", "nan"], "argument --width: must be a finite number above 0, got nan"),
        (["summary", "--width", "-1"], "argument --width: must be a finite number above 0, got -1"),
        (["summary", "--num-classes", "-3"], "argument --num-classes: must be 0 or more, got -3"),
        (["summary", "--arch", "mobilenet_v9"], "--arch: unknown model 'mobilenet_v9'; close names: mobilenet_v"),
        (["bench", "--train-batch", "0"], "argument --train-batch: must be at least 1, got 0"),
    ],
)
def test_argument_errors_are_one_line_naming_the_argument_and_exit_2(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith(f"flax-dsconv {argv[0]}: ") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--arch", "mobilenetv3_large_10", "--source", "timm"], "timm has no model 'mobilenetv3_large_10'"),
        (["--arch", "mobilenet_v3_small", "--source", "torchvision", "--config", "width_mult=abc"], "width_mult"),
        (["--arch", "mobilenetv3_small_100", "--source", "timm", "--config", "checkpoint_path=x.pth"],
         "argument ['checkpoint_path'] is not one that shapes the model"),
        (["--arch", "mobilenet_v3_small", "--source", "torchvision", "--config", "width_mult"],
         "--config takes KEY=VALUE, got 'width_mult'"),
    ],
)  # fmt: skip
def test_convert_errors_are_one_line_exit_2_and_debug_shows_the_traceback(tmp_path, capsys, argv, match):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "m.pth")
    full = ["convert", str(tmp_path / "m.pth"), *argv, "--out", str(tmp_path / "out")]
    assert cli.main(full) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("flax-dsconv convert: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match=re.escape(match)):
        cli.main([*full, "--debug"])


def test_convert_onto_an_existing_file_is_one_line_and_keeps_the_file(tmp_path, capsys):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "m.pth")
    (tmp_path / "out").write_text("mine")
    argv = ["convert", str(tmp_path / "m.pth"), "--arch", "mobilenet_v3_small", "--source", "torchvision"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flax-dsconv convert: ") and str(tmp_path / "out") in err and err.count("\n") == 1, err
    assert (tmp_path / "out").read_text() == "mine"


def test_bench_takes_any_create_model_name_against_its_timm_twin(capsys):
    argv = ["bench", "--json", "--no-layers", "--models", "test_efficientnet", "--train-batch", "2", "--infer-batch",
            "2", "--resolution", "32", "--repeats", "1", "--depthwise", "xla"]  # fmt: skip
    assert cli.main(argv) == 0
    rows = {(r["workload"], r["framework"]): r for r in json.loads(capsys.readouterr().out)["results"]}
    workloads = ("test_efficientnet inference", "test_efficientnet train step")
    assert set(rows) == {(w, f) for w in workloads for f in ("flax", "torch")}
    assert all(r["error"] is None and r["median_s"] > 0 for r in rows.values())
    with pytest.raises(SystemExit):
        cli.main(["bench", "--models", "efficientnet_b9"])
    assert "close names: efficientnet_b8" in capsys.readouterr().err


def test_convert_and_predict_take_a_hub_directory_without_arch(tmp_path, capsys):
    """A directory timm's save_for_hf wrote: convert needs no --arch; predict prints timm's top-5 for each image."""
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.models import _hub

    model = randomize_batchnorm(random_timm("mobilenetv3_small_050", num_classes=20).eval(), (2, 3, 64, 64))
    _hub.save_for_hf(model, tmp_path / "hub", safe_serialization=True)
    assert cli.main(["convert", str(tmp_path / "hub"), "--out", str(tmp_path / "flax")]) == 0
    module, _ = flax_dsconv.load(tmp_path / "flax")
    assert module == flax_dsconv.from_torch(model)[0]
    saved = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert saved["arch"] == "mobilenetv3_small_050" and saved["pretrained_cfg"]["crop_pct"] == 0.875
    paths = []
    for i, array in enumerate(load_sample_images().images):
        paths.append(str(tmp_path / f"photo{i}.png"))
        Image.fromarray(array).save(paths[-1])
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])).numpy()
    assert all(np.diff(np.sort(row)[::-1][:6]).max() < -1e-3 for row in logits)  # no near-tie among the top 6
    capsys.readouterr()
    for source in (str(tmp_path / "hub"), str(tmp_path / "flax")):
        assert cli.main(["predict", *paths, "--model", source]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == len(paths)
        for line, path, row in zip(lines, paths, logits, strict=True):
            assert line.startswith(f"{path}: ")
            assert [int(t.split(" ")[0]) for t in line.split(": ")[1].split(", ")] == np.argsort(-row)[:5].tolist()
    assert cli.main(["convert", str(tmp_path / "hub"), "--arch", "x", "--out", str(tmp_path / "y")]) == 2
    assert "drop --arch, --source and --config" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "photo0.png"), "--out", str(tmp_path / "y")]) == 2
    assert "name what it holds with --arch and --source" in capsys.readouterr().err
