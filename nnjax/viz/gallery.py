"""Every figure of `nnjax.viz` by name, and a function that saves them all as PNG files."""
from __future__ import annotations

import functools
import os
from typing import Callable, Iterable

from nnjax.viz.activations import plot_activations
from nnjax.viz.architecture import plot_architecture
from nnjax.viz.convolution import plot_conv_kernels, plot_convolution_settings, plot_convolution_steps
from nnjax.viz.normalization import plot_normalization
from nnjax.viz.perceptron import plot_perceptron, plot_perceptron_learning
from nnjax.viz.propagation import plot_backpropagation, plot_forward_propagation
from nnjax.viz.tensor_shapes import plot_tensor_shapes

__all__ = ["FIGURES", "save_figures"]

FIGURES: dict[str, Callable] = {
    "perceptron": plot_perceptron,
    "perceptron_learning": functools.partial(plot_perceptron_learning, "separable"),
    "perceptron_learning_xor": functools.partial(plot_perceptron_learning, "xor"),
    "activations": plot_activations,
    "architecture": plot_architecture,
    "forward_propagation": plot_forward_propagation,
    "backpropagation": plot_backpropagation,
    "convolution_steps": plot_convolution_steps,
    "convolution_settings": plot_convolution_settings,
    "conv_kernels": plot_conv_kernels,
    "normalization": plot_normalization,
    "tensor_shapes": plot_tensor_shapes,
}
"""name -> figure function called with `path=`; the chapter's eight diagrams in its order
(`conv_kernels` needs MNIST prepared: `python -m nnjax.data prepare`)."""


def save_figures(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[str]:
    """Renders figures into `folder` as ``<name>.png``.

    Args:
      folder: the output folder (created if missing).
      names: which entries of `FIGURES`; all of them when None.

    Returns:
      The paths written, in order.

    Raises:
      ValueError: an unknown name, listing the known ones.
    """
    names = list(FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(f"save_figures: unknown figure(s) {unknown}; expected names from {list(FIGURES)}")
    paths = []
    for name in names:
        path = os.path.join(os.fspath(folder), f"{name}.png")
        FIGURES[name](path=path)
        paths.append(path)
    return paths
