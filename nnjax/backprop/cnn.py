"""Backpropagation through the experiments' CNN by hand: the chain of the layers' backward passes.

Chapter sections "Backpropagation Algorithm", "Convolutional Neural Networks" and
"Normalization Techniques". The forward of `nnjax.network.cnn_forward`, per block i,

    z_i = conv_i(p_{i-1}),  u_i = BN_i(z_i),  a_i = ReLU(u_i),  p_i = maxpool(a_i)   (p_0 = x)

then f = flatten(p_N), h = ReLU(W1 f + b1), logits = W2 h + b2, runs backwards with
delta = dL/d(each output), for L = 1/m sum_i softmax_cross_entropy(logits_i, y_i):

    delta_logits = (softmax(logits) - y) / m                   softmax_cross_entropy_backward
    dW2 = Delta^T H,  db2 = sum_i delta_i,  delta_h = Delta W2   dense, batch form
    delta_z1 = delta_h * ReLU'(z1);  dW1 = Delta^T F, ...       activation_backward, dense
    delta_p_N = reshape(delta_f)
    per block, i = N, ..., 1:
      delta_a_i = maxpool_backward(a_i, delta_p_i)          routed to each window's maximum
      delta_u_i = delta_a_i * ReLU'(u_i)                    activation_backward
      dgamma_i, dbeta_i, delta_z_i = batch_norm_backward    through the batch mean and variance
      dW_i, db_i, delta_p_{i-1} = conv2d_backward           correlation of input and delta,
                                                            full convolution with the flipped kernel

The dense head runs on the whole batch at once (dW = Delta^T A sums the m outer products
delta a^T in one matrix product); the conv blocks run per example under
`jax.vmap(..., axis_name=...)`, which batch-norm's backward needs, and their parameter
gradients are summed over the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax.backprop.activation import activation_backward, softmax_cross_entropy_backward
from nnjax.backprop.conv import conv2d_backward
from nnjax.backprop.normalization import batch_norm_backward
from nnjax.backprop.pooling import max_pool2d_backward
from nnjax.losses import softmax_cross_entropy
from nnjax.network.cnn import POOL_WINDOW, check_batch, cnn_forward, cnn_num_blocks

__all__ = ["cnn_grads", "cnn_value_and_grads"]

_AXIS = "batch"


def _dense_batch_backward(params, A, Delta):
    """A dense layer's backward on a batch (rows are examples): dW = Delta^T A, db = sum of rows,
    dA = Delta W. A: (m, n_in), Delta: (m, n_out)."""
    return {"W": Delta.T @ A, "b": jnp.sum(Delta, axis=0)}, Delta @ params["W"]


def _blocks_backward(params, x, cache, delta, num_blocks):
    """One example's backward through the conv blocks, from delta = dL/dp_N to conv1.

    Runs under `jax.vmap(..., axis_name=_AXIS)` (batch norm's backward reads the batch means).

    Returns:
      {"conv{i}": {"W", "b"}, "bn{i}": {"gamma", "beta"}}, this example's share.
    """
    grads = {}
    for i in range(num_blocks, 0, -1):
        delta = max_pool2d_backward(cache[f"relu{i}"], delta, POOL_WINDOW)
        delta = activation_backward("relu", cache[f"bn{i}"], delta)
        grads[f"bn{i}"], delta = batch_norm_backward(params[f"bn{i}"], cache[f"conv{i}"], delta,
                                                     axis_name=_AXIS)
        conv_input = cache[f"pool{i - 1}"] if i > 1 else x
        grads[f"conv{i}"], delta = conv2d_backward(params[f"conv{i}"], conv_input, delta)
    return grads


def cnn_value_and_grads(params, state, X, Y):
    """Loss, new batch-norm state and gradients of `nnjax.network.cnn_loss` (train=True), by hand.

    The same values as `jax.value_and_grad(cnn_loss, has_aux=True)(params, state, X, Y)`,
    arranged ((loss, new_state), grads).

    Args:
      params, state: as `nnjax.network.cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K) (soft targets summing to 1 work too).

    Returns:
      ((loss, new_state), grads): loss the mean cross-entropy, new_state the updated running
      statistics, grads with params' structure.
    """
    fn = "cnn_grads"
    num_blocks = cnn_num_blocks(params)
    X = check_batch(fn, params, X, Y)
    logits, new_state, cache = jax.vmap(
        lambda x: cnn_forward(params, state, x, train=True, axis_name=_AXIS),
        axis_name=_AXIS, out_axes=(0, None, 0))(X)
    m = X.shape[0]
    grads = {}
    delta = softmax_cross_entropy_backward(logits, Y) / m
    grads["dense2"], delta = _dense_batch_backward(params["dense2"], cache["hidden"], delta)
    delta = activation_backward("relu", cache["dense1"], delta)
    grads["dense1"], delta = _dense_batch_backward(params["dense1"], cache["flat"], delta)
    delta = delta.reshape(cache[f"pool{num_blocks}"].shape)
    block_grads = jax.vmap(lambda x, c, d: _blocks_backward(params, x, c, d, num_blocks),
                           axis_name=_AXIS)(X, cache, delta)
    grads.update(jax.tree.map(lambda g: jnp.sum(g, axis=0), block_grads))
    loss = jnp.mean(softmax_cross_entropy(logits, Y))
    return (loss, new_state), grads


def cnn_grads(params, state, X, Y):
    """Gradients of the CNN's mean softmax cross-entropy over a batch, by hand-derived backprop.

    Equal to `jax.grad(nnjax.network.cnn_loss, has_aux=True)(params, state, X, Y)`: the chain
    of softmax_cross_entropy_backward, dense_backward (batch form), activation_backward,
    max_pool2d_backward, batch_norm_backward and conv2d_backward, described in this module's
    docstring. `cnn_value_and_grads` also returns the loss.

    Args:
      params, state: as `nnjax.network.cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K).

    Returns:
      (grads, new_state): grads with params' structure; new_state the running statistics
      after this batch (batch norm runs in training mode).
    """
    (_, new_state), grads = cnn_value_and_grads(params, state, X, Y)
    return grads, new_state
