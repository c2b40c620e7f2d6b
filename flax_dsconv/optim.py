"""PyTorch optimizer settings as optax transformations that produce the same updates.

Each function takes ``torch.optim``'s arguments, with torch's defaults, and returns an
``optax.GradientTransformation`` built only from optax's own transforms, so that training a converted
model in JAX follows the torch run step for step (checked in ``parity_tests/test_training.py``):

* :func:`sgd` ↔ ``torch.optim.SGD``: L2 decay added to the gradient, then momentum (first buffer = the
  gradient), optional Nesterov, then the learning rate.
* :func:`adamw` ↔ ``torch.optim.AdamW``: torch's default ``weight_decay=1e-2`` (optax's is ``1e-4``).
* :func:`rmsprop` ↔ ``torch.optim.RMSprop``: ``eps`` outside the square root, square average from 0, no bias
  correction, momentum buffer applied before the learning rate.

Like torch, decay applies to every parameter (BatchNorm scale/bias included); pass a different chain if you
want a mask. ``lr`` may be an optax schedule: each transform applies the schedule's value at the step count
exactly where torch multiplies by the current ``lr`` (a torch LR scheduler stepped once per
``optimizer.step()``). A setting optax cannot reproduce raises ``ValueError`` naming it.

This module does not import torch.
"""

from __future__ import annotations

import numpy as np
import optax

__all__ = ["adamw", "rmsprop", "sgd"]


def _check_nonnegative(**settings: float) -> None:
    for name, value in settings.items():  # Python, numpy and 0-d jax numbers; not bools or arrays
        real = not isinstance(value, bool) and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iuf"
        if not real or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def sgd(
    lr: float | optax.Schedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)`` as optax.

    torch's step: ``g += weight_decay * p``; ``buf = g`` on the first step, then
    ``buf = momentum * buf + (1 - dampening) * g``; ``g = g + momentum * buf`` (Nesterov) or ``g = buf``;
    ``p -= lr * g``. That is ``add_decayed_weights`` → ``optax.sgd`` (``optax.trace`` starts from zeros, so its
    first buffer is the gradient). ``dampening != 0`` with momentum cannot be matched: torch does not damp the
    first buffer, and optax's trace has no dampening at all; it raises ``ValueError``. With ``momentum=0``
    torch ignores ``dampening``, and so does this function.

    >>> tx = sgd(0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)  # params are needed for weight decay
    """
    _check_nonnegative(momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"nesterov=True needs momentum > 0 and dampening == 0 (torch raises too); "
            f"got momentum={momentum}, dampening={dampening}"
        )
    if momentum and dampening:
        raise ValueError(
            f"dampening={dampening} with momentum={momentum} has no optax equivalent: optax.trace has no "
            "dampening, and torch leaves the first momentum buffer undamped; use dampening=0"
        )
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.sgd(lr, momentum=momentum or None, nesterov=nesterov),
    )


def adamw(
    lr: float | optax.Schedule,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW(params, lr, betas, eps, weight_decay)`` (``amsgrad=False``) as optax.

    torch decays first, ``p *= 1 - lr * weight_decay``, then takes the Adam step
    ``p -= lr * m̂ / (sqrt(v̂) + eps)`` from the same gradient. The Adam step does not depend on ``p``, so the
    sum is ``p -= lr * (m̂ / (sqrt(v̂) + eps) + weight_decay * p_old)``, which is exactly ``optax.adamw``
    (``scale_by_adam`` → ``add_decayed_weights`` on the pre-step params → ``scale_by_learning_rate``).
    Note the default: torch's ``weight_decay=1e-2``, not optax's ``1e-4``.

    >>> tx = adamw(1e-3)  # torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> updates, opt_state = tx.update(grads, tx.init(params), params)
    """
    b1, b2 = betas
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    _check_nonnegative(eps=eps, weight_decay=weight_decay)
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, eps_root=0.0, weight_decay=weight_decay)


def rmsprop(
    lr: float | optax.Schedule,
    alpha: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    centered: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """``torch.optim.RMSprop(params, lr, alpha, eps, weight_decay, momentum, centered)`` as optax.

    torch's step: ``g += weight_decay * p``; ``v = alpha * v + (1 - alpha) * g²`` from ``v = 0``; the
    denominator is ``sqrt(v) + eps`` (``sqrt(v - ḡ²) + eps`` when centered, ``ḡ`` the running mean of ``g``);
    ``buf = momentum * buf + g / denom``; ``p -= lr * buf``. optax's pieces with ``eps_in_sqrt=False``,
    ``initial_scale=0`` and no bias correction (optax's own defaults put ``eps`` inside the root). The
    momentum trace runs before the learning rate, as in torch, so a schedule matches too (``optax.rmsprop``
    scales first; with a constant ``lr`` both orders agree).

    >>> tx = rmsprop(1e-3, momentum=0.9, centered=True)  # torch.optim.RMSprop(..., momentum=0.9, centered=True)
    >>> updates, opt_state = tx.update(grads, tx.init(params), params)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    _check_nonnegative(eps=eps, momentum=momentum, weight_decay=weight_decay)
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        scale(decay=alpha, eps=eps, initial_scale=0.0, eps_in_sqrt=False, bias_correction=False),
        optax.trace(decay=momentum) if momentum else optax.identity(),
        optax.scale_by_learning_rate(lr),
    )
