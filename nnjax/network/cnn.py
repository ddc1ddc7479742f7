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
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax._checks import as_pair, check_float_array, check_positive_int, check_rank, check_shape
from nnjax.activations import relu
from nnjax.layers.conv import conv2d, conv2d_init, conv_output_size
from nnjax.layers.dense import dense, dense_init
from nnjax.layers.normalization import batch_norm, batch_norm_init
from nnjax.layers.pooling import max_pool2d
from nnjax.losses import softmax_cross_entropy

__all__ = ["POOL_WINDOW", "cnn_init", "cnn_forward", "cnn_apply", "cnn_loss", "cnn_num_blocks", "check_batch"]

POOL_WINDOW = 2
"""Every block ends in a 2x2 max pool with stride 2, halving H and W (rounding down)."""


def _feature_shape(fn: str, in_shape, channels, kernel_size) -> tuple[int, int, int]:
    """(C, H, W) after the conv blocks, raising if an image of `in_shape` gets too small."""
    c, h, w = in_shape
    for i, c_out in enumerate(channels, start=1):
        h, w = conv_output_size(h, kernel_size[0]), conv_output_size(w, kernel_size[1])
        if min(h, w) < POOL_WINDOW:
            raise ValueError(f"{fn}: in_shape={tuple(in_shape)} is too small: after conv{i} the "
                             f"feature map is {h}x{w}, smaller than the {POOL_WINDOW}x{POOL_WINDOW} pool")
        c, h, w = c_out, h // POOL_WINDOW, w // POOL_WINDOW
    return c, h, w


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
    features = _feature_shape(fn, in_shape, channels, kernel)
    keys = jax.random.split(key, len(channels) + 2)
    params, state = {}, {}
    for i, (c_in, c_out) in enumerate(zip((in_shape[0],) + channels, channels), start=1):
        params[f"conv{i}"] = conv2d_init(keys[i - 1], c_in, c_out, kernel, init)
        params[f"bn{i}"], state[f"bn{i}"] = batch_norm_init(c_out)
    n_flat = features[0] * features[1] * features[2]
    params["dense1"] = dense_init(keys[-2], n_flat, hidden, init)
    params["dense2"] = dense_init(keys[-1], hidden, classes, init)
    return params, state


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
    kernel = W1.shape[2:]
    channels = tuple(params[f"conv{i}"]["W"].shape[0] for i in range(1, n + 1))
    c, h, w = _feature_shape(fn, x.shape, channels, kernel)
    n_in = params["dense1"]["W"].shape[1]
    if c * h * w != n_in:
        raise ValueError(f"{fn}: x of shape {x.shape} leaves ({c}, {h}, {w}) = {c * h * w} features "
                         f"after the conv blocks, but dense1['W'] takes {n_in}; build the network "
                         f"with cnn_init(key, in_shape=...) for this input size")
    return n


def check_batch(fn: str, params, X, Y):
    """Checks a batch: X (m, C, H, W) floats, Y (m, K) with K the logits of dense2; returns X."""
    X = check_float_array(fn, "X", X)
    check_rank(fn, "X", X, 4, "a batch (m, C, H, W)")
    cnn_num_blocks(params)
    classes = params["dense2"]["W"].shape[0]
    check_shape(fn, "Y", Y, (X.shape[0], classes),
                f" = (m, K) one-hot, m = {X.shape[0]} images of X and K = {classes} outputs of dense2")
    return X


def cnn_forward(params, state, x, *, train, axis_name="batch"):
    """`cnn_apply` that also returns every intermediate value (the cache backprop needs).

    Returns:
      (logits (K,), new_state, cache) with cache holding, per block i: "conv{i}" the conv
      output z, "bn{i}" the batch-norm output, "relu{i}" its ReLU a, "pool{i}" the pooled map;
      then "flat" (the flattened features), "dense1" z, "hidden" ReLU(z), and "logits".
    """
    return _forward("cnn_forward", params, state, x, train, axis_name)


def _forward(fn: str, params, state, x, train, axis_name):
    """`cnn_forward` for the public function `fn` (named in error messages)."""
    n = _check_input(fn, params, state, x)
    cache, new_state, h = {}, {}, x
    for i in range(1, n + 1):
        cache[f"conv{i}"] = conv2d(params[f"conv{i}"], h)
        cache[f"bn{i}"], new_state[f"bn{i}"] = batch_norm(
            params[f"bn{i}"], state[f"bn{i}"], cache[f"conv{i}"], train=train, axis_name=axis_name)
        cache[f"relu{i}"] = relu(cache[f"bn{i}"])
        h = cache[f"pool{i}"] = max_pool2d(cache[f"relu{i}"], POOL_WINDOW)
    cache["flat"] = h.reshape(-1)
    cache["dense1"] = dense(params["dense1"], cache["flat"])
    cache["hidden"] = relu(cache["dense1"])
    cache["logits"] = dense(params["dense2"], cache["hidden"])
    return cache["logits"], (new_state if train else state), cache


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
    X = check_batch("cnn_loss", params, X, Y)
    logits, new_state = jax.vmap(lambda x: cnn_apply(params, state, x, train=train, axis_name="batch"),
                                 axis_name="batch", out_axes=(0, None))(X)
    return jnp.mean(softmax_cross_entropy(logits, Y)), new_state
