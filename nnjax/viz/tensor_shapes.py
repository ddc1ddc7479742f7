"""Figure 8 of the chapter: tensor operations drawn as input shape -> output shape.

Chapter section "Tensors and Tensor Operations". Each element of an input is colored by its
position in memory (row-major order), and the output is the real result of the
`nnjax.tensor` operation on those elements, so the colors show where every element goes:
reshape keeps the order, transpose permutes it, broadcast repeats it. Output shapes come from
`nnjax.tensor.explain`, and so does the error message of the invalid operation.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.patches import Rectangle

from nnjax import tensor
from nnjax.viz._common import finish, new_figure

__all__ = ["plot_tensor_shapes"]

_PAGE_OFFSET = 0.45
"""How far each leading-axis slice of a 3-D tensor is drawn up and to the right of the previous."""
_BLOCK_GAP = 1.2
"""Space between the 3-D blocks of a 4-D tensor."""


def _extent(shape: Sequence[int]) -> tuple[float, float]:
    """(width, height) in cells of a tensor of `shape` as `_draw_tensor` draws it."""
    shape = tuple(shape)
    if len(shape) <= 2:
        rows, cols = ((1, 1) if not shape else (1, shape[0]) if len(shape) == 1 else shape)
        return float(cols), float(rows)
    if len(shape) == 3:
        width, height = _extent(shape[1:])
        return width + _PAGE_OFFSET * (shape[0] - 1), height + _PAGE_OFFSET * (shape[0] - 1)
    width, height = _extent(shape[1:])
    return shape[0] * width + (shape[0] - 1) * _BLOCK_GAP, height


def _draw_tensor(ax, values: np.ndarray, x: float, y: float, colors) -> None:
    """Draws `values` (rank 0 to 4), the front slice's top-left corner at (x, y), cells colored by value.

    A 3-D tensor is its slices along axis 0, slice 0 in front and each next one up and to the
    right behind it; a 4-D tensor is its 3-D blocks side by side.
    """
    if values.ndim == 4:
        width = _extent(values.shape[1:])[0]
        for i, block in enumerate(values):
            _draw_tensor(ax, block, x + i * (width + _BLOCK_GAP), y, colors)
        return
    if values.ndim == 3:
        for p in reversed(range(len(values))):
            _draw_tensor(ax, values[p], x + _PAGE_OFFSET * p, y + _PAGE_OFFSET * p, colors)
        return
    grid = values.reshape(1, -1) if values.ndim < 2 else values
    for (i, j), v in np.ndenumerate(grid):
        ax.add_patch(Rectangle((x + j, y - i - 1), 1, 1, facecolor=colors(v), edgecolor="black", linewidth=0.6))


def _show(ax, values: np.ndarray, x: float, y_top: float, label: str, colors, centered: bool = True) -> float:
    """Draws a tensor whose top edge is at `y_top`, its shape label below (centered or left-aligned);
    returns its width."""
    width, height = _extent(values.shape)
    behind = _PAGE_OFFSET * (values.shape[-3] - 1) if values.ndim >= 3 else 0.0
    _draw_tensor(ax, values, x, y_top - behind, colors)
    ax.text(x + width / 2 if centered else x, y_top - height - 0.35, label, ha="center" if centered else "left",
            va="top", fontsize=10)
    return width


def _arrow(ax, x0: float, x1: float, y: float, text: str, color: str = "black") -> None:
    """A horizontal arrow from x0 to x1 at height y with `text` above it."""
    ax.annotate("", xy=(x1, y), xytext=(x0, y), arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1.5,
                                                              mutation_scale=16))
    ax.text((x0 + x1) / 2, y + 0.25, text, ha="center", va="bottom", fontsize=9, color=color)


def _operations():
    """(title, inputs [(array, label)], op text, output array or error text) per row of the figure."""
    reshape_in = np.arange(24).reshape(2, 3, 4)
    transpose_in = np.arange(96).reshape(2, 4, 4, 3)
    squeeze_in = np.arange(3).reshape(1, 3, 1)
    left, right = np.arange(20).reshape(2, 10), np.arange(20, 40).reshape(2, 10)
    row = np.arange(3)
    column_steps = np.array([[0, 0, 0], [10, 10, 10]])
    rows = [
        ("reshape: change the shape, keep the elements in row-major order",
         [(reshape_in, "(2, 3, 4)")], "reshape(x, (6, 4))",
         np.asarray(tensor.reshape(reshape_in, (6, 4))), tensor.explain("reshape", (2, 3, 4), shape=(6, 4))),
        ("transpose: permute the axes, (B, H, W, C) -> (B, C, H, W)",
         [(transpose_in, "(B, H, W, C) = (2, 4, 4, 3)")], "transpose(x, (0, 3, 1, 2))",
         np.asarray(tensor.transpose(transpose_in, (0, 3, 1, 2))),
         tensor.explain("transpose", (2, 4, 4, 3), axes=(0, 3, 1, 2))),
        ("squeeze: remove the size-1 axes",
         [(squeeze_in, "(1, 3, 1)")], "squeeze(x)", np.asarray(tensor.squeeze(squeeze_in)),
         tensor.explain("squeeze", (1, 3, 1))),
        ("concatenate: join along an existing axis, two (B, 10) -> (B, 20)",
         [(left, "(2, 10)"), (right, "(2, 10)")], "concatenate([a, b], axis=1)",
         np.asarray(tensor.concatenate([left, right], axis=1)),
         tensor.explain("concatenate", (2, 10), (2, 10), axis=1)),
        ("broadcast: (3,) + (2, 3) -> (2, 3), the (3,) row repeated on the new leading axis, then added",
         [(row, "(3,)"), (column_steps, "(2, 3)")], "x + y",
         np.asarray(tensor.broadcast(row, (2, 3)) + column_steps),
         tensor.explain("broadcast_shapes", (3,), (2, 3))),
    ]
    try:
        tensor.explain("reshape", (2, 3, 4), shape=(5, 5))
    except ValueError as error:
        message = str(error)
    rows.append(("an invalid operation: its error says why",
                 [(reshape_in, "(2, 3, 4)")], "reshape(x, (5, 5))", message, None))
    return rows


def plot_tensor_shapes(path=None):
    """Reshape, transpose, squeeze, concatenate and broadcast as input shape -> output shape.

    One row per operation: the input tensor(s), an arrow with the call, and the output drawn
    with its shape from `nnjax.tensor.explain`; elements keep their color, so the picture
    shows where each one goes. The last row is reshape (2, 3, 4) -> (5, 5), impossible, with
    the error message nnjax raises.

    Args:
      path: where to save the PNG; nothing is saved when None.

    Returns:
      The matplotlib Figure (14 x 15 inches, 1400 x 1500 pixels).
    """
    rows = _operations()
    heights = [max(max(_extent(v.shape)[1] for v, _ in inputs) * len(inputs) + 1.2 * (len(inputs) - 1),
                   _extent(out.shape)[1] if isinstance(out, np.ndarray) else 2) + 2.2
               for _, inputs, _, out, _ in rows]
    fig = new_figure(14, 15)
    axes = fig.subplots(len(rows), 1, height_ratios=heights)
    for ax, height, (title, inputs, call, out, shape) in zip(axes, heights, rows):
        ax.set_xlim(-0.5, 38.5)
        ax.set_ylim(-height + 0.8, 1.0)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(title, fontsize=11, loc="left")
        largest = max(int(np.max(v)) for v, _ in inputs) + 1
        colors = _element_colors(largest)
        y, width = 0.0, 0.0
        for values, label in inputs:
            width = max(width, _show(ax, values, 0.0, y, label, colors))
            y -= _extent(values.shape)[1] + 1.2
        middle = -(_extent(inputs[0][0].shape)[1]) / 2
        start = width + 1.0
        if isinstance(out, np.ndarray):
            _arrow(ax, start, start + 6.0, middle, call)
            _show(ax, out, start + 7.0, 0.0, f"{tuple(out.shape)}   explain(...) = {shape}", colors,
                  centered=False)
        else:
            _arrow(ax, start, start + 6.0, middle, call + "  ✗", color="#c0392b")
            ax.text(start + 7.0, middle, "ValueError:\n" + out, ha="left", va="center", fontsize=10,
                    color="#922b21", family="monospace", wrap=True,
                    bbox=dict(boxstyle="round", facecolor="#fdedec", edgecolor="#c0392b"))
    fig.suptitle("Tensor operations as shapes: each element keeps its color (nnjax.tensor; shapes from explain)",
                 fontsize=13)
    return finish(fig, path)


def _element_colors(count: int):
    """Maps an element's value (its index in the input) to a color; -1 (an operand of no interest) to grey."""
    cmap = mpl.colormaps["viridis"]
    return lambda v: "#d5d8dc" if v < 0 else cmap(0.1 + 0.85 * v / max(count - 1, 1))
