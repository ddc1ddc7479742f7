"""Figure 2 of the chapter: activation functions, their derivatives, saturation, and softmax.

Chapter section "Activation Functions": each elementwise sigma is drawn with its hand-derived
derivative sigma'(z) from `nnjax.activations`; where |sigma'(z)| is below a threshold the
gradient delta^[l] = (W^[l+1])^T delta^[l+1] * sigma'(z^[l]) nearly vanishes, and that
saturation region is shaded.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from nnjax import activations as act
from nnjax.viz._common import finish, fmt, new_figure

__all__ = ["plot_activations"]


def _activation_panels(leaky_slope: float):
    """(title, sigma, sigma') for the five elementwise activations, in the chapter's order."""
    return [
        ("ReLU", act.relu, act.relu_derivative),
        (f"leaky ReLU (slope {leaky_slope:g})",
         lambda z: act.leaky_relu(z, leaky_slope), lambda z: act.leaky_relu_derivative(z, leaky_slope)),
        ("sigmoid", act.sigmoid, act.sigmoid_derivative),
        ("tanh", act.tanh, act.tanh_derivative),
        ("softplus", act.softplus, act.softplus_derivative),
    ]


def _shade_runs(ax, z: np.ndarray, mask: np.ndarray, **kwargs) -> None:
    """Shades the z-intervals where `mask` is true, full axes height."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        ax.axvspan(z[start], z[stop - 1], **kwargs)


def plot_activations(path=None, *, z_range: tuple[float, float] = (-5.0, 5.0), saturation: float = 0.05,
                     leaky_slope: float = 0.1, softmax_logits: Sequence[float] = (2.0, 1.0, 0.1)):
    """ReLU, leaky ReLU, sigmoid, tanh and softplus with sigma'(z) overlaid, and a softmax bar chart.

    Args:
      path: where to save the PNG; nothing is saved when None.
      z_range: the interval of z drawn.
      saturation: regions where |sigma'(z)| < saturation are shaded (near-zero gradient).
      leaky_slope: leaky ReLU's negative slope; 0.1 rather than the library's default 0.01 so
        the leak is visible.
      softmax_logits: the K = 3 logits z whose softmax(z)_k = e^(z_k) / sum_j e^(z_j) is drawn.

    Returns:
      The matplotlib Figure (12 x 7 inches, 1200 x 700 pixels).
    """
    fig = new_figure(12, 7)
    axes = fig.subplots(2, 3)
    z = np.linspace(*z_range, 1001)
    for ax, (title, sigma, derivative) in zip(axes.flat, _activation_panels(leaky_slope)):
        a, da = np.asarray(sigma(jnp.asarray(z))), np.asarray(derivative(jnp.asarray(z)))
        _shade_runs(ax, z, np.abs(da) < saturation, color="#f5b041", alpha=0.25, linewidth=0)
        ax.axhline(0, color="gray", linewidth=0.6)
        ax.axvline(0, color="gray", linewidth=0.6)
        ax.plot(z, a, color="#1f77b4", linewidth=2, label=r"$\sigma(z)$")
        ax.plot(z, da, color="#c0392b", linewidth=2, linestyle="--", label=r"$\sigma'(z)$")
        ax.plot([], [], color="#f5b041", alpha=0.5, linewidth=8, label=f"|σ'(z)| < {saturation:g}")
        ax.set_title(title)
        ax.set_xlabel("z")
        ax.set_xlim(*z_range)
        ax.set_ylim(-1.3, 3.0)
        ax.legend(loc="upper left", fontsize=8)
    _plot_softmax(axes.flat[5], np.asarray(softmax_logits, dtype=np.float32))
    fig.suptitle("Activation functions and their derivatives; shaded: saturation, where the gradient vanishes")
    return finish(fig, path)


def _plot_softmax(ax, logits: np.ndarray) -> None:
    """Bars of the logits z and of softmax(z), each bar labelled with its value."""
    probs = np.asarray(act.softmax(jnp.asarray(logits)))
    k = np.arange(len(logits))
    width = 0.38
    for offset, values, color, label in ((-width / 2, logits, "#95a5a6", "logit z"),
                                         (width / 2, probs, "#1f77b4", "softmax(z)")):
        bars = ax.bar(k + offset, values, width, color=color, label=label)
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8, padding=2)
    ax.set_xticks(k, [f"class {i + 1}" for i in k])
    ax.set_ylim(min(0.0, logits.min()) - 0.2, max(1.0, logits.max()) * 1.25)
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.set_title(f"softmax(z), z = [{', '.join(fmt(v, 1) for v in logits)}]")
    ax.text(0.98, 0.72, f"sum of softmax(z) = {fmt(probs.sum())}", transform=ax.transAxes, ha="right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
