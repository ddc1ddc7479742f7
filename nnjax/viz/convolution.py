"""Figure 6 of the chapter: convolution position by position, stride and padding, preset kernels.

Chapter sections "Convolution Kernel" and "Stride and Padding": the kernel K slides over the
input I, and each output value is (I * K)_{i, j} = sum_m sum_n I_{i*s + m, j*s + n} K_{m, n};
out_size = (in_size - kernel_size + 2 * padding) / stride + 1. Every output here comes from
`nnjax.layers.conv2d`.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from matplotlib.patches import Rectangle

from nnjax.layers.conv import conv2d, conv_padding
from nnjax.viz._common import finish, fmt, new_figure

__all__ = ["KERNELS", "EXAMPLE_INPUT", "convolve", "plot_convolution_steps", "plot_convolution_settings",
           "plot_conv_kernels"]

KERNELS: dict[str, np.ndarray] = {
    "edge": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float32),
    "blur": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
}
"""The chapter's preset 3x3 kernels: edge detection (Laplacian), blur (Gaussian), sharpen."""

EXAMPLE_INPUT = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 0],
    [0, 1, 2, 2, 2, 1, 0],
    [0, 1, 2, 3, 2, 1, 0],
    [0, 1, 2, 2, 2, 1, 0],
    [0, 1, 1, 1, 1, 1, 0],
    [0, 0, 0, 0, 0, 0, 0],
], dtype=np.float32)
"""The 7x7 grayscale input of the chapter's convolution diagram: a small bright pyramid."""


def _kernel(kernel) -> tuple[str, np.ndarray]:
    """(name, 2-D array) for a preset name or a given 2-D kernel."""
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r} is not a preset; expected one of {list(KERNELS)} or a 2-D array")
        return kernel, KERNELS[kernel]
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be a preset name or a 2-D array (kh, kw), got shape {kernel.shape}")
    return f"{kernel.shape[0]}x{kernel.shape[1]} kernel", kernel


def convolve(image, kernel, stride: int = 1, padding="valid") -> np.ndarray:
    """One 2-D image convolved with one 2-D kernel by `nnjax.layers.conv2d` (C_in = C_out = 1).

    Args:
      image: (H, W).
      kernel: (kh, kw), or a name in `KERNELS`.
      stride, padding: as for `conv2d`.

    Returns:
      (H', W') numpy array.
    """
    _, kernel = _kernel(kernel)
    params = {"W": jnp.asarray(kernel)[None, None], "b": jnp.zeros(1)}
    return np.asarray(conv2d(params, jnp.asarray(image, dtype=jnp.float32)[None], stride, padding)[0])


def _padded(image: np.ndarray, kernel_shape, stride: int, padding) -> tuple[np.ndarray, tuple]:
    """The zero-padded image conv2d sees, and its padding ((top, bottom), (left, right))."""
    pads = conv_padding(image.shape, kernel_shape, (stride, stride), padding)
    return np.pad(image, pads), pads


def _number(value: float) -> str:
    """A number in at most 3 significant digits, without a negative zero: ``4``, ``0.0625``, ``1.44``."""
    text = f"{float(value):.3g}"
    return "0" if float(text) == 0 else text


def _frame(ax, shape, size: int) -> None:
    """Shows a grid of `shape` centered in a `size` x `size` cell frame, so grids share one cell size."""
    rows, cols = shape
    size += 0.2
    ax.set_xlim(-0.5 - (size - cols) / 2, cols - 0.5 + (size - cols) / 2)
    ax.set_ylim(rows - 0.5 + (size - rows) / 2, -0.5 - (size - rows) / 2)


def _draw_grid(ax, values: np.ndarray, *, cmap: str = "Greys", vmin=None, vmax=None,
               shade: np.ndarray | None = None, fontsize: float = 9) -> None:
    """A matrix as colored cells with its numbers written in; `shade` greys out cells (padding, pending)."""
    ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.55)
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            pending = shade is not None and shade[i, j]
            ax.text(j, i, "" if pending else _number(values[i, j]), ha="center", va="center",
                    fontsize=fontsize, color="black")
            if pending:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#eeeeee", edgecolor="none",
                                       hatch="///", zorder=2))
    ax.hlines(np.arange(-0.5, rows), -0.5, cols - 0.5, color="#888888", linewidth=0.6)
    ax.vlines(np.arange(-0.5, cols), -0.5, rows - 0.5, color="#888888", linewidth=0.6)
    ax.add_patch(Rectangle((-0.5, -0.5), cols, rows, fill=False, edgecolor="black", linewidth=1.0, zorder=3))
    ax.set_axis_off()
    _frame(ax, values.shape, max(values.shape))


def _outline(ax, row: int, col: int, size: Sequence[int], color: str, linewidth: float = 3.0, style="-") -> None:
    """Outlines a (kh, kw) block whose top-left cell is (row, col)."""
    ax.add_patch(Rectangle((col - 0.5, row - 0.5), size[1], size[0], fill=False, edgecolor=color,
                           linewidth=linewidth, linestyle=style, zorder=3))


def _size_formula(in_hw, kernel_hw, out_hw) -> str:
    """The chapter's (in - k + 2p)/s + 1 at stride 1, no padding, per axis; one axis when square."""
    axes = [f"({n} - {k})/1 + 1 = {o}" for n, k, o in zip(in_hw, kernel_hw, out_hw)]
    return axes[0] if in_hw[0] == in_hw[1] and kernel_hw[0] == kernel_hw[1] else " by ".join(axes)


def plot_convolution_steps(path=None, *, kernel="edge", image=None,
                           positions: Sequence[tuple[int, int]] = ((0, 0), (0, 1), (2, 3))):
    """The kernel sliding over the input (stride 1, valid), one row per output position.

    Each row shows the input with the kernel's window outlined, the elementwise products
    I_{i+m, j+n} K_{m, n} with their sum, and the output map filled up to that position.

    Args:
      path: where to save the PNG; nothing is saved when None.
      kernel: a name in `KERNELS` (default the edge detector) or a 2-D array (kh, kw).
      image: the (H, W) input; defaults to `EXAMPLE_INPUT` (7x7).
      positions: the output positions (i, j) shown, one row each.

    Returns:
      The matplotlib Figure, 12 inches wide and 3.4 per position + 0.9 high (100 dpi).
    """
    name, K = _kernel(kernel)
    image = EXAMPLE_INPUT if image is None else np.asarray(image, dtype=np.float32)
    out = convolve(image, K)
    kh, kw = K.shape
    fig = new_figure(12, 3.4 * len(positions) + 0.9)
    axes = fig.subplots(len(positions), 4, squeeze=False, width_ratios=[1.2, 0.8, 1, 1])
    for row, (i, j) in enumerate(positions):
        if not (0 <= i < out.shape[0] and 0 <= j < out.shape[1]):
            raise ValueError(f"plot_convolution_steps: position {(i, j)} is outside the output map of shape {out.shape}")
        ax_in, ax_k, ax_prod, ax_out = axes[row]
        _draw_grid(ax_in, image)
        _outline(ax_in, i, j, K.shape, "#e67e22")
        ax_in.set_title(f"input I {image.shape[0]}x{image.shape[1]}, window at ({i}, {j})", fontsize=10)
        _draw_grid(ax_k, K, cmap="RdBu_r",
                   vmin=-np.abs(K).max(), vmax=np.abs(K).max())
        ax_k.set_title(f"kernel K ({name})", fontsize=10)
        products = image[i:i + kh, j:j + kw] * K
        _draw_grid(ax_prod, products, cmap="RdBu_r", vmin=-np.abs(products).max() - 1e-6, vmax=np.abs(products).max() + 1e-6)
        ax_prod.set_title(f"I[{i}:{i + kh}, {j}:{j + kw}] ⊙ K, sum = {_number(products.sum())}", fontsize=10)
        done = np.arange(out.size).reshape(out.shape) > i * out.shape[1] + j
        _draw_grid(ax_out, out, shade=done, cmap="RdBu_r", vmin=-np.abs(out).max(), vmax=np.abs(out).max())
        _outline(ax_out, i, j, (1, 1), "#e67e22")
        ax_out.set_title(f"output {out.shape[0]}x{out.shape[1]}: out[{i}, {j}] = {_number(out[i, j])}", fontsize=10)
    fig.suptitle("Convolution step by step (stride 1, valid): out[i, j] = Σ_m Σ_n I[i + m, j + n] K[m, n]; "
                 f"output size {_size_formula(image.shape, K.shape, out.shape)}", fontsize=12)
    return finish(fig, path)


def plot_convolution_settings(path=None, *, kernel="edge", image=None):
    """The 7x7 input and its output map for stride 1 and 2, valid and same padding.

    Top row: the input as conv2d sees it (zero padding hatched), with the windows of the first
    two output positions outlined; bottom row: the output map and the output-size formula.

    Args:
      path: where to save the PNG; nothing is saved when None.
      kernel: a name in `KERNELS` or a 2-D array.
      image: the (H, W) input; defaults to `EXAMPLE_INPUT`.

    Returns:
      The matplotlib Figure (14 x 7.5 inches, 1400 x 750 pixels).
    """
    name, K = _kernel(kernel)
    image = EXAMPLE_INPUT if image is None else np.asarray(image, dtype=np.float32)
    fig = new_figure(14, 7.5)
    axes = fig.subplots(2, 4, height_ratios=[1.15, 1])
    settings = [(1, "valid"), (1, "same"), (2, "valid"), (2, "same")]
    frame = max(_padded(image, K.shape, stride, padding)[0].shape[0] for stride, padding in settings)
    for (ax_in, ax_out), (stride, padding) in zip(axes.T, settings):
        padded, ((top, bottom), (left, right)) = _padded(image, K.shape, stride, padding)
        is_pad = np.ones(padded.shape, dtype=bool)
        is_pad[top:top + image.shape[0], left:left + image.shape[1]] = False
        _draw_grid(ax_in, padded, shade=is_pad, fontsize=8)
        _outline(ax_in, 0, 0, K.shape, "#e67e22")
        _outline(ax_in, 0, stride, K.shape, "#8e44ad", linewidth=2.0, style="--")
        ax_in.set_title(f"stride {stride}, {padding} padding\npadded input {padded.shape[0]}x{padded.shape[1]} "
                        f"(pad top/bottom {top}/{bottom})", fontsize=10)
        out = convolve(image, K, stride, padding)
        _draw_grid(ax_out, out, cmap="RdBu_r",
                   vmin=-np.abs(out).max() - 1e-6, vmax=np.abs(out).max() + 1e-6, fontsize=8)
        _outline(ax_out, 0, 0, (1, 1), "#e67e22")
        _outline(ax_out, 0, 1, (1, 1), "#8e44ad", linewidth=2.0, style="--")
        _frame(ax_in, padded.shape, frame)
        _frame(ax_out, out.shape, frame)
        n, k = image.shape[0], K.shape[0]
        ax_out.set_title(f"output {out.shape[0]}x{out.shape[1]}: ({n} - {k} + {top + bottom}) // {stride} + 1 "
                         f"= {out.shape[0]}", fontsize=10)
    fig.suptitle(f"Stride and padding ({name} kernel): the window moves `stride` pixels per step "
                 "(solid: 1st, dashed: 2nd); 'same' pads to out = ceil(in / stride)", fontsize=12)
    return finish(fig, path)


def _mnist_digit(index: int) -> tuple[np.ndarray, int]:
    """Test image `index` of MNIST as floats in [0, 1] and its label, or a clear error if not prepared."""
    from nnjax.data import load_mnist

    try:
        images, labels = load_mnist("test")
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"plot_conv_kernels needs the MNIST test set, which is not prepared: {error}\n"
            "Run `python -m nnjax.data prepare` once, or pass image=<an (H, W) array> instead.") from None
    return images[index].astype(np.float32) / 255.0, int(labels[index])


def plot_conv_kernels(path=None, *, image=None, index: int = 0):
    """The preset kernels (edge detection, blur, sharpen) applied to a real MNIST digit.

    Args:
      path: where to save the PNG; nothing is saved when None.
      image: an (H, W) grayscale image to use instead of MNIST.
      index: which test digit of `nnjax.data.load_mnist("test")` to use when `image` is None.

    Returns:
      The matplotlib Figure (14 x 6.5 inches, 1400 x 650 pixels).

    Raises:
      FileNotFoundError: `image` is None and MNIST is not prepared; the message says how to
        prepare it.
    """
    if image is None:
        image, label = _mnist_digit(index)
        title = f"MNIST test digit {index} (label {label})"
    else:
        image = np.asarray(image, dtype=np.float32)
        title = "input"
    if image.ndim != 2:
        raise ValueError(f"plot_conv_kernels: image must be one grayscale (H, W) array, got shape {image.shape}")
    fig = new_figure(14, 6.5)
    axes = fig.subplots(2, 4, height_ratios=[1, 2.2])
    axes[0, 0].set_axis_off()
    axes[1, 0].imshow(image, cmap="gray")
    axes[1, 0].set_title(f"{title}, {image.shape[0]}x{image.shape[1]}", fontsize=10)
    for col, (name, K) in enumerate(KERNELS.items(), start=1):
        _draw_grid(axes[0, col], K, cmap="RdBu_r", vmin=-np.abs(K).max(), vmax=np.abs(K).max(), fontsize=10)
        axes[0, col].set_title(f"{name} kernel", fontsize=11)
        out = convolve(image, K, padding="same")
        if name == "edge":
            limit = np.abs(out).max()
            axes[1, col].imshow(out, cmap="RdBu_r", vmin=-limit, vmax=limit)
            shown = "red +, blue -"
        else:
            axes[1, col].imshow(out, cmap="gray", vmin=image.min(), vmax=image.max())
            shown = "clipped to the input's range"
        axes[1, col].set_title(f"{name}: range [{fmt(out.min())}, {fmt(out.max())}]\n({shown})", fontsize=10)
    for ax in axes[1]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Preset 3x3 kernels applied with nnjax.layers.conv2d (stride 1, same padding)", fontsize=13)
    return finish(fig, path)
