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

from nnjax._checks import check_choice, check_int, check_rank, check_real_array, check_shape

__all__ = [
    "relu", "leaky_relu", "sigmoid", "tanh", "softplus", "softmax", "log_softmax",
    "relu_derivative", "leaky_relu_derivative", "sigmoid_derivative", "tanh_derivative",
    "softplus_derivative", "softmax_jacobian", "ELEMENTWISE", "activation_name", "get_activation",
]


def _real(fn: str, z):
    """z as a floating array: ints (and Python numbers) become floats; other dtypes are refused."""
    z = check_real_array(fn, "z", z)
    return z if jnp.issubdtype(z.dtype, jnp.floating) else z.astype(jnp.result_type(z, float))


def relu(z):
    """ReLU(z) = max(0, z).

    At the kink z = 0 the derivative is undefined; nnjax takes 0 there, the chapter's code's
    `z > 0`, in `relu_derivative` and for autodiff alike (a `jax.custom_jvp`), so hand-derived
    and automatic gradients agree even where z is exactly 0 (zero biases and zero inputs make
    that common). `jnp.maximum`'s own derivative would give 1/2 there.
    """
    return _relu(_real("relu", z))


@jax.custom_jvp
def _relu(z):
    return jnp.maximum(z, 0)


@_relu.defjvp
def _relu_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return jnp.maximum(z, 0), jnp.where(z > 0, dz, jnp.zeros_like(dz))


def relu_derivative(z):
    """ReLU'(z) = 1 if z > 0 else 0 (0 at the kink z = 0: see `relu`)."""
    z = _real("relu_derivative", z)
    return (z > 0).astype(z.dtype)


def _check_slope(fn: str, negative_slope):
    slope = check_real_array(fn, "negative_slope", negative_slope)
    check_shape(fn, "negative_slope", slope, (), " (one slope for every unit)")
    return slope


def leaky_relu(z, negative_slope=0.01):
    """LeakyReLU(z) = z if z > 0 else negative_slope * z."""
    z = _real("leaky_relu", z)
    return jnp.where(z > 0, z, _check_slope("leaky_relu", negative_slope).astype(z.dtype) * z)


def leaky_relu_derivative(z, negative_slope=0.01):
    """LeakyReLU'(z) = 1 if z > 0 else negative_slope (negative_slope at z = 0)."""
    z = _real("leaky_relu_derivative", z)
    slope = _check_slope("leaky_relu_derivative", negative_slope)
    return jnp.where(z > 0, jnp.ones((), z.dtype), slope.astype(z.dtype))


def sigmoid(z):
    """sigma(z) = 1 / (1 + e^(-z)), computed without overflow for any z."""
    return jax.nn.sigmoid(_real("sigmoid", z))


def sigmoid_derivative(z):
    """sigma'(z) = sigma(z) (1 - sigma(z))."""
    s = sigmoid(_real("sigmoid_derivative", z))
    return s * (1 - s)


def tanh(z):
    """tanh(z) = (e^z - e^(-z)) / (e^z + e^(-z)) = 2 sigma(2z) - 1."""
    return jnp.tanh(_real("tanh", z))


def tanh_derivative(z):
    """tanh'(z) = 1 - tanh^2(z)."""
    t = jnp.tanh(_real("tanh_derivative", z))
    return 1 - t * t


def softplus(z):
    """softplus(z) = log(1 + e^z), computed as logaddexp(z, 0) so it never overflows."""
    return jnp.logaddexp(_real("softplus", z), 0.0)


def softplus_derivative(z):
    """softplus'(z) = sigma(z)."""
    return sigmoid(_real("softplus_derivative", z))


def _classes(fn: str, z, axis):
    """z as a floating array with at least one class along `axis`."""
    z = _real(fn, z)
    axis = check_int(fn, "axis", axis)
    if z.ndim and not -z.ndim <= axis < z.ndim:
        raise ValueError(f"{fn}: axis={axis} is not an axis of z of shape {z.shape}; expected an int in "
                         f"[{-z.ndim}, {z.ndim})")
    if z.ndim == 0 or z.shape[axis] == 0:
        raise ValueError(f"{fn}: z has shape {z.shape}: no classes along axis {axis} to normalize over")
    return z


def softmax(z, axis=-1):
    """softmax(z)_i = e^(z_i) / sum_j e^(z_j), with max(z) subtracted first for stability.

    Args:
      z: logits, any shape of rank >= 1.
      axis: the class axis (the last by default: one example per row; the chapter's NumPy
        code keeps examples in columns and passes axis=0).

    Returns:
      Probabilities of `z`'s shape, summing to 1 along `axis`.
    """
    z = _classes("softmax", z, axis)
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    e = jnp.exp(shifted)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(z, axis=-1):
    """log softmax(z)_i = (z_i - max z) - log sum_j e^(z_j - max z): finite for any finite logits."""
    z = _classes("log_softmax", z, axis)
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
    package = (getattr(activation, "__module__", None) or "").split(".")[0]
    shown = getattr(activation, "__name__", repr(activation)) + (f" (from {package})" if package else "")
    raise ValueError(
        f"{caller}: activation={shown} is not one of nnjax's activations, so it has no "
        f"hand-derived derivative; pass one of nnjax.activations.{{{', '.join(ELEMENTWISE)}}} or "
        f"its name (e.g. 'relu')"
    )


def get_activation(activation, caller: str = "get_activation") -> tuple[Callable, Callable]:
    """(sigma, sigma') for an activation given by name or function; see `activation_name`."""
    return ELEMENTWISE[activation_name(activation, caller)]
