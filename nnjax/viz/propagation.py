"""Figures 4 and 5 of the chapter: forward propagation and backpropagation, with their numbers.

Chapter sections "Forward Propagation" and "Backpropagation". The values drawn come from
`nnjax.network.trace_forward` and `trace_backward`, and the equations printed under each
diagram are those traces' own text, so the picture and the API always agree.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._checks import check_choice
from nnjax.network.mlp import mlp_init
from nnjax.network.trace import BackwardTrace, ForwardTrace, trace_backward, trace_forward
from nnjax.viz._common import (BACKWARD, FORWARD, NEGATIVE, POSITIVE, draw_nodes, finish, fmt, layer_positions,
                               new_figure)

__all__ = ["example_params", "plot_forward_propagation", "plot_backpropagation"]

EXAMPLE_SEED = 4
"""The seed of the chapter's small examples: with it, one of the three hidden ReLUs is off."""


def example_params(sizes: Sequence[int], seed: int = EXAMPLE_SEED):
    """Readable random parameters for a small worked example.

    W^[l] is He-initialized (`nnjax.network.mlp_init`) and b^[l] uniform in [-0.5, 0.5], both
    rounded to one decimal so every step can be redone by hand.

    Args:
      sizes: [n_0, ..., n_L].
      seed: the `jax.random.key` seed.

    Returns:
      A list of L dicts {"W": (n_l, n_(l-1)), "b": (n_l,)}, as `mlp_init` returns.
    """
    weights_key, bias_key = jax.random.split(jax.random.key(seed))
    params = mlp_init(weights_key, list(sizes))
    bias_keys = jax.random.split(bias_key, len(params))
    return [{"W": jnp.round(p["W"], 1),
             "b": jnp.round(jax.random.uniform(k, p["b"].shape, minval=-0.5, maxval=0.5), 1)}
            for p, k in zip(params, bias_keys)]


MAX_NEURONS = 10
"""The step-by-step figures draw every neuron with its numbers, so layers are at most this wide."""


MAX_LABELLED_EDGES = 6
"""Edges carry their value when a layer has at most this many (beyond, labels would overlap; the
equations under the diagram still give every value)."""


def _check_sizes(fn: str, sizes: Sequence[int]) -> None:
    """Raises ValueError when a layer is too wide to draw neuron by neuron."""
    if max(sizes) > MAX_NEURONS:
        raise ValueError(f"{fn}: layer sizes {list(sizes)} are too wide to draw every neuron; "
                         f"use at most {MAX_NEURONS} per layer (print the trace for larger networks)")


def _network_axes(fig, sizes: Sequence[int], right_margin: float):
    """Splits `fig` into a diagram axes (top) and an equations axes (bottom); returns both and node centers."""
    diagram, equations = fig.subplots(2, 1, height_ratios=[2.1, 1])
    diagram.set_axis_off()
    equations.set_axis_off()
    centers = [c * [3.2, 1.5] for c in layer_positions(sizes)]
    top = max(c[:, 1].max() for c in centers)
    diagram.set_xlim(-0.9, 3.2 * (len(sizes) - 1) + right_margin)
    diagram.set_ylim(-top - 1.0, top + 1.2)
    return diagram, equations, centers, top


def _label_fraction(n_from: int, n_to: int) -> float:
    """Where along the edges between layers of `n_from` and `n_to` neurons their labels go, as a
    fraction from the `n_from` side: near the wider layer, where the edges are furthest apart
    (near the narrower one, edges that cross would stack their labels)."""
    return 0.7 if n_to >= n_from else 0.3


def _edge_label(ax, start, end, text: str, color: str, t: float) -> None:
    """Writes `text` on the segment start -> end at fraction `t` from `start`, in a small white box."""
    x, y = (1 - t) * np.asarray(start) + t * np.asarray(end)
    ax.text(x, y, text, fontsize=8, ha="center", va="center", color=color, zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor=color, linewidth=0.6))


def _write_equations(ax, text: str) -> None:
    """Writes a trace's step-by-step text in monospace, top-left of `ax`."""
    ax.text(0.0, 1.0, text, family="monospace", fontsize=9, ha="left", va="top", transform=ax.transAxes)


def _node_texts(ax, centers, lines: Sequence[str], color: str, dy: float = 0.0) -> None:
    """Writes one (possibly multi-line) text inside each node."""
    for (x, y), text in zip(centers, lines):
        ax.text(x, y + dy, text, ha="center", va="center", fontsize=8.5, color=color, zorder=4)


def plot_forward_propagation(params=None, x: Sequence[float] = (1.0, 0.5), path=None):
    """The chapter's forward-propagation example, 2 -> 3 -> 2, with the values at every neuron.

    Each edge shows its weight W^[l]_jk (for layers of at most `MAX_LABELLED_EDGES` weights),
    each neuron its z and a; below, the trace's steps
    z^[l] = W^[l] a^[l-1] + b^[l], a^[l] = sigma(z^[l]) with all numbers (ReLU hidden layer,
    softmax output).

    Args:
      params: a list of dense layers of at most `MAX_NEURONS` neurons each; defaults to
        `example_params([2, 3, 2])`.
      x: the input a^[0], by default the chapter's [1.0, 0.5].
      path: where to save the PNG; nothing is saved when None.

    Returns:
      The matplotlib Figure (12 x 7.5 inches, 1200 x 750 pixels).

    Raises:
      ValueError: a layer wider than `MAX_NEURONS`.
    """
    params = example_params([2, 3, 2]) if params is None else params
    trace = trace_forward(params, jnp.asarray(x, dtype=jnp.float32))
    return _forward_figure(trace, path)


def _trace_figure(fn: str, forward: ForwardTrace, right_margin: float):
    """A 12 x 7.5 inch figure with axes for the traced network (its layer sizes checked, `fn`
    named in the error) and for the equations: (fig, ax, equations, centers, top)."""
    sizes = [len(forward.x)] + [len(step.z) for step in forward.layers]
    _check_sizes(fn, sizes)
    fig = new_figure(12, 7.5)
    return (fig, *_network_axes(fig, sizes, right_margin=right_margin))


def _forward_figure(trace: ForwardTrace, path):
    """Draws a ForwardTrace: network with weights on the edges, z and a in the nodes, equations below."""
    fig, ax, equations, centers, top = _trace_figure("plot_forward_propagation", trace, right_margin=0.9)
    depth = len(trace.layers)
    for l, step in enumerate(trace.layers, start=1):
        W = np.asarray(step.W)
        for j, end in enumerate(centers[l]):
            for k, start in enumerate(centers[l - 1]):
                color = POSITIVE if W[j, k] >= 0 else NEGATIVE
                ax.plot(*zip(start, end), color=color, linewidth=0.6 + 1.6 * min(abs(W[j, k]), 1.5), alpha=0.55,
                        zorder=1)
                if W.size <= MAX_LABELLED_EDGES:
                    _edge_label(ax, start, end, fmt(W[j, k], 1), color, _label_fraction(*W.shape[::-1]))
        for (cx, cy), b in zip(centers[l], np.asarray(step.b)):
            ax.text(cx, cy - 0.5, f"b = {fmt(b, 1)}", ha="center", va="top", fontsize=8.5, color=FORWARD)
        sigma = trace.output if l == depth else trace.activation
        ax.text(centers[l][0, 0], top + 0.7, f"layer {l}: $z^{{[{l}]}} = W^{{[{l}]}} a^{{[{l - 1}]}} + b^{{[{l}]}}$\n"
                f"$a^{{[{l}]}}$ = {sigma}($z^{{[{l}]}}$)", ha="center", va="bottom", fontsize=10)
    ax.text(centers[0][0, 0], top + 0.7, "input\n$a^{[0]} = x$", ha="center", va="bottom", fontsize=10)
    draw_nodes(ax, centers[0], "#aed6f1", size=3000)
    _node_texts(ax, centers[0], [f"$x_{k + 1}$ = {fmt(v)}" for k, v in enumerate(np.asarray(trace.x))], FORWARD)
    for l, step in enumerate(trace.layers, start=1):
        draw_nodes(ax, centers[l], "#f9e79f" if l == depth else "#d5f5e3", size=3000)
        a_name = "ŷ" if l == depth else "a"
        _node_texts(ax, centers[l], [f"z = {fmt(z)}\n{a_name} = {fmt(a)}"
                                     for z, a in zip(np.asarray(step.z), np.asarray(step.a))], FORWARD)
    _write_equations(equations, str(trace))
    arrows = " → ".join(str(len(layer)) for layer in centers)
    fig.suptitle(f"Forward propagation {arrows}: x = [{', '.join(fmt(v) for v in np.asarray(trace.x))}], "
                 f"weights on the edges (blue +, red -), z and a in each neuron", fontsize=12)
    return finish(fig, path)


_LOSS_BOXES = {
    # loss -> (its name in the title, the box beside the output layer: L, the output a^[L], delta^[L])
    "mse": ("MSE", "L = ||y - ŷ||² = {value}\nŷ = z (linear output)\nδ = 2(ŷ - y)"),
    "softmax_cross_entropy": ("softmax + cross-entropy", "L = -Σ y log ŷ = {value}\nŷ = softmax(z)\nδ = ŷ - y"),
    "sigmoid_binary_cross_entropy": ("sigmoid + binary cross-entropy",
                                     "L = -Σ [y log ŷ + (1 - y) log(1 - ŷ)] = {value}\nŷ = σ(z)\nδ = ŷ - y"),
}


def plot_backpropagation(params=None, x: Sequence[float] = (1.0, 0.5), y: Sequence[float] | None = None,
                         path=None, *, loss: str = "mse"):
    """The chapter's backpropagation example, 2 -> 3 -> 1 with MSE by default, gradients on backward arrows.

    Each neuron shows its forward a and its delta = dL/dz; each connection carries an arrow
    pointing backward labelled with dL/dW^[l]_jk = delta^[l]_j a^[l-1]_k (for layers of at most
    `MAX_LABELLED_EDGES` weights). Below, the trace's steps: delta^[L] for the loss (MSE:
    2 (z^[L] - y); softmax + cross-entropy and sigmoid + binary cross-entropy: a^[L] - y),
    delta^[l] = (W^[l+1])^T delta^[l+1] * relu'(z^[l]), dW = delta a^T, db = delta.

    Args:
      params: a list of dense layers, at most `MAX_NEURONS` neurons per layer; defaults to
        `example_params([2, 3, 1])`, or `[2, 3, 2]` for softmax + cross-entropy (two classes).
      x: the input, by default [1.0, 0.5].
      y: the target, one value per output neuron; by default 1 for each (MSE, binary
        cross-entropy), or the one-hot [1, 0, ...] for softmax + cross-entropy.
      path: where to save the PNG; nothing is saved when None.
      loss: the chapter's loss selector: "mse", "softmax_cross_entropy" or
        "sigmoid_binary_cross_entropy" (each with its output layer, `nnjax.backprop.LOSSES`).

    Returns:
      The matplotlib Figure (12 x 7.5 inches, 1200 x 750 pixels).

    Raises:
      ValueError: a layer wider than `MAX_NEURONS`, or an unknown loss.
    """
    check_choice("plot_backpropagation", "loss", loss, tuple(_LOSS_BOXES))
    if params is None:
        params = example_params([2, 3, 2 if loss == "softmax_cross_entropy" else 1])
    if y is None:
        outputs = params[-1]["W"].shape[0]
        y = jnp.eye(outputs)[0] if loss == "softmax_cross_entropy" else jnp.ones(outputs)
    trace = trace_backward(params, jnp.asarray(x, dtype=jnp.float32), jnp.asarray(y, dtype=jnp.float32), loss=loss)
    return _backward_figure(trace, path)


def _backward_figure(trace: BackwardTrace, path):
    """Draws a BackwardTrace: backward arrows labelled with dL/dW, a and delta in the nodes, equations below."""
    forward = trace.forward
    fig, ax, equations, centers, top = _trace_figure("plot_backpropagation", forward, right_margin=2.0)
    depth = len(forward.layers)
    for l, grads in enumerate(trace.layers, start=1):
        dW = np.asarray(grads.dW)
        for j, end in enumerate(centers[l]):
            for k, start in enumerate(centers[l - 1]):
                ax.annotate("", xy=start, xytext=end, zorder=1,
                            arrowprops=dict(arrowstyle="-|>", color=BACKWARD, linewidth=1.0, alpha=0.6,
                                            shrinkA=27, shrinkB=27, mutation_scale=14))
                if dW.size <= MAX_LABELLED_EDGES:
                    _edge_label(ax, start, end, f"$∂L/∂W^{{[{l}]}}_{{{j + 1}{k + 1}}}$ = {fmt(dW[j, k])}",
                                BACKWARD, _label_fraction(*dW.shape[::-1]))
        ax.text(centers[l][0, 0], top + 0.7,
                f"layer {l}: $∂L/∂W^{{[{l}]}} = δ^{{[{l}]}} (a^{{[{l - 1}]}})^T$\n$∂L/∂b^{{[{l}]}} = δ^{{[{l}]}}$",
                ha="center", va="bottom", fontsize=10)
    ax.text(centers[0][0, 0], top + 0.7, "input\n$a^{[0]} = x$", ha="center", va="bottom", fontsize=10)
    draw_nodes(ax, centers[0], "#aed6f1", size=3000)
    _node_texts(ax, centers[0], [f"$x_{k + 1}$ = {fmt(v)}" for k, v in enumerate(np.asarray(forward.x))], FORWARD)
    for l, (step, grads) in enumerate(zip(forward.layers, trace.layers), start=1):
        draw_nodes(ax, centers[l], "#f9e79f" if l == depth else "#d5f5e3", size=3000)
        a_name = "ŷ" if l == depth else "a"
        _node_texts(ax, centers[l], [f"{a_name} = {fmt(a)}" for a in np.asarray(step.a)], FORWARD, dy=0.14)
        _node_texts(ax, centers[l], [f"δ = {fmt(d)}" for d in np.asarray(grads.delta)], BACKWARD, dy=-0.14)
    target = ", ".join(fmt(v) for v in np.asarray(trace.y))
    loss_name, loss_box = _LOSS_BOXES[trace.loss]
    ax.text(centers[-1][0, 0] + 0.55, centers[-1][:, 1].mean(),
            f"y = [{target}]\n" + loss_box.format(value=fmt(trace.loss_value)),
            ha="left", va="center", fontsize=10, color=BACKWARD,
            bbox=dict(boxstyle="round", facecolor="#fdedec", edgecolor=BACKWARD))
    _write_equations(equations, str(trace))
    arrows = " → ".join(str(len(layer)) for layer in centers)
    fig.suptitle(f"Backpropagation {arrows} with {loss_name}: ∂L/∂W on the backward arrows, "
                 f"a (forward) and δ = ∂L/∂z (backward) in each neuron", fontsize=12)
    return finish(fig, path)
