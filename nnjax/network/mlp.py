"""The multilayer perceptron ("Hidden Layers and Deep Networks", "Forward Propagation").

A network of L dense layers computes, for one example x:
    a^[0] = x
    z^[l] = W^[l] a^[l-1] + b^[l]          for l = 1, ..., L
    a^[l] = sigma(z^[l])                   for l = 1, ..., L - 1
    a^[L] = softmax(z^[L])
Its params are a list of L dicts {"W": (n_l, n_(l-1)), "b": (n_l,)}; params[l - 1] holds
W^[l] and b^[l]. `mlp_logits_batch` runs the same on a batch, one example per row, with the
hand-derived dense backward under `jax.grad`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nnjax._checks import check_choice, check_rank, check_real_array, check_shape, mixed_dtype
from nnjax.activations import ELEMENTWISE, relu, softmax
from nnjax.backprop.custom_vjp import dense_batch_fast
from nnjax.layers.dense import INITS, check_dense_params, check_dense_stack, dense, dense_init

__all__ = ["layer_forward", "mlp_init", "mlp_logits", "mlp_logits_batch", "mlp_forward", "mlp_activations"]


def _check_sizes(fn: str, sizes) -> list[int]:
    """Validates sizes = [n_0, ..., n_L]: a list of at least 2 positive ints."""
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        raise ValueError(f"{fn}: sizes must be a list [n_0, ..., n_L] of at least 2 positive ints "
                         f"(inputs, ..., outputs), got {sizes!r}")
    bad = [(i, n) for i, n in enumerate(sizes)
           if isinstance(n, bool) or not isinstance(n, (int, jnp.integer)) or n < 1]
    if bad:
        raise ValueError(f"{fn}: sizes must hold positive ints, got sizes[{bad[0][0]}] = {bad[0][1]!r} "
                         f"in {list(sizes)!r}")
    return [int(n) for n in sizes]


def _resolve_activation(fn: str, activation) -> Callable:
    """sigma as a callable: any callable as is, or a name of nnjax.activations' elementwise ones."""
    if isinstance(activation, str):
        check_choice(fn, "activation", activation, ELEMENTWISE)
        return ELEMENTWISE[activation][0]
    if not callable(activation):
        raise TypeError(f"{fn}: activation must be a callable or a name in {list(ELEMENTWISE)}, "
                        f"got {activation!r}")
    return activation


def layer_forward(params, x, activation: Callable | str = relu):
    """One neural-network layer on one example ("Neural Network Layer"): a = sigma(W x + b).

    The dense layer's pre-activation z = W x + b (`nnjax.layers.dense`) followed by the
    elementwise activation sigma; an MLP's hidden layers are this, its output layer
    softmax(z^[L]) (`mlp_forward`). For a batch, one example per row, vmap it:
    ``jax.vmap(layer_forward, in_axes=(None, 0))(params, X)`` is the chapter's
    A = sigma(W X + b 1^T), transposed.

    Args:
      params: ``{"W": (n_out, n_in), "b": (n_out,)}``, as `nnjax.layers.dense_init` returns.
      x: one input, shape (n_in,).
      activation: sigma, a callable or a name in nnjax.activations' elementwise functions.

    Returns:
      a, shape (n_out,).
    """
    sigma = _resolve_activation("layer_forward", activation)
    _, n_in = check_dense_params("layer_forward", params)
    x = check_real_array("layer_forward", "x", x)
    check_shape("layer_forward", "x", x, (n_in,), f" = (n_in,) to match W of shape {params['W'].shape}")
    return sigma(dense(params, x))


def _checked_input(fn: str, params, x):
    """Checks params (a chain of dense layers) and x: (n_0,); returns x as an array."""
    sizes = check_dense_stack(fn, params)
    x = check_real_array(fn, "x", x)
    check_shape(fn, "x", x, (sizes[0],), f" = (n_0,) to match params[0]['W'] of shape {params[0]['W'].shape}")
    return x


def _logits(fn: str, params, x, activation):
    """z^[L] for one example; `fn` names the public caller in error messages."""
    sigma = _resolve_activation(fn, activation)
    a = _checked_input(fn, params, x)
    for layer in params[:-1]:
        a = sigma(dense(layer, a))
    return dense(params[-1], a)


def mlp_init(key, sizes, init: str = "he", dtype=None):
    """Parameters of an MLP with layer sizes [n_0, ..., n_L], e.g. the chapter's [784, 128, 64, 10].

    Args:
      key: a jax.random key, split into one key per layer.
      sizes: [n_0, ..., n_L], at least 2 positive ints (n_0 inputs, n_L outputs).
      init: one of "he", "xavier", "lecun", "zeros" (see `nnjax.layers.dense_init`).
      dtype: floating dtype of the params; None (the default) is JAX's default float:
        float32, or float64 under `jax.enable_x64(True)`.

    Returns:
      A list of L dicts; params[l - 1] = {"W": (n_l, n_(l-1)), "b": (n_l,)} = layer l.
    """
    sizes = _check_sizes("mlp_init", sizes)
    check_choice("mlp_init", "init", init, INITS)
    keys = jax.random.split(key, len(sizes) - 1)
    return [dense_init(k, n_in, n_out, init, dtype) for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def mlp_logits(params, x, activation: Callable | str = relu):
    """The logits z^[L] of one example: hidden layers use `activation`, the last layer is linear.

    z^[l] = W^[l] a^[l-1] + b^[l], a^[l] = sigma(z^[l]) for l < L, a^[0] = x.

    Args:
      params: list of L dense layers, as `mlp_init` returns.
      x: one input, shape (n_0,).
      activation: sigma, a callable or a name in nnjax.activations' elementwise functions.

    Returns:
      z^[L], shape (n_L,).
    """
    return _logits("mlp_logits", params, x, activation)


def mlp_logits_batch(params, X, activation: Callable | str = relu, compute_dtype=None):
    """The logits Z^[L] of a batch, one example per row: `mlp_logits` under `jax.vmap`.

    Z^[l] = A^[l-1] (W^[l])^T + b^[l], A^[l] = sigma(Z^[l]) for l < L, A^[0] = X, each row an
    example's z^[l] or a^[l]. Every layer is `nnjax.backprop.dense_batch_fast`: the same
    values as the vmapped `dense`, and under `jax.grad` the hand-derived
    `dense_batch_backward` (dW = Delta^T A), which XLA runs faster on a CPU than autodiff's
    form of it. `nnjax.training.mlp_model` trains with this. Reverse mode only (`jax.grad`,
    `jax.vjp`); for `jax.jvp` vmap `mlp_logits`.

    Args:
      params: list of L dense layers, as `mlp_init` returns.
      X: inputs, shape (m, n_0).
      activation: sigma, a callable or a name in nnjax.activations' elementwise functions.
      compute_dtype: None, or a floating dtype such as "bfloat16" for mixed precision: each
        layer's product on operands of that dtype, summed in the params' dtype, the rest in
        the params' dtype (`dense_batch_fast`; `nnjax.backprop.mlp_grads` computes the same
        gradients by hand).

    Returns:
      Z^[L], shape (m, n_L).
    """
    sigma = _resolve_activation("mlp_logits_batch", activation)
    sizes = check_dense_stack("mlp_logits_batch", params)
    compute_dtype = mixed_dtype("mlp_logits_batch", compute_dtype, params[0]["W"].dtype)
    A = jnp.asarray(X)
    check_rank("mlp_logits_batch", "X", A, 2, "(m, n_0): one example per row")
    check_shape("mlp_logits_batch", "X", A, (None, sizes[0]),
                f" = (m, n_0) to match params[0]['W'] of shape {params[0]['W'].shape}")
    for layer in params[:-1]:
        A = sigma(dense_batch_fast(layer, A, compute_dtype))
    return dense_batch_fast(params[-1], A, compute_dtype)


def mlp_forward(params, x, activation: Callable | str = relu):
    """The network's output for one example: a^[L] = softmax(z^[L]) = softmax(mlp_logits(...)).

    Args:
      params, x, activation: as for `mlp_logits`.

    Returns:
      Class probabilities a^[L], shape (n_L,), summing to 1.
    """
    return softmax(_logits("mlp_forward", params, x, activation))


def mlp_activations(params, x, activation: Callable | str = relu):
    """The forward pass of one example, keeping every z^[l] and a^[l] (what backprop needs).

    a^[0] = x; z^[l] = W^[l] a^[l-1] + b^[l]; a^[l] = sigma(z^[l]) for hidden layers and
    a^[L] = softmax(z^[L]) for the output layer (z^[L] are the logits).

    Args:
      params: list of L dense layers, as `mlp_init` returns.
      x: one input, shape (n_0,).
      activation: sigma of the hidden layers: a callable, or a name in nnjax.activations'
        elementwise functions.

    Returns:
      (zs, activations): zs = [z^[1], ..., z^[L]] (L arrays, z^[l] of shape (n_l,));
      activations = [a^[0], ..., a^[L]] (L + 1 arrays).
    """
    sigma = _resolve_activation("mlp_activations", activation)
    zs, activations = [], [_checked_input("mlp_activations", params, x)]
    for l, layer in enumerate(params, start=1):
        zs.append(dense(layer, activations[-1]))
        activations.append(softmax(zs[-1]) if l == len(params) else sigma(zs[-1]))
    return zs, activations
