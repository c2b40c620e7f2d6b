"""Checkpoints in the Hugging Face hub layout, offline: directories timm's own ``save_for_hf`` writes, the local
cache layout of ``huggingface_hub``, ``save(format='hub')`` that timm loads back, and the preprocessing of timm's
evaluation transform."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import timm
import torch
from conftest import assert_as_close_as_torch, channels_last, photo_batch, random_timm, randomize_batchnorm, to_nhwc
from flax import traverse_util
from timm.models import _hub

import flax_dsconv
from flax_dsconv import ConversionError, data, from_pretrained, from_torch, pretrained_cfg, save
from flax_dsconv.hub import resolve


def _random(name: str, **kwargs) -> torch.nn.Module:
    return randomize_batchnorm(random_timm(name, **kwargs).eval(), (2, 3, 64, 64))


def _logits_match(module, variables, model: torch.nn.Module, x: torch.Tensor, label: str) -> None:
    with torch.no_grad():
        nchw = model(x).numpy()
        nhwc = channels_last(model)(x.to(memory_format=torch.channels_last)).numpy()
        exact = model.double()(x.double()).numpy()
    model.float()
    ours = np.asarray(jax.jit(module.apply)(variables, to_nhwc(x)))
    assert_as_close_as_torch("output", {"logits": ours}, [{"logits": nchw}, {"logits": nhwc}], {"logits": exact}, label)


def _equal(a, b) -> None:
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys(), sorted(fa.keys() ^ fb.keys())
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


@pytest.mark.parametrize(
    ("name", "safe"),
    [("mobilenetv3_small_050", True), ("efficientnet_b0", True), ("mobilenetv4_conv_small_035", False),
     ("tf_efficientnetv2_b0", True), ("mixnet_s", False)],
)  # fmt: skip
def test_a_directory_timm_saves_loads_without_arch_and_gives_timms_logits(tmp_path, name, safe):
    model = _random(name, num_classes=10)
    _hub.save_for_hf(model, tmp_path, safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    module, variables = from_pretrained(tmp_path)
    assert module.config == from_torch(model)[0].config
    _logits_match(module, variables, model, photo_batch(96), name)
    again, same = from_pretrained(f"local-dir:{tmp_path}")  # timm's spelling
    assert again == module
    _equal(same, variables)
    cfg = pretrained_cfg(tmp_path)
    assert cfg["architecture"] == name and cfg["num_classes"] == 10
    assert tuple(cfg["input_size"]) == tuple(model.pretrained_cfg["input_size"])


def test_reading_a_safetensors_checkpoint_needs_no_torch(tmp_path):
    _hub.save_for_hf(_random("lcnet_050"), tmp_path, safe_serialization=True)
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"  # any import of them fails
        "import flax_dsconv, jax.numpy as jnp\n"
        f"model, variables = flax_dsconv.from_pretrained({str(tmp_path)!r})\n"
        "print(model.apply(variables, jnp.ones((1, 64, 64, 3))).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1, 1000)"


def test_from_pretrained_swaps_the_head_and_builds_the_backbone(tmp_path):
    model = _random("efficientnet_b0")
    _hub.save_for_hf(model, tmp_path, safe_serialization=True)
    _, variables = from_pretrained(tmp_path)
    swapped, new = from_pretrained(tmp_path, num_classes=3)
    assert swapped.config.num_classes == 3 and new["params"]["classifier"]["kernel"].shape == (1280, 3)
    _equal({c: {k: v for k, v in t.items() if k != "classifier"} for c, t in new.items()},
           {c: {k: v for k, v in t.items() if k != "classifier"} for c, t in variables.items()})  # fmt: skip
    backbone, trunk = from_pretrained(tmp_path, features_only=True, out_indices=(1, 3))
    timm_backbone = timm.create_model("efficientnet_b0", features_only=True, out_indices=(1, 3))
    timm_backbone.load_state_dict({k: v for k, v in model.state_dict().items()
                                   if k.startswith(("conv_stem", "bn1", "blocks"))})  # fmt: skip
    x = photo_batch(64)
    with torch.no_grad():
        expected = [f.numpy() for f in timm_backbone.eval()(x)]
    got = backbone.apply(trunk, to_nhwc(x))
    assert backbone.feature_info.channels() == timm_backbone.feature_info.channels()
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g).transpose(0, 3, 1, 2), e, rtol=0, atol=1e-4)


def _cache(root, repo_id: str, files: dict) -> None:
    """The layout huggingface_hub downloads into: blobs by hash, a snapshot of links per commit, refs/main."""
    import hashlib

    folder = root / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for name, payload in files.items():
        blob = folder / "blobs" / hashlib.sha256(payload).hexdigest()
        blob.write_bytes(payload)
        (snapshot / name).symlink_to(blob)


def test_an_hf_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    model = _random("mobilenetv3_small_050", num_classes=4)
    saved = tmp_path / "saved"
    _hub.save_for_hf(model, saved, safe_serialization=True)
    cache = tmp_path / "cache"
    _cache(cache, "someone/mnv3-small", {p.name: p.read_bytes() for p in saved.iterdir()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module, variables = from_pretrained("hf-hub:someone/mnv3-small")
    _logits_match(module, variables, model, photo_batch(64), "hf-hub")
    with pytest.raises(FileNotFoundError, match=rf"hf-hub:someone/absent is not in the local Hugging Face cache "
                                                rf"\({cache}\)"):  # fmt: skip
        from_pretrained("hf-hub:someone/absent")


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "efficientnet_b0", "mobilenetv4_hybrid_medium"])
def test_a_hub_save_loads_in_timm_strictly_and_reproduces_the_flax_outputs(tmp_path, name):
    module, variables = from_torch(_random(name), num_classes=6, head_key=jax.random.key(1))  # a fine-tuned head
    out = save(tmp_path / "hub", module, variables, format="hub")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == 6
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # timm loads strictly
    assert loaded.num_classes == 6
    _logits_match(module, variables, loaded, photo_batch(64), f"{name} loaded by timm")
    again, back = from_pretrained(f"local-dir:{out}")
    assert again.config == module.config
    _equal(back, variables)  # bit-exact round trip


def test_a_hub_save_refuses_a_network_timm_does_not_name_and_leaves_nothing(tmp_path):
    b0 = flax_dsconv.create_model("efficientnet_b0")
    module = b0.clone(config=dataclasses.replace(b0.config, stem_channels=24))  # no timm name builds this
    variables = jax.eval_shape(module.init, jax.random.key(0), jax.numpy.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="no timm architecture builds this network"):
        save(tmp_path / "x", module, variables, format="hub")
    with pytest.raises(ValueError, match="is another network than this module"):
        save(tmp_path / "x", module, variables, format="hub", arch="mobilenetv2_100")
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        save(tmp_path / "x", module, variables, format="onnx")
    assert not (tmp_path / "x").exists()


def test_bad_hub_checkpoints_are_refused_naming_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 10}))
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({"architecture": "efficientnet_b0", "num_classes": 10}))
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors or pytorch_model\.bin"):
        from_pretrained(bad)
    odd_args = {"architecture": "efficientnet_b0", "model_args": {"output_stride": 8}}
    (bad / "config.json").write_text(json.dumps(odd_args))
    with pytest.raises(ValueError, match=r"model_args \['output_stride'\]"):
        from_pretrained(bad)
    _hub.save_for_hf(_random("mobilenetv3_small_050"), tmp_path / "other", safe_serialization=True)
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    (tmp_path / "other" / "config.json").write_text(json.dumps({**cfg, "architecture": "mobilenetv3_small_075"}))
    with pytest.raises(ConversionError, match="shape mismatches"):  # weights of another width: strict
        from_pretrained(tmp_path / "other")


def _timm_eval(cfg: dict, image) -> np.ndarray:
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=cfg))
    return transform(image).numpy().transpose(1, 2, 0)


@pytest.mark.parametrize(
    "override",
    [{}, {"crop_pct": 1.0, "interpolation": "bilinear"}, {"crop_mode": "squash", "input_size": (3, 192, 160)},
     {"input_size": (3, 256, 256), "crop_pct": 0.95, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}],
)  # fmt: skip
def test_eval_transform_is_timms_on_the_sample_photos(override):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    cfg = {**timm.create_model("efficientnet_b0", pretrained=False).pretrained_cfg, **override}
    ours = data.eval_transform(cfg)
    for array in load_sample_images().images:
        image = Image.fromarray(array)
        got = ours(image)
        expected = _timm_eval(cfg, image)
        assert got.shape == expected.shape == (*cfg["input_size"][1:], 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ours(array), got)  # a uint8 array is the same image


def test_top5_on_the_sample_photos_is_timms_for_a_converted_model(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    model = _random("mobilenetv3_large_100")
    _hub.save_for_hf(model, tmp_path, safe_serialization=True)
    module, variables = from_pretrained(tmp_path)
    transform = data.eval_transform(pretrained_cfg(tmp_path))
    images = [Image.fromarray(a) for a in load_sample_images().images]
    ours = np.asarray(module.apply(variables, np.stack([transform(im) for im in images])))
    with torch.no_grad():
        theirs = model(torch.stack([torch.from_numpy(_timm_eval(model.pretrained_cfg, im).transpose(2, 0, 1))
                                    for im in images])).numpy()  # fmt: skip
    for o, t in zip(ours, theirs, strict=True):
        assert np.argsort(-o)[:5].tolist() == np.argsort(-t)[:5].tolist()


def test_eval_transform_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="crop_mode 'border'"):
        data.eval_transform({"crop_mode": "border"})
    with pytest.raises(ValueError, match="interpolation 'area'"):
        data.eval_transform({"interpolation": "area"})
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) uint8 RGB"):
        data.eval_transform({})(np.zeros((8, 8, 3), np.float32))


def test_resolve_names_what_is_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="a file; expected a hub-layout directory"):
        resolve(tmp_path / "file")
    assert resolve(f"local-dir:{tmp_path}") == tmp_path
