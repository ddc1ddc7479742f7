"""Loss functions, per example: each reduces over the last axis only.

Chapter section "Loss Functions". The chapter's 1/m batch mean is the caller's `jnp.mean`
over a `jax.vmap`-ed batch, so each function here is one example's term of the sum.
"""
from __future__ import annotations

import jax.numpy as jnp

from nnjax._checks import check_float_array, check_real_array, check_same_shape
from nnjax.activations import log_softmax, softplus

__all__ = ["mse", "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_binary_cross_entropy",
           "cross_entropy", "softmax_cross_entropy"]


def _safe_log(p):
    """log p with p clipped below at the dtype's smallest normal number, so log 0 is finite."""
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def _check_pair(fn: str, arg: str, x, y, *, summed: bool):
    """x (floats, the argument named `arg`) and the target y (real numbers) of one shape; with
    summed=True (a loss that sums over the last axis) of rank >= 1. Returns them as arrays."""
    x, y = check_float_array(fn, arg, x), check_real_array(fn, "y", y)
    if summed and x.ndim == 0:
        raise ValueError(f"{fn}: {arg} is a scalar; expected shape (..., K), the last axis summed "
                         f"over (one output: shape (1,))")
    check_same_shape(fn, arg, x, "y", y)
    return x, y


def mse(y_hat, y):
    """Squared error of one example: L = ||y - y_hat||^2 = sum_k (y_k - y_hat_k)^2.

    Args:
      y_hat: prediction, shape (..., K).
      y: target, same shape.

    Returns:
      Shape (...,): the sum over the last axis. dL/dy_hat = 2 (y_hat - y).
    """
    y_hat, y = _check_pair("mse", "y_hat", y_hat, y, summed=True)
    return jnp.sum((y - y_hat) ** 2, axis=-1)


def binary_cross_entropy(p, y):
    """Elementwise L = -(y log p + (1 - y) log(1 - p)) for a sigmoid output p in [0, 1].

    p is clipped inside the logs to the dtype's smallest normal number, so the loss stays
    finite for p in {0, 1} (about 87 in float32 for a confident wrong answer). Where the clip
    acts (p exactly 0 or 1, or beyond the smallest normal number: 6e-5 in float16) the loss
    stops growing and its gradient is 0, so a saturated sigmoid learns nothing from its worst
    mistakes: train on the logits with `binary_cross_entropy_with_logits`, whose gradient
    sigma(z) - y never vanishes.

    Returns:
      Same shape as `p`.
    """
    p, y = _check_pair("binary_cross_entropy", "p", p, y, summed=False)
    return -(y * _safe_log(p) + (1 - y) * _safe_log(1 - p))


def binary_cross_entropy_with_logits(z, y):
    """Binary cross-entropy on p = sigmoid(z), stable for any logit z.

    -(y log sigma(z) + (1 - y) log(1 - sigma(z))) = softplus(z) - y z, since
    log sigma(z) = -softplus(-z) and softplus(z) - softplus(-z) = z. dL/dz = sigma(z) - y.

    Returns:
      Same shape as `z`.
    """
    z, y = _check_pair("binary_cross_entropy_with_logits", "z", z, y, summed=False)
    return softplus(z) - y * z


def sigmoid_binary_cross_entropy(logits, y):
    """Binary cross-entropy of one example's K sigmoid outputs, from their logits, summed:
    L = -sum_k [y_k log sigma(z_k) + (1 - y_k) log(1 - sigma(z_k))].

    The chapter's pairing of binary cross-entropy with a sigmoid output layer (K = 1 for one
    yes/no answer, more for independent labels), as one network loss: each term is
    `binary_cross_entropy_with_logits`, stable for any z. As with softmax, the output's
    derivative cancels: dL/dz^[L] = sigma(z^[L]) - y = y_hat - y.

    Args:
      logits: z^[L], shape (..., K).
      y: targets in [0, 1], the same shape.

    Returns:
      Shape (...,).
    """
    logits, y = _check_pair("sigmoid_binary_cross_entropy", "logits", logits, y, summed=True)
    return jnp.sum(softplus(logits) - y * logits, axis=-1)


def cross_entropy(p, y):
    """Categorical cross-entropy L = -sum_k y_k log p_k for probabilities p, one-hot y.

    p is clipped inside the log as in `binary_cross_entropy` (finite loss, zero gradient
    where the clip acts); `softmax_cross_entropy` on the logits has neither limit.

    Args:
      p: probabilities, shape (..., K).
      y: one-hot (or soft) targets, same shape.

    Returns:
      Shape (...,).
    """
    p, y = _check_pair("cross_entropy", "p", p, y, summed=True)
    return -jnp.sum(y * _safe_log(p), axis=-1)


def softmax_cross_entropy(logits, y):
    """Cross-entropy of softmax(logits): L = -sum_k y_k log_softmax(z)_k.

    Computed through `log_softmax`, so it is finite for any finite logits, and for a logit of
    -inf (a masked class) whose target is 0: that class adds nothing, not 0 * -inf (and its
    derivative with respect to that target is taken as 0, where -log_softmax would be +inf).
    With one-hot y the chapter's simplification holds: dL/dz = softmax(z) - y = y_hat - y;
    with respect to the targets, dL/dy = -log_softmax(z).

    Args:
      logits: z^[L], shape (..., K).
      y: one-hot targets, same shape.

    Returns:
      Shape (...,).
    """
    logits, y = _check_pair("softmax_cross_entropy", "logits", logits, y, summed=True)
    log_p = log_softmax(logits)
    log_p = jnp.where((y == 0) & jnp.isneginf(log_p), 0, log_p)
    return -jnp.sum(y * log_p, axis=-1)
