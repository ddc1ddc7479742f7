"""Backpropagation through the experiments' CNN by hand: the forward pass that records every
intermediate value, then the chain of the layers' backward passes.

Chapter sections "Backpropagation Algorithm", "Convolutional Neural Networks" and
"Normalization Techniques". The forward (`cnn_forward`, one example), per block i,

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
      dgamma_i, dbeta_i, delta_z_i = batch_norm_batch_backward   through the batch mean and variance
      dW_i, db_i, delta_p_{i-1} = conv backward             correlation of input and delta,
                                                            full convolution with the flipped kernel

Every step runs on the whole batch, so the parameter gradients are never materialized per
example: the dense layers as dW = Delta^T A (the m outer products delta a^T summed by one
matrix product), the convolutions with `conv2d_weight_grad` (chunked im2col products, the
batch contracted inside) and `conv2d_input_grad` (one convolution). Pooling runs its
per-example backward under `jax.vmap`; batch norm's backward takes the whole batch
(`batch_norm_batch_backward`: its parameter gradients are the sums its means need). The
forward of a batch (`_forward(..., batch=True)`, which `nnjax.network.cnn_apply_batch` and
the training code share) runs the convolutions batch-level too (`conv2d_batch_fast`) and
every other layer per example under `jax.vmap`.
It computes the same values in a cheaper order: p_i = ReLU(maxpool(u_i)) (max commutes with
the non-decreasing ReLU), so its backward is delta_v_i = delta_p_i * ReLU'(p_i) on the small
map, then maxpool_backward(u_i, delta_v_i); it flattens p_N channels-last, with W1's
columns reordered to match, so no feature map is transposed; and in training, a block whose
patches are narrower than its output (`nnjax.layers.conv2d_batch_norm_pays`: the first, 10
patch features for 32 channels) runs conv and batch norm as one layer,
`conv2d_batch_norm_fast`: u_i is one product of the patches with the rescaled kernel, batch
norm's statistics come from the patches' Gram matrix, and its backward
(`conv2d_batch_norm_backward`) forms neither z_i nor delta_z_i for dW_i, db_i, dgamma_i and
dbeta_i.

The network's own functions (`nnjax.network.cnn_init`, `cnn_apply`, `cnn_loss`) build on
`cnn_forward`; it lives here, below the network, as the first half of backpropagation.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from nnjax._checks import check_float_array, check_rank, check_shape, mixed_dtype
from nnjax.activations import relu
from nnjax.backprop.activation import activation_backward, softmax_cross_entropy_backward
from nnjax.backprop.conv import conv2d_input_grad, conv2d_param_grads
from nnjax.backprop.conv_norm import conv2d_batch_norm_backward
from nnjax.backprop.dense import dense_batch_backward
from nnjax.backprop.custom_vjp import (
    batch_norm_batch_fast, conv2d_batch_fast, conv2d_batch_norm_fast, dense_batch_fast, max_pool2d_fast,
)
from nnjax.backprop.normalization import BATCH_AXIS as _AXIS
from nnjax.backprop.normalization import batch_axes, batch_norm_batch_backward
from nnjax.backprop.pooling import max_pool2d_backward
from nnjax.layers.conv import conv2d, conv_output_size
from nnjax.layers.conv_norm import conv2d_batch_norm_pays
from nnjax.layers.dense import dense
from nnjax.layers.layout import to_channels_first, to_channels_last
from nnjax.layers.normalization import batch_norm
from nnjax.losses import softmax_cross_entropy

__all__ = ["POOL_WINDOW", "cnn_feature_shape", "cnn_num_blocks",
           "check_cnn_batch", "cnn_forward", "cnn_logits_and_grads", "cnn_value_and_grads", "cnn_grads"]

POOL_WINDOW = 2
"""Every block ends in a 2x2 max pool with stride 2, halving H and W (rounding down)."""

_LAYOUT = "HWC"
"""The CNN's feature maps are channels-last inside (`nnjax.layers.layout`): measured on a 2-core
CPU (jax 0.10.2) at batch 128, nnjax's training step took 118 ms channels-last against 135 ms
channels-first (autodiff), 110 against 125 ms (hand-derived)."""
_STRIDE = (1, 1)
_VALID = ((0, 0), (0, 0))
"""The CNN's convolutions: stride 1, valid padding."""


def cnn_feature_shape(in_shape, channels, kernel_size, fn: str = "cnn_feature_shape") -> tuple[int, int, int]:
    """(C, H, W) of the feature map after the conv blocks (what dense1 flattens).

    Each block maps (H, W) to (H - kh + 1, W - kw + 1) (valid conv: the chapter's
    out_size = (in_size - kernel_size + 2 * 0) / 1 + 1), then halves it, rounding down (pool).

    Args:
      in_shape: (C, H, W) of one input image.
      channels: output channels of each block.
      kernel_size: (kh, kw).
      fn: the public function asking, named in error messages.

    Raises:
      ValueError: the image gets smaller than the kernel or the pool window on the way.
    """
    c, h, w = in_shape
    for i, c_out in enumerate(channels, start=1):
        if h < kernel_size[0] or w < kernel_size[1]:
            raise ValueError(f"{fn}: in_shape={tuple(in_shape)} is too small for {len(channels)} conv "
                             f"blocks: before conv{i} the feature map is {h}x{w}, smaller than the "
                             f"{kernel_size[0]}x{kernel_size[1]} kernel")
        h, w = conv_output_size(h, kernel_size[0]), conv_output_size(w, kernel_size[1])
        if min(h, w) < POOL_WINDOW:
            raise ValueError(f"{fn}: in_shape={tuple(in_shape)} is too small: after conv{i} the "
                             f"feature map is {h}x{w}, smaller than the {POOL_WINDOW}x{POOL_WINDOW} pool")
        c, h, w = c_out, h // POOL_WINDOW, w // POOL_WINDOW
    return c, h, w


def cnn_num_blocks(params) -> int:
    """The number of conv blocks in `params` (conv1, conv2, ...); checks the dict's keys."""
    fn = "cnn_num_blocks"
    if not isinstance(params, dict):
        raise TypeError(f"{fn}: params must be the dict cnn_init returns, got {type(params).__name__}")
    n = sum(1 for k in params if k.startswith("conv"))
    expected = {f"{layer}{i}" for i in range(1, n + 1) for layer in ("conv", "bn")} | {"dense1", "dense2"}
    if n == 0 or set(params) != expected:
        raise ValueError(f"{fn}: params has keys {sorted(params)}, expected {sorted(expected)} "
                         f"as cnn_init returns")
    return n


def _check_input(fn: str, params, state, x) -> int:
    """Checks one example against the network's first conv and dense1; returns the block count."""
    n = cnn_num_blocks(params)
    if not isinstance(state, dict) or set(state) != {f"bn{i}" for i in range(1, n + 1)}:
        raise ValueError(f"{fn}: state must hold the running statistics bn1..bn{n} as cnn_init "
                         f"returns, got {sorted(state) if isinstance(state, dict) else state!r}")
    x = check_float_array(fn, "x", x)
    check_rank(fn, "x", x, 3, "one example (C, H, W); for a batch use cnn_loss or "
                              "jax.vmap(..., axis_name='batch')")
    W1 = params["conv1"]["W"]
    check_shape(fn, "x", x, (W1.shape[1], None, None),
                f" = (C, H, W) with C = {W1.shape[1]}, the input channels of conv1['W'] {W1.shape}")
    channels = tuple(params[f"conv{i}"]["W"].shape[0] for i in range(1, n + 1))
    c, h, w = cnn_feature_shape(x.shape, channels, W1.shape[2:], fn)
    n_in = params["dense1"]["W"].shape[1]
    if c * h * w != n_in:
        raise ValueError(f"{fn}: x of shape {x.shape} leaves ({c}, {h}, {w}) = {c * h * w} features "
                         f"after the conv blocks, but dense1['W'] takes {n_in}; build the network "
                         f"with cnn_init(key, in_shape=...) for this input size")
    return n


def check_cnn_batch(fn: str, params, X, Y):
    """Checks a batch: X (m, C, H, W) floats, Y (m, K) with K the outputs of dense2; returns X."""
    X = check_float_array(fn, "X", X)
    check_rank(fn, "X", X, 4, "a batch (m, C, H, W)")
    cnn_num_blocks(params)
    classes = params["dense2"]["W"].shape[0]
    check_shape(fn, "Y", Y, (X.shape[0], classes),
                f" = (m, K) one-hot, m = {X.shape[0]} images of X and K = {classes} outputs of dense2")
    return X


def _conv(params, x):
    """`conv2d` on ONE channels-last image (`cnn_forward`, `cnn_apply`). Every pool runs as
    `max_pool2d_fast` (the hand-derived mask backward)."""
    return conv2d(params, x, layout=_LAYOUT)


def _per_example(f, in_axes=0, out_axes=0):
    return f


def _vmapped(f, in_axes=0, out_axes=0):
    return jax.vmap(f, in_axes=in_axes, out_axes=out_axes, axis_name=_AXIS)


def _conv_batch(params, X, compute_dtype=None):
    """`conv2d_batch_fast` on a channels-last batch: one im2col product forward and one for
    dW and db under autodiff (`nnjax.layers.conv2d_batch` has the measurements)."""
    return conv2d_batch_fast(params, X, layout=_LAYOUT, compute_dtype=compute_dtype)


def _dense1_channels_last(params, hwc):
    """dense1 with its weight columns reordered from the chapter's (C, H, W) flattening of the
    last pooled map to the (H, W, C) one: W_hwc f_hwc = W f. The batch path flattens its
    channels-last maps as they lie, so no activation is ever transposed (the small weight
    matrix is instead, once per step)."""
    h, w, c = hwc
    W = params["W"]
    return {"W": W.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(W.shape), "b": params["b"]}


def _dense1_channels_first_grad(dW_hwc, hwc):
    """dL/dW of dense1 from the gradient of its `_dense1_channels_last` weights."""
    h, w, c = hwc
    return dW_hwc.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(dW_hwc.shape)


def _forward(fn: str, params, state, x, train, axis_name="batch", *, batch=False, device_axis=None,
             compute_dtype=None):
    """`cnn_forward` with the feature maps channels-last (H, W, C) in the cache, naming the
    public function `fn` in error messages.

    With batch=True, x is a batch (m, C, H, W) and every cached value gets a leading batch
    axis: the convolutions and dense layers run batch-level (`_conv_batch`, `dense_batch_fast`),
    batch norm in training on the whole batch (`batch_norm_batch_fast`, over "batch" and
    `device_axis`), the other layers per example under `jax.vmap`; `axis_name` is then
    `batch_axes(device_axis)`. Two things differ in the batch cache, for speed: "flat" is the
    (H, W, C) flattening, multiplied by `_dense1_channels_last`'s weights (no activation is
    transposed); and each block pools before its ReLU, ReLU(maxpool(u)) = maxpool(ReLU(u))
    (max commutes with a non-decreasing function), so the ReLU and its backward run on a map
    4x smaller and there is no "relu{i}".
    In training, the blocks `conv2d_batch_norm_pays` picks run as one layer,
    `conv2d_batch_norm_fast`, and have no "conv{i}" (z_i is never formed).
    A `compute_dtype` (batch only; checked here, in `fn`'s name) runs the convolutions and
    dense layers in mixed precision; the fused blocks, batch norm and pooling stay in the
    parameters' dtype.
    """
    each = _vmapped if batch else _per_example
    if batch:
        axis_name = batch_axes(device_axis)
        x = check_float_array(fn, "X", x)
        check_rank(fn, "X", x, 4, "a batch (m, C, H, W); for one image use cnn_apply")
    n = _check_input(fn, params, state, x[0] if batch else x)
    compute_dtype = mixed_dtype(fn, compute_dtype, params["conv1"]["W"].dtype)
    conv = partial(_conv_batch, compute_dtype=compute_dtype) if batch else _conv
    cache, new_state, h = {}, {}, to_channels_last(x, "CHW")
    pool = each(lambda a: max_pool2d_fast(a, POOL_WINDOW, layout=_LAYOUT))
    for i in range(1, n + 1):
        conv_params, bn_params, bn_state = params[f"conv{i}"], params[f"bn{i}"], state[f"bn{i}"]
        if batch and train and conv2d_batch_norm_pays(conv_params["W"]):
            cache[f"bn{i}"], new_state[f"bn{i}"] = conv2d_batch_norm_fast(
                conv_params, bn_params, bn_state, h, device_axis=device_axis, layout=_LAYOUT)
        else:
            cache[f"conv{i}"] = conv(conv_params, h)
            norm = partial(batch_norm_batch_fast, device_axis=device_axis, layout=_LAYOUT) if batch and train \
                else each(lambda p, s, z: batch_norm(p, s, z, train=train, axis_name=axis_name, layout=_LAYOUT),
                          in_axes=(None, None, 0), out_axes=(0, None))
            cache[f"bn{i}"], new_state[f"bn{i}"] = norm(bn_params, bn_state, cache[f"conv{i}"])
        if batch:
            h = cache[f"pool{i}"] = relu(pool(cache[f"bn{i}"]))
        else:
            cache[f"relu{i}"] = relu(cache[f"bn{i}"])
            h = cache[f"pool{i}"] = pool(cache[f"relu{i}"])
    if batch:
        dense1 = _dense1_channels_last(params["dense1"], h.shape[1:])
        cache["flat"] = h.reshape(h.shape[0], -1)
    else:
        dense1 = params["dense1"]
        cache["flat"] = to_channels_first(h, _LAYOUT).reshape(-1)
    linear = partial(dense_batch_fast, compute_dtype=compute_dtype) if batch else dense
    cache["dense1"] = linear(dense1, cache["flat"])
    cache["hidden"] = relu(cache["dense1"])
    cache["logits"] = linear(params["dense2"], cache["hidden"])
    return cache["logits"], (new_state if train else state), cache


def cnn_forward(params, state, x, *, train, axis_name="batch"):
    """The CNN's forward pass on ONE image, recording every intermediate value.

    `nnjax.network.cnn_apply` is this without the record. Arguments as `cnn_apply`.

    Returns:
      (logits (K,), new_state, cache) with cache holding, per block i: "conv{i}" the conv
      output z_i, "bn{i}" the batch-norm output u_i, "relu{i}" its ReLU a_i, "pool{i}" the
      pooled map p_i, each (C_i, H, W); then "flat" (the flattened features f), "dense1"
      W1 f + b1, "hidden" ReLU of it, and "logits".
    """
    logits, new_state, cache = _forward("cnn_forward", params, state, x, train, axis_name)
    maps = {k: to_channels_first(v, _LAYOUT) for k, v in cache.items() if v.ndim == 3}
    return logits, new_state, {**cache, **maps}


def _conv_batch_backward(params, X, Delta, input_grad: bool, compute_dtype=None):
    """A valid, stride-1 conv layer's backward on a channels-last batch, each gradient ONE
    convolution.

    dW = sum over examples of corr(x, delta), db = delta summed over examples and pixels (both
    from one product, `conv2d_param_grads`), dX = full convolution of delta with the flipped
    kernel (`conv2d_backward`'s formulas, in their batch form). X: (m, H, W, C_in), Delta:
    (m, H', W', C_out); dX is None unless `input_grad` (the image's own gradient is not needed).
    A `compute_dtype` runs both in mixed precision (dX as a product and col2im).
    """
    W = params["W"]
    grads = conv2d_param_grads(X, Delta, W.shape[2:], _STRIDE, _VALID, _LAYOUT, compute_dtype=compute_dtype)
    if not input_grad:
        return grads, None
    return grads, conv2d_input_grad(W, Delta, X.shape[1:3], _STRIDE, _VALID, _LAYOUT, compute_dtype)


def _blocks_backward(params, X, cache, delta, num_blocks, device_axis, compute_dtype=None):
    """The batch's backward through the conv blocks, from delta = dL/dp_N (m, H_N, W_N, C_N).

    X: the images channels-last (m, H, W, C); cache: `_forward`'s, batched; device_axis and
    compute_dtype: as `cnn_logits_and_grads`.

    Returns:
      {"conv{i}": {"W", "b"}, "bn{i}": {"gamma", "beta"}}, summed over the batch.
    """
    grads = {}
    for i in range(num_blocks, 0, -1):
        delta = activation_backward("relu", cache[f"pool{i}"], delta)  # 1[v > 0] = 1[ReLU(v) > 0], v = maxpool(u)
        delta = jax.vmap(lambda a, d: max_pool2d_backward(a, d, POOL_WINDOW, layout=_LAYOUT))(
            cache[f"bn{i}"], delta)
        conv_input = cache[f"pool{i - 1}"] if i > 1 else X
        if conv2d_batch_norm_pays(params[f"conv{i}"]["W"]):  # as the forward ran it: one layer
            grads[f"conv{i}"], grads[f"bn{i}"], delta = conv2d_batch_norm_backward(
                params[f"conv{i}"], params[f"bn{i}"], conv_input, delta, device_axis=device_axis,
                layout=_LAYOUT, input_grad=i > 1)
        else:
            grads[f"bn{i}"], delta = batch_norm_batch_backward(params[f"bn{i}"], cache[f"conv{i}"], delta,
                                                               device_axis=device_axis, layout=_LAYOUT)
            grads[f"conv{i}"], delta = _conv_batch_backward(params[f"conv{i}"], conv_input, delta, i > 1,
                                                            compute_dtype)
    return grads


def cnn_logits_and_grads(params, state, X, Y, *, device_axis=None, compute_dtype=None):
    """The batch's logits, new batch-norm state and gradients of `nnjax.network.cnn_loss`
    (train=True), by hand: the forward pass, then the chain of backward passes.

    Args:
      params, state: as `nnjax.network.cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K) (soft targets summing to 1 work too).
      device_axis: the name of an enclosing `shard_map`/`pmap` axis over which the batch is
        split, or None. Batch norm's statistics (and their backward) then span every device's
        examples; the gradients are those of this device's mean loss, so their mean over the
        devices (`jax.lax.pmean`) is the whole batch's gradient.
      compute_dtype: None, or a floating dtype such as "bfloat16" for mixed precision: the
        convolutions that run as im2col products (all but the fused first block) and the
        dense layers take operands of that dtype in every product, forward and backward,
        summed in the parameters' dtype; everything else (the first block's fused conv and
        batch norm, batch norm, pooling, ReLU, the loss, the gradients) stays in it. The
        same numbers as autodiff of `nnjax.network.cnn_apply_batch` with that compute_dtype.

    Returns:
      (logits (m, K), new_state, grads): grads with params' structure.
    """
    X = check_cnn_batch("cnn_grads", params, X, Y)
    X = X.astype(jnp.result_type(X, params["conv1"]["W"]))
    num_blocks = cnn_num_blocks(params)
    logits, new_state, cache = _forward("cnn_grads", params, state, X, True, batch=True, device_axis=device_axis,
                                        compute_dtype=compute_dtype)
    grads = {}
    delta = softmax_cross_entropy_backward(logits, Y) / X.shape[0]
    grads["dense2"], delta = dense_batch_backward(params["dense2"], cache["hidden"], delta, compute_dtype)
    delta = activation_backward("relu", cache["dense1"], delta)
    pooled = cache[f"pool{num_blocks}"]
    dense1_grads, delta = dense_batch_backward(_dense1_channels_last(params["dense1"], pooled.shape[1:]),
                                               cache["flat"], delta, compute_dtype)
    grads["dense1"] = {"W": _dense1_channels_first_grad(dense1_grads["W"], pooled.shape[1:]),
                       "b": dense1_grads["b"]}
    delta = delta.reshape(pooled.shape)
    grads.update(_blocks_backward(params, to_channels_last(X, "CHW"), cache, delta, num_blocks, device_axis,
                                  compute_dtype))
    return logits, new_state, grads


def cnn_value_and_grads(params, state, X, Y, *, compute_dtype=None):
    """Loss, new batch-norm state and gradients of `nnjax.network.cnn_loss` (train=True), by hand.

    The same values as `jax.value_and_grad(cnn_loss, has_aux=True)(params, state, X, Y)`,
    arranged ((loss, new_state), grads).

    Args:
      params, state: as `nnjax.network.cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K) (soft targets summing to 1 work too).
      compute_dtype: as `cnn_logits_and_grads`.

    Returns:
      ((loss, new_state), grads): loss the mean cross-entropy, new_state the updated running
      statistics, grads with params' structure.
    """
    logits, new_state, grads = cnn_logits_and_grads(params, state, X, Y, compute_dtype=compute_dtype)
    return (jnp.mean(softmax_cross_entropy(logits, Y)), new_state), grads


def cnn_grads(params, state, X, Y, *, compute_dtype=None):
    """Gradients of the CNN's mean softmax cross-entropy over a batch, by hand-derived backprop.

    Equal to `jax.grad(nnjax.network.cnn_loss, has_aux=True)(params, state, X, Y)`: the chain
    of softmax_cross_entropy_backward, dense backward (batch form), activation_backward,
    max_pool2d_backward, batch_norm_batch_backward and the conv backward (batch form), described in
    this module's docstring. `cnn_value_and_grads` also returns the loss.

    Args:
      params, state: as `nnjax.network.cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K).
      compute_dtype: as `cnn_logits_and_grads`.

    Returns:
      (grads, new_state): grads with params' structure; new_state the running statistics
      after this batch (batch norm runs in training mode).
    """
    (_, new_state), grads = cnn_value_and_grads(params, state, X, Y, compute_dtype=compute_dtype)
    return grads, new_state
