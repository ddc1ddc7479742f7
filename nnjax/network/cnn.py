"""The experiments' convolutional network: conv -> batch norm -> ReLU -> max pool, twice, then
dense -> ReLU -> dense.

Chapter sections "Convolutional Neural Networks" and "Normalization Techniques". With the
defaults, for one MNIST image x of shape (1, 28, 28) (valid 3x3 convolutions, 2x2 pooling):

    conv1 (1 -> 32, 3x3)   (32, 26, 26)    out_size = (28 - 3 + 2*0) / 1 + 1 = 26
    bn1, ReLU, max pool 2  (32, 13, 13)
    conv2 (32 -> 64, 3x3)  (64, 11, 11)
    bn2, ReLU, max pool 2  (64, 5, 5)      floor(11 / 2) = 5
    flatten                (1600,)
    dense1 (1600 -> 128), ReLU
    dense2 (128 -> 10)     logits z^[L]

`cnn_apply` maps ONE example. Batch norm reads the batch through a named axis, so training
runs under `jax.vmap(..., axis_name="batch")` (`cnn_loss` does that for a batch); inference
(train=False) uses the running statistics and vmaps like any layer. Each conv keeps its bias
b as the chapter's layer has it, although batch norm right after it subtracts the channel
mean and so cancels b (its gradient is zero in training).

The forward pass itself is `nnjax.backprop.cnn_forward`, which records every intermediate
value for the hand-derived `nnjax.backprop.cnn_grads`; `cnn_apply` is that pass without the
record.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax._checks import as_pair, check_positive_int
from nnjax.activations import relu
from nnjax.backprop.cnn import (
    POOL_WINDOW, _forward, check_cnn_batch, cnn_feature_shape, cnn_forward, cnn_num_blocks,
)
from nnjax.layers.conv import conv2d, conv2d_init
from nnjax.layers.dense import dense, dense_init
from nnjax.layers.normalization import batch_norm, batch_norm_init
from nnjax.layers.pooling import max_pool2d
from nnjax.losses import softmax_cross_entropy

# cnn_forward and cnn_num_blocks are nnjax.backprop's, listed here with the network too.
__all__ = ["cnn_init", "cnn_apply", "cnn_apply_batch", "cnn_loss", "cnn_loss_plain", "cnn_forward", "cnn_num_blocks"]


def cnn_init(key, in_shape=(1, 28, 28), channels=(32, 64), hidden=128, classes=10, kernel_size=3,
             init="he"):
    """Parameters and batch-norm state of the CNN.

    Args:
      key: a `jax.random` key.
      in_shape: (C, H, W) of one input image.
      channels: output channels of each conv block, (32, 64) by default; one block per entry.
      hidden: width of dense1.
      classes: number of logits K.
      kernel_size: int or (kh, kw), every conv's kernel (valid padding, stride 1).
      init: weight initialization of the conv and dense layers (see `nnjax.layers.dense_init`).

    Returns:
      (params, state): params {"conv1", "bn1", ..., "convN", "bnN", "dense1", "dense2"},
      conv{i} = {"W": (C_i, C_{i-1}, kh, kw), "b": (C_i,)}, bn{i} = {"gamma", "beta"} of shape
      (C_i,), dense1 = {"W": (hidden, C_N * H_N * W_N), "b"}, dense2 = {"W": (classes, hidden),
      "b"}; state {"bn1": {"mean", "var"}, ...} the running statistics.

    Raises:
      ValueError/TypeError: a size that is not a positive int, or an input too small for the blocks.
    """
    fn = "cnn_init"
    if not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3:
        raise TypeError(f"{fn}: in_shape must be (C, H, W), got {in_shape!r}")
    in_shape = tuple(check_positive_int(fn, f"in_shape[{i}]", d) for i, d in enumerate(in_shape))
    if not isinstance(channels, (tuple, list)) or not channels:
        raise TypeError(f"{fn}: channels must be a non-empty tuple of ints, one per conv block, got {channels!r}")
    channels = tuple(check_positive_int(fn, f"channels[{i}]", c) for i, c in enumerate(channels))
    hidden = check_positive_int(fn, "hidden", hidden)
    classes = check_positive_int(fn, "classes", classes)
    kernel = as_pair(fn, "kernel_size", kernel_size)
    features = cnn_feature_shape(in_shape, channels, kernel, fn)
    keys = jax.random.split(key, len(channels) + 2)
    params, state = {}, {}
    for i, (c_in, c_out) in enumerate(zip((in_shape[0],) + channels, channels), start=1):
        params[f"conv{i}"] = conv2d_init(keys[i - 1], c_in, c_out, kernel, init)
        params[f"bn{i}"], state[f"bn{i}"] = batch_norm_init(c_out)
    n_flat = features[0] * features[1] * features[2]
    params["dense1"] = dense_init(keys[-2], n_flat, hidden, init)
    params["dense2"] = dense_init(keys[-1], hidden, classes, init)
    return params, state


def cnn_apply(params, state, x, *, train, axis_name="batch"):
    """Logits of ONE image: (conv -> batch norm -> ReLU -> max pool) per block, then dense ->
    ReLU -> dense.

    Args:
      params, state: as `cnn_init` returns.
      x: one image (C, H, W), the `in_shape` the network was built for.
      train: batch statistics (True, under `jax.vmap(..., axis_name=axis_name)`) or the running
        ones (False, no named axis needed).
      axis_name: the batch axis name for batch norm in training.

    Returns:
      (logits (K,), new_state): new_state holds the updated running statistics (`state` itself
      when train=False); under vmap it is the same for every example (`out_axes=(0, None)`).
    """
    logits, new_state, _ = _forward("cnn_apply", params, state, x, train, axis_name)
    return logits, new_state


def cnn_apply_batch(params, state, X, *, train, device_axis=None, compute_dtype=None):
    """Logits of a batch of images: `cnn_apply` under `jax.vmap(..., axis_name="batch")`, with
    the convolutions run on the whole batch.

    The same values as vmapping `cnn_apply`. Every layer but the convolutions runs per
    example under `jax.vmap`; each convolution is `nnjax.backprop.conv2d_batch_fast`, chunked
    im2col matrix products whose gradient under `jax.grad` is the hand-derived batch-level
    one (dW with the batch contracted). `cnn_loss` and the training code use this.

    Args:
      params, state: as `cnn_init` returns.
      X: images (m, C, H, W).
      train: batch statistics and a state update (True) or the running statistics (False).
      device_axis: the name of an enclosing `shard_map`/`pmap` axis over which the batch is
        split, or None: batch norm's statistics then span every device's examples.
      compute_dtype: None, or a floating dtype such as "bfloat16": the mixed precision of
        `nnjax.backprop.cnn_logits_and_grads` (the im2col convolutions' and the dense layers'
        products on operands of that dtype, the rest in the parameters' dtype), whose
        hand-derived gradients autodiff of this then computes.

    Returns:
      (logits (m, K), new_state).
    """
    logits, new_state, _ = _forward("cnn_apply_batch", params, state, X, train, batch=True, device_axis=device_axis,
                                    compute_dtype=compute_dtype)
    return logits, new_state


def cnn_loss(params, state, X, Y, *, train=True):
    """Mean softmax cross-entropy over a batch: L = 1/m sum_i -sum_k y_ik log softmax(z_i)_k.

    Args:
      params, state: as `cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K).
      train: batch statistics and a state update (True) or the running statistics (False).

    Returns:
      (loss, new_state): `jax.grad(cnn_loss, has_aux=True)` gives the gradients that
      `nnjax.backprop.cnn_grads` derives by hand.
    """
    X = check_cnn_batch("cnn_loss", params, X, Y)
    logits, new_state = cnn_apply_batch(params, state, X, train=train)
    return jnp.mean(softmax_cross_entropy(logits, Y)), new_state


def cnn_loss_plain(params, state, X, Y):
    """`cnn_loss` (train=True) composed from the plain layers only, for checking gradients.

    conv2d -> batch_norm -> ReLU -> max_pool2d per block, then dense -> ReLU -> dense, one
    example at a time under `jax.vmap(..., axis_name="batch")`: no `jax.custom_vjp` inside,
    so `jax.grad` of it is autodiff all the way, where `cnn_loss` runs nnjax's hand-derived
    layer backwards (`nnjax.backprop.custom_vjp`) under autodiff. The same values as
    `cnn_loss`; slower. `nnjax.gradcheck` compares `nnjax.backprop.cnn_grads` with its
    gradient. Compile it with `nnjax.training.compiler_options(model_kind="cnn")` on a CPU
    (jaxlib 0.10.2's default fusion emitters miscompile its pooled-ReLU gradient; see
    `nnjax.training.CPU_COMPILER_OPTIONS`).

    Args:
      params, state: as `cnn_init` returns.
      X: images (m, C, H, W).
      Y: one-hot targets (m, K).

    Returns:
      (loss, new_state), as `cnn_loss` returns them.
    """
    X = check_cnn_batch("cnn_loss_plain", params, X, Y)
    num_blocks = cnn_num_blocks(params)

    def logits(x):
        h, new_state = x, {}
        for i in range(1, num_blocks + 1):
            z = conv2d(params[f"conv{i}"], h)
            u, new_state[f"bn{i}"] = batch_norm(params[f"bn{i}"], state[f"bn{i}"], z, train=True)
            h = max_pool2d(relu(u), POOL_WINDOW)
        return dense(params["dense2"], relu(dense(params["dense1"], h.reshape(-1)))), new_state

    Z, new_state = jax.vmap(logits, axis_name="batch", out_axes=(0, None))(X)
    return jnp.mean(softmax_cross_entropy(Z, Y)), new_state
