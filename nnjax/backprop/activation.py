"""Backward passes of activations and of the output losses ("Backpropagation").

An elementwise activation a = sigma(z) has a diagonal Jacobian diag(sigma'(z)), so the
upstream delta = dL/da turns into dL/dz = delta * sigma'(z). At the output, the chapter's
simplification for softmax + cross-entropy is dL/dz^[L] = a^[L] - y.
"""
from __future__ import annotations

import jax.numpy as jnp

from nnjax._checks import check_float_array, check_real_array, check_same_shape
from nnjax.activations import get_activation, sigmoid, softmax

__all__ = ["activation_backward", "softmax_backward", "softmax_cross_entropy_backward",
           "sigmoid_binary_cross_entropy_backward", "mse_backward"]


def activation_backward(name, z, delta):
    """dL/dz = delta * sigma'(z) for an elementwise activation a = sigma(z).

    Args:
      name: "relu", "leaky_relu", "sigmoid", "tanh" or "softplus", or the function itself
        (e.g. nnjax.activations.relu).
      z: the pre-activation, any shape.
      delta: dL/da, the same shape as z.

    Returns:
      dL/dz, the shape of z.
    """
    _, sigma_prime = get_activation(name, "activation_backward")
    z = check_float_array("activation_backward", "z", z)
    delta = check_real_array("activation_backward", "delta", delta)
    check_same_shape("activation_backward", "z", z, "delta", delta)
    return delta * sigma_prime(z)


def softmax_backward(z, delta):
    """dL/dz for s = softmax(z), without forming the Jacobian diag(s) - s s^T.

    (diag(s) - s s^T)^T delta = s * delta - s (s . delta) = s * (delta - s . delta).

    Args:
      z: logits, shape (..., K); softmax over the last axis.
      delta: dL/ds, the same shape.

    Returns:
      dL/dz, the shape of z.
    """
    z = check_float_array("softmax_backward", "z", z)
    delta = check_real_array("softmax_backward", "delta", delta)
    check_same_shape("softmax_backward", "z", z, "delta", delta)
    s = softmax(z)
    return s * (delta - jnp.sum(s * delta, axis=-1, keepdims=True))


def softmax_cross_entropy_backward(logits, y):
    """dL/dz^[L] of L = -sum_k y_k log softmax(z^[L])_k: the chapter's a^[L] - y = y_hat - y.

    Holds for targets y that sum to 1 (one-hot labels).

    Args:
      logits: z^[L], shape (..., K).
      y: one-hot targets, the same shape.

    Returns:
      softmax(z^[L]) - y, the shape of logits.
    """
    logits = check_float_array("softmax_cross_entropy_backward", "logits", logits)
    y = check_real_array("softmax_cross_entropy_backward", "y", y)
    check_same_shape("softmax_cross_entropy_backward", "logits", logits, "y", y)
    return softmax(logits) - y


def sigmoid_binary_cross_entropy_backward(logits, y):
    """dL/dz^[L] of L = -sum_k [y_k log sigma(z_k) + (1 - y_k) log(1 - sigma(z_k))]
    (`nnjax.losses.sigmoid_binary_cross_entropy`): sigma(z^[L]) - y = y_hat - y.

    Per output, dL/dy_hat = (y_hat - y) / (y_hat (1 - y_hat)) and dy_hat/dz = y_hat (1 - y_hat)
    cancel, as softmax's Jacobian does with cross-entropy.

    Args:
      logits: z^[L], shape (..., K).
      y: targets in [0, 1], the same shape.

    Returns:
      sigma(z^[L]) - y, the shape of logits.
    """
    fn = "sigmoid_binary_cross_entropy_backward"
    logits, y = check_float_array(fn, "logits", logits), check_real_array(fn, "y", y)
    check_same_shape(fn, "logits", logits, "y", y)
    return sigmoid(logits) - y


def mse_backward(y_hat, y):
    """dL/dy_hat of L = ||y - y_hat||^2 (nnjax.losses.mse): 2 (y_hat - y).

    Args:
      y_hat: the prediction, any shape.
      y: the target, the same shape.

    Returns:
      2 (y_hat - y), the shape of y_hat.
    """
    y_hat = check_float_array("mse_backward", "y_hat", y_hat)
    y = check_real_array("mse_backward", "y", y)
    check_same_shape("mse_backward", "y_hat", y_hat, "y", y)
    return 2 * (y_hat - y)
