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

Every step runs on the whole batch, so the parameter gradients are never materialized per
example: the dense layers as dW = Delta^T A (the m outer products delta a^T summed by one
matrix product), the convolutions with `conv2d_weight_grad` / `conv2d_input_grad` (one
convolution each, the batch contracted inside). Pooling and batch norm run their per-example
backward under `jax.vmap` (batch norm's with the named batch axis, for the batch means).
Measured on CPU at batch 128, this is faster than vmapping `conv2d_backward` and summing
(about 15% per step, CPU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax.backprop.activation import activation_backward, softmax_cross_entropy_backward
from nnjax.backprop.conv import conv2d_input_grad, conv2d_weight_grad
from nnjax.backprop.normalization import batch_norm_backward
from nnjax.backprop.pooling import max_pool2d_backward
from nnjax.losses import softmax_cross_entropy
from nnjax.network.cnn import POOL_WINDOW, check_batch, cnn_forward, cnn_num_blocks

__all__ = ["cnn_grads", "cnn_value_and_grads"]

_AXIS = "batch"
_STRIDE = (1, 1)
_VALID = ((0, 0), (0, 0))
"""The CNN's convolutions: stride 1, valid padding (as `nnjax.network.cnn_forward` calls them)."""


def _dense_batch_backward(params, A, Delta):
    """A dense layer's backward on a batch (rows are examples): dW = Delta^T A, db = sum of rows,
    dA = Delta W. A: (m, n_in), Delta: (m, n_out)."""
    return {"W": Delta.T @ A, "b": jnp.sum(Delta, axis=0)}, Delta @ params["W"]


def _conv_batch_backward(params, X, Delta, input_grad: bool):
    """A valid, stride-1 conv layer's backward on a batch, each gradient ONE convolution.

    dW = sum over examples of corr(x, delta), db = delta summed over examples and pixels,
    dX = full convolution of delta with the flipped kernel (`conv2d_backward`'s formulas, in
    their batch form). X: (m, C_in, H, W), Delta: (m, C_out, H', W'); dX is None unless
    `input_grad` (the image's own gradient is not needed).
    """
    W = params["W"]
    grads = {"W": conv2d_weight_grad(X, Delta, W.shape[2:], _STRIDE, _VALID),
             "b": jnp.sum(Delta, axis=(0, 2, 3))}
    return grads, (conv2d_input_grad(W, Delta, X.shape[2:], _STRIDE, _VALID) if input_grad else None)


def _blocks_backward(params, X, cache, delta, num_blocks):
    """The batch's backward through the conv blocks, from delta = dL/dp_N (m, C_N, H_N, W_N).

    Returns:
      {"conv{i}": {"W", "b"}, "bn{i}": {"gamma", "beta"}}, summed over the batch.
    """
    grads = {}
    for i in range(num_blocks, 0, -1):
        delta = jax.vmap(max_pool2d_backward, in_axes=(0, 0, None))(cache[f"relu{i}"], delta, POOL_WINDOW)
        delta = activation_backward("relu", cache[f"bn{i}"], delta)
        bn_params = params[f"bn{i}"]
        bn_grads, delta = jax.vmap(lambda z, d: batch_norm_backward(bn_params, z, d, axis_name=_AXIS),
                                   axis_name=_AXIS)(cache[f"conv{i}"], delta)
        grads[f"bn{i}"] = jax.tree.map(lambda g: jnp.sum(g, axis=0), bn_grads)
        conv_input = cache[f"pool{i - 1}"] if i > 1 else X
        grads[f"conv{i}"], delta = _conv_batch_backward(params[f"conv{i}"], conv_input, delta, i > 1)
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
    grads.update(_blocks_backward(params, X, cache, delta, num_blocks))
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
