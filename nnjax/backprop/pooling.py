"""Hand-derived backward passes of max and average pooling (no jax.grad / jax.vjp).

Pooling has no parameters, so each backward returns dx = dL/dx alone, shaped like x, from the
upstream delta = dL/dy of shape (C, H', W').

Both work view by view (see `nnjax.layers.pooling.window_views`): view (m, n) of x is
x[:, m + i*sh, n + j*sw]; the gradient that reaches it is scattered back to those positions of
x with `lax.pad` (low m, interior sh - 1 zeros between rows), and the views' contributions are
summed. Overlapping windows (stride < window) thus add up correctly, and XLA fuses the pads
and sums into one elementwise loop.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from nnjax._checks import check_shape
from nnjax.layers.pooling import check_pool_args, pool_output_shape, window_views

__all__ = ["max_pool2d_backward", "avg_pool2d_backward", "max_pool2d_mask"]


def _check_delta(fn: str, x, delta, window, stride):
    out_hw = pool_output_shape(x.shape[1:], window, stride)
    check_shape(fn, "delta", delta, (x.shape[0], *out_hw),
                f" = (C, H', W'), the pooling output for x of shape {x.shape}")
    return jnp.asarray(delta, x.dtype)


def _scatter_view(g, in_hw, offset, stride):
    """Places g (C, H', W') at x[:, m + i*sh, n + j*sw], zeros elsewhere -> (C, H, W)."""
    config = [(0, 0, 0)]
    for size, start, step, n_out in zip(in_hw, offset, stride, g.shape[1:]):
        covered = step * (n_out - 1) + 1
        config.append((start, size - start - covered, step - 1))
    return lax.pad(g, jnp.zeros((), g.dtype), config)


def _offsets(window):
    return [(m, n) for m in range(window[0]) for n in range(window[1])]


def max_pool2d_mask(x, window=2, stride=None) -> list:
    """Which element of each window is its arg-max: one boolean (C, H', W') mask per view.

    Mask (m, n) is True at (c, i, j) when x_{c, i*sh+m, j*sw+n} equals the window maximum
    y_{c,i,j} and no earlier offset (row-major) in that window does. Tie rule: the FIRST
    maximum in the window takes the gradient, so each window routes its delta exactly once.
    """
    x, window, stride = check_pool_args("max_pool2d_mask", x, window, stride)
    views = window_views(x, window, stride)
    y = views[0]
    for view in views[1:]:
        y = jnp.maximum(y, view)
    taken = jnp.zeros(y.shape, bool)
    masks = []
    for view in views:
        hit = (view == y) & ~taken
        taken = taken | hit
        masks.append(hit)
    return masks


def max_pool2d_backward(x, delta, window=2, stride=None):
    """dL/dx of max pooling: route each delta_{c,i,j} to the arg-max of its window.

    y_{c,i,j} = max_{m,n} x_{c, i*sh+m, j*sw+n}, so dy_{c,i,j}/dx is 1 at the arg-max and 0
    elsewhere:  dx_{c,p,q} = sum_{(i,j,m,n): i*sh+m = p, j*sw+n = q} delta_{c,i,j} mask_{m,n}[c,i,j].
    Ties go to the first maximum of the window in row-major order (`max_pool2d_mask`), so
    sum(dx) == sum(delta). With overlapping windows one x element may collect several deltas.

    Args:
      x: (C, H, W), the pooling layer's input.
      delta: (C, H', W'), dL/dy.
      window, stride: as `max_pool2d`.

    Returns:
      dx: (C, H, W).
    """
    x, window, stride = check_pool_args("max_pool2d_backward", x, window, stride)
    delta = _check_delta("max_pool2d_backward", x, delta, window, stride)
    masks = max_pool2d_mask(x, window, stride)
    zero = jnp.zeros((), delta.dtype)
    parts = [_scatter_view(jnp.where(mask, delta, zero), x.shape[1:], offset, stride)
             for mask, offset in zip(masks, _offsets(window))]
    return sum(parts[1:], parts[0])


def avg_pool2d_backward(x, delta, window=2, stride=None):
    """dL/dx of average pooling: spread delta / (kh*kw) evenly over each window.

    y_{c,i,j} = 1/(kh*kw) sum_{m,n} x_{c, i*sh+m, j*sw+n}, so every element of the window gets
    dy/dx = 1/(kh*kw):  dx_{c,p,q} = sum_{(i,j,m,n): i*sh+m = p, j*sw+n = q} delta_{c,i,j} / (kh*kw).
    Elements no window covers get 0.

    Args and Returns as `max_pool2d_backward`.
    """
    x, window, stride = check_pool_args("avg_pool2d_backward", x, window, stride)
    delta = _check_delta("avg_pool2d_backward", x, delta, window, stride)
    share = delta / (window[0] * window[1])
    parts = [_scatter_view(share, x.shape[1:], offset, stride) for offset in _offsets(window)]
    return sum(parts[1:], parts[0])
