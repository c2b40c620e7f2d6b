"""Train a small MobileNet from scratch on scikit-learn's handwritten digits, end to end.

The recipe behind ``flax-dsconv train`` and ``examples/train_digits.py``: data that ships with scikit-learn
(8x8 images, upsampled to 32x32), optax, a progress bar, evaluation after every epoch, a checkpoint after every
epoch (the library's ``flax_dsconv.save`` format, with the optimizer state), resume after interruption (the data
order and dropout keys derive from the epoch and step, so a resumed run ends with the same parameters as an
uninterrupted one), and a PNG of the curves.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_dsconv import BUILDERS, load, save
from flax_dsconv.checkpoint import load_opt_state
from flax_dsconv.train import create_train_state, eval_step, jit_train_step


def load_digits_data(size: int = 32, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: NHWC float32 images (1 channel, standardised), int labels.

    A stratified 80/20 split of the 1,797 digits; images are resized bilinearly from 8x8 to ``size``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / 16.0
    images = np.asarray(jax.image.resize(images, (len(images), size, size, 1), "bilinear"))
    images = (images - images.mean()) / images.std()
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int32), test_size=0.2, random_state=seed, stratify=digits.target
    )
    return x_train, y_train, x_test, y_test


@functools.partial(jax.jit, static_argnames="max_shift")
def random_shift(key: jax.Array, images: jax.Array, max_shift: int = 3) -> jax.Array:
    """Translate each image by up to ``max_shift`` pixels (edge-padded): the augmentation digits need."""
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def _plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.8, 1.0))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_digits(
    out_dir: str | Path,
    *,
    arch: str = "mobilenet_v1",
    width: float = 0.5,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train (or resume training) in ``out_dir``; returns the per-epoch history.

    ``out_dir`` receives ``checkpoints/epoch_{n}`` (the last two epochs), ``run.json`` (the settings; a resume
    with other settings is refused), ``history.json`` and ``curves.png``.
    ``limit`` trains on the first ``limit`` training images (for quick runs).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir).absolute()
    x_train, y_train, x_test, y_test = load_digits_data(seed=seed)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    steps_per_epoch = len(x_train) // batch_size
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"need epochs >= 1 and at least one batch of {batch_size} images; "
                         f"got epochs={epochs}, {len(x_train)} training images (limit={limit})")  # fmt: skip
    run = dict(arch=arch, width=width, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
               weight_decay=weight_decay, limit=limit, seed=seed)  # fmt: skip
    model = BUILDERS[arch](width, num_classes=10, in_channels=1, dropout=0.2)
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    tx = optax.adamw(schedule, weight_decay=weight_decay)
    key = jax.random.key(seed)
    init_key, data_key, dropout_key, augment_key = jax.random.split(key, 4)
    state = create_train_state(model, jax.jit(model.init)(init_key, jnp.asarray(x_train[:1])), tx)

    checkpoints = out_dir / "checkpoints"
    history: list[dict[str, float]] = []
    start = 0
    run_file = out_dir / "run.json"
    latest = _latest_checkpoint(checkpoints)
    if latest is not None:
        saved = json.loads(run_file.read_text()) if run_file.is_file() else {}
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in run.items() if saved.get(k) != v]
        if changed:  # the checkpoint would not fit, or its schedule would silently change
            raise ValueError(f"{out_dir} holds a run with other settings ({'; '.join(changed)}); "
                             "resume with the same settings or use another --out")  # fmt: skip
        _, variables = load(latest)
        info = json.loads((latest / "config.json").read_text())
        start, history = info["epoch"], list(info["history"])
        state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"], step=info["step"],
                              opt_state=load_opt_state(latest, state.opt_state))  # fmt: skip
        if progress:
            print(f"resuming from the checkpoint after epoch {start}")

    out_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(run, indent=1) + "\n")
    step = jit_train_step()
    evaluate = jax.jit(eval_step)
    for epoch in range(start, epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x_train)))
        sums = {"loss": 0.0, "accuracy": 0.0}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * batch_size : (i + 1) * batch_size]
            images = random_shift(jax.random.fold_in(augment_key, state.step), x_train[idx])
            state, metrics = step(state, images, y_train[idx], jax.random.fold_in(dropout_key, state.step))
            for k in sums:
                sums[k] += float(metrics[k])
            bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
        test = evaluate(state, x_test, y_test)
        record = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / steps_per_epoch,
            "train_accuracy": sums["accuracy"] / steps_per_epoch,
            "test_loss": float(test["loss"]),
            "test_accuracy": float(test["accuracy"]),
        }
        history.append(record)
        _checkpoint(checkpoints, epoch + 1, model, state, history)
        if progress:
            print(
                f"epoch {epoch + 1:3d}  train loss {record['train_loss']:.4f}  acc {record['train_accuracy']:.4f}  "
                f"test loss {record['test_loss']:.4f}  acc {record['test_accuracy']:.4f}"
            )
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    _plot(history, out_dir / "curves.png")
    return history


def _checkpoint(checkpoints: Path, epoch: int, model: Any, state: Any, history: list[dict[str, float]]) -> None:
    """Save epoch ``epoch`` under ``checkpoints/epoch_{epoch}`` (complete, or not at all: written beside it and
    renamed), then keep only the last two."""
    final, partial = checkpoints / f"epoch_{epoch}", checkpoints / f".epoch_{epoch}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    save(partial, model, variables, opt_state=state.opt_state, epoch=epoch, step=int(state.step), history=history)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in sorted(checkpoints.glob("epoch_*"), key=_epoch)[:-2]:
        shutil.rmtree(old)


def _epoch(path: Path) -> int:
    return int(path.name.removeprefix("epoch_"))


def _latest_checkpoint(checkpoints: Path) -> Path | None:
    found = sorted(checkpoints.glob("epoch_*"), key=_epoch) if checkpoints.is_dir() else []
    return found[-1] if found else None


def final_params(out_dir: str | Path) -> Any:
    """The parameters and BN statistics of the last checkpoint in ``out_dir`` (for comparisons)."""
    latest = _latest_checkpoint(Path(out_dir) / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{out_dir} has no checkpoints/epoch_* directory")
    return load(latest)[1]
