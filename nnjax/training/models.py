"""What is trained, on what: a `Model` (the chapter's MLP or the CNN, on a whole batch) and the
MNIST `Splits` it trains and is scored on."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from nnjax._checks import check_positive_int
from nnjax.activations import activation_name, get_activation
from nnjax.backprop import cnn_logits_and_grads, mlp_logits_and_grads
from nnjax.data import load_mnist
from nnjax.network import cnn_apply_batch, cnn_init, mlp_init, mlp_logits_batch

__all__ = [
    "NUM_CLASSES", "MNIST_MEAN", "MNIST_STD", "Model", "mlp_model", "cnn_model", "Splits",
    "load_splits",
]


NUM_CLASSES = 10
MNIST_MEAN = 0.1307
"""Mean pixel of the MNIST training set, pixels scaled to [0, 1]."""
MNIST_STD = 0.3081
"""Standard deviation of the MNIST training pixels, pixels scaled to [0, 1]."""


@dataclasses.dataclass(frozen=True)
class Model:
    """What training needs from a network; every function works on a whole batch.

    Attributes:
      kind: ``"mlp"`` or ``"cnn"``; picks the epoch mode in `EPOCH_MODE_DEFAULTS`.
      init: ``key -> (params, state)``; ``state`` holds batch-norm running statistics
        (an empty dict for a network without any).
      apply: ``(params, state, inputs, train, device_axis=None) -> (logits (B, 10),
        new_state)``; ``device_axis`` names the `shard_map` axis the batch is split across
        (batch norm's statistics span it).
      prepare: uint8 images ``(B, 28, 28)`` -> the float inputs ``apply`` takes.
      manual_grads: ``(params, state, inputs, targets, device_axis=None) -> (grads, logits,
        new_state)``, the hand-derived gradients of the mean softmax cross-entropy and the
        logits of the forward pass they ran, or None if there are none.
      describe: settings recorded in the run's config (and checked on ``--resume``).
      mixed_precision: True if ``apply`` and ``manual_grads`` take a ``compute_dtype``
        keyword and run mixed precision themselves (matrix products on operands of that
        dtype, the rest in float32: all of the MLP's products, the CNN's im2col convolutions
        and dense layers); False to run them on `compute_dtype` copies of the parameters and
        inputs (`TrainConfig.compute_dtype`).
    """
    kind: str
    init: Callable
    apply: Callable
    prepare: Callable
    manual_grads: Callable | None
    describe: dict
    mixed_precision: bool = False


_PIXEL_SCALE = 1.0 / (255.0 * MNIST_STD)
_PIXEL_SHIFT = MNIST_MEAN / MNIST_STD


def _standardize(images):
    """uint8 pixels -> float32 (x / 255 - MNIST_MEAN) / MNIST_STD, computed as one multiply-add.

    The same values to float32 rounding, and the CNN's first training step compiles about 1 s
    faster on a CPU: XLA copies this arithmetic into each of the nine im2col slices of the first
    convolution, and LLVM took about 0.2 s per slice over (x / 255 - mean) / std (a multiply, a
    subtract and a multiply) against 0.02 s over one multiply-add (jax 0.10.2).
    """
    return images.astype(jnp.float32) * _PIXEL_SCALE - _PIXEL_SHIFT


def mlp_model(sizes=(784, 128, 64, 10), activation="relu", init="he") -> Model:
    """The chapter's MLP (`nnjax.network.mlp_logits`, run on the batch as `mlp_logits_batch`)
    on flattened, standardized images.

    Args:
      sizes: layer widths ``[n_0, ..., n_L]``; ``n_0 = 784`` and ``n_L = 10``.
      activation: hidden activation, a name in `nnjax.activations.ELEMENTWISE`.
      init: weight initialization of `nnjax.layers.dense_init`.

    Returns:
      A `Model` whose manual gradients are `nnjax.backprop.mlp_grads` (through
      `mlp_logits_and_grads`); it does mixed precision itself (``compute_dtype``).
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or sizes[0] != 28 * 28 or sizes[-1] != NUM_CLASSES:
        raise ValueError(f"mlp_model: sizes={sizes} must start with 784 (28 x 28 pixels) and "
                         f"end with {NUM_CLASSES} (classes)")
    name = activation_name(activation, "mlp_model")
    sigma = get_activation(name, "mlp_model")[0]

    def init_fn(key):
        return mlp_init(key, list(sizes), init=init), {}

    def apply(params, state, inputs, train, device_axis=None, *, compute_dtype=None):
        return mlp_logits_batch(params, inputs, sigma, compute_dtype), state

    def manual_grads(params, state, inputs, targets, device_axis=None, *, compute_dtype=None):
        logits, grads = mlp_logits_and_grads(params, inputs, targets, sigma, compute_dtype)
        return grads, logits, state

    def prepare(images):
        return _standardize(images).reshape(images.shape[0], -1)

    return Model("mlp", init_fn, apply, prepare, manual_grads,
                 {"model": "mlp", "sizes": list(sizes), "activation": name, "init": init},
                 mixed_precision=True)


def cnn_model(channels=(32, 64), hidden=128) -> Model:
    """The CNN of `nnjax.network.cnn_apply` (conv-BN-ReLU-pool per block, then dense-ReLU-dense).

    Args:
      channels: output channels of each conv block (`nnjax.network.cnn_init`).
      hidden: width of the hidden dense layer.

    Returns:
      A `Model` whose state is the batch-norm running statistics and whose manual gradients
      are `nnjax.backprop.cnn_grads` (through `cnn_logits_and_grads`); it does mixed
      precision itself (``compute_dtype``: the im2col convolutions' and dense layers'
      products, `cnn_logits_and_grads`).
    """
    channels = tuple(channels)

    def init_fn(key):
        return cnn_init(key, channels=channels, hidden=hidden)

    def apply(params, state, inputs, train, device_axis=None, *, compute_dtype=None):
        return cnn_apply_batch(params, state, inputs, train=train, device_axis=device_axis,
                               compute_dtype=compute_dtype)

    def manual_grads(params, state, inputs, targets, device_axis=None, *, compute_dtype=None):
        logits, new_state, grads = cnn_logits_and_grads(params, state, inputs, targets,
                                                        device_axis=device_axis, compute_dtype=compute_dtype)
        return grads, logits, new_state

    def prepare(images):
        return _standardize(images)[:, None, :, :]

    return Model("cnn", init_fn, apply, prepare, manual_grads,
                 {"model": "cnn", "channels": list(channels), "hidden": hidden}, mixed_precision=True)


class Splits(NamedTuple):
    """Images (uint8, (N, 28, 28)) and labels (int32, (N,)) of each part of a run.

    ``eval_*`` is what each epoch is scored on: the validation set when one is held out,
    else the test set. ``eval_name`` is ``"val"`` or ``"test"``.
    """
    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    eval_name: str
    test_images: np.ndarray
    test_labels: np.ndarray


def load_splits(limit_train: int | None = None, val: int = 0) -> Splits:
    """MNIST from `nnjax.data.load_mnist`, with an optional validation hold-out.

    Args:
      limit_train: keep only the first N training images (after the hold-out); None keeps all.
      val: hold out the LAST `val` of the 60,000 training images as a validation set, scored
        each epoch instead of the test set (which is then scored once, at the end).

    Returns:
      `Splits`.
    """
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    n = len(train_labels)
    if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val < n:
        raise ValueError(f"load_splits: val={val!r} must be an int in [0, {n}) (images held out "
                         f"of the {n} training images)")
    fit_images, fit_labels = train_images[:n - val], train_labels[:n - val]
    if limit_train is not None:
        limit_train = check_positive_int("load_splits", "limit_train", limit_train)
        if limit_train > len(fit_labels):
            raise ValueError(f"load_splits: limit_train={limit_train} is more than the "
                             f"{len(fit_labels)} training images left after holding out val={val}")
        fit_images, fit_labels = fit_images[:limit_train], fit_labels[:limit_train]
    test = (test_images, test_labels.astype(np.int32))
    evaluation = (train_images[n - val:], train_labels[n - val:].astype(np.int32)) if val else test
    return Splits(fit_images, fit_labels.astype(np.int32), *evaluation,
                  "val" if val else "test", *test)
