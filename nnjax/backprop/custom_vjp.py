"""Layers whose autodiff gradient IS the hand-derived backward, through `jax.custom_vjp`.

`conv2d_fast`, `max_pool2d_fast` and `avg_pool2d_fast` take the same arguments and compute the
same values as `nnjax.layers.conv2d`, `max_pool2d` and `avg_pool2d`, one example at a time;
under `jax.grad` (and `jax.vjp`, through `jax.vmap` and `jax.jit`) JAX runs
`nnjax.backprop.conv2d_backward`, `max_pool2d_backward` and `avg_pool2d_backward` instead of
differentiating the forward's primitives. Autodiff users get the chapter's delta formulas,
and the speed of whichever formulation measures faster.

Measured (2-core CPU, jax 0.10.2, CPU time of one jitted SGD step at batch 128 of the CNN
conv 1->32 3x3, ReLU, max pool 2, conv 32->64 3x3, ReLU, max pool 2, dense 1600->128, ReLU,
dense 128->10, layers vmapped over the batch):

    plain layers, jax.grad                              151 ms  (194 ms with lax.reduce_window pooling)
    max_pool2d_fast                                     117 ms
    max_pool2d_fast, conv2d_fast for the first conv     114 ms
    max_pool2d_fast, conv2d_fast for both convs         134 ms
    the same CNN with average pooling: avg_pool2d      138 ms, avg_pool2d_fast 109 ms

At batch 1024 (first four rows): 2049, 1770, 1490 and 1417 ms. So: the pooling `_fast`
versions everywhere; `conv2d_fast` for layers with few input channels, and for all layers at
large batches. A custom backward runs per example under `jax.vmap`, so its weight gradient is
a batched matrix product then a sum over the batch, while autodiff of the vmapped forward
contracts the batch inside one convolution; for wide layers at small batches the latter wins.

`conv2d_batch_fast` avoids that trade-off by working on the whole batch: the forward is
`nnjax.layers.conv2d_batch` and the backward the batch-level `conv2d_param_grads` (the batch
contracted inside im2col products) and `conv2d_input_grad`. The CNN uses it.
`batch_norm_batch_fast` does the same for batch norm, whose per-example `custom_vjp` could
not reach the batch statistics, and `dense_batch_fast` for the dense layer, whose batch-level
backward hands XLA its weight gradient in the form the fastest CPU kernels take
(`dense_batch_backward`); the MLP's batch forward (`nnjax.network.mlp_logits_batch`) and the
CNN's dense layers use it.

Only reverse mode is defined: `jax.jvp`/`jax.jacfwd` through these functions raise TypeError.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from nnjax._checks import check_rank, check_real_array, check_shape, mixed_dtype
from nnjax.backprop.conv import conv2d_backward, conv2d_input_grad, conv2d_param_grads
from nnjax.backprop.conv_norm import conv2d_batch_norm_backward
from nnjax.backprop.dense import dense_batch_backward
from nnjax.backprop.normalization import BATCH_AXIS, batch_axes, batch_norm_batch_backward
from nnjax.backprop.pooling import avg_pool2d_backward, max_pool2d_backward
from nnjax.layers.conv import check_chunk, check_conv_args, check_conv_batch_args, conv2d_batch, conv2d_channels_last
from nnjax.layers.conv_norm import conv2d_batch_norm
from nnjax.layers.dense import check_dense_params, dense, dense_batch_mixed
from nnjax.layers.layout import spatial_shape
from nnjax.layers.normalization import _check_eps, batch_norm, check_batch_norm_batch, check_running_statistics
from nnjax.layers.pooling import avg_pool2d, check_pool_args, max_pool2d, max_pool2d_blocks

__all__ = ["dense_batch_fast", "conv2d_fast", "conv2d_batch_fast", "batch_norm_batch_fast", "conv2d_batch_norm_fast",
           "max_pool2d_fast", "avg_pool2d_fast"]


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense_batch(compute_dtype, params, A):
    if compute_dtype is None:
        return jax.vmap(dense, in_axes=(None, 0))(params, A)
    return dense_batch_mixed(params, A, compute_dtype)


def _dense_batch_forward(compute_dtype, params, A):
    """Saves A in `compute_dtype` (the backward's products cast it anyway) and an empty array
    of A's own dtype, the dtype dA must come back in."""
    saved = A if compute_dtype is None else A.astype(compute_dtype)
    return _dense_batch(compute_dtype, params, A), (params, saved, jnp.zeros((0,), A.dtype))


def _dense_batch_backward(compute_dtype, residuals, Delta):
    params, A, A_dtype = residuals
    grads, dA = dense_batch_backward(params, A, Delta, compute_dtype)
    return {k: grads[k].astype(params[k].dtype) for k in grads}, dA.astype(A_dtype.dtype)


_dense_batch.defvjp(_dense_batch_forward, _dense_batch_backward)


def dense_batch_fast(params, A, compute_dtype=None):
    """`nnjax.layers.dense` on a batch of rows, whose gradient is `dense_batch_backward`.

    The same values as `jax.vmap(dense, in_axes=(None, 0))(params, A)`, Z = A W^T + b; under
    `jax.grad` the backward is dW = Delta^T A (Delta^T written out first, so that XLA's CPU
    backend runs the product on its fastest kernels), db = sum of Delta's rows, dA = Delta W.
    Autodiff of the vmapped layer contracts the batch with Delta transposed inside the
    product, which XLA runs on slower kernels: the MLP's autodiff SGD step on a 2-core Xeon
    took 3.64 ms through this layer against 4.14 through the vmapped `dense` at batch 1024,
    0.71 against 0.77 ms at 128 (median of 12 alternating scan epochs).

    With a `compute_dtype` other than W's, mixed precision: the forward is
    `nnjax.layers.dense.dense_batch_mixed` (the product on `compute_dtype` operands, summed in
    W's dtype), the backward `dense_batch_backward` with the same `compute_dtype`, and the
    saved input is A in `compute_dtype` (half the memory for bfloat16).

    Args:
      params: {"W": (n_out, n_in), "b": (n_out,)}.
      A: the inputs, (m, n_in), one example per row.
      compute_dtype: None, or a floating dtype such as "bfloat16" for mixed precision.

    Returns:
      Z, (m, n_out), in W's dtype under mixed precision.
    """
    n_out, n_in = check_dense_params("dense_batch_fast", params)
    A = check_real_array("dense_batch_fast", "A", A)
    check_rank("dense_batch_fast", "A", A, 2, "(m, n_in): one example per row")
    check_shape("dense_batch_fast", "A", A, (None, n_in), f" = (m, n_in) to match W of shape {params['W'].shape}")
    return _dense_batch(mixed_dtype("dense_batch_fast", compute_dtype, params["W"].dtype), params, A)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _conv2d(stride, pads, layout, params, x):
    return conv2d_channels_last(params["W"], params["b"], x, stride, pads, layout)


def _conv2d_forward(stride, pads, layout, params, x):
    return conv2d_channels_last(params["W"], params["b"], x, stride, pads, layout), (params, x)


def _conv2d_backward(stride, pads, layout, residuals, delta):
    params, x = residuals
    return conv2d_backward(params, x, delta, stride, pads, layout)


_conv2d.defvjp(_conv2d_forward, _conv2d_backward)


def conv2d_fast(params, x, stride=1, padding="valid", layout="CHW"):
    """`nnjax.layers.conv2d` whose gradient is `conv2d_backward` (hand-derived).

    Same arguments, checks and result as `conv2d`; the difference is under `jax.grad`, and
    that the forward is `conv2d_channels_last` (fast inside a `lax.scan` too: forward and
    gradient of the conv 32->64 below, vmapped over 128 channels-first 13x13 maps, 20 ms per
    step in a 10-step scan, against 205 ms for autodiff of `conv2d`).

    Speed (2-core CPU, CPU time of forward + gradient of one 3x3 conv layer vmapped over a
    batch of 128, against `jax.grad` of `conv2d`): 4.6 vs 13.6 ms for 1->32 channels on
    28x28, 10.7 vs 13.6 ms for 8->32 on 16x16, 17.0 vs 20.1 ms for 16->32 on 16x16, 41 vs
    38 ms for 32->64 on 13x13.
    """
    W, b, x, stride, pads = check_conv_args("conv2d_fast", params, x, stride, padding, layout)
    return _conv2d(stride, pads, layout, {"W": W, "b": b}, x)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _conv2d_batch(stride, pads, layout, chunk, compute_dtype, params, X):
    return conv2d_batch(params, X, stride, pads, layout, chunk, compute_dtype)


def _conv2d_batch_forward(stride, pads, layout, chunk, compute_dtype, params, X):
    return conv2d_batch(params, X, stride, pads, layout, chunk, compute_dtype), (params["W"], X)


def _conv2d_batch_backward(stride, pads, layout, chunk, compute_dtype, residuals, delta):
    W, X = residuals
    grads = conv2d_param_grads(X, delta, W.shape[2:], stride, pads, layout, chunk, compute_dtype)
    return grads, conv2d_input_grad(W, delta, spatial_shape(X[0], layout), stride, pads, layout, compute_dtype)


_conv2d_batch.defvjp(_conv2d_batch_forward, _conv2d_batch_backward)


def conv2d_batch_fast(params, X, stride=1, padding="valid", layout="CHW", chunk: int | None = None,
                      compute_dtype=None):
    """`nnjax.layers.conv2d_batch` (a whole batch) whose gradient is hand-derived at batch level.

    Same arguments, checks and result as `conv2d_batch`. Under `jax.grad`: dW and db from
    `conv2d_param_grads` (im2col products, the batch contracted; db, the sum of delta
    over examples and pixels, as the product's row for an input of 1), dX from
    `conv2d_input_grad` (one convolution). The CNN's
    training step runs its convolutions through this (`nnjax.network.cnn_apply_batch`).
    With a `compute_dtype` other than W's, the forward and both gradients run in that mixed
    precision (every product on `compute_dtype` operands, summed in W's dtype).
    """
    W, b, X, stride, pads = check_conv_batch_args("conv2d_batch_fast", params, X, stride, padding, layout)
    compute_dtype = mixed_dtype("conv2d_batch_fast", compute_dtype, W.dtype)
    chunk = check_chunk("conv2d_batch_fast", chunk)
    return _conv2d_batch(stride, pads, layout, chunk, compute_dtype, {"W": W, "b": b}, X)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _batch_norm_batch(device_axis, momentum, eps, layout, params, state, X):
    return jax.vmap(lambda x: batch_norm(params, state, x, train=True, axis_name=batch_axes(device_axis),
                                         momentum=momentum, eps=eps, layout=layout),
                    axis_name=BATCH_AXIS, out_axes=(0, None))(X)


def _batch_norm_batch_forward(device_axis, momentum, eps, layout, params, state, X):
    return _batch_norm_batch(device_axis, momentum, eps, layout, params, state, X), (params, state, X)


def _batch_norm_batch_backward(device_axis, momentum, eps, layout, residuals, cotangents):
    params, state, X = residuals
    delta, _ = cotangents
    grads, dX = batch_norm_batch_backward(params, X, delta, device_axis=device_axis, eps=eps, layout=layout)
    return grads, jax.tree.map(jnp.zeros_like, state), dX


_batch_norm_batch.defvjp(_batch_norm_batch_forward, _batch_norm_batch_backward)


def batch_norm_batch_fast(params, state, X, *, device_axis=None, momentum=0.9, eps=1e-5, layout="CHW"):
    """`nnjax.layers.batch_norm` in training mode on a whole batch, its gradient in closed form.

    The same values as `jax.vmap(batch_norm(..., train=True), axis_name="batch")` over the
    batch's first axis; under `jax.grad` the backward is `batch_norm_batch_backward` (the
    chapter's formula through the batch mean and variance) instead of autodiff's passes. A
    `custom_vjp` on the per-example `batch_norm` cannot do this: under `vmap` its backward
    runs without the named batch axis. Here the batch is inside the function.

    Args:
      params: {"gamma": (F,), "beta": (F,)}.
      state: {"mean": (F,), "var": (F,)} running statistics.
      X: a batch (m, ...) of examples as `batch_norm` takes them.
      device_axis: the name of an enclosing `shard_map`/`pmap` axis over which the batch is
        split, or None; the statistics then span every device's examples.
      momentum, eps, layout: as `batch_norm`.

    Returns:
      (Y of X's shape, new_state). Under differentiation new_state is a constant (as behind
      `jax.lax.stop_gradient`): a loss that reads the updated running statistics gets no
      gradient through them. Training never differentiates them; autodiff of the plain
      vmapped `batch_norm` would.
    """
    fn = "batch_norm_batch_fast"
    X, features = check_batch_norm_batch(fn, params, X, layout)
    check_running_statistics(fn, state, features, momentum, f" to match X of shape {X.shape}")
    if device_axis is None and X.size // features < 2:
        raise ValueError(f"{fn}: batch statistics need more than one value per feature to estimate a variance, "
                         f"got X of shape {X.shape}")
    return _batch_norm_batch(device_axis, momentum, _check_eps(fn, eps), layout, params, state, X)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5))
def _conv2d_batch_norm(stride, padding, device_axis, momentum, eps, layout, conv_params, bn_params, state, X):
    return conv2d_batch_norm(conv_params, bn_params, state, X, stride=stride, padding=padding,
                             device_axis=device_axis, momentum=momentum, eps=eps, layout=layout)


def _conv2d_batch_norm_forward(stride, padding, device_axis, momentum, eps, layout, conv_params, bn_params, state, X):
    outputs = _conv2d_batch_norm(stride, padding, device_axis, momentum, eps, layout, conv_params, bn_params, state, X)
    return outputs, (conv_params, bn_params, state, X)


def _conv2d_batch_norm_backward(stride, padding, device_axis, momentum, eps, layout, residuals, cotangents):
    conv_params, bn_params, state, X = residuals
    delta, _ = cotangents
    conv_grads, bn_grads, dX = conv2d_batch_norm_backward(conv_params, bn_params, X, delta, stride=stride,
                                                          padding=padding, device_axis=device_axis, eps=eps,
                                                          layout=layout)
    return conv_grads, bn_grads, jax.tree.map(jnp.zeros_like, state), dX


_conv2d_batch_norm.defvjp(_conv2d_batch_norm_forward, _conv2d_batch_norm_backward)


def conv2d_batch_norm_fast(conv_params, bn_params, state, X, *, stride=1, padding="valid", device_axis=None,
                           momentum=0.9, eps=1e-5, layout="CHW"):
    """`nnjax.layers.conv2d_batch_norm` (a convolution then batch norm in training mode, on a
    whole batch, the statistics from the patches' Gram matrix) whose gradient is hand-derived:
    `conv2d_batch_norm_backward`, which forms neither z nor delta_z for the parameter
    gradients. Same arguments and result as `conv2d_batch_norm`; the CNN's training step runs
    the layers for which `conv2d_batch_norm_pays` through this. As in `batch_norm_batch_fast`,
    the returned running statistics are a constant under differentiation.
    """
    return _conv2d_batch_norm(stride, padding, device_axis, momentum, eps, layout, conv_params, bn_params, state, X)


def _pool_vjp(forward, backward):
    """A pooling layer `forward(x, window, stride, layout)` with
    `backward(x, delta, window, stride, layout)` as its VJP."""

    @partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
    def pool(window, stride, layout, x):
        return forward(x, window, stride, layout)

    def pool_forward(window, stride, layout, x):
        return forward(x, window, stride, layout), x

    def pool_backward(window, stride, layout, x, delta):
        return (backward(x, delta, window, stride, layout),)

    pool.defvjp(pool_forward, pool_backward)
    return pool


def _max_pool2d_forward(x, window, stride, layout):
    """`max_pool2d`, as one reduction (`max_pool2d_blocks`) where the windows tile the map."""
    return max_pool2d_blocks(x, window, layout) if window == stride else max_pool2d(x, window, stride, layout)


_max_pool2d = _pool_vjp(_max_pool2d_forward, max_pool2d_backward)
_avg_pool2d = _pool_vjp(avg_pool2d, avg_pool2d_backward)


def max_pool2d_fast(x, window=2, stride=None, layout="CHW"):
    """`nnjax.layers.max_pool2d` whose gradient is `max_pool2d_backward` (hand-derived).

    Same arguments, checks and result; under `jax.grad` each window's delta goes to its first
    maximum (autodiff of `max_pool2d` splits ties instead; both sum to delta). Where the
    windows tile the map (stride = window) the forward is `max_pool2d_blocks`, one reduction
    whose result XLA writes once. In the CNN's train step (2-core CPU, jax 0.10.2, in-process
    A/B, alternating rounds, min/median ms per step) against `max_pool2d`'s shifted views:
    batch 1024 autodiff 296/320 against 370/376, hand-derived 335/353 against 379/382; batch
    512 autodiff 173/187 against 184/201; batch 64-256 level (e.g. 128 hand-derived 39.0/45.8
    against 37.5/48.1); the step compiled 0.15-0.4 s faster at every size.
    """
    x, window, stride = check_pool_args("max_pool2d_fast", x, window, stride, layout)
    return _max_pool2d(window, stride, layout, x)


def avg_pool2d_fast(x, window=2, stride=None, layout="CHW"):
    """`nnjax.layers.avg_pool2d` whose gradient is `avg_pool2d_backward` (hand-derived)."""
    x, window, stride = check_pool_args("avg_pool2d_fast", x, window, stride, layout)
    return _avg_pool2d(window, stride, layout, x)
