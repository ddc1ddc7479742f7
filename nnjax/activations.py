"""Activation functions, their hand-derived derivatives, and the softmax Jacobian.

Chapter section "Activation Functions". A neuron computes z = w^T x + b, then a = sigma(z).
Every elementwise activation here comes with its derivative sigma'(z), written by hand from
the chapter's formulas; backpropagation multiplies the upstream delta by it:
delta^[l] = (W^[l+1])^T delta^[l+1] * sigma'(z^[l]).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nnjax._checks import check_choice, check_rank

__all__ = [
    "relu", "leaky_relu", "sigmoid", "tanh", "softplus", "softmax", "log_softmax",
    "relu_derivative", "leaky_relu_derivative", "sigmoid_derivative", "tanh_derivative",
    "softplus_derivative", "softmax_jacobian", "ELEMENTWISE", "activation_name", "get_activation",
]


def relu(z):
    """ReLU(z) = max(0, z)."""
    return jnp.maximum(z, 0)


def relu_derivative(z):
    """ReLU'(z) = 1 if z > 0 else 0 (the chapter's convention: 0 at the kink z = 0)."""
    return (z > 0).astype(jnp.result_type(z, float))


def leaky_relu(z, negative_slope=0.01):
    """LeakyReLU(z) = z if z > 0 else negative_slope * z."""
    return jnp.where(z > 0, z, negative_slope * z)


def leaky_relu_derivative(z, negative_slope=0.01):
    """LeakyReLU'(z) = 1 if z > 0 else negative_slope (negative_slope at z = 0)."""
    dtype = jnp.result_type(z, float)
    return jnp.where(z > 0, jnp.ones((), dtype), jnp.asarray(negative_slope, dtype))


def sigmoid(z):
    """sigma(z) = 1 / (1 + e^(-z)), computed without overflow for any z."""
    return jax.nn.sigmoid(z)


def sigmoid_derivative(z):
    """sigma'(z) = sigma(z) (1 - sigma(z))."""
    s = sigmoid(z)
    return s * (1 - s)


def tanh(z):
    """tanh(z) = (e^z - e^(-z)) / (e^z + e^(-z)) = 2 sigma(2z) - 1."""
    return jnp.tanh(z)


def tanh_derivative(z):
    """tanh'(z) = 1 - tanh^2(z)."""
    t = jnp.tanh(z)
    return 1 - t * t


def softplus(z):
    """softplus(z) = log(1 + e^z), computed as logaddexp(z, 0) so it never overflows."""
    return jnp.logaddexp(z, 0.0)


def softplus_derivative(z):
    """softplus'(z) = sigma(z)."""
    return sigmoid(z)


def softmax(z, axis=-1):
    """softmax(z)_i = e^(z_i) / sum_j e^(z_j), with max(z) subtracted first for stability.

    Args:
      z: logits, any shape.
      axis: the class axis.

    Returns:
      Probabilities of `z`'s shape, summing to 1 along `axis`.
    """
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    e = jnp.exp(shifted)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(z, axis=-1):
    """log softmax(z)_i = (z_i - max z) - log sum_j e^(z_j - max z): finite for any logits."""
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def softmax_jacobian(z):
    """The Jacobian of softmax at z: d s_i / d z_j = s_i (delta_ij - s_j), i.e. diag(s) - s s^T.

    Args:
      z: logits of shape (K,).

    Returns:
      (K, K) matrix J with J[i, j] = d softmax(z)_i / d z_j.
    """
    z = jnp.asarray(z)
    check_rank("softmax_jacobian", "z", z, 1, "(K,) logits of one example")
    s = softmax(z)
    return jnp.diag(s) - jnp.outer(s, s)


ELEMENTWISE: dict[str, tuple[Callable, Callable]] = {
    "relu": (relu, relu_derivative),
    "leaky_relu": (leaky_relu, leaky_relu_derivative),
    "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative),
    "softplus": (softplus, softplus_derivative),
}
"""name -> (sigma, sigma') for the five elementwise activations."""


def activation_name(activation, caller: str = "activation_name") -> str:
    """The name of an elementwise activation given as a name or as one of this module's functions.

    Args:
      activation: a name in `ELEMENTWISE` or one of this module's five elementwise functions.
      caller: the public function to name in the error message (e.g. ``"mlp_grads"``).

    Raises:
      ValueError: for any other callable or name, listing the allowed ones (only these have
        hand-derived derivatives).
    """
    if isinstance(activation, str):
        check_choice(caller, "activation", activation, ELEMENTWISE)
        return activation
    for name, (fn, _) in ELEMENTWISE.items():
        if activation is fn:
            return name
    raise ValueError(
        f"{caller}: activation={getattr(activation, '__name__', activation)!r} has no hand-derived "
        f"derivative; expected one of nnjax.activations.{{{', '.join(ELEMENTWISE)}}} or its name"
    )


def get_activation(activation, caller: str = "get_activation") -> tuple[Callable, Callable]:
    """(sigma, sigma') for an activation given by name or function; see `activation_name`."""
    return ELEMENTWISE[activation_name(activation, caller)]
