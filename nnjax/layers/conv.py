"""Convolutional layer: conv2d, its im2col form, padding and output size.

Chapter sections "Convolution Kernel", "Convolutional Layer" and "Stride and Padding". A
layer with kernels K = W of shape (C_out, C_in, kh, kw) and bias b of shape (C_out,) maps one
example I of shape (C_in, H, W) to

    Output_{c_out, i, j} = sum_{c_in} (I_{c_in} * K_{c_out, c_in})_{i, j} + b_{c_out}
    (I * K)_{i, j} = sum_m sum_n I_{i*s + m, j*s + n} K_{m, n}

on the zero-padded input, with stride s. (Like every deep-learning library, and like the
chapter, "convolution" here is a cross-correlation: the kernel is not flipped.) Each spatial
axis has out_size = (in_size - kernel_size + 2 * padding) // stride + 1.

`conv2d` runs on `jax.lax.conv_general_dilated` (fast); `conv2d_im2col` writes the same map as
ONE matrix product, W reshaped to (C_out, C_in*kh*kw) times the matrix of input patches whose
columns are the flattened receptive fields (`im2col`): the linear-algebra view of convolution.

`conv2d_batch` is the layer on a whole batch for callers that hold one (the training step):
ONE im2col matrix product over the batch (`patch_rows`), or, to bound its memory, one per
chunk of examples (`map_chunks`, `sum_chunks`).
"""
from __future__ import annotations

import math
from functools import partial, reduce

import jax.numpy as jnp
import numpy as np
import jax
from jax import lax

from nnjax._checks import (as_pair, check_choice, check_dict, check_float_array, check_float_leaves,
                           check_positive_int, check_rank, check_shape, mixed_dtype)
from nnjax.layers.dense import init_weights, mixed_matmul
from nnjax.layers.layout import channel_axis, check_layout, from_channels_last, spatial_shape, to_channels_last

__all__ = [
    "PADDING_MODES", "conv_output_size", "conv_output_shape", "conv_padding", "conv2d_init",
    "FAST_CONV_DIMENSIONS", "kernel_hwio", "conv2d", "conv2d_channels_last",
    "im2col", "conv2d_im2col", "UNROLLED_CHUNKS", "map_chunks",
    "sum_chunks", "batch_patches", "kernel_matrix", "patch_rows", "check_conv_batch_args", "check_chunk",
    "conv2d_batch",
]

PADDING_MODES = ("valid", "same")
"""The named padding modes; an int or a pair (ph, pw) of symmetric zero padding is allowed too."""

FAST_CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
"""The one form of `lax.conv_general_dilated` that XLA's CPU backend runs with its fast
(Eigen's, all cores) convolution everywhere: channels-last images and the kernel as
(kh, kw, C_in, C_out) (`kernel_hwio`). Given another form it transposes the operands itself in
a plain program, but not inside a `while` loop (a `lax.scan` epoch), where it emits a naive
loop nest instead: measured on a 2-core CPU (jax 0.10.2), the conv 32->64 3x3 on a batch of
128 13x13 channels-last maps ran 134 ms per call in a scan with the kernel as (C_out, C_in,
kh, kw), 2.8 ms in this form (3.4 and 2.8 ms as jitted calls)."""

CONV_DIMENSIONS = {"CHW": ("NCHW", "OIHW", "NCHW"), "HWC": FAST_CONV_DIMENSIONS}
"""`conv2d`'s `lax.conv_general_dilated` layouts per image layout. Channels-first keeps the
kernel as (C_out, C_in, kh, kw): autodiff of that form runs least slowly inside a scan (the
gradients' convolutions, which JAX derives from the forward's form, are never the fast form
there: dW and dx of the conv above, 5 steps in a scan, 345 ms per step against 1,370 in
`FAST_CONV_DIMENSIONS` with transposes around it, 44-48 ms as jitted calls; the forward
alone 38 against 10 ms). Hand-derived gradients avoid the question: `conv2d_channels_last`
and `nnjax.backprop.conv2d_fast`."""


def kernel_hwio(W):
    """W (C_out, C_in, kh, kw) as (kh, kw, C_in, C_out), the kernel of `FAST_CONV_DIMENSIONS`."""
    return W.transpose(2, 3, 1, 0)


def conv_output_size(in_size, kernel_size, stride=1, padding=0) -> int:
    """The chapter's output dimension formula for one spatial axis.

    out_size = (in_size - kernel_size + 2 * padding) / stride + 1, rounded down (the last
    window that does not fit is dropped).

    Args:
      in_size: input length along the axis (int >= 1).
      kernel_size: kernel length (int >= 1).
      stride: step between windows (int >= 1).
      padding: zeros added on EACH side (int >= 0), or the chapter's two modes: "valid"
        (no padding) and "same" (out_size = ceil(in_size / stride): the total padding
        (out_size - 1) * stride + kernel_size - in_size is split between the two sides, the
        odd zero at the end, as `conv_padding` does).

    Returns:
      The output length, an int >= 1.

    Raises:
      ValueError: if the kernel does not fit the padded input (result below 1), or an argument
        is out of range; TypeError for non-int arguments.
    """
    fn = "conv_output_size"
    in_size = check_positive_int(fn, "in_size", in_size)
    kernel_size = check_positive_int(fn, "kernel_size", kernel_size)
    stride = check_positive_int(fn, "stride", stride)
    if isinstance(padding, str):
        check_choice(fn, "padding", padding, PADDING_MODES)
        if padding == "same":
            return -(-in_size // stride)
        padding = 0
    if isinstance(padding, bool) or not isinstance(padding, (int, jnp.integer)):
        raise TypeError(f"{fn}: padding must be an int >= 0 (zeros on each side), 'valid' or 'same', "
                        f"got {padding!r}")
    if padding < 0:
        raise ValueError(f"{fn}: padding must be an int >= 0 (zeros on each side), got {padding}")
    out = (in_size - kernel_size + 2 * padding) // stride + 1
    if out < 1:
        raise ValueError(
            f"{fn}: kernel_size={kernel_size} does not fit in_size={in_size} with padding={padding} "
            f"(padded size {in_size + 2 * padding}); out_size would be {out}, expected >= 1")
    return out


def conv_padding(in_hw, kernel_size, stride, padding, fn: str = "conv_padding") -> tuple[tuple[int, int], tuple[int, int]]:
    """Resolves a padding setting to explicit zeros ((top, bottom), (left, right)).

    "valid" adds none. "same" gives out = ceil(in / stride) per axis with total padding
    max((out - 1) * stride + k - in, 0), the odd pixel at the bottom/right (as JAX's and
    TensorFlow's "SAME"). An int p or a pair (ph, pw) pads symmetrically, as PyTorch's
    `padding=`; ((top, bottom), (left, right)) is taken as it is. Shared by `conv2d`, `im2col`
    and the hand-derived backward.

    Args:
      in_hw: input spatial size (H, W).
      kernel_size: (kh, kw).
      stride: (sh, sw).
      padding: "valid" | "same" | int >= 0 | (ph, pw) | ((top, bottom), (left, right)).
      fn: the public function asking, named in error messages.

    Returns:
      ((top, bottom), (left, right)).

    Raises:
      ValueError for an unknown string or a negative amount, TypeError for another type.
    """
    if isinstance(padding, str):
        check_choice(fn, "padding", padding, PADDING_MODES)
        if padding == "valid":
            return (0, 0), (0, 0)
        totals = [max((math.ceil(n / s) - 1) * s + k - n, 0) for n, k, s in zip(in_hw, kernel_size, stride)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if not isinstance(padding, (int, jnp.integer, tuple, list)) or isinstance(padding, bool):
        raise TypeError(
            f"{fn}: padding must be one of {list(PADDING_MODES)}, an int >= 0 or a pair (ph, pw), "
            f"got {padding!r} of type {type(padding).__name__}")
    if isinstance(padding, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in padding):
        if len(padding) != 2:
            raise TypeError(f"{fn}: explicit padding must be ((top, bottom), (left, right)), got {padding!r}")
        return tuple(as_pair(fn, "padding", p, minimum=0) for p in padding)
    ph, pw = as_pair(fn, "padding", padding, minimum=0)
    return (ph, ph), (pw, pw)


def conv2d_init(key, c_in, c_out, kernel_size, init="he", dtype=None) -> dict:
    """Kernels and biases of a conv layer.

    Args:
      key: a `jax.random` key.
      c_in: input channels C_in.
      c_out: output channels C_out (the number of kernels).
      kernel_size: int k or pair (kh, kw).
      init: "he" | "xavier" | "lecun" | "zeros", as `dense_init`, with fan_in = C_in*kh*kw
        and fan_out = C_out*kh*kw.
      dtype: floating dtype of W and b, as `dense_init`'s.

    Returns:
      {"W": (C_out, C_in, kh, kw), "b": (C_out,) zeros}; c_out*c_in*kh*kw + c_out parameters.
    """
    fn = "conv2d_init"
    c_in = check_positive_int(fn, "c_in", c_in)
    c_out = check_positive_int(fn, "c_out", c_out)
    kh, kw = as_pair(fn, "kernel_size", kernel_size)
    W = init_weights(key, (c_out, c_in, kh, kw), c_in * kh * kw, c_out * kh * kw, init, dtype, fn)
    return {"W": W, "b": jnp.zeros((c_out,), W.dtype)}


def conv_output_shape(in_hw, kernel_size, stride, pads) -> tuple[int, int]:
    """(H', W') of a convolution or pooling window: (n + top + bottom - k) // s + 1 per axis."""
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel_size, stride, pads))


def _check_kernel_fits(fn: str, in_hw, kernel_size, pads) -> None:
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    if padded[0] < kernel_size[0] or padded[1] < kernel_size[1]:
        raise ValueError(
            f"{fn}: kernel {tuple(kernel_size)} is larger than the padded input {padded} "
            f"(x spatial size {tuple(in_hw)} with padding {pads}); no output position fits")


def check_conv_args(fn: str, params, x, stride, padding, layout="CHW"):
    """Checks a conv call and resolves its settings; shared with the backward passes.

    Returns:
      (W, b, x, (sh, sw), ((top, bottom), (left, right))), with x and W cast to one float dtype.

    Raises:
      TypeError for params that are not conv2d_init's {"W", "b"} of floats;
      AssertionError (chex) for wrong ranks, a channel mismatch or a bias of the wrong shape;
      ValueError/TypeError for bad stride, padding or layout, or a kernel larger than the
      padded input.
    """
    layout = check_layout(fn, layout)
    x = check_float_array(fn, "x", x)
    W, b = _checked_kernel(fn, params)
    check_rank(fn, "x", x, 3, f"one example ({', '.join(layout)}); batch with jax.vmap")
    _check_channels(fn, "x", x, W, layout)
    stride, pads = _checked_geometry(fn, spatial_shape(x, layout), W, stride, padding)
    dtype = jnp.result_type(x, W)
    return W.astype(dtype), b.astype(dtype), x.astype(dtype), stride, pads


def _checked_kernel(fn: str, params):
    """params as conv2d_init returns them: {"W": (C_out, C_in, kh, kw), "b": (C_out,)} of floats."""
    check_dict(fn, "params", params, ("W", "b"), "conv2d_init")
    check_float_leaves(fn, "params", params)
    W, b = jnp.asarray(params["W"]), jnp.asarray(params["b"])
    check_rank(fn, "W", W, 4, "(C_out, C_in, kh, kw)")
    check_shape(fn, "b", b, (W.shape[0],), f" = (C_out,) to match W of shape {W.shape}")
    return W, b


def _check_channels(fn: str, arg: str, x, W, layout: str) -> None:
    """x's channel axis (one example, or a batch with a leading m) holds C_in = W.shape[1]."""
    batch = x.ndim == 4
    axis = channel_axis(layout) + batch
    expected = [None] * x.ndim
    expected[axis] = W.shape[1]
    dims = ("m, " if batch else "") + ", ".join(layout)
    check_shape(fn, arg, x, expected, f" = ({dims}): its C = {x.shape[axis]} channels must equal "
                                      f"C_in = {W.shape[1]} of W {W.shape}")


def _checked_geometry(fn: str, in_hw, W, stride, padding):
    """(stride pair, explicit pads) for a kernel W on images of spatial size in_hw that it fits."""
    stride = as_pair(fn, "stride", stride)
    pads = conv_padding(in_hw, W.shape[2:], stride, padding, fn)
    _check_kernel_fits(fn, in_hw, W.shape[2:], pads)
    return stride, pads


def conv2d(params, x, stride=1, padding="valid", layout="CHW"):
    """Forward pass of a convolutional layer on ONE example.

    Output_{c_out, i, j} = sum_{c_in} sum_m sum_n I_{c_in, i*s+m, j*s+n} K_{c_out, c_in, m, n}
                           + b_{c_out}, on the zero-padded input I.

    Args:
      params: {"W": (C_out, C_in, kh, kw), "b": (C_out,)}.
      x: (C_in, H, W) (or (H, W, C_in) with layout="HWC").
      stride: int or (sh, sw).
      padding: "valid" | "same" | int | (ph, pw); see `conv_padding`.
      layout: "CHW" (the chapter's) or "HWC" for x and the output (`nnjax.layers.layout`).

    Returns:
      (C_out, H', W') (or (H', W', C_out)) with H' = (H + top + bottom - kh) // sh + 1, likewise W'.
    """
    W, b, x, stride, pads = check_conv_args("conv2d", params, x, stride, padding, layout)
    if layout == "HWC":
        return conv2d_channels_last(W, b, x, stride, pads, layout)
    z = lax.conv_general_dilated(x[None], W, window_strides=stride, padding=pads,
                                 dimension_numbers=CONV_DIMENSIONS[layout])[0]
    return z + b[:, None, None]


def conv2d_channels_last(W, b, x, stride, pads, layout="CHW"):
    """`conv2d` on checked arguments, computed in `FAST_CONV_DIMENSIONS` whatever `layout`:
    x moved to channels-last, the kernel to (kh, kw, C_in, C_out), the result moved back.

    The same values as `conv2d`; fast inside a `lax.scan` too, where XLA would not make those
    moves itself. The forward of `nnjax.backprop.conv2d_fast`, whose gradient is hand-derived.

    Args:
      W: (C_out, C_in, kh, kw); b: (C_out,).
      x: one image in `layout`.
      stride: (sh, sw); pads: ((top, bottom), (left, right)), as `check_conv_args` returns them.

    Returns:
      The convolution in `layout`, as `conv2d`.
    """
    z = lax.conv_general_dilated(to_channels_last(x, layout)[None], kernel_hwio(W), window_strides=stride,
                                 padding=pads, dimension_numbers=FAST_CONV_DIMENSIONS)[0]
    return from_channels_last(z + b, layout)


def _check_im2col_args(fn: str, x, kernel_size, stride, padding):
    x = check_float_array(fn, "x", x)
    check_rank(fn, "x", x, 3, "one example (C, H, W)")
    kernel = as_pair(fn, "kernel_size", kernel_size)
    stride = as_pair(fn, "stride", stride)
    pads = conv_padding(x.shape[1:], kernel, stride, padding, fn)
    _check_kernel_fits(fn, x.shape[1:], kernel, pads)
    return x, kernel, stride, pads


def im2col(x, kernel_size, stride=1, padding="valid"):
    """The input's receptive fields as the columns of one matrix.

    Column (i, j) holds the patch I_{c, i*s+m, j*s+n} under output position (i, j), flattened
    in (c, m, n) order, the order of W.reshape(C_out, C_in*kh*kw); so a convolution is the
    matrix product W_mat @ im2col(x). Built as ONE gather from the padded input with the
    (static) row and column indices i*s+m and j*s+n: on CPU it compiles and runs faster than
    stacking kh*kw strided slices.

    Args:
      x: (C, H, W).
      kernel_size: int or (kh, kw).
      stride: int or (sh, sw).
      padding: "valid" | "same" | int | (ph, pw).

    Returns:
      (C*kh*kw, H'*W'), column index i*W' + j.
    """
    x, (kh, kw), (sh, sw), pads = _check_im2col_args("im2col", x, kernel_size, stride, padding)
    xp = jnp.pad(x, ((0, 0),) + pads)
    out_h, out_w = conv_output_shape(x.shape[1:], (kh, kw), (sh, sw), pads)
    m, n, i, j = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(out_h), np.arange(out_w), indexing="ij")
    rows = (i * sh + m).reshape(kh * kw, out_h * out_w)
    cols = (j * sw + n).reshape(kh * kw, out_h * out_w)
    return xp[:, rows, cols].reshape(x.shape[0] * kh * kw, out_h * out_w)


def conv2d_im2col(params, x, stride=1, padding="valid"):
    """`conv2d` as ONE matrix product over extracted patches.

    Z = W_mat @ im2col(x) + b, with W_mat = W.reshape(C_out, C_in*kh*kw) and Z reshaped to
    (C_out, H', W'). Same arguments and result as `conv2d`.
    """
    W, b, x, stride, pads = check_conv_args("conv2d_im2col", params, x, stride, padding)
    c_out, _, kh, kw = W.shape
    columns = im2col(x, (kh, kw), stride, pads)
    z = W.reshape(c_out, -1) @ columns + b[:, None]
    return z.reshape(c_out, *conv_output_shape(x.shape[1:], (kh, kw), stride, pads))


UNROLLED_CHUNKS = 4
"""Up to this many chunks, `map_chunks` and `sum_chunks` call fn once per chunk, side by side,
instead of looping (`lax.map`, `lax.scan`): the calls are then independent operations, which
XLA's CPU runtime runs at the same time on different cores, with no loop buffers to fill.
More chunks loop, so the compiled program stays small. Measured on the 2-core CPU (jax
0.10.2), the CNN's train step at batch 128 in chunks of 64: 40-43 ms with the two chunks
side by side against 58-63 ms looping; at batch 1024, 16 chunks side by side ran no faster
than the loop and took 8.3 s to compile against 2.5 s. (Unchunked, that step is as fast
again and compiles faster: the training code does not chunk, `conv2d_batch`.)"""


def _chunks(arrays, chunk: int | None):
    """The leading axis of each array cut into `chunk`-example blocks, as (count, blocks,
    rest): blocks (count, chunk, ...) per array, rest the remainder (possibly empty);
    chunk None is the whole batch."""
    chunk = chunk or arrays[0].shape[0]
    count = arrays[0].shape[0] // chunk
    blocks = [a[:count * chunk].reshape(count, chunk, *a.shape[1:]) for a in arrays]
    rest = [a[count * chunk:] for a in arrays]
    return count, blocks, rest


def _rest_results(fn, rest) -> list:
    """[fn(*rest)] for a non-empty remainder, else []."""
    return [fn(*rest)] if rest[0].shape[0] else []


def _chunk_results(fn, count, blocks, rest) -> list:
    """fn's result on each block side by side (`UNROLLED_CHUNKS`) and on a non-empty rest."""
    return [fn(*(block[i] for block in blocks)) for i in range(count)] + _rest_results(fn, rest)


def map_chunks(fn, arrays, chunk: int | None = None):
    """fn(*arrays) for a function that maps each example independently, chunk examples at a time.

    Each call's intermediate values (a convolution's patches) then span one chunk, not the
    whole batch: up to `UNROLLED_CHUNKS` chunks side by side, more as a `lax.map` (plus one
    call for the remainder). Same result as fn(*arrays).

    Args:
      fn: takes arrays with a leading batch axis, returns one array with the same batch axis.
      arrays: sequence of arrays, all with the same leading size m.
      chunk: examples per call; None: the whole batch in one call.

    Returns:
      fn's result for all m examples.
    """
    count, blocks, rest = _chunks(arrays, chunk)
    if count <= 1:
        return fn(*arrays)
    if count <= UNROLLED_CHUNKS:
        return jnp.concatenate(_chunk_results(fn, count, blocks, rest))
    out = lax.map(lambda block: fn(*block), blocks)
    return jnp.concatenate([out.reshape(-1, *out.shape[2:]), *_rest_results(fn, rest)])


def sum_chunks(fn, arrays, chunk: int | None = None):
    """fn(*arrays) for a function that SUMS over the batch (a weight gradient), chunk by chunk.

    fn's results for the chunks added up: up to `UNROLLED_CHUNKS` chunks side by side, more
    as a `lax.scan` (plus one call for the remainder). Same result as fn(*arrays), up to the
    order of the float additions. Arguments as `map_chunks`, except that fn returns a pytree
    summed over the batch axis.
    """
    count, blocks, rest = _chunks(arrays, chunk)
    if count <= 1:
        return fn(*arrays)
    add = partial(jax.tree.map, jnp.add)
    if count <= UNROLLED_CHUNKS:
        return reduce(add, _chunk_results(fn, count, blocks, rest))
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, *[b[0] for b in blocks]))
    total, _ = lax.scan(lambda acc, block: (add(acc, fn(*block)), None), zeros, blocks)
    return reduce(add, _rest_results(fn, rest), total)


def batch_patches(X, kernel_hw, stride, pads):
    """The receptive fields of a channels-last batch, one row of features per output pixel.

    Entry (n, i, j, (m, k, c)) is the padded input P_{n, i*s+m, j*s+k, c}: kh*kw strided
    slices of the padded batch side by side, in the order of W.transpose(2, 3, 1, 0) (so the
    convolution is patches @ W_mat, `kernel_matrix`). Measured against one gather with static
    indices (what `im2col` uses for one example): the gather compiles 2-3x faster (0.08 against
    0.2-0.3 s per convolution) but XLA fuses the slices with the layer before them, and the
    CNN's training step ran 57-60 against 74 ms at batch 128.

    Args:
      X: (m, H, W, C) channels-last batch.
      kernel_hw: (kh, kw).
      stride: (sh, sw).
      pads: ((top, bottom), (left, right)).

    Returns:
      (m, H', W', kh*kw*C).
    """
    (kh, kw), (sh, sw) = kernel_hw, stride
    out_h, out_w = conv_output_shape(X.shape[1:3], kernel_hw, stride, pads)
    Xp = jnp.pad(X, ((0, 0),) + tuple(pads) + ((0, 0),))
    return jnp.concatenate([Xp[:, m:m + sh * (out_h - 1) + 1:sh, k:k + sw * (out_w - 1) + 1:sw]
                            for m in range(kh) for k in range(kw)], axis=-1)


def kernel_matrix(W):
    """W (C_out, C_in, kh, kw) as the (kh*kw*C_in, C_out) matrix that multiplies `batch_patches`."""
    return W.transpose(2, 3, 1, 0).reshape(-1, W.shape[0])


def patch_rows(X, kernel_hw, stride, pads, bias: bool = True):
    """[patches | 1]: `batch_patches` as the rows of one matrix, each with a last feature 1.

    The bias is the weight of an input that is always 1 (the chapter's perceptron), so
    patch_rows(X) @ [W_mat; b] is the convolution with its bias; its Gram matrix
    [P | 1]^T [P | 1] holds the patches' sums and covariances (`nnjax.layers.conv2d_batch_norm`).
    With bias=False, the patches alone (no column of ones): what `conv2d_batch` multiplies by
    W_mat (adding b after the product) and what the weight gradient
    (`nnjax.backprop.conv2d_param_grads`) multiplies by delta^T. The forward pass and the
    weight gradient build the same matrix, which XLA then computes once per training step.

    Returns:
      (m*H'*W', kh*kw*C + 1) (kh*kw*C columns with bias=False), the rows in (n, i, j) order.
    """
    patches = batch_patches(X, kernel_hw, stride, pads)
    if bias:
        patches = jnp.concatenate([patches, jnp.ones((*patches.shape[:-1], 1), patches.dtype)], axis=-1)
    return patches.reshape(-1, patches.shape[-1])


def check_conv_batch_args(fn: str, params, X, stride, padding, layout="CHW"):
    """`check_conv_args` for a batch X (m, ...) of images: the same checks on each example.

    Returns:
      (W, b, X, (sh, sw), ((top, bottom), (left, right))), with X and W cast to one float dtype.
    """
    layout = check_layout(fn, layout)
    X = check_float_array(fn, "X", X)
    check_rank(fn, "X", X, 4, f"a batch (m, {', '.join(layout)})")
    if X.shape[0] == 0:
        raise ValueError(f"{fn}: X has shape {X.shape}, an empty batch; it needs at least one example")
    W, b = _checked_kernel(fn, params)
    _check_channels(fn, "X", X, W, layout)
    stride, pads = _checked_geometry(fn, spatial_shape(X[0], layout), W, stride, padding)
    dtype = jnp.result_type(X, W)
    return W.astype(dtype), b.astype(dtype), X.astype(dtype), stride, pads


def check_chunk(fn: str, chunk) -> int | None:
    """`chunk` (examples per im2col product) as an int >= 1, or None for the whole batch."""
    return None if chunk is None else check_positive_int(fn, "chunk", chunk)


def conv2d_batch(params, X, stride=1, padding="valid", layout="CHW", chunk: int | None = None,
                 compute_dtype=None):
    """`conv2d` on a whole batch: jax.vmap(conv2d)(X) computed as im2col matrix products.

    Z_n = patches(X_n) @ W_mat + b for each example n (`patch_rows`, `kernel_matrix`): by
    default ONE product for the whole batch, else `chunk` examples per product
    (`map_chunks`). Measured on the 2-core CPU (jax 0.10.2), in the CNN's train step: the
    bias added after the product rather than multiplied in as a column of ones
    ([patches | 1] @ [W_mat; b], every row kh*kw*C + 1 floats wide) ran the float32 step in
    21.9-22.9 against 22.4-23.4 ms (min) at batch 128, the bfloat16 one in 203-207 against
    209-215 ms at 1024; chunks of 64 (which an earlier version of this code needed to keep
    the patches in the caches) ran no faster at batch 128 or 1024 and compiled slower (at
    1024, split across 2 devices: 363-409 ms per step unchunked against 409-449 in chunks
    of 64, 2.0 against 3.0 s to the first step). Against ONE XLA convolution
    (`lax.conv_general_dilated`), this conv 32->64 3x3 on 13x13 maps ran 6.3 against 10.5 ms
    at batch 128, and its weight gradient (`nnjax.backprop.conv2d_param_grads`) 7.2 against
    24 ms.

    Args:
      params: {"W": (C_out, C_in, kh, kw), "b": (C_out,)}.
      X: (m, C_in, H, W) (or (m, H, W, C_in) with layout="HWC").
      stride, padding, layout: as `conv2d`.
      chunk: examples per matrix product, to bound the patches' memory; None: the whole batch.
      compute_dtype: None, or a floating dtype such as "bfloat16" for mixed precision: the
        product on patches and W_mat of that dtype, summed in W's dtype
        (`nnjax.layers.dense.mixed_matmul`; both are row-major arrays, which XLA's CPU backend
        needs to keep a bfloat16 product on its bfloat16 kernels), b added in W's dtype.

    Returns:
      (m, C_out, H', W') (or (m, H', W', C_out)), equal to jax.vmap(conv2d)(X); in W's dtype.
    """
    W, b, X, stride, pads = check_conv_batch_args("conv2d_batch", params, X, stride, padding, layout)
    chunk = check_chunk("conv2d_batch", chunk)
    compute_dtype = mixed_dtype("conv2d_batch", compute_dtype, W.dtype)
    X = to_channels_last(X, layout)
    W_mat = kernel_matrix(W)
    out_hw = conv_output_shape(X.shape[1:3], W.shape[2:], stride, pads)

    def convolve(Xc):
        patches = patch_rows(Xc, W.shape[2:], stride, pads, bias=False)
        Z = patches @ W_mat if compute_dtype is None else mixed_matmul(patches, W_mat, compute_dtype, W.dtype)
        return (Z + b).reshape(-1, *out_hw, W.shape[0])

    Z = map_chunks(convolve, [X], chunk)
    return from_channels_last(Z, layout)
