"""Batch, layer, instance and group normalization.

Chapter section "Normalization Techniques". Each technique standardizes values over a set of
axes and then rescales them with learnable gamma and beta:

    mu      = mean of x over the axes
    sigma^2 = mean of (x - mu)^2 over the axes              (biased variance)
    x_hat   = (x - mu) / sqrt(sigma^2 + epsilon)
    y       = gamma * x_hat + beta

They differ only in the axes (the chapter's table):

    batch norm      the batch (a named `jax.vmap`/`pmap` axis), and H, W for images
    layer norm      every axis of one example (the chapter's mu_l, sigma_l^2 over d features)
    instance norm   H, W of each channel
    group norm      H, W and the channels of each group of C / G channels

so all four share one helper, `_standardize`, that takes the local axes of the example and an
optional named axis. Every function maps ONE example; batch norm reaches the rest of the batch
through the named axis, which makes the same code synchronized batch norm across devices
under `pmap` or `shard_map`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._checks import (
    check_dict, check_float_array, check_float_leaves, check_number, check_positive_int, check_rank, check_shape,
)
from nnjax.layers.layout import channel_axis, check_layout

__all__ = [
    "batch_norm_init", "batch_norm", "layer_norm_init", "layer_norm",
    "instance_norm_init", "instance_norm", "group_norm_init", "group_norm", "UnboundAxisError",
]


def _check_eps(fn: str, eps) -> float:
    """Returns eps as a float, or raises ValueError/TypeError unless it is a number > 0."""
    eps = check_number(fn, "eps", eps)
    if not eps > 0:
        raise ValueError(f"{fn}: eps must be > 0 (it keeps sqrt(sigma^2 + eps) away from 0), got {eps}")
    return eps


def _check_params(fn: str, params, expected_shape, because: str, arg: str = "params") -> None:
    """Checks that `params` (the argument named `arg`) is a dict with "gamma" and "beta" of
    shape `expected_shape`."""
    layer = next(name for name in ("group_norm", "instance_norm", "layer_norm", "batch_norm") if name in fn)
    check_dict(fn, arg, params, ("gamma", "beta"), f"{layer}_init")
    check_float_leaves(fn, arg, params)
    check_shape(fn, f'{arg}["gamma"]', params["gamma"], expected_shape, because)
    check_shape(fn, f'{arg}["beta"]', params["beta"], expected_shape, because)


def _per_channel(v, x, layout="CHW"):
    """Reshapes a per-channel vector (C,) to broadcast against x: (C,), (C, H, W) or (H, W, C)."""
    return v if layout == "HWC" else v.reshape(v.shape + (1,) * (x.ndim - 1))


def _feature_axes(x, layout):
    """(the feature/channel axis, the other axes of one example) for batch norm's x."""
    axis = channel_axis(layout) if x.ndim == 3 else 0
    return axis, tuple(a for a in range(x.ndim) if a != axis)


def _axis_names(axis_name) -> tuple:
    """`axis_name` as a tuple of names: () for None, a 1-tuple for one name."""
    if axis_name is None:
        return ()
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def _mean(x, axes, axis_name):
    """Mean over the local `axes` of one example and, if given, across the named axis
    `axis_name` (or each of a tuple of names in turn: a vmapped batch split across devices,
    every device holding an equal share, so the mean of means is the mean)."""
    m = jnp.mean(x, axis=axes, keepdims=True)
    for name in _axis_names(axis_name):
        m = jax.lax.pmean(m, name)
    return m


def _standardize(x, axes, axis_name, eps):
    """The shared forward: x_hat = (x - mu) / sqrt(sigma^2 + eps) over `axes` (and `axis_name`).

    Args:
      x: one example.
      axes: tuple of x's axes to average over (may be empty when only the named axis counts).
      axis_name: a `vmap`/`pmap` axis name to average across as well, or None.
      eps: epsilon.

    Returns:
      (x_hat, mu, sigma^2), mu and sigma^2 with keepdims over `axes`.
    """
    mu = _mean(x, axes, axis_name)
    var = _mean(jnp.square(x - mu), axes, axis_name)
    return (x - mu) * jax.lax.rsqrt(var + eps), mu, var


class UnboundAxisError(NameError, ValueError):
    """Batch statistics asked for outside the `vmap`/`pmap`/`shard_map` that names their axis.
    A `NameError` (what JAX raises for an unbound axis name) and a `ValueError` (a bad
    setting, as the API's errors are)."""


def _values_per_feature(fn: str, axis_name, x, features: int) -> int:
    """m, the values per feature the batch statistics average over (examples along the named
    axis times each example's pixels); a clear error outside vmap/pmap/shard_map, or for m < 2."""
    try:
        examples = math.prod(jax.lax.psum(1, name) for name in _axis_names(axis_name))
    except NameError as err:
        forward_only = "" if fn.endswith("_backward") else ", or pass train=False to use the running statistics"
        raise UnboundAxisError(
            f"{fn}: batch statistics need the batch axis {axis_name!r} but it is not bound: batch "
            f"norm maps one example and reads the batch statistics across that axis. Wrap the call "
            f"in jax.vmap(..., axis_name={axis_name!r}) (or pmap/shard_map with that axis name){forward_only}"
        ) from err
    m = examples * (x.size // features)
    if isinstance(m, int) and m < 2:
        raise ValueError(f"{fn}: batch statistics need more than one value per feature to estimate a "
                         f"variance, got a batch of {m} for x of shape {x.shape}")
    return m


def _check_batch_norm_input(fn: str, params, x, layout):
    """Checks x is one example (F,), (C, H, W) or (H, W, C) and gamma, beta are (F,) / (C,) to
    match; returns (x, number of features)."""
    layout = check_layout(fn, layout)
    x = check_float_array(fn, "x", x)
    if x.ndim not in (1, 3):
        raise ValueError(f"{fn}: x has shape {x.shape} (rank {x.ndim}), expected one example of "
                         f"shape (F,) or ({', '.join(layout)}); batch it with jax.vmap")
    features = x.shape[_feature_axes(x, layout)[0]]
    _check_params(fn, params, (features,), f", the features (channels) of x of shape {x.shape}")
    return x, features


def check_batch_norm_batch(fn: str, params, X, layout):
    """`_check_batch_norm_input` for a whole batch X: (m, F), (m, C, H, W) or (m, H, W, C), at
    least one example; returns (X, number of features)."""
    layout = check_layout(fn, layout)
    X = check_float_array(fn, "X", X)
    check_rank(fn, "X", X, {2, 4}, f"a batch (m, F) or (m, {', '.join(layout)})")
    if X.shape[0] == 0:
        raise ValueError(f"{fn}: X has shape {X.shape}, an empty batch; it needs at least one example")
    features = X.shape[1 + (channel_axis(layout) if X.ndim == 4 else 0)]
    _check_params(fn, params, (features,), f", the features (channels) of X of shape {X.shape}")
    return X, features


def check_running_statistics(fn: str, state, features: int, momentum, because: str) -> None:
    """Checks batch norm's running statistics {"mean", "var"}, each (features,), and its momentum.

    Raises:
      AssertionError (chex) for a statistic of another shape, `because` appended to the
      message; ValueError for a momentum outside [0, 1], TypeError for one that is not a
      number (a traced momentum is not checked).
    """
    check_dict(fn, "state", state, ("mean", "var"), "batch_norm_init")
    check_float_leaves(fn, "state", state)
    check_shape(fn, 'state["mean"]', state["mean"], (features,), because)
    check_shape(fn, 'state["var"]', state["var"], (features,), because)
    if isinstance(momentum, jax.core.Tracer):
        return
    if isinstance(momentum, (jax.Array, np.ndarray)) and momentum.ndim > 0:
        values = np.asarray(momentum)
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
            raise TypeError(f"{fn}: momentum must hold real numbers, got dtype {values.dtype}")
    else:
        values = check_number(fn, "momentum", momentum)
    if not np.all((0.0 <= values) & (values <= 1.0)):
        raise ValueError(f"{fn}: momentum must be in [0, 1], got {momentum}")


def running_statistics(state, mu, var, count, momentum):
    """The running statistics after a batch with per-feature mean `mu` and biased variance
    `var` over `count` values: mean <- momentum * mean + (1 - momentum) * mu, var <- momentum *
    var + (1 - momentum) * var * count / (count - 1) (the unbiased variance)."""
    return {"mean": momentum * state["mean"] + (1 - momentum) * mu,
            "var": momentum * state["var"] + (1 - momentum) * var * (count / (count - 1))}


def batch_norm_init(num_features):
    """Parameters and running statistics of a batch-norm layer.

    Args:
      num_features: F for inputs (F,), or C for images (C, H, W).

    Returns:
      (params, state): params {"gamma": ones (F,), "beta": zeros (F,)}, so the layer starts as
      the plain standardization; state {"mean": zeros (F,), "var": ones (F,)}, the running
      statistics used at inference.
    """
    f = check_positive_int("batch_norm_init", "num_features", num_features)
    return ({"gamma": jnp.ones((f,)), "beta": jnp.zeros((f,))},
            {"mean": jnp.zeros((f,)), "var": jnp.ones((f,))})


def batch_norm(params, state, x, *, train, axis_name="batch", momentum=0.9, eps=1e-5, layout="CHW"):
    """Batch normalization of one example, with the statistics of its mini-batch.

    For a mini-batch {x_i}_{i=1}^m, per feature (per channel for images, where the m values are
    every pixel of every example):

        mu_B      = 1/m sum_i x_i
        sigma_B^2 = 1/m sum_i (x_i - mu_B)^2
        x_hat_i   = (x_i - mu_B) / sqrt(sigma_B^2 + epsilon)
        y_i       = gamma x_hat_i + beta

    With train=True the batch is the named axis `axis_name`: call this under
    `jax.vmap(..., axis_name=axis_name)` (or `pmap`/`shard_map`, where the statistics are then
    synchronized across devices). The running statistics move towards the batch's:
    `mean <- momentum * mean + (1 - momentum) * mu_B` and
    `var <- momentum * var + (1 - momentum) * sigma_B^2 * m / (m - 1)` (the unbiased variance;
    note PyTorch's `momentum` is our 1 - momentum). With train=False it uses the running
    statistics in place of mu_B and sigma_B^2, needs no named axis, and returns `state` as is.

    Args:
      params: {"gamma": (F,), "beta": (F,)}.
      state: {"mean": (F,), "var": (F,)} running statistics.
      x: one example, (F,) or (C, H, W) with F = C ((H, W, C) with layout="HWC").
      train: use batch statistics (True) or the running ones (False).
      axis_name: the batch axis name of the enclosing vmap/pmap (train=True only); a tuple of
        names averages across all of them (e.g. devices and the vmapped batch).
      momentum: weight of the old running statistics, in [0, 1].
      eps: epsilon > 0.
      layout: "CHW" or "HWC" for an image x (`nnjax.layers.layout`); ignored for x (F,).

    Returns:
      (y, new_state): y of x's shape; new_state like `state`. Under vmap, new_state is the same
      for every example, so `out_axes=(0, None)` returns it once.

    Raises:
      NameError: train=True outside a vmap/pmap/shard_map binding `axis_name`.
      ValueError: train=True with a single value per feature (m = 1: no variance).
    """
    fn = "batch_norm"
    x, features = _check_batch_norm_input(fn, params, x, layout)
    check_running_statistics(fn, state, features, momentum, f" to match x of shape {x.shape}")
    if not isinstance(train, bool):
        raise TypeError(f"{fn}: train must be True or False, got {train!r}")
    eps = _check_eps(fn, eps)
    gamma, beta = _per_channel(params["gamma"], x, layout), _per_channel(params["beta"], x, layout)
    if not train:
        mean, var = _per_channel(state["mean"], x, layout), _per_channel(state["var"], x, layout)
        return gamma * (x - mean) * jax.lax.rsqrt(var + eps) + beta, state
    _, spatial = _feature_axes(x, layout)
    m = _values_per_feature(fn, axis_name, x, features)
    x_hat, mu, var = _standardize(x, spatial, axis_name, eps)
    return gamma * x_hat + beta, running_statistics(state, mu.reshape(-1), var.reshape(-1), m, momentum)


def layer_norm_init(shape):
    """Parameters of a layer-norm layer for examples of `shape` (an int or a tuple of ints).

    Returns:
      {"gamma": ones(shape), "beta": zeros(shape)}.
    """
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    if not isinstance(dims, (tuple, list)):
        raise TypeError(f"layer_norm_init: shape must be an int or a tuple of ints (one example's "
                        f"shape), got {shape!r}")
    dims = tuple(check_positive_int("layer_norm_init", f"shape[{i}]", d) for i, d in enumerate(dims))
    return {"gamma": jnp.ones(dims), "beta": jnp.zeros(dims)}


def layer_norm(params, x, eps=1e-5):
    """Layer normalization: statistics over every value of ONE example.

        mu_l      = 1/d sum_j x_j
        sigma_l^2 = 1/d sum_j (x_j - mu_l)^2
        y         = gamma * (x - mu_l) / sqrt(sigma_l^2 + epsilon) + beta

    The same in training and inference, and it works with batch size 1.

    Args:
      params: {"gamma", "beta"}, each of x's shape.
      x: one example, any shape (d = x.size values).
      eps: epsilon > 0.

    Returns:
      y of x's shape.
    """
    fn = "layer_norm"
    x = check_float_array(fn, "x", x)
    _check_params(fn, params, x.shape, " = x.shape (layer norm scales every value)")
    x_hat, _, _ = _standardize(x, tuple(range(x.ndim)), None, _check_eps(fn, eps))
    return params["gamma"] * x_hat + params["beta"]


def _check_image(fn: str, params, x):
    """Checks x is one image (C, H, W) and gamma, beta are (C,)."""
    x = check_float_array(fn, "x", x)
    check_rank(fn, "x", x, 3, "(C, H, W), one example")
    _check_params(fn, params, (x.shape[0],), f" = (C,) to match x of shape {x.shape}")
    return x


def _group_norm(params, x, num_groups, eps):
    """Group norm on a checked image: standardize each group of C / G channels over (c, H, W)."""
    c, h, w = x.shape
    grouped = x.reshape(num_groups, c // num_groups, h, w)
    x_hat, _, _ = _standardize(grouped, (1, 2, 3), None, eps)
    return _per_channel(params["gamma"], x) * x_hat.reshape(x.shape) + _per_channel(params["beta"], x)


def instance_norm_init(num_channels):
    """Parameters of instance norm: {"gamma": ones (C,), "beta": zeros (C,)}."""
    c = check_positive_int("instance_norm_init", "num_channels", num_channels)
    return {"gamma": jnp.ones((c,)), "beta": jnp.zeros((c,))}


def instance_norm(params, x, eps=1e-5):
    """Instance normalization: each channel of one image standardized over its H x W pixels.

        mu_c      = 1/(HW) sum_{h,w} x_{c,h,w}
        sigma_c^2 = 1/(HW) sum_{h,w} (x_{c,h,w} - mu_c)^2
        y_c       = gamma_c (x_c - mu_c) / sqrt(sigma_c^2 + epsilon) + beta_c

    It is group norm with one channel per group.

    Args:
      params: {"gamma": (C,), "beta": (C,)}.
      x: one image (C, H, W).
      eps: epsilon > 0.

    Returns:
      y of shape (C, H, W).
    """
    x = _check_image("instance_norm", params, x)
    return _group_norm(params, x, x.shape[0], _check_eps("instance_norm", eps))


def group_norm_init(num_channels):
    """Parameters of group norm: {"gamma": ones (C,), "beta": zeros (C,)}."""
    c = check_positive_int("group_norm_init", "num_channels", num_channels)
    return {"gamma": jnp.ones((c,)), "beta": jnp.zeros((c,))}


def _check_groups(fn: str, num_groups, num_channels: int) -> int:
    """Returns num_groups, or raises unless it is a positive int dividing the channel count."""
    g = check_positive_int(fn, "num_groups", num_groups)
    if num_channels % g:
        raise ValueError(f"{fn}: num_groups={g} does not divide the {num_channels} channels of x; "
                         f"expected a divisor of {num_channels}")
    return g


def group_norm(params, x, num_groups, eps=1e-5):
    """Group normalization: channels split into G groups, each standardized over (C / G, H, W).

    For group g holding channels c in g and its pixels (h, w), with n = (C / G) H W values:

        mu_g      = 1/n sum_{c in g, h, w} x_{c,h,w}
        sigma_g^2 = 1/n sum_{c in g, h, w} (x_{c,h,w} - mu_g)^2
        y_c       = gamma_c (x_c - mu_g) / sqrt(sigma_g^2 + epsilon) + beta_c

    G = 1 normalizes the whole image (layer norm with per-channel gamma), G = C is instance norm.

    Args:
      params: {"gamma": (C,), "beta": (C,)}.
      x: one image (C, H, W).
      num_groups: G, a divisor of C.
      eps: epsilon > 0.

    Returns:
      y of shape (C, H, W).
    """
    x = _check_image("group_norm", params, x)
    g = _check_groups("group_norm", num_groups, x.shape[0])
    return _group_norm(params, x, g, _check_eps("group_norm", eps))
