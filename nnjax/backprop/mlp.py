"""Backpropagation through an MLP by the chapter's delta recursion ("Backpropagation Algorithm").

With z^[l] = W^[l] a^[l-1] + b^[l], a^[l] = sigma(z^[l]) and delta^[l] = dL/dz^[l]:
    delta^[L] = a^[L] - y                                  softmax output + cross-entropy
    delta^[L] = 2 (z^[L] - y)                              linear output + squared error
    delta^[l] = (W^[l+1])^T delta^[l+1] * sigma'(z^[l])    for l = L - 1, ..., 1
    dL/dW^[l] = delta^[l] (a^[l-1])^T,   dL/db^[l] = delta^[l]

`mlp_backward` follows these lines for one example. `mlp_grads` runs the same recursion on a
whole batch at once: the rows of Delta^[l] (m, n_l) are the examples' delta^[l], and
dL/dW^[l] = (Delta^[l])^T A^[l-1] / m sums the m outer products delta a^T in one matrix
product, as the chapter's `backward` does with examples stored as columns
(`nnjax.backprop.dense_batch_backward`).

With ``compute_dtype="bfloat16"`` the batch functions run in mixed precision: every matrix
product takes bfloat16 operands and sums in the parameters' dtype (float32), everything else
(biases, activations' derivatives, the loss's delta, the gradients) stays in float32. Each
product's transposed operand, (W^[l])^T forward and (Delta^[l])^T for dW^[l], is written out
as its own array (`nnjax.layers.dense.written_transpose`): XLA's CPU backend runs a bfloat16
product as bfloat16 (on CPUs with AMX or AVX512-BF16 several times float32's rate) only when
both operands are stored row by row.
"""
from __future__ import annotations

from typing import Callable

from nnjax._checks import check_choice, check_rank, check_real_array, check_shape, mixed_dtype
from nnjax.activations import activation_name, get_activation, relu
from nnjax.backprop.activation import (
    activation_backward, mse_backward, sigmoid_binary_cross_entropy_backward, softmax_cross_entropy_backward,
)
from nnjax.backprop.dense import dense_backward, dense_batch_backward
from nnjax.layers.dense import check_dense_stack, dense, dense_batch_mixed

__all__ = ["LOSSES", "mlp_backward", "mlp_grads", "mlp_logits_and_grads", "mlp_grads_mse", "mlp_grads_bce"]

LOSSES = {"softmax_cross_entropy": softmax_cross_entropy_backward, "mse": mse_backward,
          "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy_backward}
"""The chapter's three output layers and their losses (softmax with cross-entropy, linear with
MSE, sigmoid with binary cross-entropy), by the name of the loss in `nnjax.losses`; each maps
(z^[L], y) to the hand-derived delta^[L] = dL/dz^[L]. Each is the chapter's general output rule
delta^[L] = grad_a L * sigma'^[L](z^[L]) worked out for its pair; for another elementwise output
activation with a loss, compose the rule: e.g. a sigmoid output under MSE is
``activation_backward("sigmoid", z_L, mse_backward(sigmoid(z_L), y))``."""


def mlp_backward(params, x, y, activation: Callable | str = relu, loss: str = "softmax_cross_entropy"):
    """Gradients of one example's loss by the delta recursion, and every delta^[l].

    Forward: a^[0] = x, z^[l] = W^[l] a^[l-1] + b^[l], a^[l] = sigma(z^[l]) (l < L).
    Output: delta^[L] = softmax(z^[L]) - y for loss="softmax_cross_entropy" (L =
    nnjax.losses.softmax_cross_entropy), 2 (z^[L] - y) for loss="mse" on the linear output
    (L = nnjax.losses.mse), or sigma(z^[L]) - y for loss="sigmoid_binary_cross_entropy" on
    sigmoid outputs (L = nnjax.losses.sigmoid_binary_cross_entropy). Backward, for
    l = L - 1, ..., 1:
    delta^[l] = (W^[l+1])^T delta^[l+1] * sigma'(z^[l]); dW^[l] = delta^[l] (a^[l-1])^T,
    db^[l] = delta^[l].

    Args:
      params: list of L dense layers, as `nnjax.network.mlp_init` returns.
      x: one input, shape (n_0,).
      y: its target, shape (n_L,): one-hot for cross-entropy, any values for "mse", values
        in [0, 1] for binary cross-entropy.
      activation: sigma of the hidden layers, one of nnjax.activations' elementwise functions
        (or its name).
      loss: a key of `LOSSES`: "softmax_cross_entropy", "mse" or "sigmoid_binary_cross_entropy".

    Returns:
      (grads, deltas): grads has params' structure ({"W", "b"} per layer); deltas =
      [delta^[1], ..., delta^[L]], delta^[l] of shape (n_l,).
    """
    name = activation_name(activation, "mlp_backward")
    sigma, _ = get_activation(name)
    check_choice("mlp_backward", "loss", loss, LOSSES)
    sizes = check_dense_stack("mlp_backward", params)
    x, y = check_real_array("mlp_backward", "x", x), check_real_array("mlp_backward", "y", y)
    check_shape("mlp_backward", "x", x, (sizes[0],), f" = (n_0,) to match params[0]['W'] of shape {params[0]['W'].shape}")
    check_shape("mlp_backward", "y", y, (sizes[-1],), f" = (n_L,) to match params[-1]['W'] of shape {params[-1]['W'].shape}")

    zs, activations = [], [x]
    for l, layer in enumerate(params, start=1):
        zs.append(dense(layer, activations[-1]))
        if l < len(params):
            activations.append(sigma(zs[-1]))

    deltas = [LOSSES[loss](zs[-1], y)]
    grads = []
    for l in reversed(range(len(params))):
        layer_grads, upstream = dense_backward(params[l], activations[l], deltas[0])
        grads.insert(0, layer_grads)
        if l > 0:
            deltas.insert(0, activation_backward(name, zs[l - 1], upstream))
    return grads, deltas


def _batch_grads(fn: str, params, X, Y, activation, loss: str, compute_dtype=None):
    """Mean-over-batch gradients by the delta recursion on (m, n_l) matrices, one matmul per dW.

    In mixed precision (a `compute_dtype` other than the params'), A^[l] is kept in
    `compute_dtype` for the products, Z^[l] and Delta^[l] in the params' dtype; the forward is
    `nnjax.layers.dense.dense_batch_mixed` and each layer's backward `dense_batch_backward`
    with the same `compute_dtype`.

    Returns:
      (Z^[L] the batch's output pre-activations (m, n_L), grads).
    """
    sigma, sigma_prime = get_activation(activation, fn)
    sizes = check_dense_stack(fn, params)
    X, Y = check_real_array(fn, "X", X), check_real_array(fn, "Y", Y)
    check_rank(fn, "X", X, 2, "(m, n_0): one example per row")
    check_shape(fn, "X", X, (None, sizes[0]), f" = (m, n_0) to match params[0]['W'] of shape {params[0]['W'].shape}")
    check_shape(fn, "Y", Y, (X.shape[0], sizes[-1]), f" = (m, n_L) to match X of shape {X.shape} "
                f"and params[-1]['W'] of shape {params[-1]['W'].shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{fn}: X must hold at least one example, got shape {X.shape}")
    compute_dtype = mixed_dtype(fn, compute_dtype, params[0]["W"].dtype)

    Zs, As = [], [X if compute_dtype is None else X.astype(compute_dtype)]
    for l, layer in enumerate(params, start=1):
        if compute_dtype is None:
            Zs.append(As[-1] @ layer["W"].T + layer["b"])
        else:
            Zs.append(dense_batch_mixed(layer, As[-1], compute_dtype))
        if l < len(params):
            As.append(sigma(Zs[-1]) if compute_dtype is None else sigma(Zs[-1]).astype(compute_dtype))

    Delta = LOSSES[loss](Zs[-1], Y) / X.shape[0]
    grads = []
    for l in reversed(range(len(params))):
        layer_grads, upstream = dense_batch_backward(params[l], As[l], Delta, compute_dtype)
        grads.insert(0, layer_grads)
        if l > 0:
            Delta = upstream * sigma_prime(Zs[l - 1])
    return Zs[-1], grads


def mlp_grads(params, X, Y, activation: Callable | str = relu, compute_dtype=None):
    """Gradients of mean(softmax_cross_entropy(vmap(mlp_logits)(params, X), Y)) by hand.

    The delta recursion on the whole batch, examples as rows: Delta^[L] = (softmax(Z^[L]) - Y) / m,
    Delta^[l] = (Delta^[l+1] W^[l+1]) * sigma'(Z^[l]), dW^[l] = (Delta^[l])^T A^[l-1],
    db^[l] = sum over rows of Delta^[l] (the 1/m of the mean rides along in Delta).

    Args:
      params: list of L dense layers, as `nnjax.network.mlp_init` returns.
      X: a batch of inputs, shape (m, n_0).
      Y: one-hot targets, shape (m, n_L).
      activation: sigma of the hidden layers, one of nnjax.activations' elementwise functions
        (or its name); any other callable raises ValueError (its derivative is not known by hand).
      compute_dtype: None (the default) to compute in the params' dtype, or a floating dtype
        such as "bfloat16" for mixed precision: the matrix products take operands of that
        dtype and sum in the params' dtype; all else stays in the params' dtype (the module's
        docstring). On a 2-core Xeon with AMX (jax 0.10.2) bfloat16 made the MLP's SGD step
        1.6-1.7x faster at batch 1024 and 1.3-1.4x at 128; on CPUs without bfloat16
        instructions it is slower than float32 (`scripts/bench_products.py` tells).

    Returns:
      grads with params' structure: a list of {"W": (n_l, n_(l-1)), "b": (n_l,)}, in the
      params' dtype.
    """
    return _batch_grads("mlp_grads", params, X, Y, activation, "softmax_cross_entropy", compute_dtype)[1]


def mlp_logits_and_grads(params, X, Y, activation: Callable | str = relu, compute_dtype=None):
    """`mlp_grads` together with the logits Z^[L] its forward pass computed on the way.

    A training step that reports the batch's loss and accuracy needs both; this saves it a
    second forward pass.

    Args: as `mlp_grads`.

    Returns:
      (logits (m, n_L), grads).
    """
    return _batch_grads("mlp_logits_and_grads", params, X, Y, activation, "softmax_cross_entropy", compute_dtype)


def mlp_grads_mse(params, X, Y, activation: Callable | str = relu, compute_dtype=None):
    """Gradients of mean(mse(vmap(mlp_logits)(params, X), Y)) for a regression net (linear output).

    Delta^[L] = 2 (Z^[L] - Y) / m, then the same recursion as `mlp_grads`.

    Args:
      params: list of L dense layers.
      X: inputs, shape (m, n_0).
      Y: targets, shape (m, n_L).
      activation, compute_dtype: as for `mlp_grads`.

    Returns:
      grads with params' structure.
    """
    return _batch_grads("mlp_grads_mse", params, X, Y, activation, "mse", compute_dtype)[1]


def mlp_grads_bce(params, X, Y, activation: Callable | str = relu, compute_dtype=None):
    """Gradients of mean(sigmoid_binary_cross_entropy(vmap(mlp_logits)(params, X), Y)) for a
    binary classifier (sigmoid outputs, one per yes/no label).

    Delta^[L] = (sigma(Z^[L]) - Y) / m, then the same recursion as `mlp_grads`.

    Args:
      params: list of L dense layers.
      X: inputs, shape (m, n_0).
      Y: targets in [0, 1], shape (m, n_L).
      activation, compute_dtype: as for `mlp_grads`.

    Returns:
      grads with params' structure.
    """
    return _batch_grads("mlp_grads_bce", params, X, Y, activation, "sigmoid_binary_cross_entropy", compute_dtype)[1]
