"""Pooling layers: max and average pooling over spatial windows.

Chapter section "Pooling Layer": pooling downsamples each channel on its own; max pooling takes
the maximum value in each window, average pooling the mean. With a (kh, kw) window and stride
(sh, sw), one example x of shape (C, H, W) maps to (C, H', W'),

    max:  y_{c, i, j} = max_{m < kh, n < kw} x_{c, i*sh + m, j*sw + n}
    avg:  y_{c, i, j} = 1 / (kh * kw) * sum_{m, n} x_{c, i*sh + m, j*sw + n}

with H' = (H - kh) // sh + 1 (the conv output formula without padding; rows that no window
reaches are dropped). The common 2x2 window with stride 2 halves each spatial dimension.

Both are computed over the kh*kw shifted views x[:, m::sh, n::sw] (`window_views`): an
elementwise selection (of each window's first maximum) or sum of strided slices. That form was
chosen by measurement (2-core CPU, jax 0.10.2) because its autodiff compiles well: `jax.grad`
of it is a chain of selects, where `lax.reduce_window` differentiates into XLA's
select-and-scatter. A CNN train step at batch 128 (conv 1->32, pool, conv 32->64, pool, two
dense layers) took 151 ms of CPU time with the views (then a chain of `jnp.maximum`s) against
194 ms with `lax.reduce_window`; a reshape to (C, H', kh, W', kw) with a max over the window
axes was slower than both, forward and backward. As a forward alone, under a hand-derived
backward, that reshape is the faster one (`max_pool2d_blocks`, the forward of
`nnjax.backprop.max_pool2d_fast`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from nnjax._checks import as_pair, check_float_array, check_rank
from nnjax.layers.layout import check_layout, spatial_axes, spatial_shape

__all__ = ["pool_output_shape", "window_views", "first_max_index", "max_pool2d", "max_pool2d_blocks", "avg_pool2d"]


def check_pool_args(fn: str, x, window, stride, layout="CHW"):
    """Checks a pooling call and resolves window and stride (stride defaults to the window).

    Returns:
      (x as a float array, (kh, kw), (sh, sw)).

    Raises:
      AssertionError (chex) unless x has rank 3; TypeError/ValueError for a window or stride
      that is not a positive int or pair, or a layout not in `nnjax.layers.layout.LAYOUTS`;
      ValueError for a window larger than the input.
    """
    layout = check_layout(fn, layout)
    x = check_float_array(fn, "x", x)
    check_rank(fn, "x", x, 3, f"one example ({', '.join(layout)}); batch with jax.vmap")
    window = as_pair(fn, "window", window)
    stride = window if stride is None else as_pair(fn, "stride", stride)
    in_hw = spatial_shape(x, layout)
    if window[0] > in_hw[0] or window[1] > in_hw[1]:
        raise ValueError(
            f"{fn}: window {window} is larger than the input's spatial size {in_hw} "
            f"(x has shape {x.shape}, layout {layout}); no window fits")
    return x, window, stride


def pool_output_shape(in_hw, window, stride) -> tuple[int, int]:
    """(H', W') = ((H - kh) // sh + 1, (W - kw) // sw + 1)."""
    return tuple((n - k) // s + 1 for n, k, s in zip(in_hw, window, stride))


def window_views(x, window, stride, axes=(1, 2)) -> list:
    """The kh*kw shifted views x[:, m + i*sh, n + j*sw], each (C, H', W'), offsets row-major.

    View number m*kw + n holds, at (c, i, j), the element at offset (m, n) of window (i, j);
    a pooling layer reduces across the views elementwise.

    Args:
      x: the input, (C, H, W) by default.
      window: (kh, kw).
      stride: (sh, sw).
      axes: the two spatial axes of x; (0, 1) for a channels-last (H, W, C) array.

    Returns:
      A list of kh*kw arrays shaped like x with the spatial sizes (H', W').
    """
    (kh, kw), (sh, sw) = window, stride
    out_h, out_w = pool_output_shape([x.shape[a] for a in axes], window, stride)
    return [lax.slice_in_dim(lax.slice_in_dim(x, m, m + sh * (out_h - 1) + 1, sh, axes[0]),
                             n, n + sw * (out_w - 1) + 1, sw, axes[1])
            for m in range(kh) for n in range(kw)]


def first_max_index(views, nan_wins: bool = False):
    """Which view holds each position's maximum: t for views[t], the FIRST one on a tie (the
    strict > keeps the earlier view), int32 of the views' shape.

    With nan_wins=True a NaN counts as the maximum, so that a pooled value is NaN wherever its
    window holds one, as with `jnp.maximum`; of several NaNs the first wins.
    """
    best, index = views[0], jnp.zeros(views[0].shape, jnp.int32)
    for t, view in enumerate(views[1:], 1):
        better = view > best
        if nan_wins:
            better = better | (jnp.isnan(view) & ~jnp.isnan(best))
        best = jnp.where(better, view, best)
        index = jnp.where(better, t, index)
    return index


def max_pool2d(x, window=2, stride=None, layout="CHW"):
    """Max pooling of ONE example: y_{c,i,j} = max_{m,n} x_{c, i*sh+m, j*sw+n}.

    Each window's value is picked from its first maximum (`first_max_index`), so `jax.grad`
    routes the window's whole delta to that one element, the rule of the hand-derived
    `nnjax.backprop.max_pool2d_backward`, ties included (a chain of `jnp.maximum`s would split
    a tied window's delta unevenly between its maxima).

    Args:
      x: (C, H, W) (or (H, W, C) with layout="HWC").
      window: int or (kh, kw).
      stride: int or (sh, sw); None means the window (non-overlapping windows).
      layout: "CHW" (the chapter's) or "HWC" for x and the output (`nnjax.layers.layout`).

    Returns:
      (C, H', W') (or (H', W', C)) with H' = (H - kh) // sh + 1, W' = (W - kw) // sw + 1.
    """
    x, window, stride = check_pool_args("max_pool2d", x, window, stride, layout)
    views = window_views(x, window, stride, spatial_axes(layout))
    winner = first_max_index(views, nan_wins=True)
    y = views[0]
    for t, view in enumerate(views[1:], 1):
        y = jnp.where(winner == t, view, y)
    return y


def max_pool2d_blocks(x, window=2, layout="CHW"):
    """`max_pool2d` with stride = window, the windows tiling the map, as ONE max reduction.

    The map is cropped to whole windows (the rows and columns no window reaches, as
    `max_pool2d` drops them), reshaped so that each window has two axes of its own,
    (C, H', kh, W', kw), and reduced by max over those: y_{c,i,j} = max_{m,n} x_{c, i*kh+m, j*kw+n}.
    XLA then writes the pooled map once, where it copies `max_pool2d`'s elementwise maximum
    of shifted views into every consumer (the nine patch slices of the next convolution).
    Its autodiff is slow (see this module's docstring), so it serves as a forward whose
    backward is hand-derived: `nnjax.backprop.max_pool2d_fast`.

    Args:
      x: (C, H, W) (or (H, W, C) with layout="HWC").
      window: int or (kh, kw), also the stride.
      layout: "CHW" or "HWC", as `max_pool2d`.

    Returns:
      max_pool2d(x, window, window, layout): (C, H // kh, W // kw) (or (H // kh, W // kw, C)).
    """
    x, (kh, kw), _ = check_pool_args("max_pool2d_blocks", x, window, None, layout)
    h_axis, w_axis = spatial_axes(layout)
    out_h, out_w = pool_output_shape(spatial_shape(x, layout), (kh, kw), (kh, kw))
    x = lax.slice_in_dim(lax.slice_in_dim(x, 0, out_h * kh, axis=h_axis), 0, out_w * kw, axis=w_axis)
    if layout == "CHW":
        return jnp.max(x.reshape(x.shape[0], out_h, kh, out_w, kw), axis=(2, 4))
    return jnp.max(x.reshape(out_h, kh, out_w, kw, x.shape[-1]), axis=(1, 3))


def avg_pool2d(x, window=2, stride=None, layout="CHW"):
    """Average pooling of ONE example: y_{c,i,j} = 1/(kh*kw) sum_{m,n} x_{c, i*sh+m, j*sw+n}.

    Args and Returns as `max_pool2d`.
    """
    x, window, stride = check_pool_args("avg_pool2d", x, window, stride, layout)
    views = window_views(x, window, stride, spatial_axes(layout))
    return sum(views[1:], views[0]) / len(views)
