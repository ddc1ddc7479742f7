"""Figure 3 of the chapter: a network's architecture, the shape of W on each connection, its size.

Chapter section "Network Architecture: Layers and Matrices": layer l computes
z^[l] = W^[l] a^[l-1] + b^[l] with W^[l] of shape (n_l, n_(l-1)) and b^[l] of shape (n_l,),
so it holds n_l * n_(l-1) + n_l parameters.
"""
from __future__ import annotations

from typing import Sequence

from nnjax.viz._common import draw_edges, draw_layer_gap, draw_nodes, finish, layer_positions, new_figure

__all__ = ["plot_architecture"]


def plot_architecture(sizes: Sequence[int] = (4, 8, 8, 2), path=None, *,
                      activations: Sequence[str] | None = None):
    """A node-and-edge diagram of a fully connected network with W^[l]'s shape on each connection.

    Args:
      sizes: [n_0, ..., n_L], the input size then each layer's width; the chapter's default
        4 -> 8 -> 8 -> 2.
      path: where to save the PNG; nothing is saved when None.
      activations: the activation of layers 1..L (names); defaults to ReLU hidden layers and a
        softmax output, as in the chapter.

    Returns:
      The matplotlib Figure (12 x 7 inches, 1200 x 700 pixels).

    Raises:
      ValueError: fewer than two sizes, a size below 1, or a wrong number of activations.
    """
    sizes = [int(n) for n in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"plot_architecture: sizes must be at least two positive ints [n_0, ..., n_L], got {sizes}")
    depth = len(sizes) - 1
    activations = list(activations) if activations is not None else ["ReLU"] * (depth - 1) + ["softmax"]
    if len(activations) != depth:
        raise ValueError(f"plot_architecture: activations has {len(activations)} entries, "
                         f"expected one per layer 1..L = {depth}")
    centers = layer_positions(sizes)
    top = max(c[:, 1].max() for c in centers)
    fig = new_figure(12, 7)
    ax = fig.subplots()
    ax.set_axis_off()
    counts = []
    for l in range(1, depth + 1):
        draw_edges(ax, centers[l - 1], centers[l], color="#9aa7b1", linewidth=0.6)
        n_out, n_in = sizes[l], sizes[l - 1]
        counts.append(n_out * n_in + n_out)
        ax.text(l - 0.5, top + 1.0, f"$W^{{[{l}]}}$: ({n_out}, {n_in})\n$b^{{[{l}]}}$: ({n_out},)\n"
                f"{n_out}·{n_in} + {n_out} = {counts[-1]:,} params",
                ha="center", va="bottom", fontsize=10,
                bbox=dict(boxstyle="round", facecolor="#fdf2e9", edgecolor="#e59866"))
    for l, c in enumerate(centers):
        color = "#aed6f1" if l == 0 else ("#f9e79f" if l == depth else "#d5f5e3")
        draw_nodes(ax, c, color)
        draw_layer_gap(ax, c, sizes[l])
        role = "input" if l == 0 else ("output" if l == depth else "hidden")
        detail = "x" if l == 0 else activations[l - 1]
        ax.text(l, c[:, 1].min() - 0.6, f"{role}\n$a^{{[{l}]}}$: ({sizes[l]},)\n{detail}",
                ha="center", va="top", fontsize=10)
    ax.set_xlim(-0.45, depth + 0.45)
    ax.set_ylim(-top - 2.6, top + 2.9)
    arrows = " → ".join(str(n) for n in sizes)
    ax.set_title(f"Network {arrows}: total parameters {' + '.join(f'{n:,}' for n in counts)} = {sum(counts):,}",
                 fontsize=13)
    return finish(fig, path)
