"""Figure 1 of the chapter: the perceptron's decision boundary and Rosenblatt's rule at work.

Chapter section "The Perceptron": y = sign(w^T x + b). The boundary w^T x + b = 0 is a line
perpendicular to w, offset from the origin by -b / ||w||; each side is one class. On a
mistake the rule updates w <- w + lr y_i x_i, b <- b + lr y_i, which turns the boundary
towards the misclassified point. It converges on linearly separable data and never on XOR.
"""
from __future__ import annotations

import numpy as np

from nnjax.layers.perceptron import perceptron_fit, perceptron_fit_trace
from nnjax.viz._common import NEGATIVE, POSITIVE, finish, fmt, new_figure

__all__ = ["PRESETS", "perceptron_dataset", "plot_perceptron", "plot_perceptron_learning"]

PRESETS = ("separable", "xor")
"""The datasets of the chapter's diagram: linearly separable blobs, and XOR (not separable)."""


def perceptron_dataset(preset: str = "separable", n: int = 24, seed: int = 0):
    """A small 2-D dataset with labels in {-1, +1}.

    Args:
      preset: "separable": points uniform in [-2, 2]^2 labelled by the side of a hidden line
        (w* = (1, -0.7) / ||(1, -0.7)||, b* = -0.5), keeping only points at distance > 0.3 from it,
        so a line separates the classes with a margin; "xor": four blobs at (+-1, +-1),
        y = +1 where exactly one coordinate is positive (no line separates them).
      n: number of points (for "xor", rounded down to a multiple of 4).
      seed: numpy random seed.

    Returns:
      (X, y): X float32 (n, 2), y int32 (n,) in {-1, +1}.

    Raises:
      ValueError: an unknown preset.
    """
    rng = np.random.default_rng(seed)
    if preset == "separable":
        w_star, b_star, margin = np.array([1.0, -0.7]) / np.hypot(1.0, -0.7), -0.5, 0.3
        candidates = rng.uniform(-2, 2, size=(10 * n, 2))
        distance = candidates @ w_star + b_star
        keep = np.abs(distance) > margin
        X, y = candidates[keep][:n], np.where(distance[keep][:n] > 0, 1, -1)
    elif preset == "xor":
        corners = np.array([(-1, -1), (1, 1), (-1, 1), (1, -1)], dtype=float)
        X = np.concatenate([rng.normal(c, 0.25, size=(n // 4, 2)) for c in corners])
        y = np.repeat([-1, -1, 1, 1], n // 4)
        order = rng.permutation(len(y))
        X, y = X[order], y[order]
    else:
        raise ValueError(f"perceptron_dataset: preset={preset!r} is not allowed; expected one of {list(PRESETS)}")
    return X.astype(np.float32), y.astype(np.int32)


def _predict(w, b, X):
    """sign(w^T x + b) for every row of X, with sign(0) = +1 (as `nnjax.layers.perceptron`)."""
    return np.where(X @ w + b >= 0, 1, -1)


def _draw_state(ax, X, y, w, b, *, highlight: int | None = None, limits: float = 2.3) -> int:
    """Draws one perceptron state: half-planes, boundary, w, the points, mistakes marked.

    w is drawn from the boundary's point nearest the data's center, or from the origin when
    that point lies outside the view.

    Returns:
      The number of misclassified points.
    """
    w, b = np.asarray(w, dtype=np.float64), float(b)
    grid = np.linspace(-limits, limits, 200)
    xx, yy = np.meshgrid(grid, grid)
    field = w[0] * xx + w[1] * yy + b
    ax.contourf(xx, yy, np.where(field >= 0, 1.0, -1.0), levels=[-2, 0, 2], colors=[NEGATIVE, POSITIVE], alpha=0.12)
    if np.any(w != 0):
        ax.contour(xx, yy, field, levels=[0], colors="black", linewidths=1.8)
        center = X.mean(axis=0)
        foot = center - (w @ center + b) / (w @ w) * w
        if np.abs(foot).max() > limits - 0.2:
            foot = np.zeros(2)
        direction = w / np.linalg.norm(w)
        ax.annotate("", xy=foot + 0.9 * direction, xytext=foot, annotation_clip=False, zorder=6,
                    arrowprops=dict(arrowstyle="-|>", color="#27ae60", linewidth=2.2, mutation_scale=16))
        ax.text(*(foot + 1.05 * direction), "w", color="#1e8449", fontsize=12, fontweight="bold",
                ha="center", va="center", zorder=6,
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", alpha=0.7, linewidth=0))
    wrong = _predict(w, b, X) != y
    for label, color, marker in ((1, POSITIVE, "o"), (-1, NEGATIVE, "s")):
        mask = y == label
        ax.scatter(X[mask, 0], X[mask, 1], c=color, marker=marker, s=30, edgecolors="white", linewidths=0.5,
                   zorder=3)
    ax.scatter(X[wrong, 0], X[wrong, 1], facecolors="none", edgecolors="black", marker="o", s=150,
               linewidths=1.6, zorder=4)
    if highlight is not None:
        ax.scatter(*X[highlight], marker="*", s=260, c="#f1c40f", edgecolors="black", linewidths=0.8, zorder=5)
    ax.set_xlim(-limits, limits)
    ax.set_ylim(-limits, limits)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$", labelpad=1)
    ax.set_ylabel("$x_2$", labelpad=1)
    return int(wrong.sum())


def _legend_handles():
    """Legend entries shared by the perceptron figures."""
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], marker="o", linestyle="", color=POSITIVE, label="class +1"),
        Line2D([], [], marker="s", linestyle="", color=NEGATIVE, label="class -1"),
        Line2D([], [], color="black", label="boundary $w^T x + b = 0$"),
        Line2D([], [], marker="$\\rightarrow$", linestyle="", color="#27ae60", markersize=12,
               label="w (perpendicular to it)"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="black",
               markersize=10, label="misclassified"),
    ]


def plot_perceptron(path=None, *, epochs: int = 20, seed: int = 0):
    """The perceptron's boundary after Rosenblatt's rule on the separable and the XOR presets.

    Each panel shows the half-planes sign(w^T x + b) = +1 / -1 shaded, the boundary
    w^T x + b = 0, the weight vector w perpendicular to it, and the misclassified points circled.

    Args:
      path: where to save the PNG; nothing is saved when None.
      epochs: passes of `nnjax.layers.perceptron_fit` over each dataset.
      seed: the datasets' seed (see `perceptron_dataset`).

    Returns:
      The matplotlib Figure (12 x 6.2 inches, 1200 x 620 pixels).
    """
    fig = new_figure(12, 6.2)
    axes = fig.subplots(1, 2)
    for ax, preset in zip(axes, PRESETS):
        X, y = perceptron_dataset(preset, seed=seed)
        params, mistakes = perceptron_fit(X, y, epochs=epochs)
        w, b = np.asarray(params["w"]), float(params["b"])
        wrong = _draw_state(ax, X, y, w, b)
        verdict = ("converged: no mistakes" if int(mistakes[-1]) == 0
                   else f"never converges: {int(mistakes[-1])} updates in epoch {epochs}")
        ax.set_title(f"{'linearly separable' if preset == 'separable' else 'XOR (not linearly separable)'}\n"
                     f"w = [{fmt(w[0])}, {fmt(w[1])}], b = {fmt(b)}; accuracy {1 - wrong / len(y):.0%}\n{verdict}",
                     fontsize=11)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=5, fontsize=10)
    fig.suptitle(f"Perceptron y = sign($w^T x + b$) after {epochs} epochs of Rosenblatt's rule", fontsize=13)
    return finish(fig, path)


def plot_perceptron_learning(preset: str = "separable", path=None, *, frames: int = 8, epochs: int = 20,
                             seed: int = 0):
    """Rosenblatt's rule frame by frame: the boundary after selected updates, from w = 0, b = 0.

    Frame 0 is the start (w = 0: every point is +1). Each later frame shows the state after
    one update w <- w + y_i x_i, b <- b + y_i, with the misclassified point x_i that caused it
    starred; when there are more updates than frames, frames are spread evenly over them and
    the last frame is the final state.

    Args:
      preset: "separable" or "xor" (see `perceptron_dataset`).
      path: where to save the PNG; nothing is saved when None.
      frames: the most panels drawn, laid out 4 per row (fewer when there are fewer updates).
      epochs: passes of `nnjax.layers.perceptron_fit_trace` over the data.
      seed: the dataset's seed.

    Returns:
      The matplotlib Figure, 12 inches wide and 3.1 * rows + 0.9 high (100 dpi).
    """
    X, y = perceptron_dataset(preset, seed=seed)
    trace = perceptron_fit_trace(X, y, epochs=epochs)
    updates = len(trace.b) - 1
    shown = np.unique(np.round(np.linspace(0, updates, min(frames, updates + 1))).astype(int))
    rows = -(-len(shown) // 4)
    fig = new_figure(12, 3.1 * rows + 0.9)
    axes = fig.subplots(rows, 4, squeeze=False).ravel()
    for ax, k in zip(axes, shown):
        example = int(trace.example[k])
        wrong = _draw_state(ax, X, y, trace.w[k], trace.b[k], highlight=example if k > 0 else None)
        if k == 0:
            title = "start: w = 0, b = 0"
        else:
            title = f"update {k} (epoch {int(trace.epoch[k]) + 1}): y_i = {int(y[example]):+d}"
        ax.set_title(f"{title}\nw = [{fmt(trace.w[k][0])}, {fmt(trace.w[k][1])}], b = {fmt(trace.b[k])}\n"
                     f"now {wrong} of {len(y)} points misclassified", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    final = ("converged" if int(trace.mistakes_per_epoch[-1]) == 0
             else f"still {int(trace.mistakes_per_epoch[-1])} updates (mistakes while learning) in epoch {epochs}")
    fig.suptitle(f"Rosenblatt's rule, {preset} preset: on a mistake (starred) "
                 f"w ← w + $y_i x_i$, b ← b + $y_i$; {updates} updates, {final}", fontsize=11)
    return finish(fig, path)
