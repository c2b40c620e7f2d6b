"""The command line: parity's table and exit code, summary, convert + load."""

import json

import chex
import jax
import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_batchnorm, to_nhwc

import flax_dsconv
from flax_dsconv import cli, parity


def test_parity_prints_every_row_and_exits_zero(capsys):
    assert cli.main(["parity", "--models", "DSConv (seed)", "mobilenet_v3_small"]) == 0
    out = capsys.readouterr().out
    assert "DSConv (seed)" in out and "mobilenet_v3_small" in out and "FAIL" not in out


def test_parity_exits_nonzero_when_a_row_fails(capsys, monkeypatch):
    monkeypatch.setattr(parity, "ATOL", 0.0)  # nothing matches to the last bit: every row must fail
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


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_summary_prints_the_table(capsys, arch):
    assert cli.main(["summary", "--arch", arch, "--width", "0.75", "--resolution", "160"]) == 0
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


def test_bench_table_names_ratios_and_rejects_unknown_models(capsys):
    argv = ["bench", "--models", "--layer-shape", "1", "8", "8", "4", "--repeats", "1", "--depthwise", "shifted"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "flax/torch" in out and "depthwise 3x3 grad" in out and "mobilenet" not in out
    assert "depthwise 'shifted'" in out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--models", "resnet50"])
