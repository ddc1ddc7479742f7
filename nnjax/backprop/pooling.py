"""Hand-derived backward passes of max and average pooling (no jax.grad / jax.vjp).

Pooling has no parameters, so each backward returns dx = dL/dx alone, shaped like x, from the
upstream delta = dL/dy of shape (C, H', W').

Both work view by view (see `nnjax.layers.pooling.window_views`): view (m, n) of x holds
x_{c, i*sh+m, j*sw+n}; the gradient that reaches it is scattered back to those positions with
`lax.pad` (low padding m, sh - 1 interior zeros between rows), and the kh*kw contributions are
summed, so overlapping windows (stride < window) add up correctly.

The arrays are handled channels-last, (H, W, C), inside: the window slicing then strides over
the outer axes and every elementwise step runs along the contiguous channel axis, which XLA
vectorizes. On channels-last data (what XLA's CPU convolutions produce inside a network) the
max-pool backward of a batch of 128 32x26x26 maps took 1.5 ms against 39 ms for the same code
written on (C, H, W); the transposes to and from (C, H, W) cost nothing when XLA can choose
the memory layout, and a real copy when it cannot. Through `max_pool2d_fast` this backward
took a CNN train step from 151 to 117 ms of CPU time (batch 128, see
`nnjax.backprop.custom_vjp`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from nnjax._checks import check_real_array, check_shape
from nnjax.layers.layout import (
    channel_axis, from_channels_last, image_shape, spatial_axes, spatial_shape, to_channels_last,
)
from nnjax.layers.pooling import check_pool_args, first_max_index, pool_output_shape, window_views

__all__ = ["max_pool2d_argmax", "max_pool2d_backward", "avg_pool2d_backward"]

_SPATIAL = (0, 1)
"""The spatial axes of a channels-last (H, W, C) array."""


def _check_delta(fn: str, x, delta, window, stride, layout):
    out_hw = pool_output_shape(spatial_shape(x, layout), window, stride)
    channels = x.shape[channel_axis(layout)]
    check_shape(fn, "delta", delta, image_shape(channels, *out_hw, layout),
                f" = ({', '.join(layout)}) with H', W' the pooling output for x of shape {x.shape}")
    return check_real_array(fn, "delta", delta).astype(x.dtype)


def _offsets(window):
    return [(m, n) for m in range(window[0]) for n in range(window[1])]


def _scatter_view(g, in_hw, offset, stride):
    """Places channels-last g (H', W', C) at x[i*sh + m, j*sw + n], zeros elsewhere -> (H, W, C)."""
    config = []
    for size, start, step, n_out in zip(in_hw, offset, stride, g.shape[:2]):
        covered = step * (n_out - 1) + 1
        config.append((start, size - start - covered, step - 1))
    return lax.pad(g, jnp.zeros((), g.dtype), config + [(0, 0, 0)])


def max_pool2d_argmax(x, window=2, stride=None, layout="CHW"):
    """Which element of each window is its maximum: the offset index m*kw + n, (C, H', W') ints.

    Tie rule: the FIRST maximum of the window in row-major order (m, then n) wins, so each
    window routes its delta to exactly one element; a NaN counts as the maximum (as in
    `max_pool2d`, whose output is NaN there).

    Args:
      x: (C, H, W); window, stride, layout: as `max_pool2d`.

    Returns:
      int32 array (C, H', W') (or (H', W', C)) with values in [0, kh*kw).
    """
    x, window, stride = check_pool_args("max_pool2d_argmax", x, window, stride, layout)
    return first_max_index(window_views(x, window, stride, spatial_axes(layout)), nan_wins=True)


def max_pool2d_backward(x, delta, window=2, stride=None, layout="CHW"):
    """dL/dx of max pooling: route each delta_{c,i,j} to the arg-max of its window.

    y_{c,i,j} = max_{m,n} x_{c, i*sh+m, j*sw+n}, so dy_{c,i,j}/dx is 1 at the window's
    arg-max and 0 elsewhere:

        dx_{c,p,q} = sum_{(i,j,m,n): i*sh+m = p, j*sw+n = q} delta_{c,i,j} [argmax_{c,i,j} = (m, n)]

    Ties go to the first maximum of the window (`max_pool2d_argmax`), so sum(dx) == sum(delta).
    With overlapping windows one element of x may collect several deltas; elements no window
    covers get 0.

    Args:
      x: (C, H, W), the pooling layer's input ((H, W, C) with layout="HWC").
      delta: (C, H', W'), dL/dy ((H', W', C) with layout="HWC").
      window, stride, layout: as `max_pool2d`.

    Returns:
      dx: x's shape.
    """
    x, window, stride = check_pool_args("max_pool2d_backward", x, window, stride, layout)
    delta = _check_delta("max_pool2d_backward", x, delta, window, stride, layout)
    x_last, delta_last = to_channels_last(x, layout), to_channels_last(delta, layout)
    winner = first_max_index(window_views(x_last, window, stride, _SPATIAL), nan_wins=True)
    zero = jnp.zeros((), delta.dtype)
    parts = [_scatter_view(jnp.where(winner == t, delta_last, zero), x_last.shape[:2], offset, stride)
             for t, offset in enumerate(_offsets(window))]
    return from_channels_last(sum(parts[1:], parts[0]), layout)


def avg_pool2d_backward(x, delta, window=2, stride=None, layout="CHW"):
    """dL/dx of average pooling: spread delta / (kh*kw) evenly over each window.

    y_{c,i,j} = 1/(kh*kw) sum_{m,n} x_{c, i*sh+m, j*sw+n}, so every element of a window gets
    dy/dx = 1/(kh*kw):

        dx_{c,p,q} = sum_{(i,j,m,n): i*sh+m = p, j*sw+n = q} delta_{c,i,j} / (kh*kw)

    Elements no window covers get 0.

    Args and Returns as `max_pool2d_backward`.
    """
    x, window, stride = check_pool_args("avg_pool2d_backward", x, window, stride, layout)
    delta = _check_delta("avg_pool2d_backward", x, delta, window, stride, layout)
    share = to_channels_last(delta, layout) / (window[0] * window[1])
    parts = [_scatter_view(share, spatial_shape(x, layout), offset, stride) for offset in _offsets(window)]
    return from_channels_last(sum(parts[1:], parts[0]), layout)
