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
  dW comes from delta_mat^T @ patches, delta_mat and the patches with one row per (example,
  output pixel): the example index is contracted inside the matrix product (over the whole
  batch, or chunk by chunk to bound its memory), and the per-example weight gradients are
  never materialized; db is the sum of delta_mat's rows. dx is ONE
  `lax.conv_general_dilated` over the batch.
- Batch level in mixed precision (``compute_dtype=``, the products on operands of that dtype
  summed in float32): the same product for dW with delta_mat^T written out (the operands
  XLA's CPU backend keeps on its bfloat16 kernels), and dx as ONE product
  dP = delta_mat @ W_mat^T, whose rows are each output pixel's gradient with respect to its
  patch, then col2im: the kh*kw slices of dP added into the input at their window offsets.
- Per example, `conv2d_backward` (the layer contract). The patch P_{c, i*s+m, j*s+n} is entry
  ((c, m, n), (i, j)) of `im2col(x)`, so the dW correlation is one matrix product,
  dW_mat = delta_mat @ im2col(x)^T with delta_mat of shape (C_out, H'*W'). Under `jax.vmap`
  that becomes one batched matrix product then a sum over the batch.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from nnjax._checks import check_real_array, check_shape, mixed_dtype
from nnjax.layers.conv import (FAST_CONV_DIMENSIONS, check_chunk, check_conv_args, conv_output_shape, im2col,
                               kernel_hwio, kernel_matrix, patch_rows, sum_chunks)
from nnjax.layers.dense import mixed_matmul, written_transpose
from nnjax.layers.layout import from_channels_last, image_shape, spatial_shape, to_channels_first, to_channels_last

__all__ = ["conv2d_backward", "conv2d_weight_grad", "conv2d_param_grads", "conv2d_input_grad"]


def _unused_rows(in_hw, kernel_hw, stride, pads, out_hw):
    """Rows/columns of the padded input below/right of the last window (dropped by the floor)."""
    return tuple(n + lo + hi - (s * (o - 1) + k)
                 for n, k, s, (lo, hi), o in zip(in_hw, kernel_hw, stride, pads, out_hw))


def conv2d_weight_grad(X, delta, kernel_hw, stride, pads, layout="CHW", chunk: int | None = None,
                       compute_dtype=None):
    """dL/dW summed over a batch: sum_n corr(pad(X_n), dilate_s(delta_n)), as im2col products.

    dW_{o,c,m,k} = sum_{examples} sum_{i,j} delta_{o,i,j} P_{c, i*s+m, j*s+k}: with the patches
    of each example as rows (`nnjax.layers.conv.batch_patches`, one row per output pixel) and
    delta as the matching rows delta_mat, that is delta_mat^T @ patches (one row per output
    channel, one column per patch feature), the examples and pixels contracted in one matrix
    product (one per chunk of `chunk` examples, `sum_chunks`). The per-example weight
    gradients are never materialized. (As ONE `lax.conv_general_dilated` with the example
    index as its contracted feature axis, the same sum ran 3 to 8 times slower on CPU:
    `nnjax.layers.conv2d_batch`.)

    Args:
      X: (N, C_in, H, W) layer inputs ((N, H, W, C_in) with layout="HWC").
      delta: (N, C_out, H', W') upstream gradients dL/dz ((N, H', W', C_out) with "HWC").
      kernel_hw: (kh, kw).
      stride: (sh, sw).
      pads: ((top, bottom), (left, right)), as `nnjax.layers.conv_padding` resolves them.
      layout: "CHW" or "HWC", the layout of each example.
      chunk: examples per matrix product, to bound the patches' memory; None: the whole batch.
      compute_dtype: None, or a floating dtype such as "bfloat16" for mixed precision: the
        product delta_mat^T @ patches on operands of that dtype (delta_mat^T written out),
        summed in delta's dtype.

    Returns:
      dW: (C_out, C_in, kh, kw).
    """
    return _patch_product("conv2d_weight_grad", X, delta, kernel_hw, stride, pads, layout, chunk, False,
                          compute_dtype)["W"]


def conv2d_param_grads(X, delta, kernel_hw, stride, pads, layout="CHW", chunk: int | None = None,
                       compute_dtype=None):
    """dL/dW and dL/db summed over a batch: dW from ONE im2col product (per chunk), db = sum of delta.

    dW = delta_mat^T @ patches (`conv2d_weight_grad`, the patches `conv2d_batch`'s forward
    multiplies too) and db_o = sum over examples and pixels of delta_o. The bias is the weight
    of an input that is always 1 (the chapter's perceptron), so db is also the last column of
    delta_mat^T @ [patches | 1]; that one product (`patch_rows` with its column of ones,
    every row kh*kw*C_in + 1 floats wide) ran slower than the product and a sum (the
    measurements: `nnjax.layers.conv2d_batch`, whose forward dropped the column with it).

    Args:
      as `conv2d_weight_grad`.

    Returns:
      {"W": (C_out, C_in, kh, kw), "b": (C_out,)}.
    """
    return _patch_product("conv2d_param_grads", X, delta, kernel_hw, stride, pads, layout, chunk, True,
                          compute_dtype)


def _patch_product(fn: str, X, delta, kernel_hw, stride, pads, layout, chunk, bias: bool, compute_dtype) -> dict:
    """delta_mat^T @ patches summed over chunks, as {"W": dW}, or {"W": dW, "b": db} with db
    the sum of delta_mat's rows when `bias`.

    This orientation is the faster one: measured on a 2-core CPU (jax 0.10.2), the CNN's
    float32 train step took 201-202 ms at batch 1024 and 24.2-24.6 ms at 128, against 209-214
    and 25.3-26.8 ms with the product patches^T @ delta_mat (alone, at 123,904 rows: 42.6
    against 52.2 ms). In mixed precision delta_mat^T is written out, so that both operands are
    row-major, and the product must not be transposed: XLA would fold the transpose back into
    it as patches^T @ delta_mat, which its CPU backend has no bfloat16 kernel for (jax 0.10.2:
    "Unsupported element type for DotThunk")."""
    chunk = check_chunk(fn, chunk)
    X, delta = to_channels_last(X, layout), to_channels_last(delta, layout)
    (kh, kw), c_in, c_out = kernel_hw, X.shape[-1], delta.shape[-1]
    compute_dtype = mixed_dtype(fn, compute_dtype, delta.dtype)

    def chunk_grad(Xc, Dc):
        patches, delta_mat = patch_rows(Xc, kernel_hw, stride, pads, bias=False), Dc.reshape(-1, c_out)
        if compute_dtype is None:
            dW_mat = delta_mat.T @ patches
        else:
            dW_mat = mixed_matmul(written_transpose(delta_mat), patches, compute_dtype, delta_mat.dtype)
        return {"W": dW_mat, "b": delta_mat.sum(0)} if bias else {"W": dW_mat}

    grads = sum_chunks(chunk_grad, [X, delta], chunk)  # dW_mat (C_out, kh*kw*C_in)
    return {**grads, "W": grads["W"].reshape(c_out, kh, kw, c_in).transpose(0, 3, 1, 2)}


def conv2d_input_grad(W, delta, in_hw, stride, pads, layout="CHW", compute_dtype=None):
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
      compute_dtype: None, or a floating dtype such as "bfloat16" for mixed precision: ONE
        product on operands of that dtype and col2im instead of the convolution
        (`_input_grad_col2im`).

    Returns:
      dx: (N, C_in, H, W) ((N, H, W, C_in) with layout="HWC").
    """
    compute_dtype = mixed_dtype("conv2d_input_grad", compute_dtype, W.dtype)
    if compute_dtype is not None:
        return _input_grad_col2im(W, delta, in_hw, stride, pads, layout, compute_dtype)
    kernel_hw = W.shape[2:]
    out_hw = delta.shape[2:] if layout == "CHW" else delta.shape[1:3]
    unused = _unused_rows(in_hw, kernel_hw, stride, pads, out_hw)
    padding = [(k - 1 - lo, k - 1 - hi + u) for k, (lo, hi), u in zip(kernel_hw, pads, unused)]
    flipped = kernel_hwio(W[:, :, ::-1, ::-1].swapaxes(0, 1))
    dx = lax.conv_general_dilated(
        to_channels_last(delta, layout), flipped, window_strides=(1, 1), padding=padding, lhs_dilation=stride,
        dimension_numbers=FAST_CONV_DIMENSIONS)
    return from_channels_last(dx, layout)


def _input_grad_col2im(W, delta, in_hw, stride, pads, layout, compute_dtype):
    """dL/dx for a batch in mixed precision: one matrix product, then col2im.

    Row (n, i, j) of dP = delta_mat @ W_mat^T is dL/d(patch of output pixel (n, i, j)), the
    product on `compute_dtype` operands (W_mat^T written out) summed in W's dtype; col2im then
    adds each kernel offset's slice dP[..., m, k, :] into the padded input at rows i*s + m and
    columns j*s + k (`lax.pad` with s - 1 interior zeros places them), and the padding is
    cropped off. The XLA convolution of `conv2d_input_grad` has no bfloat16 kernel on a CPU;
    in the CNN's mixed-precision step (2-core Xeon, jax 0.10.2, batch 128) the convolution in
    float32 and this form ran level, but with delta read by a product XLA writes batch
    norm's delta once, where otherwise it fused batch norm's backward into the transposed
    write of delta_mat^T for the weight gradient (31 against 20 ms per step).

    Args:
      as `conv2d_input_grad`; compute_dtype a floating dtype.

    Returns:
      dx: (N, C_in, H, W) ((N, H, W, C_in) with layout="HWC"), in W's dtype.
    """
    c_out, c_in, kh, kw = W.shape
    delta = to_channels_last(delta, layout)
    n, out_h, out_w = delta.shape[:3]
    (sh, sw), ((top, bottom), (left, right)) = stride, pads
    padded_h, padded_w = in_hw[0] + top + bottom, in_hw[1] + left + right
    dP = mixed_matmul(delta.reshape(-1, c_out), written_transpose(kernel_matrix(W)), compute_dtype, W.dtype)
    dP = dP.reshape(n, out_h, out_w, kh, kw, c_in)
    zero = jnp.zeros((), dP.dtype)
    dx = sum(lax.pad(dP[:, :, :, m, k], zero,
                     ((0, 0, 0), (m, padded_h - m - sh * (out_h - 1) - 1, sh - 1),
                      (k, padded_w - k - sw * (out_w - 1) - 1, sw - 1), (0, 0, 0)))
             for m in range(kh) for k in range(kw))
    return from_channels_last(dx[:, top:top + in_hw[0], left:left + in_hw[1]], layout)


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
    delta = check_real_array(fn, "delta", delta).astype(x.dtype)
    delta_first = to_channels_first(delta, layout)
    patches = im2col(to_channels_first(x, layout), W.shape[2:], stride, pads)
    dW = delta_first.reshape(c_out, -1) @ patches.T
    dx = conv2d_input_grad(W, delta[None], in_hw, stride, pads, layout)[0]
    return {"W": dW.reshape(W.shape), "b": jnp.sum(delta_first, axis=(1, 2))}, dx
