"""What every trainer in the benchmark shares: the task, the data, the timing protocol.

The task: one epoch of SGD on MNIST-shaped data (images (N, 1, 28, 28) float32 in [0, 1],
labels 0..9), for

- the chapter's MLP 784-128-64-10 with ReLU, and
- the experiments' CNN conv(1->32, 3x3)-BN-ReLU-maxpool2-conv(32->64, 3x3)-BN-ReLU-maxpool2
  -dense(1600->128)-ReLU-dense(128->10),

loss = mean softmax cross-entropy, batch norm in training mode (batch statistics).
Batches are cut before timing, in a fixed order, so every trainer sees the same batches.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

MODELS = ("mlp", "cnn")
MLP_SIZES = (784, 128, 64, 10)
CNN_CHANNELS = (1, 32, 64)
CNN_HIDDEN = 128
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
EPOCH_EXAMPLES = 60_000
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


class PeerUnavailable(Exception):
    """A trainer cannot run here (peer not installed, compiler missing, ...); the message says why."""


@dataclasses.dataclass
class EpochData:
    """The epoch every trainer trains on, cut into `steps` batches of `batch_size`.

    Attributes:
        images: float32 (steps, batch_size, 1, 28, 28), pixel values in [0, 1].
        labels: int32 (steps, batch_size), class indices 0..9.
        pixels: the same images as uint8 (steps, batch_size, 28, 28), what nnjax's training
            code keeps on the device and standardizes inside its step.
    """

    images: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray

    @property
    def steps(self) -> int:
        return self.images.shape[0]

    @property
    def batch_size(self) -> int:
        return self.images.shape[1]

    def inputs(self, model: str) -> np.ndarray:
        """Batches shaped for `model`: (steps, B, 784) for the MLP, (steps, B, 1, 28, 28) for the CNN."""
        if model == "mlp":
            return self.images.reshape(self.steps, self.batch_size, -1)
        return self.images

    def one_hot(self) -> np.ndarray:
        """Labels as one-hot float32 (steps, B, 10)."""
        return np.eye(NUM_CLASSES, dtype=np.float32)[self.labels]


def cut_epoch(images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int) -> EpochData:
    """The first `steps * batch_size` examples as `steps` batches (wrapping round if `steps` asks for more).

    Args:
        images: uint8 (N, 28, 28).
        labels: int (N,).
        batch_size: examples per step.
        steps: number of batches.

    Returns:
        EpochData (float32 images scaled to [0, 1], and the uint8 pixels).
    """
    n = steps * batch_size
    index = np.arange(n) % images.shape[0]
    pixels = np.asarray(images[index], dtype=np.uint8).reshape(steps, batch_size, 28, 28)
    x = pixels.reshape(steps, batch_size, *IMAGE_SHAPE).astype(np.float32) / np.float32(255.0)
    y = np.asarray(labels[index], dtype=np.int32).reshape(steps, batch_size)
    return EpochData(x, y, pixels)


def synthetic_mnist(num_examples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (N, 28, 28) and labels (N,), the shape and dtype of MNIST."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_examples, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=(num_examples,), dtype=np.int64)
    return images, labels


@dataclasses.dataclass
class Trainer:
    """One row of the benchmark.

    Attributes:
        name: the row's label, e.g. "raw JAX scan".
        family: "nnjax", "raw_jax" or "peer" (peers enter the "fastest peer" ratio).
        first_step: runs trace + compile + the first train step and blocks until it is done.
        epoch: runs all `data.steps` train steps once and blocks until the result is ready.
        step_flops: analytic float ops of one train step, or None.
        cost_analysis: returns XLA's float-op count of one compiled step (None if XLA has
            none); only called after `first_step`.
        note: anything a reader of the table should know about the row.
    """

    name: str
    family: str
    first_step: Callable[[], None]
    epoch: Callable[[], None]
    step_flops: float | None = None
    cost_analysis: Callable[[], float | None] | None = None
    note: str = ""


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mlp_step_flops(batch_size: int) -> float:
    """Float ops of one MLP train step counted from its matrix products.

    Forward: 2 n_in n_out per dense layer and example. Backward: dW costs as much again, and
    dx as much again for every layer but the first (whose input needs no gradient).
    """
    pairs = list(zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
    forward = sum(2 * a * b for a, b in pairs)
    backward = 2 * forward - 2 * pairs[0][0] * pairs[0][1]
    return float(batch_size * (forward + backward))


def cnn_step_flops(batch_size: int) -> float:
    """Float ops of one CNN train step counted from its convolutions and matrix products.

    A 3x3 valid convolution costs 2 C_in 9 C_out H_out W_out; forward, weight gradient and
    input gradient (not for the first layer) cost the same each. Element-wise work (BN, ReLU,
    pooling) is left out, as is usual for a model FLOP count.
    """
    c0, c1, c2 = CNN_CHANNELS
    conv1 = 2 * c0 * 9 * c1 * 26 * 26
    conv2 = 2 * c1 * 9 * c2 * 11 * 11
    dense1 = 2 * (c2 * 5 * 5) * CNN_HIDDEN
    dense2 = 2 * CNN_HIDDEN * NUM_CLASSES
    forward = conv1 + conv2 + dense1 + dense2
    backward = 2 * forward - conv1
    return float(batch_size * (forward + backward))


def step_flops(model: str, batch_size: int) -> float:
    """Analytic float ops of one train step of `model` at `batch_size`."""
    return mlp_step_flops(batch_size) if model == "mlp" else cnn_step_flops(batch_size)


def xla_flops(compiled) -> float | None:
    """The "flops" entry of a compiled JAX function's cost analysis, or None if XLA gives none."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is best effort on every backend
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
