"""Hand-derived backward pass of the convolutional layer (no jax.grad / jax.vjp).

Forward, on the zero-padded input P = pad(x) (C_in, Hp, Wp) with stride s:

    z_{o,i,j} = sum_{c,m,n} P_{c, i*s+m, j*s+n} W_{o,c,m,n} + b_o

Differentiating the sum term by term with the upstream delta_{o,i,j} = dL/dz_{o,i,j}:

    dL/db_o         = sum_{i,j} delta_{o,i,j}
    dL/dW_{o,c,m,n} = sum_{i,j} delta_{o,i,j} P_{c, i*s+m, j*s+n}
                    -> the correlation of P with delta dilated by s (s - 1 zeros between
                       its entries): one (kh, kw) map per pair (o, c)
    dL/dP_{c,p,q}   = sum_{o,i,j,m,n : i*s+m = p, j*s+n = q} delta_{o,i,j} W_{o,c,m,n}
                    -> the FULL convolution of the dilated delta (padded by k - 1 on each
                       side) with the kernel flipped in both spatial axes, in and out channels
                       swapped
    dL/dx           = dL/dP with the padding cropped off.

Two forms of the same formulas:
- Batch level, `conv2d_weight_grad` and `conv2d_input_grad`, for callers that hold the batch.
  dW is patches^T @ delta_mat with one row per (example, output pixel): the example index is
  contracted inside the matrix product (over the whole batch, or chunk by chunk to bound its
  memory), and the per-example weight gradients are never materialized. dx is ONE
  `lax.conv_general_dilated` over the batch.
- Per example, `conv2d_backward` (the layer contract). The patch P_{c, i*s+m, j*s+n} is entry
  ((c, m, n), (i, j)) of `im2col(x)`, so the dW correlation is one matrix product,
  dW_mat = delta_mat @ im2col(x)^T with delta_mat of shape (C_out, H'*W'). Under `jax.vmap`
  that becomes one batched matrix product then a sum over the batch.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from nnjax._checks import check_shape
from nnjax.layers.conv import (FAST_CONV_DIMENSIONS, check_conv_args, conv_output_shape, im2col, kernel_hwio,
                               patch_rows, sum_chunks)
from nnjax.layers.layout import from_channels_last, image_shape, spatial_shape, to_channels_first, to_channels_last

__all__ = ["conv2d_backward", "conv2d_weight_grad", "conv2d_param_grads", "conv2d_input_grad"]


def _unused_rows(in_hw, kernel_hw, stride, pads, out_hw):
    """Rows/columns of the padded input below/right of the last window (dropped by the floor)."""
    return tuple(n + lo + hi - (s * (o - 1) + k)
                 for n, k, s, (lo, hi), o in zip(in_hw, kernel_hw, stride, pads, out_hw))


def conv2d_weight_grad(X, delta, kernel_hw, stride, pads, layout="CHW", chunk: int | None = None):
    """dL/dW summed over a batch: sum_n corr(pad(X_n), dilate_s(delta_n)), as im2col products.

    dW_{o,c,m,k} = sum_{examples} sum_{i,j} delta_{o,i,j} P_{c, i*s+m, j*s+k}: with the patches
    of each example as rows (`nnjax.layers.conv.batch_patches`, one row per output pixel), that
    is patches^T @ delta_mat, the examples and pixels contracted in one matrix product (one
    per chunk of `chunk` examples, `sum_chunks`). The per-example weight gradients are never
    materialized. (As ONE `lax.conv_general_dilated` with the example index as its contracted
    feature axis, the same sum ran 3 to 8 times slower on CPU: `nnjax.layers.conv2d_batch`.)

    Args:
      X: (N, C_in, H, W) layer inputs ((N, H, W, C_in) with layout="HWC").
      delta: (N, C_out, H', W') upstream gradients dL/dz ((N, H', W', C_out) with "HWC").
      kernel_hw: (kh, kw).
      stride: (sh, sw).
      pads: ((top, bottom), (left, right)), as `nnjax.layers.conv_padding` resolves them.
      layout: "CHW" or "HWC", the layout of each example.
      chunk: examples per matrix product, to bound the patches' memory; None: the whole batch.

    Returns:
      dW: (C_out, C_in, kh, kw).
    """
    return _patch_product(X, delta, kernel_hw, stride, pads, layout, chunk, bias=False)["W"]


def conv2d_param_grads(X, delta, kernel_hw, stride, pads, layout="CHW", chunk: int | None = None):
    """dL/dW and dL/db summed over a batch, from ONE im2col product (per chunk).

    The bias is a weight on an input that is always 1 (the chapter's perceptron), so each row
    of patches gets a last feature 1 (`nnjax.layers.conv.patch_rows`, the matrix
    `conv2d_batch`'s forward multiplies too) and [patches | 1]^T @ delta_mat holds dW in its
    first kh*kw*C_in rows and db = sum of delta over examples and pixels in its last. delta
    is read once, by that product: a separate sum for db made XLA compute delta twice when it
    is a fused element-wise result (batch norm's dx in the CNN).

    Args:
      as `conv2d_weight_grad`.

    Returns:
      {"W": (C_out, C_in, kh, kw), "b": (C_out,)}.
    """
    return _patch_product(X, delta, kernel_hw, stride, pads, layout, chunk, bias=True)


def _patch_product(X, delta, kernel_hw, stride, pads, layout, chunk, bias: bool) -> dict:
    """patches^T @ delta_mat summed over chunks (with a column of ones when `bias`), as
    {"W": dW} or {"W": dW, "b": db}."""
    X, delta = to_channels_last(X, layout), to_channels_last(delta, layout)
    (kh, kw), c_in, c_out = kernel_hw, X.shape[-1], delta.shape[-1]

    def chunk_grad(Xc, Dc):
        return patch_rows(Xc, kernel_hw, stride, pads, bias).T @ Dc.reshape(-1, c_out)

    product = sum_chunks(chunk_grad, [X, delta], chunk)
    grads = {"W": product[:kh * kw * c_in].reshape(kh, kw, c_in, c_out).transpose(3, 2, 0, 1)}
    if bias:
        grads["b"] = product[-1]
    return grads


def conv2d_input_grad(W, delta, in_hw, stride, pads, layout="CHW"):
    """dL/dx for a batch: the full convolution of the dilated delta with the flipped kernel.

    dx = crop(full_conv(dilate_s(delta), flip(W))): delta dilated by the stride
    (`lhs_dilation`), padded by k - 1 on each side (the "full" convolution) minus the input
    padding that is cropped off (plus the rows no window reached, which get zero gradient),
    correlated with W flipped in (m, n) and with in/out channels swapped. XLA gets delta
    channels-last and the flipped kernel as (kh, kw, C_out, C_in), whatever the layout
    (`nnjax.layers.conv.FAST_CONV_DIMENSIONS` says why: inside a `lax.scan` epoch the CNN's
    train step ran 190 ms against 35 ms at batch 128 with the kernel as (C_out, C_in, kh, kw)).

    Args:
      W: (C_out, C_in, kh, kw).
      delta: (N, C_out, H', W') ((N, H', W', C_out) with layout="HWC").
      in_hw: (H, W) of the layer input.
      stride: (sh, sw).
      pads: ((top, bottom), (left, right)).
      layout: "CHW" or "HWC", the layout of each example.

    Returns:
      dx: (N, C_in, H, W) ((N, H, W, C_in) with layout="HWC").
    """
    kernel_hw = W.shape[2:]
    out_hw = delta.shape[2:] if layout == "CHW" else delta.shape[1:3]
    unused = _unused_rows(in_hw, kernel_hw, stride, pads, out_hw)
    padding = [(k - 1 - lo, k - 1 - hi + u) for k, (lo, hi), u in zip(kernel_hw, pads, unused)]
    flipped = kernel_hwio(W[:, :, ::-1, ::-1].swapaxes(0, 1))
    dx = lax.conv_general_dilated(
        to_channels_last(delta, layout), flipped, window_strides=(1, 1), padding=padding, lhs_dilation=stride,
        dimension_numbers=FAST_CONV_DIMENSIONS)
    return from_channels_last(dx, layout)


def conv2d_backward(params, x, delta, stride=1, padding="valid", layout="CHW"):
    """Gradients of one example's conv layer from delta = dL/dz.

    dL/db_o = sum_{i,j} delta_{o,i,j};
    dL/dW = corr(pad(x), dilate_s(delta)) = delta_mat @ im2col(x)^T;
    dL/dx = crop(full_conv(dilate_s(delta), flip(W))) (derivation in this module's docstring).

    Args:
      params: {"W": (C_out, C_in, kh, kw), "b": (C_out,)}.
      x: (C_in, H, W), the layer input of the forward pass ((H, W, C_in) with layout="HWC").
      delta: (C_out, H', W'), dL/dz for the layer output z = conv2d(params, x, stride, padding)
        ((H', W', C_out) with layout="HWC").
      stride, padding, layout: as `conv2d`.

    Returns:
      ({"W": (C_out, C_in, kh, kw), "b": (C_out,)}, dx of x's shape).
    """
    fn = "conv2d_backward"
    W, _, x, stride, pads = check_conv_args(fn, params, x, stride, padding, layout)
    c_out = W.shape[0]
    in_hw = spatial_shape(x, layout)
    out_hw = conv_output_shape(in_hw, W.shape[2:], stride, pads)
    check_shape(fn, "delta", delta, image_shape(c_out, *out_hw, layout),
                f" = ({', '.join(layout)}), the output of conv2d for x {x.shape} and W {W.shape}")
    delta = jnp.asarray(delta, x.dtype)
    delta_first = to_channels_first(delta, layout)
    patches = im2col(to_channels_first(x, layout), W.shape[2:], stride, pads)
    dW = delta_first.reshape(c_out, -1) @ patches.T
    dx = conv2d_input_grad(W, delta[None], in_hw, stride, pads, layout)[0]
    return {"W": dW.reshape(W.shape), "b": jnp.sum(delta_first, axis=(1, 2))}, dx
