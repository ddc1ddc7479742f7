"""The perceptron and the neuron (chapter sections "The Perceptron", "The Neuron Model").

The perceptron computes y = sign(w^T x + b), with sign(z) = +1 if z >= 0, else -1: a
hyperplane w^T x + b = 0 splitting the input space in two. Rosenblatt's rule learns w and b
for linearly separable data and never settles on XOR. A neuron replaces sign by a continuous
activation: a = sigma(w^T x + b) = sigma(z).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._checks import (
    check_choice, check_dict, check_float_leaves, check_positive_int, check_rank, check_real_array, check_shape,
)
from nnjax.activations import ELEMENTWISE, sigmoid

__all__ = ["perceptron", "perceptron_fit", "perceptron_fit_trace", "PerceptronTrace", "neuron"]


def _check_unit_params(fn: str, params, x):
    """Checks params = {"w": (d,), "b": ()} and x: (d,); returns (w, b, x) as arrays."""
    check_dict(fn, "params", params, ("w", "b"), "perceptron_fit")
    check_float_leaves(fn, "params", params)
    w, b, x = jnp.asarray(params["w"]), jnp.asarray(params["b"]), check_real_array(fn, "x", x)
    check_rank(fn, "params['w']", w, 1, "(d,) one weight per input")
    check_shape(fn, "params['b']", b, (), " (a scalar bias)")
    check_shape(fn, "x", x, w.shape, f" = (d,) to match params['w'] of shape {w.shape}")
    return w, b, x


def perceptron(params, x):
    """The perceptron's decision for one example: y = sign(w^T x + b).

    sign(z) = +1 if z >= 0, else -1 (so a point on the boundary w^T x + b = 0 gets +1).

    Args:
      params: {"w": (d,), "b": ()}.
      x: one input, shape (d,).

    Returns:
      int32 scalar, +1 or -1.
    """
    w, b, x = _check_unit_params("perceptron", params, x)
    return jnp.where(jnp.dot(w, x) + b >= 0, 1, -1).astype(jnp.int32)


def _check_fit_args(fn: str, X, y, epochs, lr):
    """Validates perceptron_fit's arguments; returns (X as float array, y as X's dtype)."""
    X, y = check_real_array(fn, "X", X), check_real_array(fn, "y", y)
    check_rank(fn, "X", X, 2, "(n, d): one example per row")
    if X.shape[0] == 0:
        raise ValueError(f"{fn}: X has shape {X.shape}: no examples to learn from")
    check_shape(fn, "y", y, (X.shape[0],), f" = (n,) to match X of shape {X.shape}")
    check_positive_int(fn, "epochs", epochs)
    if not isinstance(lr, jax.core.Tracer) and not float(lr) > 0:
        raise ValueError(f"{fn}: lr must be > 0, got {lr!r}")
    if not isinstance(y, jax.core.Tracer):
        labels = set(np.unique(np.asarray(y)).tolist())
        if not labels <= {-1, 1}:
            raise ValueError(f"{fn}: y must hold labels in {{-1, +1}}, got values {sorted(labels)}")
    X = X.astype(jnp.result_type(X, jnp.float32))
    return X, y.astype(X.dtype)


def _rosenblatt(X, y, epochs: int, lr, record: bool):
    """Runs Rosenblatt's rule for `epochs` passes over the rows of X, in order, from zeros.

    On a mistake (sign(w^T x_i + b) != y_i): w <- w + lr y_i x_i, b <- b + lr y_i.
    Returns the final params and, per step, the mistake flag (and, if `record`, (w, b)).
    """
    n, d = X.shape

    def step(params, i):
        mistake = perceptron(params, X[i]) != y[i]
        scale = jnp.where(mistake, lr * y[i], 0).astype(X.dtype)
        new = {"w": params["w"] + scale * X[i], "b": params["b"] + scale}
        return new, ((mistake, new) if record else mistake)

    start = {"w": jnp.zeros(d, X.dtype), "b": jnp.zeros((), X.dtype)}
    return jax.lax.scan(step, start, jnp.tile(jnp.arange(n), epochs))


def perceptron_fit(X, y, *, epochs, lr=1.0):
    """Learns a perceptron by Rosenblatt's rule, starting from w = 0, b = 0.

    Each epoch visits the examples in order; for each misclassified one
    (sign(w^T x_i + b) != y_i) it updates w <- w + lr y_i x_i and b <- b + lr y_i.
    On linearly separable data the mistakes reach 0 after finitely many updates (the
    perceptron convergence theorem) and w, b stop changing, so the epochs after that count 0;
    on XOR every epoch has mistakes. jit-able with `epochs` static
    (`jax.jit(perceptron_fit, static_argnames="epochs")`); under jit, y and lr are traced, so
    their values (labels in {-1, +1}, lr > 0) are checked only when called without it.

    Args:
      X: inputs, shape (n, d).
      y: labels in {-1, +1}, shape (n,).
      epochs: number of passes over the data (positive int).
      lr: learning rate, > 0.

    Returns:
      (params, mistakes_per_epoch): params {"w": (d,), "b": ()}; mistakes_per_epoch, int32
      of shape (epochs,), the number of updates made in each epoch.
    """
    X, y = _check_fit_args("perceptron_fit", X, y, epochs, lr)
    params, mistakes = _rosenblatt(X, y, epochs, lr, record=False)
    return params, mistakes.reshape(epochs, X.shape[0]).sum(axis=1, dtype=jnp.int32)


class PerceptronTrace(NamedTuple):
    """Every state of Rosenblatt's rule, one row per update (row 0 is the zero start).

    Attributes:
      w: (U + 1, d) weights after each of the U updates.
      b: (U + 1,) biases after each update.
      example: (U + 1,) index into X of the misclassified example behind each update
        (-1 for the start).
      epoch: (U + 1,) epoch of each update, counting from 0 (-1 for the start).
      mistakes_per_epoch: (epochs,) as returned by `perceptron_fit`.
    """
    w: np.ndarray
    b: np.ndarray
    example: np.ndarray
    epoch: np.ndarray
    mistakes_per_epoch: np.ndarray


def perceptron_fit_trace(X, y, *, epochs, lr=1.0) -> PerceptronTrace:
    """Runs `perceptron_fit` and keeps (w, b) after every update, to show the rule frame by frame.

    Frame k (k >= 1) is the state after w <- w + lr y_i x_i, b <- b + lr y_i for the example
    i = trace.example[k]. Its length depends on the data, so this function is not jit-able.

    Args:
      X, y, epochs, lr: as for `perceptron_fit`.

    Returns:
      A `PerceptronTrace` of numpy arrays; its last row equals `perceptron_fit`'s params.
    """
    X, y = _check_fit_args("perceptron_fit_trace", X, y, epochs, lr)
    n, d = X.shape
    _, (mistakes, states) = _rosenblatt(X, y, epochs, lr, record=True)
    updated = np.asarray(mistakes)
    steps = np.flatnonzero(updated)
    return PerceptronTrace(
        w=np.concatenate([np.zeros((1, d), X.dtype), np.asarray(states["w"])[steps]]),
        b=np.concatenate([np.zeros(1, X.dtype), np.asarray(states["b"])[steps]]),
        example=np.concatenate([[-1], steps % n]),
        epoch=np.concatenate([[-1], steps // n]),
        mistakes_per_epoch=updated.reshape(epochs, n).sum(axis=1),
    )


def neuron(params, x, activation: Callable | str = sigmoid):
    """One neuron: a = sigma(w^T x + b) = sigma(z).

    Args:
      params: {"w": (d,), "b": ()}.
      x: one input, shape (d,).
      activation: sigma, any elementwise callable, or the name of one of
        nnjax.activations' elementwise functions ("relu", "sigmoid", ...).

    Returns:
      The activation a, a scalar.
    """
    if isinstance(activation, str):
        check_choice("neuron", "activation", activation, ELEMENTWISE)
        activation = ELEMENTWISE[activation][0]
    elif not callable(activation):
        raise TypeError(f"neuron: activation must be a callable or a name in {list(ELEMENTWISE)}, "
                        f"got {activation!r}")
    w, b, x = _check_unit_params("neuron", params, x)
    return activation(jnp.dot(w, x) + b)
