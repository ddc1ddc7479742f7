"""Hand-derived backward of `nnjax.layers.conv2d_batch_norm`: a convolution then batch norm,
through the patches' Gram matrix.

Chapter sections "Backpropagation Algorithm", "Convolutional Layer" and "Normalization
Techniques". With delta = dL/du (one row per output pixel, M_local of them on this device),
x_hat = [P | 1] W_hat for the forward's patches and W_hat = [W / s; -W^T p_bar / s], and
G = [P | 1]^T delta ((K+1) x C_out, one product that reads delta once):

    dL/dbeta  = sum_o delta_o              = the last row of G
    dL/dgamma = sum_o delta_o x_hat_o      = sum over rows of G * W_hat
    delta_z   = gamma/s (delta - dL/dbeta / M - x_hat dL/dgamma / M)    (`batch_norm_batch_backward`)
    [dW; db]  = [P | 1]^T delta_z
              = gamma/s (G - ([P | 1]^T 1) dL/dbeta / M - ([P | 1]^T [P | 1]) W_hat dL/dgamma / M)

where [P | 1]^T 1 is the Gram matrix's last column and [P | 1]^T [P | 1] the Gram matrix
itself, both from the forward. So the parameter gradients never form delta_z: one product
with delta and a few (K+1) x C_out matrix operations. The input gradient (asked for below
the network's first layer) does form it, then runs the full convolution of
`conv2d_input_grad`. The patches were centred by c (the forward's docstring), so dW of the
layer's own kernel is dW_centred + c db (z = W^T (p - c) + b + W^T c).

With the batch split across devices, dL/dbeta and dL/dgamma in delta_z's means are summed
over every device; the gradients returned are this device's sums, as `batch_norm_batch_backward`
returns them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnjax._checks import check_shape
from nnjax.backprop.conv import conv2d_input_grad
from nnjax.layers.conv import check_conv_batch_args, conv_output_shape
from nnjax.layers.conv_norm import patch_statistics
from nnjax.layers.layout import from_channels_last, image_shape, to_channels_last
from nnjax.layers.normalization import _axis_names, _check_eps, _check_params

__all__ = ["conv2d_batch_norm_backward"]


def conv2d_batch_norm_backward(conv_params, bn_params, X, delta, *, stride=1, padding="valid", device_axis=None,
                               eps=1e-5, layout="CHW", input_grad=True):
    """dL/dW, dL/db, dL/dgamma, dL/dbeta (and dL/dX) of `conv2d_batch_norm`, by the formulas above.

    Args:
      conv_params, bn_params, X, stride, padding, device_axis, eps, layout: as the forward's.
      delta: dL/dU, U's shape: (m, C_out, H', W') ((m, H', W', C_out) with layout="HWC").
      input_grad: whether to compute dL/dX (False for a network's first layer: the images'
        gradient is not needed and costs a convolution).

    Returns:
      (conv_grads {"W", "b"}, bn_grads {"gamma", "beta"}, dX of X's shape or None), the
      parameter gradients summed over this device's examples, each in its input's dtype.
    """
    fn = "conv2d_batch_norm_backward"
    dtypes = {"W": jnp.result_type(conv_params["W"]), "b": jnp.result_type(conv_params["b"]), "X": jnp.result_type(X)}
    W, _, X, stride, pads = check_conv_batch_args(fn, conv_params, X, stride, padding, layout)
    c_out, c_in, kh, kw = W.shape
    _check_params(fn, bn_params, (c_out,), f" = ({c_out},), the output channels of conv_params['W'] {W.shape}",
                  "bn_params")
    eps = _check_eps(fn, eps)
    X = to_channels_last(X, layout)
    out_hw = conv_output_shape(X.shape[1:3], (kh, kw), stride, pads)
    check_shape(fn, "delta", delta, (X.shape[0],) + image_shape(c_out, *out_hw, layout),
                f", the shape of the forward's output for X of shape {X.shape} (channels-last)")
    delta = to_channels_last(delta, layout).reshape(-1, c_out)
    stats = patch_statistics(W, X, stride, pads, device_axis, eps)
    G = jnp.matmul(stats.patches.T, delta, preferred_element_type=stats.gram.dtype)
    to_x_hat = jnp.concatenate([stats.kernel * stats.inv_s, (-stats.inv_s * stats.centred_mean)[None]])
    bn_grads = {"gamma": jnp.sum(G * to_x_hat, axis=0), "beta": G[-1]}
    totals = bn_grads
    for name in _axis_names(device_axis):
        totals = jax.lax.psum(totals, name)
    scale = bn_params["gamma"] * stats.inv_s
    centred_grads = scale * (G - stats.gram[:, -1:] * (totals["beta"] / stats.count)
                             - (stats.gram @ to_x_hat) * (totals["gamma"] / stats.count))
    db = centred_grads[-1]
    dW = (centred_grads[:-1] + stats.shift[:, None] * db).reshape(kh, kw, c_in, c_out).transpose(3, 2, 0, 1)
    conv_grads = {"W": dW.astype(dtypes["W"]), "b": db.astype(dtypes["b"])}
    bn_grads = {k: v.astype(bn_params[k].dtype) for k, v in bn_grads.items()}
    if not input_grad:
        return conv_grads, bn_grads, None
    x_hat = stats.patches @ to_x_hat.astype(X.dtype)
    delta_z = scale * (delta - totals["beta"] / stats.count - x_hat * (totals["gamma"] / stats.count))
    delta_z = delta_z.astype(X.dtype).reshape(X.shape[0], *out_hw, c_out)
    dX = conv2d_input_grad(W, delta_z, X.shape[1:3], stride, pads, "HWC")
    return conv_grads, bn_grads, from_channels_last(dX, layout).astype(dtypes["X"])
