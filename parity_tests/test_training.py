"""Training parity: gradients, train-mode BatchNorm updates and optimizer trajectories match PyTorch.

* Gradients of the mean cross-entropy, through train-mode BatchNorm, for every parameter (names mapped by
  the converter itself: the JAX gradient tree goes through ``to_torch_state_dict``, which also transposes).
* ``flax_dsconv.optim``'s optimizers: the same updates as ``torch.optim`` on plain tensors (tight), and 20
  training steps of torchvision's MobileNetV3-Small from the same converted weights on the same data.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import timm
import torch
import torchvision
from conftest import assert_as_close_as_torch, channels_last, randomize_batchnorm, relative_error, to_nhwc
from kinks import nudge_off_kinks

import torch_ref
from flax_dsconv import from_torch, optim, to_torch_state_dict

# Every fp32 comparison below follows the suite's float64-referenced rule (conftest.assert_as_close_as_torch).
# The float64 run of Flax itself (x64) must match PyTorch's float64 gradients to F64_RTOL: with rounding out of the
# way, what is left is the mapping and the maths. (MobileNetV3 would stop at 2.98e-8: PyTorch's Hardsigmoid
# backward multiplies by the float32 constant 1.0f/6.0f even for float64 tensors.)
F64_RTOL = 1e-10
# Optimizer updates on plain tensors, elementwise relative (atol scaled to the tensor's max). AdamW gets 1e-5:
# optax computes the bias corrections 1 - b**t in float32 (1 - 0.999 keeps ~4 digits), torch in Python float64;
# in float64 optax.adamw equals torch.optim.AdamW to 1e-8.
UNIT_RTOL = {"adamw": 1e-5}


def _loss(module, params, batch_stats, x, y):
    logits, updates = module.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (updates["batch_stats"], logits)


# Static in the module (a hashable Linen dataclass): tests that build the same model share one compilation.
_value_and_grad = jax.jit(jax.value_and_grad(_loss, argnums=1, has_aux=True), static_argnums=0)
# The same, op by op: eager execution compiles and runs each primitive (and each jitted helper) on its own.
_eager_value_and_grad = jax.value_and_grad(_loss, argnums=1, has_aux=True)


def _bn_stats(module, variables, model) -> dict[str, np.ndarray]:
    sd = to_torch_state_dict(module, variables, model=model)
    return {k: v.numpy() for k, v in sd.items() if k.endswith(("running_mean", "running_var"))}


def _torch_stats(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


# ------------------------------------------------------------------------------------------ gradients

# One model per family and padding rule. Each is drawn several times (weights, BatchNorm,
# input), its biases nudged so that no pre-activation sits within fp32 rounding of an activation's kink (see
# kinks.py: without that, one ReLU input at 1.9e-6 that rounds below 0 in one run zeroes an element's gradient and
# puts every upstream gradient 5-9% off float64, which is what a MobileNetV1 draw did in eager mode on AVX-512).
def _tiny_condconv() -> torch.nn.Module:
    """A small EfficientNet-CondConv as timm builds one (SiLU, sigmoid-gated SE, routing by a sigmoid): a
    separable block, then two CondConv inverted residuals of 4 experts (k3 and k5, stride 2)."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r1_k3_s2_e4_c16_se0.25_cc4"], ["ir_r1_k5_s2_e4_c24_se0.25_cc4"]]
    return EfficientNet(decode_arch_def(arch), num_classes=10, num_features=64, stem_size=8,
                        act_layer=torch.nn.SiLU)  # fmt: skip


GRAD_FAMILIES = {
    "torch_ref_mobilenet_v1_025": lambda: torch_ref.MobileNetV1(0.25, num_classes=10, dropout=0.0),
    "tv_mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10, dropout=0.0),
    "tv_mobilenet_v3_large": lambda: torchvision.models.mobilenet_v3_large(num_classes=10, dropout=0.0),
    "tv_mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10, dropout=0.0),
    "timm_tf_mobilenetv3_small_075": lambda: timm.create_model("tf_mobilenetv3_small_075", num_classes=10),  # 'SAME'
    # EdgeResidual and SiLU/sigmoid squeeze-excite inverted residuals (the EfficientNet family's blocks)
    "timm_test_efficientnet": lambda: timm.create_model("test_efficientnet", num_classes=10),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
    # MixNet's mixed depthwise and split pointwise convs; EfficientNetV2's fused blocks with TF 'SAME' padding
    "timm_mixnet_s": lambda: timm.create_model("mixnet_s", num_classes=10),
    "timm_tf_efficientnetv2_b0": lambda: timm.create_model("tf_efficientnetv2_b0", num_classes=10),
    # MobileNetV4: universal inverted residuals and the head's norm after pooling; the hybrid adds mobile attention
    # (key/value downsampling, softmax) and layer scale, its gammas drawn away from timm's 1e-5
    "timm_mobilenetv4_conv_small": lambda: timm.create_model("mobilenetv4_conv_small", num_classes=10),
    "timm_mobilenetv4_hybrid_medium": lambda: _random_layer_scale(
        timm.create_model("mobilenetv4_hybrid_medium", num_classes=10)
    ),
    # CondConv inverted residuals: per-example expert mixtures, gradients through the routing
    "timm_tiny_condconv": _tiny_condconv,
}
# Eager execution compiles each primitive on its own (40-90 s a model on 2 cores), and what it can get wrong is the
# library's own VJPs (shifted depthwise, pointwise, BatchNorm; see EAGER_IMPLEMENTATIONS), which MobileNetV1 runs
# at both strides: it runs eagerly. The other families' blocks are built of the same layers.
EAGER_FAMILIES = {"torch_ref_mobilenet_v1_025"}
# Float64 agreement, per block family (V2's and V3-Large's blocks are V3-Small's and test_efficientnet's).
F64_FAMILIES = ("torch_ref_mobilenet_v1_025", "tv_mobilenet_v3_small", "timm_tf_mobilenetv3_small_075",
                "timm_test_efficientnet", "timm_mobilenetv4_hybrid_medium")  # fmt: skip
DRAWS = (0, 1, 2)
GRAD_SHAPE = (4, 3, 64, 64)
# Full-size models whose blocks' layers the families above run at every draw and implementation: one draw, one
# implementation (each gradient compile of such a model costs tens of seconds on 2 cores), the MobileNetV4s with
# the CPU's default 'shifted' (the library's own VJPs), at 64 px so that the hybrid's attention sees 4x4 and 2x2
# maps; the others with 'xla' at 32 px.
ONE_DRAW = {
    "tv_mobilenet_v3_large": GRAD_SHAPE,  # V3-Small's blocks
    "timm_efficientnet_b0": (4, 3, 32, 32),
    "timm_mixnet_s": (4, 3, 32, 32),
    "timm_tf_efficientnetv2_b0": (4, 3, 32, 32),
    "timm_mobilenetv4_conv_small": GRAD_SHAPE,
    "timm_mobilenetv4_hybrid_medium": GRAD_SHAPE,
}
# 'pallas' runs on a GPU only; its gradients are compared with 'xla' in test_pallas.py.
IMPLEMENTATIONS = ("xla", "shifted")
# The CondConv blocks' convs have no depthwise implementation to choose (their per-example kernels run as one
# grouped lax convolution): that family's other layers are the other families', so it runs with 'xla'.
FAMILY_IMPLEMENTATIONS = {
    "tv_mobilenet_v3_large": ("shifted",),
    "timm_tiny_condconv": ("xla",),
    "timm_efficientnet_b0": ("xla",),
    "timm_mixnet_s": ("xla",),
    "timm_tf_efficientnetv2_b0": ("xla",),
    "timm_mobilenetv4_conv_small": ("shifted",),
    "timm_mobilenetv4_hybrid_medium": ("shifted",),
}
# Outside jit, what can differ is the library's own VJPs (the shifted depthwise conv, the pointwise conv and
# BatchNorm): 'shifted' runs all three. 'xla' is lax's convolution under jax's autodiff, eager or not, and
# compiling its gradient one primitive at a time took 40 s a model.
EAGER_IMPLEMENTATIONS = ("shifted",)


def _random_layer_scale(model: torch.nn.Module) -> torch.nn.Module:
    """Every LayerScale2d gamma uniform in [0.5, 1.5) (torch's global generator, seeded per draw): at timm's 1e-5
    the hybrid's attention and universal inverted residual branches would barely reach the loss."""
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "LayerScale2d":
                m.gamma.uniform_(0.5, 1.5)
    return model


def _draw(family: str, draw: int, nudge: bool = True):
    """The torch model (train mode, biases nudged off the kinks for its input), input and labels of one draw."""
    build = GRAD_FAMILIES[family]
    g = torch.Generator().manual_seed(100 + draw)
    shape = ONE_DRAW.get(family, GRAD_SHAPE)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    torch.manual_seed(draw)
    model = randomize_batchnorm(build(), x.shape, seed=draw).train()
    if nudge:
        nudge_off_kinks(model, x)
    return model, x, y


@pytest.mark.parametrize("family", list(GRAD_FAMILIES))
def test_gradients_logits_and_bn_update_as_close_to_float64_as_torch_eager_and_jitted(family):
    # The draws run in one test, so that one worker compiles each family's steps once.
    for draw in DRAWS[:1] if family in ONE_DRAW else DRAWS:
        _check_gradients(family, draw)


def _check_gradients(family: str, draw: int) -> None:
    model, x, y = _draw(family, draw)
    module, variables = from_torch(model)  # before torch's step changes the running statistics
    runs = {"exact": copy.deepcopy(model).double(), "nchw": model, "nhwc": channels_last(model)}
    logits, grads, stats = {}, {}, {}
    for name, m in runs.items():
        inputs = x.double() if name == "exact" else x.to(memory_format=torch.channels_last) if name == "nhwc" else x
        out = m(inputs)
        torch.nn.functional.cross_entropy(out, y).backward()
        logits[name] = {"logits": out.detach().numpy()}
        grads[name] = {k: p.grad.numpy() for k, p in m.named_parameters()}
        stats[name] = _torch_stats(m)
    torch32 = [grads["nchw"], grads["nhwc"]]
    xj, yj = to_nhwc(x), jnp.asarray(y)
    for implementation in FAMILY_IMPLEMENTATIONS.get(family, IMPLEMENTATIONS):
        clone = module.clone(depthwise=implementation)
        modes = {"jit": functools.partial(_value_and_grad, clone)}
        if family in EAGER_FAMILIES and implementation in EAGER_IMPLEMENTATIONS:
            modes["eager"] = functools.partial(_eager_value_and_grad, clone)
        for mode, value_and_grad in modes.items():
            label = f"{family} draw {draw} {implementation} {mode}"
            (_, (new_stats, out)), g = value_and_grad(variables["params"], variables["batch_stats"], xj, yj)
            flax = {k: v.numpy() for k, v in to_torch_state_dict(module, {"params": g}, model=model).items()}
            print(assert_as_close_as_torch("gradient", flax, torch32, grads["exact"], label))
            assert_as_close_as_torch("output", {"logits": np.asarray(out)}, [logits["nchw"], logits["nhwc"]],
                                     logits["exact"], label + " train-mode logits")  # fmt: skip
            new = _bn_stats(module, {"params": variables["params"], "batch_stats": new_stats}, model)
            assert_as_close_as_torch("statistics", new, [stats["nchw"], stats["nhwc"]], stats["exact"],
                                     label + " BatchNorm statistics")  # fmt: skip


@pytest.mark.parametrize("family", F64_FAMILIES)
def test_float64_gradients_equal_torch_float64(family):
    """With rounding out of the way (both frameworks in float64), the gradients agree to F64_RTOL."""
    model, x, y = _draw(family, 0)
    module, variables = from_torch(model)
    reference = copy.deepcopy(model).double()
    torch.nn.functional.cross_entropy(reference(x.double()), y).backward()
    exact = {k: p.grad.numpy() for k, p in reference.named_parameters()}
    with jax.enable_x64(True):
        f64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        _, grads64 = _value_and_grad(
            module.clone(dtype=jnp.float64), f64["params"], f64["batch_stats"], to_nhwc(x.double()), jnp.asarray(y)
        )
        assert {leaf.dtype for leaf in jax.tree.leaves(grads64)} == {jnp.dtype("float64")}
        grads64 = {k: v.numpy() for k, v in to_torch_state_dict(module, {"params": grads64}, model=model).items()}
    scale = max(float(np.abs(g).max()) for g in exact.values())
    worst = max(exact, key=lambda k: relative_error(grads64[k], exact[k], scale))
    err = relative_error(grads64[worst], exact[worst], scale)
    hardsigmoid = 3e-8 if "v3" in family else 0.0  # torch's float32 1/6 in Hardsigmoid's float64 backward
    assert err <= F64_RTOL + hardsigmoid, f"{worst}: float64 gradient error {err:.2e} (relative to the largest)"


def test_eval_forward_eager_equals_jitted_within_the_rule():
    model, x, _ = _draw("torch_ref_mobilenet_v1_025", 0)
    model.eval()
    module, variables = from_torch(model)
    with torch.no_grad():
        torch32 = [{"logits": model(x).numpy()},
                   {"logits": channels_last(model)(x.to(memory_format=torch.channels_last)).numpy()}]  # fmt: skip
        exact = {"logits": copy.deepcopy(model).double()(x.double()).numpy()}
    for implementation in IMPLEMENTATIONS:
        clone = module.clone(depthwise=implementation)
        for mode, apply in (("jit", jax.jit(clone.apply)), ("eager", clone.apply)):
            got = {"logits": np.asarray(apply(variables, to_nhwc(x)))}
            assert_as_close_as_torch("output", got, torch32, exact, f"eval {implementation} {mode}")


# ------------------------------------------------------------------------------------------ optimizers

# (label, flax_dsconv.optim factory, torch.optim factory, learning rate for the 20-step model run)
OPTIMIZERS = {
    "sgd_momentum": (
        functools.partial(optim.sgd, momentum=0.9, weight_decay=1e-4),
        functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-4),
        0.01,
    ),
    "sgd_nesterov": (
        functools.partial(optim.sgd, momentum=0.9, weight_decay=1e-4, nesterov=True),
        functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-4, nesterov=True),
        0.002,
    ),
    "adamw": (
        functools.partial(optim.adamw, weight_decay=1e-2),
        functools.partial(torch.optim.AdamW, weight_decay=1e-2),
        1e-4,
    ),
    "rmsprop_momentum": (
        functools.partial(optim.rmsprop, momentum=0.9),
        functools.partial(torch.optim.RMSprop, momentum=0.9),
        3e-6,
    ),
    "rmsprop_centered": (
        functools.partial(optim.rmsprop, momentum=0.9, centered=True),
        functools.partial(torch.optim.RMSprop, momentum=0.9, centered=True),
        1e-5,
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_updates_match_torch_on_tensors(name):
    """Five steps on plain tensors with torch's own gradients sequence: checks the update rule tightly."""
    make_jax, make_torch, _ = OPTIMIZERS[name]
    lr = 0.1
    rng = np.random.default_rng(0)
    shapes = {"a": (3, 4), "b": (7,)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(5)]
    torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = make_torch(list(torch_params.values()), lr=lr)
    tx = make_jax(lr)
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(jax_params)
    for g in grads:
        for k, p in torch_params.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)
    for k, p in torch_params.items():
        expected = p.detach().numpy()
        rtol = UNIT_RTOL.get(name, 1e-6)
        np.testing.assert_allclose(jax_params[k], expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _batches(n: int = 2, size: int = 16, resolution: int = 64):
    g = torch.Generator().manual_seed(2)
    shape = (size, 3, resolution, resolution)
    return [(torch.randn(shape, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_trajectory_matches_torch(name):
    # Smooth activations (SiLU): with ReLU or hard-swish, some pre-activation passes within fp32 rounding of a
    # kink in one of the forty fp32 runs' twenty steps (see kinks.py), and from that step on that run follows
    # another trajectory. Kinked activations are covered by the one-step gradient tests above.
    batches = _batches()
    model = randomize_batchnorm(torch_ref.MobileNetV1(0.25, num_classes=10, act="silu"), batches[0][0])
    _check_trajectory(name, model, batches)


# One 20-step SGD-with-momentum trajectory per block kind beyond MobileNetV1's, each on the model the zoo issue names,
# every activation smooth (see above): MixNet-S is built with SiLU in place of its ReLU. Batches of 8 at 64 px,
# with 'xla' depthwise convs (the property is the 20 steps' accumulated agreement, which does not depend on the
# depthwise implementation; test_layers.py and the gradient tests above hold every implementation to torch).
TRAJECTORY_MODELS = {
    # separable and SE inverted-residual stages, SiLU, sigmoid gates
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
    # a conv stem, fused-MBConv (EdgeResidual) stages, TF 'SAME' padding
    "tf_efficientnetv2_b0": lambda: timm.create_model("tf_efficientnetv2_b0", num_classes=10),
    # mixed depthwise kernels (up to 3/5/7/9/11 in one conv), 1x1 convs split in two groups
    "mixnet_s": lambda: timm.create_model("mixnet_s", num_classes=10, act_layer="silu"),
}


@pytest.mark.parametrize("name", list(TRAJECTORY_MODELS))
def test_training_trajectory_of_each_block_kind_matches_torch(name):
    batches = _batches(size=8)
    torch.manual_seed(0)
    model = randomize_batchnorm(TRAJECTORY_MODELS[name](), batches[0][0])
    _check_trajectory("sgd_momentum", model, batches, depthwise="xla")


@pytest.mark.parametrize("name", ["mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"])
def test_training_trajectory_of_mobilenetv4_matches_torch(name):
    """20 steps of SGD with momentum on MobileNetV4-Conv-S and -Hybrid-M (universal inverted residuals, the head's
    norm on the pooled map, mobile attention, layer scale with random gammas) with timm's exact GELU in place of
    ReLU: smooth, as the other trajectories are (and Hybrid-L's activation through 20 steps). Batches of 8 at 40
    px: the head's norm normalises over the batch alone, and with batches of 4 (at 64 px) PyTorch's own fp32
    Hybrid-M ended 4.7e-2 from float64; at 40 px both attention stages still attend over 2x2 keys and values
    (at 32 px, over one: a softmax of 1)."""
    batches = _batches(size=8, resolution=40)
    torch.manual_seed(0)
    model = _random_layer_scale(timm.create_model(name, num_classes=10, act_layer="gelu"))
    _check_trajectory("sgd_momentum", randomize_batchnorm(model, batches[0][0]), batches)


def test_training_trajectory_of_cond_conv_blocks_matches_torch():
    """20 steps of SGD with momentum on a small EfficientNet-CondConv (batch 4): the experts, the routing layers and
    the BatchNorm statistics of every CondConv block stay as close to float64 as PyTorch's."""
    batches = _batches(size=4)
    model = randomize_batchnorm(_tiny_condconv(), batches[0][0])
    _check_trajectory("sgd_momentum", model, batches)


def _check_trajectory(name: str, model: torch.nn.Module, batches, depthwise: str = "auto") -> None:
    make_jax, make_torch, lr = OPTIMIZERS[name]
    model.train()
    module, variables = from_torch(model)
    module = module.clone(depthwise=depthwise)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Parameters the loss does not depend on (exact gradient 0: a BN bias feeding only train-mode BNs). Adam and
    # RMSprop divide their rounding noise by its own RMS and take lr-sized steps in a random direction, so they
    # are compared by name-listed exemption only under SGD, whose steps scale with the (zero) gradient.
    reference = copy.deepcopy(model).double()
    torch.nn.functional.cross_entropy(reference(batches[0][0].double()), batches[0][1]).backward()
    grad_norms = {k: float(p.grad.norm()) for k, p in reference.named_parameters()}
    total = sum(v**2 for v in grad_norms.values()) ** 0.5
    invariant = {k for k, v in grad_norms.items() if v <= 1e-10 * total} if not name.startswith("sgd") else set()

    exact_model = copy.deepcopy(model).double()
    nhwc = channels_last(model)
    torch_losses = _torch_trajectory(model, make_torch(model.parameters(), lr=lr), batches, torch.float32)
    _torch_trajectory(nhwc, make_torch(nhwc.parameters(), lr=lr), batches, torch.float32, torch.channels_last)
    _torch_trajectory(exact_model, make_torch(exact_model.parameters(), lr=lr), batches, torch.float64)

    tx = make_jax(lr)

    @jax.jit
    def update(params, grads, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def train_step(params, batch_stats, opt_state, x, y):
        # Two jits: the gradient one is the same for every optimizer, so it compiles once for all these tests.
        (loss, (batch_stats, _)), grads = _value_and_grad(module, params, batch_stats, x, y)
        params, opt_state = update(params, grads, opt_state)
        return params, batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    jax_batches = [(to_nhwc(x), jnp.asarray(y)) for x, y in batches]
    jax_losses = []
    for step in range(20):
        params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state, *jax_batches[step % 2])
        jax_losses.append(float(loss))

    final = to_torch_state_dict(module, {"params": params, "batch_stats": batch_stats}, model=copy.deepcopy(model))
    got = {k: v.numpy() for k, v in final.items() if "num_batches" not in k}
    expected = {k: v.numpy() for k, v in model.state_dict().items() if "num_batches" not in k}
    expected_nhwc = {k: v.numpy() for k, v in nhwc.state_dict().items() if "num_batches" not in k}
    exact = {k: v.numpy() for k, v in exact_model.state_dict().items() if "num_batches" not in k}
    assert got.keys() == expected.keys()
    keys = expected.keys() - invariant
    moved = max(float(np.abs(expected[k] - start[k].numpy()).max()) for k in expected)
    pick = lambda d: {k: d[k] for k in keys}  # noqa: E731
    summary = assert_as_close_as_torch("trajectory", pick(got), [pick(expected), pick(expected_nhwc)], pick(exact),
                                       f"{name} after 20 steps")  # fmt: skip
    print(
        f"{summary}; params moved up to {moved:.2e}; loss {torch_losses[0]:.4f} → {torch_losses[-1]:.4f}, "
        f"max |Δloss| {max(abs(a - b) for a, b in zip(jax_losses, torch_losses, strict=True)):.2e}"
    )


def _torch_trajectory(model, opt, batches, dtype, memory_format=torch.contiguous_format) -> list[float]:
    """20 steps of ``opt`` on ``model`` (already in ``dtype`` and ``memory_format``), alternating ``batches``;
    the losses."""
    losses = []
    for step in range(20):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x.to(dtype).to(memory_format=memory_format)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------------ unmatched settings


def test_unmatched_settings_raise_naming_them():
    with pytest.raises(ValueError, match="dampening"):
        optim.sgd(0.1, momentum=0.9, dampening=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.sgd(0.1, nesterov=True)
    optim.sgd(0.1, dampening=0.5)  # without momentum torch ignores dampening, and so can we


def test_train_state_owns_its_arrays_so_donating_steps_leave_the_callers_variables_usable():
    from flax_dsconv import mobilenet_v1
    from flax_dsconv.train import create_train_state, jit_train_step

    model = mobilenet_v1(0.25, num_classes=4)
    x, y = jnp.ones((2, 32, 32, 3)), jnp.array([0, 1])
    variables = jax.jit(model.init)(jax.random.key(0), x)
    state = create_train_state(model, variables, optim.sgd(0.1, momentum=np.float32(0.9)))
    jit_train_step()(state, x, y, jax.random.key(1))  # donates `state`
    jax.block_until_ready(model.apply(variables, x))  # `variables` are not deleted


def test_random_shift_takes_its_shift_as_a_setting():
    from flax_dsconv.tools.digits import random_shift

    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    np.testing.assert_array_equal(random_shift(jax.random.key(1), images, max_shift=0), images)
    shifted = random_shift(jax.random.key(1), images, max_shift=2)
    assert shifted.shape == images.shape and not np.array_equal(shifted, images)


def test_nudged_draws_keep_every_pre_activation_off_the_kinks():
    """What makes the gradient comparisons well posed: after nudge_off_kinks, no input of a ReLU / ReLU6 /
    hard-swish / hard-sigmoid lies within 1e-5 (relative) of a kink, in float64, and the biases moved little."""
    from kinks import KINKS

    before = _draw("tv_mobilenet_v3_small", 0, nudge=False)[0].state_dict()
    model, x, _ = _draw("tv_mobilenet_v3_small", 0)
    inputs = []
    acts = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardswish, torch.nn.Hardsigmoid)
    reference = copy.deepcopy(model).double()
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().numpy().copy()))
             for m in reference.modules() if isinstance(m, acts)]  # fmt: skip
    reference(x.double())
    for h in hooks:
        h.remove()
    assert len(inputs) > 30
    gaps = [float(np.abs(v[..., None] - np.array(KINKS)).min()) / float(np.abs(v).max()) for v in inputs]
    assert min(gaps) >= 1e-5, min(gaps)
    moved = max(float((model.state_dict()[k] - before[k]).abs().max()) for k in before if k.endswith("bias"))
    assert moved <= 0.05
