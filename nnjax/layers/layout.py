"""Memory layout of one image: channels first (C, H, W), the chapter's, or channels last (H, W, C).

The chapter, and every layer by default, writes an image as (C, H, W). The same layers also
take ``layout="HWC"``: the same values with the channel axis last. It is a speed option, not a
different layer: XLA's CPU convolutions run channels-last, so on (C, H, W) data every
convolution is wrapped in transposes, and strided pooling slices run along the contiguous
axis where they do not vectorize. Measured on a 2-core CPU (jax 0.10.2), one SGD step of the
experiments' CNN at batch 128 took 146 ms written on (C, H, W) and 94 ms on (H, W, C); the
network in `nnjax.network.cnn_apply` keeps its activations channels-last inside for that
reason, while its inputs, parameters and outputs follow the chapter.

Parameters never change with the layout: a conv kernel is always W (C_out, C_in, kh, kw).
"""
from __future__ import annotations

import jax.numpy as jnp

from nnjax._checks import check_choice

__all__ = ["LAYOUTS", "check_layout", "channel_axis", "spatial_axes", "spatial_shape", "image_shape",
           "to_channels_first", "to_channels_last", "from_channels_last"]

LAYOUTS = ("CHW", "HWC")
"""One image as (channels, height, width), the chapter's default, or (height, width, channels)."""


def check_layout(fn: str, layout) -> str:
    """Returns `layout` if it is one of `LAYOUTS`; otherwise ValueError naming fn."""
    check_choice(fn, "layout", layout, LAYOUTS)
    return layout


def channel_axis(layout: str) -> int:
    """The channel axis of one image: 0 for "CHW", 2 for "HWC"."""
    return 0 if layout == "CHW" else 2


def spatial_axes(layout: str) -> tuple[int, int]:
    """The (height, width) axes of one image: (1, 2) for "CHW", (0, 1) for "HWC"."""
    return (1, 2) if layout == "CHW" else (0, 1)


def spatial_shape(x, layout: str) -> tuple[int, int]:
    """(H, W) of one image `x` in `layout`."""
    return tuple(x.shape[a] for a in spatial_axes(layout))


def image_shape(channels: int, height: int, width: int, layout: str) -> tuple[int, int, int]:
    """The shape of one image of that size in `layout`."""
    return (channels, height, width) if layout == "CHW" else (height, width, channels)


def to_channels_first(x, layout: str):
    """One image (or a batch, leading axes kept) from `layout` to (C, H, W)."""
    return x if layout == "CHW" else jnp.moveaxis(x, -1, -3)


def to_channels_last(x, layout: str):
    """One image (or a batch, leading axes kept) from `layout` to (H, W, C)."""
    return x if layout == "HWC" else jnp.moveaxis(x, -3, -1)


def from_channels_last(x, layout: str):
    """One image (or a batch) from (H, W, C) to `layout`."""
    return to_channels_first(x, "HWC") if layout == "CHW" else x
