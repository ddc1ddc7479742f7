"""Figure 7 of the chapter: which axes batch and layer normalization normalize, and their effect.

Chapter section "Normalization Techniques". On a (batch N x channels C x spatial H·W) tensor,
batch norm computes mu_B and sigma_B^2 per channel over the batch and the spatial positions
(N, H, W); layer norm computes mu_l and sigma_l^2 per example over (C, H, W). Both then
output y = gamma (x - mu) / sqrt(sigma^2 + epsilon) + beta. The distributions come from
`nnjax.layers.batch_norm` (training mode, under `jax.vmap` with a named batch axis) and
`nnjax.layers.layer_norm`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nnjax.layers.normalization import batch_norm, batch_norm_init, layer_norm, layer_norm_init
from nnjax.viz._common import finish, new_figure

__all__ = ["normalization_example", "plot_normalization"]

_COLORS = ("#1f77b4", "#e67e22", "#27ae60")


def normalization_example(batch: int = 64, seed: int = 0) -> np.ndarray:
    """Activations (N, C=3, H=8, W=8) whose channels and examples differ in mean and scale.

    Channel c has mean (-3, 0, 4)[c] and spread (0.5, 1, 2)[c]; each example is further scaled
    by its own factor in [0.4, 2.5] and shifted by its own offset in [-4, 4], so both batch norm's
    per-channel and layer norm's per-example statistics have something to remove.

    Returns:
      float32 array (batch, 3, 8, 8).
    """
    rng = np.random.default_rng(seed)
    means, spreads = np.array([-3.0, 0.0, 4.0]), np.array([0.5, 1.0, 2.0])
    scale = rng.uniform(0.4, 2.5, size=(batch, 1, 1, 1))
    shift = rng.uniform(-4.0, 4.0, size=(batch, 1, 1, 1))
    noise = rng.normal(size=(batch, 3, 8, 8))
    x = means[None, :, None, None] + spreads[None, :, None, None] * scale * noise + shift
    return x.astype(np.float32)


def _normalize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch_norm(x) in training mode, layer_norm(x)), each example through the nnjax layer."""
    bn_params, bn_state = batch_norm_init(x.shape[1])
    bn = jax.vmap(lambda xi: batch_norm(bn_params, bn_state, xi, train=True)[0], axis_name="batch")
    ln = jax.vmap(layer_norm, in_axes=(None, 0))
    return np.asarray(bn(jnp.asarray(x))), np.asarray(ln(layer_norm_init(x.shape[1:]), jnp.asarray(x)))


def _tensor(ax, highlight, color: str, title: str) -> None:
    """Draws an (N=4, C=3, H·W=4) tensor as cubes, the cubes in `highlight` (a bool mask) colored."""
    filled = np.ones((4, 3, 4), dtype=bool)
    colors = np.where(highlight[..., None], np.array(list(_rgba(color, 0.85))), np.array(list(_rgba("#d5d8dc", 0.25))))
    ax.voxels(filled, facecolors=colors, edgecolor="#566573", linewidth=0.4)
    ax.set_xlabel("batch N", labelpad=-10)
    ax.set_ylabel("channels C", labelpad=-10)
    ax.set_zlabel("spatial H·W", labelpad=-10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.view_init(elev=22, azim=-58)
    ax.set_box_aspect((4, 3, 4), zoom=0.9)
    ax.set_title(title, fontsize=10)


def _signed(value: float) -> str:
    """A number with a sign and two decimals, never "-0.00"."""
    return f"{round(float(value), 2) + 0.0:+.2f}"


def _rgba(color: str, alpha: float):
    """`color` as an (r, g, b, a) tuple."""
    from matplotlib.colors import to_rgba

    return to_rgba(color, alpha)


def _histograms(ax, groups, labels, title: str, bins) -> None:
    """Overlaid step histograms, one per group of values."""
    for values, label, color in zip(groups, labels, _COLORS):
        ax.hist(np.ravel(values), bins=bins, histtype="stepfilled", alpha=0.35, color=color, label=label)
        ax.hist(np.ravel(values), bins=bins, histtype="step", color=color, linewidth=1.2)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.4)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("activation value")
    ax.set_yticks([])


def plot_normalization(path=None, *, batch: int = 64, seed: int = 0):
    """Batch vs layer normalization: the axes each normalizes, and the distributions before and after.

    Top row, batch norm: the slice sharing one mean and variance is one channel across the
    batch and the spatial positions; per channel, the activations before and after
    (each channel becomes mean 0, variance 1). Bottom row, layer norm: the slice is one example
    across channels and positions; per example, before and after.

    Args:
      path: where to save the PNG; nothing is saved when None.
      batch: the batch size of the example activations (see `normalization_example`).
      seed: their random seed.

    Returns:
      The matplotlib Figure (14 x 8 inches, 1400 x 800 pixels).
    """
    x = normalization_example(batch, seed)
    bn, ln = _normalize(x)
    fig = new_figure(14, 8)
    grid = fig.add_gridspec(2, 3, width_ratios=[1.1, 1, 1])
    channel_mask = np.zeros((4, 3, 4), dtype=bool)
    channel_mask[:, 0, :] = True
    sample_mask = np.zeros((4, 3, 4), dtype=bool)
    sample_mask[0] = True
    _tensor(fig.add_subplot(grid[0, 0], projection="3d"), channel_mask, _COLORS[0],
            "Batch norm: one mean and variance per CHANNEL,\nover the batch and H·W (N, H, W)\n"
            "train: batch statistics; inference: running averages\nγ, β: one per channel (C,)")
    _tensor(fig.add_subplot(grid[1, 0], projection="3d"), sample_mask, _COLORS[1],
            "Layer norm: one mean and variance per EXAMPLE,\nover channels and H·W (C, H, W)\n"
            "same computation in training and inference\nγ, β: one per value (C, H, W)")
    channels = [f"channel {c}" for c in range(3)]
    bins_before = np.linspace(x.min(), x.max(), 51)
    bins_after = np.linspace(-4, 4, 41)
    _histograms(fig.add_subplot(grid[0, 1]), [x[:, c] for c in range(3)],
                [f"{name}: mean {_signed(x[:, c].mean())}, std {x[:, c].std():.2f}" for c, name in enumerate(channels)],
                "before: per channel", bins_before)
    _histograms(fig.add_subplot(grid[0, 2]), [bn[:, c] for c in range(3)],
                [f"{name}: mean {_signed(bn[:, c].mean())}, std {bn[:, c].std():.2f}" for c, name in enumerate(channels)],
                "after batch_norm: every channel has mean 0, std 1", bins_after)
    centers = x.reshape(len(x), -1).mean(axis=1)
    samples = [int(np.argmin(centers)), int(np.argsort(centers)[len(x) // 2]), int(np.argmax(centers))]
    _histograms(fig.add_subplot(grid[1, 1]), [x[n] for n in samples],
                [f"example {n}: mean {_signed(x[n].mean())}, std {x[n].std():.2f}" for n in samples],
                "before: per example (the lowest, a middle and the highest mean)", bins_before)
    _histograms(fig.add_subplot(grid[1, 2]), [ln[n] for n in samples],
                [f"example {n}: mean {_signed(ln[n].mean())}, std {ln[n].std():.2f}" for n in samples],
                "after layer_norm: every example has mean 0, std 1", bins_after)
    fig.suptitle(f"Batch vs layer normalization on activations of shape (N={batch}, C=3, H=8, W=8)", fontsize=13)
    return finish(fig, path)
