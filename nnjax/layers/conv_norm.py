"""A convolution followed by batch norm on a whole batch, the statistics from the patches.

Chapter sections "Convolutional Layer" and "Normalization Techniques". The convolution's
output at pixel o of the batch is z_o = W^T p_o + b, with p_o the o-th receptive field (its
K = kh*kw*C_in values, one row of the patch matrix P, `nnjax.layers.conv.patch_rows`) and W
the (K, C_out) kernel matrix. Batch norm needs each channel's mean and variance over all
M = m*H'*W' pixels, and both are linear and quadratic in W, so they follow from the mean
p_bar and the covariance Sigma of the patches:

    mu_B      = W^T p_bar + b
    sigma_B^2 = diag(W^T Sigma W),   Sigma = 1/M sum_o (p_o - p_bar)(p_o - p_bar)^T
    u_o       = gamma (z_o - mu_B) / s + beta = (W gamma/s)^T p_o + (beta - gamma W^T p_bar / s)

with s = sqrt(sigma_B^2 + epsilon): the normalized output u is ONE matrix product of the
patches with the rescaled kernel (b cancels, as batch norm makes it). p_bar and Sigma come from
the Gram matrix P^T P of [P | 1] ((K+1) x (K+1), its last row the column sums). So the layer
never writes z: one product for the Gram matrix and one for u, where the plain composition
(`conv2d_batch`, then `batch_norm` under `jax.vmap`) writes z and passes over it four more
times (mean, centred values, x_hat, u), at the size of the layer's largest map. The Gram
matrix costs M (K+1)^2 multiply-adds, so this pays where the patches are narrower than the
output, K + 1 <= C_out (`conv2d_batch_norm_pays`): the CNN's first layer (K + 1 = 10 patch
features, 32 channels), not its second (289 against 64, where the Gram matrix would be 2.6
GFLOP at batch 128).

Measured on a 2-core Xeon (jax 0.10.2), the CNN's hand-derived train step as a scan epoch
(`scripts/bench.py`, the code before and after in alternating processes): 25.9-26.4 against
29.7-31.5 ms per step at batch 128 (one device), 204.9-207.8 against 253.3-258.6 ms at batch
1024 (split across 2 devices), with this layer as conv1.

Numerics: Sigma = P^T P / M - p_bar p_bar^T cancels where the patches' mean is large against
their spread, so the patches are taken from the images minus their batch mean per channel
(after the zero padding); the shift c folds into the bias, z = W^T (p - c) + (b + W^T c), and
leaves p_bar near 0. The Gram matrix and the statistics are computed in at least float32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nnjax.layers.conv import check_conv_batch_args, conv_output_shape, kernel_matrix, patch_rows
from nnjax.layers.layout import from_channels_last, to_channels_last
from nnjax.layers.normalization import (
    _axis_names, _check_eps, _check_params, check_running_statistics, running_statistics,
)

__all__ = ["conv2d_batch_norm_pays", "conv2d_batch_norm"]

_NO_PADDING = ((0, 0), (0, 0))


def conv2d_batch_norm_pays(W) -> bool:
    """Whether `conv2d_batch_norm` beats a convolution then batch norm for kernel W
    (C_out, C_in, kh, kw): where the patch features, plus one for the bias, are no more than
    the output channels, kh*kw*C_in + 1 <= C_out (this module's docstring)."""
    c_out, c_in, kh, kw = W.shape
    return kh * kw * c_in + 1 <= c_out


class PatchStatistics(NamedTuple):
    """What `conv2d_batch_norm` and its backward both compute from the batch.

    patches: [P | 1] of the centred images, (M_local, K+1), in X's dtype.
    gram: [P | 1]^T [P | 1] of this device's patches, (K+1, K+1).
    count: M, the pixels per channel over every device.
    kernel: W as the (K, C_out) matrix, in the statistics' dtype.
    shift: the centring c per patch feature, (K,).
    centred_mean: W^T p_bar, the batch mean of z - b - W^T c, (C_out,).
    var: sigma_B^2, (C_out,).
    inv_s: 1 / sqrt(sigma_B^2 + epsilon), (C_out,).
    """
    patches: jax.Array
    gram: jax.Array
    count: int
    kernel: jax.Array
    shift: jax.Array
    centred_mean: jax.Array
    var: jax.Array
    inv_s: jax.Array


def patch_statistics(W, X, stride, pads, device_axis, eps) -> PatchStatistics:
    """The centred patches of a channels-last batch X (m, H, W, C_in) and batch norm's
    statistics of their convolution with W, from the Gram matrix (this module's formulas).

    device_axis: the name of an enclosing `shard_map`/`pmap` axis over which the batch is
    split, or None; the centring and the statistics then span every device's examples.
    """
    names = _axis_names(device_axis)
    shift = jnp.mean(X, axis=(0, 1, 2))
    for name in names:
        shift = jax.lax.pmean(shift, name)
    shift = jax.lax.stop_gradient(shift)
    padded = jnp.pad(X, ((0, 0),) + tuple(pads) + ((0, 0),)) - shift
    patches = patch_rows(padded, W.shape[2:], stride, _NO_PADDING)
    stat_dtype = jnp.promote_types(X.dtype, jnp.float32)
    gram = jnp.matmul(patches.T, patches, preferred_element_type=stat_dtype)
    total, count = gram, patches.shape[0]
    for name in names:
        total, count = jax.lax.psum(total, name), count * jax.lax.psum(1, name)
    k = total.shape[0] - 1
    p_bar = total[k, :k] / count
    covariance = total[:k, :k] / count - jnp.outer(p_bar, p_bar)
    kernel = kernel_matrix(W).astype(stat_dtype)
    var = jnp.maximum(jnp.sum(kernel * (covariance @ kernel), axis=0), 0)
    shift_per_feature = jnp.tile(shift, W.shape[2] * W.shape[3]).astype(stat_dtype)
    return PatchStatistics(patches, gram, count, kernel, shift_per_feature, p_bar @ kernel, var,
                           jax.lax.rsqrt(var + eps))


def conv2d_batch_norm(conv_params, bn_params, state, X, *, stride=1, padding="valid", device_axis=None,
                      momentum=0.9, eps=1e-5, layout="CHW"):
    """`conv2d_batch` then `batch_norm` in training mode, computed as ONE product of the patches.

    The same values as `jax.vmap(batch_norm(..., train=True), axis_name="batch")` applied to
    `conv2d_batch(conv_params, X, ...)`, with mu_B and sigma_B^2 from the patches' Gram
    matrix (this module's docstring); z itself is never formed. Its autodiff differentiates
    that form; `nnjax.backprop.conv2d_batch_norm_fast` runs the hand-derived backward instead.

    Args:
      conv_params: {"W": (C_out, C_in, kh, kw), "b": (C_out,)}.
      bn_params: {"gamma": (C_out,), "beta": (C_out,)}.
      state: {"mean": (C_out,), "var": (C_out,)}, the running statistics.
      X: a batch (m, C_in, H, W) ((m, H, W, C_in) with layout="HWC").
      stride, padding: the convolution's, as `conv2d`.
      device_axis: the name of an enclosing `shard_map`/`pmap` axis over which the batch is
        split, or None; the statistics then span every device's examples.
      momentum, eps: batch norm's, as `batch_norm`.
      layout: "CHW" or "HWC", of X and the output.

    Returns:
      (U, new_state): U (m, C_out, H', W') ((m, H', W', C_out) with layout="HWC"), new_state
      the running statistics moved towards the batch's, as `batch_norm` moves them.
    """
    fn = "conv2d_batch_norm"
    W, b, X, stride, pads = check_conv_batch_args(fn, conv_params, X, stride, padding, layout)
    c_out = W.shape[0]
    because = f", the output channels of conv_params['W'] {W.shape}"
    _check_params(fn, bn_params, (c_out,), because, "bn_params")
    check_running_statistics(fn, state, c_out, momentum, because)
    eps = _check_eps(fn, eps)
    X = to_channels_last(X, layout)
    out_hw = conv_output_shape(X.shape[1:3], W.shape[2:], stride, pads)
    if X.shape[0] * out_hw[0] * out_hw[1] < 2:
        raise ValueError(f"{fn}: batch norm needs more than one value per channel to estimate a variance, "
                         f"got {X.shape[0]} example(s) of {out_hw[0]}x{out_hw[1]} output pixels")
    stats = patch_statistics(W, X, stride, pads, device_axis, eps)
    scale = bn_params["gamma"] * stats.inv_s
    rescaled = jnp.concatenate([stats.kernel * scale, (bn_params["beta"] - scale * stats.centred_mean)[None]])
    U = (stats.patches @ rescaled.astype(X.dtype)).reshape(X.shape[0], *out_hw, c_out)
    mu = stats.centred_mean + stats.shift @ stats.kernel + b
    new_state = running_statistics(state, mu.astype(state["mean"].dtype), stats.var.astype(state["var"].dtype),
                                   stats.count, momentum)
    return from_channels_last(U, layout), new_state
