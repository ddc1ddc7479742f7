"""Shared plumbing for the figures: a pyplot-free Figure, saving, number formatting, network drawing.

Figures are built on `matplotlib.figure.Figure` directly (not pyplot), so they need no display,
leave no global state behind, and render with the Agg backend wherever they are saved.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from nnjax.atomic import write_figure

DPI = 100
"""Dots per inch of every figure: a figure of size (w, h) inches saves as (w * 100) x (h * 100) pixels."""

POSITIVE, NEGATIVE = "#1f77b4", "#d62728"
"""Colors of the +1 / -1 classes, of positive / negative weights."""
FORWARD, BACKWARD = "#444444", "#c0392b"
"""Colors of forward values and of backward (gradient) values."""


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure of `width` x `height` inches at `DPI`."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Saves `fig` as an image at `path` (folders created) when a path is given; returns `fig`.

    The pixel size is exactly the figure size times `DPI` (no tight bounding box), so a caller
    can rely on it.
    """
    if path is not None:
        write_figure(path, fig)
    return fig


def fmt(value: float, digits: int = 2) -> str:
    """A number with `digits` decimals and no negative zero, e.g. ``fmt(-0.0001) == "0.00"``."""
    text = f"{float(value):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def layer_positions(sizes: Sequence[int], max_shown: int = 10) -> list[np.ndarray]:
    """(x, y) centers of the drawn nodes of a layered network: layer l at x = l, centered on y = 0.

    A layer wider than `max_shown` is drawn as its first and last `max_shown // 2 - 1` nodes
    with a gap in the middle (where `draw_layer_gap` writes a vertical ellipsis).

    Args:
      sizes: nodes per layer, [n_0, ..., n_L].
      max_shown: the most nodes drawn per layer.

    Returns:
      One (shown_l, 2) array per layer, nodes listed top to bottom, one unit apart.
    """
    positions = []
    for l, n in enumerate(sizes):
        if n <= max_shown:
            slots = np.arange(n)
        else:
            half = max_shown // 2 - 1
            slots = np.concatenate([np.arange(half), np.arange(half + 1, 2 * half + 1)])
        span = slots.max()
        positions.append(np.stack([np.full(len(slots), float(l)), span / 2 - slots], axis=1))
    return positions


def draw_layer_gap(ax, centers: np.ndarray, n: int, **text_kwargs) -> None:
    """Writes a vertical ellipsis between the two halves of a layer drawn with fewer nodes than `n`."""
    if len(centers) < n:
        ax.text(centers[0, 0], 0.0, "⋮", ha="center", va="center", fontsize=16, **text_kwargs)


def draw_edges(ax, start: np.ndarray, end: np.ndarray, **line_kwargs) -> None:
    """Draws a line from every node in `start` (n, 2) to every node in `end` (m, 2)."""
    for p in start:
        for q in end:
            ax.plot([p[0], q[0]], [p[1], q[1]], zorder=1, **line_kwargs)


def draw_nodes(ax, centers: np.ndarray, color: str, size: float = 500) -> None:
    """Draws round nodes (scatter markers, round whatever the aspect) of area `size` pt^2 at `centers`."""
    ax.scatter(centers[:, 0], centers[:, 1], s=size, c=color, edgecolors="black", linewidths=1, zorder=3)
