"""Hand-derived backward passes of batch, layer, instance and group normalization.

Chapter section "Normalization Techniques". Every technique computes, over its set of m values,

    mu = 1/m sum_j x_j,   sigma^2 = 1/m sum_j (x_j - mu)^2,
    x_hat_j = (x_j - mu) / s  with  s = sqrt(sigma^2 + epsilon),   y_j = gamma_j x_hat_j + beta_j.

With the upstream delta_j = dL/dy_j:  dL/dgamma_j = delta_j x_hat_j,  dL/dbeta_j = delta_j,
and g_j = dL/dx_hat_j = gamma_j delta_j. x_i moves every x_hat_j through mu and sigma^2:

    d mu / d x_i = 1/m,   d sigma^2 / d x_i = 2 (x_i - mu) / m,   so   d s / d x_i = x_hat_i / m,
    d x_hat_j / d x_i = (delta_ij - 1/m) / s - (x_j - mu) / s^2 * x_hat_i / m
                      = (1/s) (delta_ij - 1/m - x_hat_i x_hat_j / m).

Summing g_j times that over j gives the formula all four share (`_standardize_backward`):

    dL/dx_i = (1/s) (g_i - mean_j(g_j) - x_hat_i mean_j(g_j x_hat_j)).

The techniques differ only in the axes of the means; for batch norm they include the named
batch axis, so each example's backward reads the whole batch's means through `pmean`.
`batch_norm_batch_backward` is batch norm's on a whole batch, where the means of g and
g x_hat are gamma dL/dbeta / M and gamma dL/dgamma / M: the parameter gradients serve twice.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nnjax._checks import check_float_array, check_same_shape
from nnjax.layers.normalization import (
    _axis_names, _check_batch_norm_input, _check_eps, _check_groups, _check_image, _check_params,
    _feature_axes, _mean, _per_channel, _standardize, _values_per_feature, check_batch_norm_batch,
)

__all__ = ["batch_norm_backward", "batch_norm_batch_backward", "layer_norm_backward",
           "instance_norm_backward", "group_norm_backward"]

BATCH_AXIS = "batch"
"""The name of the vmapped batch axis of the batch-level batch norm (`batch_norm_batch_backward`,
`nnjax.backprop.custom_vjp.batch_norm_batch_fast`)."""


def batch_axes(device_axis=None):
    """Batch norm's axis names for a batch: the vmapped `BATCH_AXIS`, and the device axis if any."""
    return BATCH_AXIS if device_axis is None else (BATCH_AXIS, device_axis)


def _standardize_backward(x, dx_hat, axes, axis_name, eps):
    """The shared backward: dL/dx from g = dL/dx_hat for x_hat standardized over `axes`/`axis_name`.

    dL/dx = (1/sqrt(sigma^2 + eps)) (g - mean(g) - x_hat mean(g x_hat)), means over the same
    values as the forward's mu and sigma^2.

    Returns:
      (dx, x_hat), both of x's shape.
    """
    x_hat, _, var = _standardize(x, axes, axis_name, eps)
    centered = dx_hat - _mean(dx_hat, axes, axis_name) - x_hat * _mean(dx_hat * x_hat, axes, axis_name)
    return centered * jax.lax.rsqrt(var + eps), x_hat


def batch_norm_backward(params, x, delta, *, axis_name="batch", eps=1e-5, layout="CHW"):
    """Backward of `batch_norm(..., train=True)` for one example, through the batch statistics.

    Run it under `jax.vmap(..., axis_name=axis_name)` like the forward. With g = gamma delta and
    the means over the batch axis (and H, W for images):

        dL/dx_i    = gamma / sqrt(sigma_B^2 + epsilon) * (delta_i - mean(delta) - x_hat_i mean(delta x_hat))
        dL/dgamma  = delta_i x_hat_i   (summed over H, W)
        dL/dbeta   = delta_i           (summed over H, W)

    (gamma is constant per channel, so it factors out of the shared formula). The parameter
    gradients are this example's share: the caller sums them over the batch.

    Args:
      params: {"gamma": (F,), "beta": (F,)}.
      x: the example fed to the forward, (F,) or (C, H, W) ((H, W, C) with layout="HWC").
      delta: dL/dy, x's shape.
      axis_name: the batch axis name, as in the forward.
      eps: epsilon > 0, as in the forward.
      layout: as in the forward.

    Returns:
      ({"gamma": (F,), "beta": (F,)}, dx of x's shape).
    """
    fn = "batch_norm_backward"
    x, features = _check_batch_norm_input(fn, params, x, layout)
    check_same_shape(fn, "delta", delta, "x", x)
    eps = _check_eps(fn, eps)
    _values_per_feature(fn, axis_name, x, features)
    _, spatial = _feature_axes(x, layout)
    dx, x_hat = _standardize_backward(x, _per_channel(params["gamma"], x, layout) * delta, spatial, axis_name, eps)
    grads = {"gamma": (delta * x_hat).sum(axis=spatial), "beta": delta.sum(axis=spatial)}
    return grads, dx


def batch_norm_batch_backward(params, X, delta, *, device_axis=None, eps=1e-5, layout="CHW"):
    """`batch_norm_backward` for a whole batch at once, the parameter gradients doubling as its means.

    With M the number of values per channel in the batch (examples times H times W, on every
    device), the means of `batch_norm_backward`'s formula are the parameter gradients over M:

        dL/dbeta  = sum_i delta_i,   dL/dgamma = sum_i delta_i x_hat_i,
        dL/dx_i   = gamma / sqrt(sigma_B^2 + epsilon) * (delta_i - dL/dbeta / M - x_hat_i dL/dgamma / M)

    So the backward makes one pass for the two sums and one for dx, where the per-example form
    (under `jax.vmap`) sums delta and delta x_hat again, times gamma, for its means. x_hat is
    recomputed from X as the forward computes it (XLA merges the two in one compiled step).

    Args:
      params: {"gamma": (F,), "beta": (F,)}.
      X: the batch fed to the forward, (m, F) or (m, C, H, W) ((m, H, W, C) with layout="HWC").
      delta: dL/dY, X's shape.
      device_axis: the name of an enclosing `shard_map`/`pmap` axis over which the batch is
        split, or None; the forward's statistics spanned every device's examples.
      eps, layout: as in the forward.

    Returns:
      ({"gamma": (F,), "beta": (F,)} summed over this device's examples, dX of X's shape).
    """
    fn = "batch_norm_batch_backward"
    X, _ = check_batch_norm_batch(fn, params, X, layout)
    check_same_shape(fn, "delta", delta, "X", X)
    eps = _check_eps(fn, eps)
    axes = batch_axes(device_axis)
    _, spatial = _feature_axes(X[0], layout)

    def standardized(x):
        x_hat, _, var = _standardize(x, spatial, axes, eps)
        return x_hat, jax.lax.rsqrt(var + eps)

    x_hat, inv_s = jax.vmap(standardized, axis_name=BATCH_AXIS)(X)
    summed = (0,) + tuple(a + 1 for a in spatial)
    grads = {"gamma": jnp.sum(delta * x_hat, axis=summed), "beta": jnp.sum(delta, axis=summed)}
    totals, count = grads, X.shape[0] * math.prod(X.shape[a + 1] for a in spatial)
    for name in _axis_names(device_axis):
        totals, count = jax.lax.psum(totals, name), count * jax.lax.psum(1, name)
    per_channel = {k: _per_channel(v, X[0], layout) / count for k, v in totals.items()}
    dX = _per_channel(params["gamma"], X[0], layout) * inv_s * (
        delta - per_channel["beta"] - x_hat * per_channel["gamma"])
    return grads, dX


def layer_norm_backward(params, x, delta, eps=1e-5):
    """Backward of `layer_norm` for one example; the means run over all of its d values.

        dL/dx     = (1/sqrt(sigma_l^2 + epsilon)) (g - mean(g) - x_hat mean(g x_hat)),  g = gamma delta
        dL/dgamma = delta x_hat,   dL/dbeta = delta

    Args:
      params: {"gamma", "beta"} of x's shape.
      x: the example, any shape.
      delta: dL/dy, x's shape.
      eps: epsilon > 0.

    Returns:
      ({"gamma", "beta"} of x's shape, dx of x's shape).
    """
    fn = "layer_norm_backward"
    x = check_float_array(fn, "x", x)
    _check_params(fn, params, x.shape, " = x.shape (layer norm scales every value)")
    check_same_shape(fn, "delta", delta, "x", x)
    dx, x_hat = _standardize_backward(x, params["gamma"] * delta, tuple(range(x.ndim)), None,
                                      _check_eps(fn, eps))
    return {"gamma": delta * x_hat, "beta": delta}, dx


def _group_norm_backward(params, x, delta, num_groups, eps):
    """Backward of group norm on a checked image; the means run over each group's (C/G, H, W)."""
    c, h, w = x.shape
    grouped = (num_groups, c // num_groups, h, w)
    dx_hat = _per_channel(params["gamma"], x) * delta
    dx, x_hat = _standardize_backward(x.reshape(grouped), dx_hat.reshape(grouped), (1, 2, 3), None, eps)
    grads = {"gamma": (delta * x_hat.reshape(x.shape)).sum(axis=(1, 2)), "beta": delta.sum(axis=(1, 2))}
    return grads, dx.reshape(x.shape)


def instance_norm_backward(params, x, delta, eps=1e-5):
    """Backward of `instance_norm` for one image; the means run over each channel's H x W pixels.

        dL/dx_c     = gamma_c / sqrt(sigma_c^2 + epsilon) (delta_c - mean(delta_c) - x_hat_c mean(delta_c x_hat_c))
        dL/dgamma_c = sum_{h,w} delta_c x_hat_c,   dL/dbeta_c = sum_{h,w} delta_c

    Args:
      params: {"gamma": (C,), "beta": (C,)}.
      x: the image (C, H, W).
      delta: dL/dy, (C, H, W).
      eps: epsilon > 0.

    Returns:
      ({"gamma": (C,), "beta": (C,)}, dx of shape (C, H, W)).
    """
    fn = "instance_norm_backward"
    x = _check_image(fn, params, x)
    check_same_shape(fn, "delta", delta, "x", x)
    return _group_norm_backward(params, x, delta, x.shape[0], _check_eps(fn, eps))


def group_norm_backward(params, x, delta, num_groups, eps=1e-5):
    """Backward of `group_norm` for one image; the means run over each group's (C/G, H, W) values.

        dL/dx     = (1/sqrt(sigma_g^2 + epsilon)) (g - mean_g(g) - x_hat mean_g(g x_hat)),  g = gamma_c delta
        dL/dgamma_c = sum_{h,w} delta_c x_hat_c,   dL/dbeta_c = sum_{h,w} delta_c

    Args:
      params: {"gamma": (C,), "beta": (C,)}.
      x: the image (C, H, W).
      delta: dL/dy, (C, H, W).
      num_groups: G, a divisor of C.
      eps: epsilon > 0.

    Returns:
      ({"gamma": (C,), "beta": (C,)}, dx of shape (C, H, W)).
    """
    fn = "group_norm_backward"
    x = _check_image(fn, params, x)
    check_same_shape(fn, "delta", delta, "x", x)
    g = _check_groups(fn, num_groups, x.shape[0])
    return _group_norm_backward(params, x, delta, g, _check_eps(fn, eps))
