"""Training on MNIST: optax on nnjax params, a compiled epoch, evaluation, checkpoints, results.

The pieces, in the order a run uses them:

1. A `Model` says how to initialize a network, apply it to a batch and (optionally) take its
   hand-derived gradients. `mlp_model` and `cnn_model` build the chapter's two networks.
2. `load_splits` reads MNIST (`nnjax.data.load_mnist`) and `train` puts the whole training
   set on the device as uint8; each epoch draws its batches from a permutation of example
   indices (`epoch_batches`), so no step moves images from the host.
3. A training step is one jitted function of `(params, opt_state, model_state, step)` that
   donates those buffers. An epoch runs either as one compiled `lax.scan` over the step or
   as a Python loop calling the jitted step; which one is faster depends on the model and
   the backend, so `EPOCH_MODE_DEFAULTS` records what was measured (``--epoch-mode auto``).
4. Every function is compiled ahead of time (`compile_ahead`, with `compiler_options()`), so
   the reported training time excludes compilation, and compile time is reported apart.
5. After each epoch: evaluation (jitted over large batches), a checkpoint written atomically,
   a line of JSON metrics. At the end: `results.json` and a PNG of the curves.
6. Data parallelism over the host's cores: where it measured faster (`DATA_PARALLEL_DEFAULTS`),
   each batch is split across the backend's devices with `jax.shard_map`. Every device runs
   the same per-example network under `jax.vmap` on its share; batch norm averages across
   both the vmapped axis and the device axis, so the statistics are the whole batch's, and
   the gradients are averaged across devices (`jax.lax.pmean`): the same step as on one
   device, up to the order of float additions. On a CPU, XLA presents the cores as devices
   only when asked before JAX starts: `use_host_cores()` does that, and the experiments call
   it first thing.

Randomness: the seed gives one key; its first half initializes the network and the second
is the shuffle key, from which epoch `e`'s permutation uses `fold_in(shuffle_key, e)`. So a
run resumed from the checkpoint of epoch `e` draws exactly the batches an uninterrupted run
draws, and on the same device reaches exactly the same metrics.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import json
import math
import os
import platform
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from nnjax._checks import check_choice, check_number, check_positive_int
from nnjax.activations import activation_name, get_activation
from nnjax.backprop import cnn_logits_and_grads, mlp_logits_and_grads
from nnjax.data import load_mnist
from nnjax.gradcheck import compare
from nnjax.losses import softmax_cross_entropy
from nnjax.network import cnn_apply_batch, cnn_init, mlp_init, mlp_logits_batch

__all__ = [
    "NUM_CLASSES", "MNIST_MEAN", "MNIST_STD", "GRAD_SOURCES", "EPOCH_MODES", "OPTIMIZERS",
    "SCHEDULES", "COMPUTE_DTYPES", "EPOCH_MODE_DEFAULTS", "DATA_PARALLEL_DEFAULTS", "DEVICE_AXIS", "use_host_cores",
    "reuse_freed_memory", "REUSE_MEMORY_ENV", "use_compile_cache", "COMPILE_CACHE_ENV",
    "compiler_options", "CPU_COMPILER_OPTIONS", "CPU_COMPILER_OPTIONS_BY_MODEL", "compile_ahead",
    "resolve_devices", "replicate", "Model", "mlp_model", "cnn_model", "Splits",
    "load_splits", "TrainConfig", "make_optimizer", "resolve_epoch_mode", "make_batch_step",
    "make_train_step", "scan_steps", "epoch_batches",
    "make_evaluate", "evaluate", "compare_gradient_sources", "save_checkpoint",
    "load_checkpoint", "plot_curves", "ResumeError", "train", "CHECKPOINT_FILE", "METRICS_FILE",
    "RESULTS_FILE", "CURVES_FILE", "GRADCHECK_RTOL", "GRADCHECK_ATOL",
]

NUM_CLASSES = 10
MNIST_MEAN = 0.1307
"""Mean pixel of the MNIST training set, pixels scaled to [0, 1]."""
MNIST_STD = 0.3081
"""Standard deviation of the MNIST training pixels, pixels scaled to [0, 1]."""

GRAD_SOURCES = ("autodiff", "manual")
EPOCH_MODES = ("scan", "loop", "auto")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
COMPUTE_DTYPES = ("float32", "bfloat16")

EPOCH_MODE_DEFAULTS = {
    ("mlp", "cpu"): "scan",
    ("cnn", "cpu"): "scan",
    ("mlp", "gpu"): "scan",
    ("cnn", "gpu"): "scan",
}
"""(model kind, backend) -> how `--epoch-mode auto` runs an epoch.

CPU entries are measured on this project's 2-core CPU (jax 0.10.2), the same training run
in both modes. The 784-128-64-10 MLP (batch 128) runs faster as a `lax.scan`: 216k against
111k samples/s (the project's first measurement), 38-77k against 34-47k (a later one, the
machine shared with other jobs). The conv-BN CNN ran 4-5x slower as a scan until its input
gradient's convolution took its kernel spatial-major (`nnjax.layers.conv.FAST_CONV_DIMENSIONS`:
inside a `while` loop XLA's CPU backend otherwise emits a naive loop nest for it); since then the
scan is the faster one: `experiments/mnist_cnn.py --epochs 1 --limit-train 12800` at batch
64, 3,778-3,833 against 3,399-3,459 samples/s, and the benchmark's steps at batch 128 and
1024 (split across 2 devices) 31.0 against 32.1 ms and 255 against 262-264 ms (a 2-core
Xeon with AVX-512, 2026-11-27). GPU entries
follow the usual rule that a scan saves a launch round trip per step; on an H200 (jax
0.11.2, 2026-11-26) the scan epochs ran the CNN step in 0.26 ms at batch 128 and 1.0 ms at
1024 (loop epochs were not measured there). A (model, backend) pair not listed runs as a
loop; ``--epoch-mode`` overrides.
"""

DATA_PARALLEL_DEFAULTS = {
    ("mlp", "cpu"): None,
    ("cnn", "cpu"): 128,
}
"""(model kind, backend) -> the smallest batch that ``devices="auto"`` splits across all
devices; None: never split.

Measured on this project's 2-core CPU (jax 0.10.2, XLA presenting the two cores as two
devices, `use_host_cores`), one SGD step in alternating rounds. The MLP's step is too small
to gain from the cross-device reduction: 1.5 against 0.8 ms at batch 128 (on the Xeon, as scan
epochs: 1.30 against 0.75 ms at 128, 3.37 against 3.01 at 1024). The CNN's
convolutions are batch-level matrix products, which XLA runs on both cores on one device;
split across two, every cross-device reduction (batch norm's statistics, the gradients) makes
each device wait for the other. Median ms per step, one device against two: batch 64 23
against 28, batch 128 44 against 46-53, batch 256 98 against 113, batch 512 206 against 184;
so batches from 512 up were split. Since conv1 and its batch norm run as one product
(`nnjax.layers.conv2d_batch_norm`), the step has fewer memory-bound passes and two devices
gain from batch 128 up (a Xeon with 2 cores, scan epoch, in-process A/B, min/median ms per
step, one device against two: batch 64 11.5/12.6 against 14.8/16.0; batch 128 26.3/27.4
against 25.5/26.2 and 26.7/27.9 against 26.1/26.8 hand-derived, 27.0/27.9 against 26.4/27.5
autodiff; batch 256 56.3/59.6 against 56.3/57.3). A pair not listed (a GPU, say) uses one
device.
"""

DEVICE_AXIS = "devices"
"""The `shard_map` axis name of data-parallel training."""

GRADCHECK_RTOL = 1e-3
GRADCHECK_ATOL = 1e-5
"""Tolerances of the float32 first-batch check: |manual - autodiff| <= atol + rtol |autodiff|.
The two sum the batch in different orders; their differences are ~1e-7 of the gradients'
scale, while a wrong derivation is off by the gradient's own size."""

CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CURVES_FILE = "curves.png"
SCAN_UPDATES_PER_EPOCH = 10


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's numbers (a resumed run must match it exactly).

    Attributes:
      epochs: passes over the training set.
      batch_size: examples per step; each epoch runs ``n_train // batch_size`` steps on a
        fresh permutation (the left-over examples fall in other epochs' batches).
      lr: peak learning rate.
      seed: the run's seed (initialization and shuffling).
      grads: ``"autodiff"`` (jax.value_and_grad) or ``"manual"`` (the model's hand-derived
        gradients).
      epoch_mode: ``"scan"``, ``"loop"`` or ``"auto"`` (`EPOCH_MODE_DEFAULTS`).
      optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (with Nesterov momentum 0.9).
      schedule: ``"cosine"`` (linear warm-up, then cosine decay to 0), ``"onecycle"``
        (optax's one-cycle) or ``"constant"``.
      warmup_epochs: warm-up length of the cosine schedule, in epochs (may be fractional).
      weight_decay: adamw's decoupled weight decay; for adam and sgd, an L2 term
        ``weight_decay * theta`` added to the gradient.
      label_smoothing: targets ``(1 - s) * one_hot + s / 10``; 0 trains on one-hot targets.
      compute_dtype: ``"float32"``, or ``"bfloat16"`` for mixed precision. The MLP runs its
        matrix products on bfloat16 operands summed in float32 and everything else in float32
        (`Model.mixed_precision`; on a 2-core Xeon with AMX its SGD step ran 1.6-1.7x faster
        at batch 1024 and 1.3-1.4x at 128, test accuracy unchanged, docs/benchmarks.md; on
        CPUs without bfloat16 instructions it is slower: `scripts/bench_products.py` tells).
        The CNN does the same for its im2col convolutions and dense layers; its fused first
        block, batch norm and pooling stay float32 (its SGD step ran 1.16-1.28x faster at
        batch 128 on that Xeon, level at 1024; `nnjax.backprop.cnn_logits_and_grads`). A
        `Model` without its own mixed precision runs on bfloat16 copies of the parameters and
        inputs. Either way the parameters, optimizer state, batch-norm statistics and the
        loss stay float32 (`make_train_step`). Evaluation always runs in float32.
      eval_batch_size: examples per evaluation call.
      devices: how many of the backend's devices share each batch (data parallelism), or
        ``"auto"`` (`DATA_PARALLEL_DEFAULTS`; see `resolve_devices`).
      model: the model's `Model.describe`.
      n_train: training examples.
    """
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    grads: str = "autodiff"
    epoch_mode: str = "auto"
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"
    eval_batch_size: int = 1000
    devices: int | str = "auto"
    model: dict = dataclasses.field(default_factory=dict)
    n_train: int = 0

    def validate(self) -> None:
        """Raises ValueError/TypeError naming the bad setting and what is allowed."""
        for name in ("epochs", "batch_size", "eval_batch_size", "n_train"):
            check_positive_int("TrainConfig", name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainConfig: seed={self.seed!r} must be an int >= 0")
        if self.batch_size > self.n_train:
            raise ValueError(f"TrainConfig: batch_size={self.batch_size} is larger than the "
                             f"{self.n_train} training examples")
        check_choice("TrainConfig", "grads", self.grads, GRAD_SOURCES)
        check_choice("TrainConfig", "epoch_mode", self.epoch_mode, EPOCH_MODES)
        check_choice("TrainConfig", "optimizer", self.optimizer, OPTIMIZERS)
        check_choice("TrainConfig", "schedule", self.schedule, SCHEDULES)
        check_choice("TrainConfig", "compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        for name in ("lr", "warmup_epochs", "weight_decay", "label_smoothing"):
            value = check_number("TrainConfig", name, getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"TrainConfig: {name}={value!r} must be finite")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr={self.lr!r} must be > 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"TrainConfig: warmup_epochs={self.warmup_epochs!r} must be in "
                             f"[0, epochs={self.epochs})")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig: weight_decay={self.weight_decay!r} must be >= 0")
        if self.devices != "auto" and (isinstance(self.devices, bool) or not isinstance(self.devices, int)
                                       or self.devices < 1):
            raise ValueError(f"TrainConfig: devices={self.devices!r} must be 'auto' or an int >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"TrainConfig: label_smoothing={self.label_smoothing!r} must be "
                             f"in [0, 1)")

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer and learning-rate schedule of `config`.

    Returns:
      An optax transformation whose schedule spans ``epochs * steps_per_epoch`` steps.
    """
    total = config.epochs * config.steps_per_epoch
    if config.schedule == "cosine":
        warmup = int(round(config.warmup_epochs * config.steps_per_epoch))
        lr = optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, max(total, warmup + 1))
    elif config.schedule == "onecycle":
        lr = optax.cosine_onecycle_schedule(total, config.lr)
    else:
        lr = config.lr
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    update = optax.adam(lr) if config.optimizer == "adam" else optax.sgd(lr, momentum=0.9, nesterov=True)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), update)


def resolve_epoch_mode(mode: str, model_kind: str, backend: str | None = None) -> str:
    """``"scan"`` or ``"loop"``: `mode` itself, or for ``"auto"`` the measured default.

    Args:
      mode: one of `EPOCH_MODES`.
      model_kind: `Model.kind`.
      backend: ``jax.default_backend()`` when None.
    """
    check_choice("resolve_epoch_mode", "mode", mode, EPOCH_MODES)
    if mode != "auto":
        return mode
    return EPOCH_MODE_DEFAULTS.get((model_kind, backend or jax.default_backend()), "loop")


def use_host_cores(count: int | None = None) -> None:
    """Asks XLA to present the CPU as `count` devices (default: one per core).

    Data-parallel training (`resolve_devices`) needs several devices; on a CPU, XLA makes
    them from the host's cores only when ``--xla_force_host_platform_device_count`` is in
    ``XLA_FLAGS`` before JAX starts its backends, i.e. before the first computation. Call
    this first thing in a program (the experiments and benchmarks do). A count already in
    ``XLA_FLAGS`` wins; called too late, it changes nothing and training uses one device.
    Other backends (GPU) are not affected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        count = (os.cpu_count() or 1) if count is None else check_positive_int("use_host_cores", "count", count)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


_MALLOC_SETTINGS = (("M_ARENA_MAX", -8, "MALLOC_ARENA_MAX", 1),
                    ("M_MMAP_THRESHOLD", -3, "MALLOC_MMAP_THRESHOLD_", 1 << 30),
                    ("M_TRIM_THRESHOLD", -1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1))
"""What `reuse_freed_memory` sets: (glibc `mallopt` parameter, its number in malloc.h, the
environment variable glibc reads at start, value)."""

REUSE_MEMORY_ENV = {variable: str(value) for _, _, variable, value in _MALLOC_SETTINGS}
"""The same settings as environment variables, for a child process (glibc reads them at start)."""


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    XLA's CPU runtime allocates each step's buffers afresh. With glibc's defaults, blocks over
    32 MB, and the large blocks of every thread but the main one (their arenas are capped at
    64 MB), are mapped from the OS and unmapped when freed, so every step first-touches new
    pages: a page fault per 4 KB. Measured on a 2-core CPU (jax 0.10.2): an element-wise op
    writing a fresh 44 MB buffer took 24 ms, 4 ms with this; the CNN's training step at batch
    128 split across two devices took 77-85 ms, 51-58 ms with this (alternating runs). Sets
    one arena for all threads (`M_ARENA_MAX`), maps nothing under 1 GB (`M_MMAP_THRESHOLD`)
    and trims nothing under 2 GB (`M_TRIM_THRESHOLD`); the process keeps its peak memory.

    Call it first thing in a program, before JAX starts its threads (the experiments and
    benchmarks do); `REUSE_MEMORY_ENV` does the same for a child process.

    Returns:
      True if glibc took the settings; False where there is no glibc (macOS, Windows, musl),
      and nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(number, value) == 1 for _, number, _, value in _MALLOC_SETTINGS)


COMPILE_CACHE_ENV = "NNJAX_COMPILE_CACHE"
"""The environment variable naming the compile cache's folder (or "off"), `use_compile_cache`."""
COMPILE_CACHE_MIN_SECONDS = 0.5
"""Programs that compile faster than this are not worth a file."""


def use_compile_cache(folder: str | None = None) -> str | None:
    """Keeps compiled XLA programs on disk, so a later run of the same program loads it.

    JAX's persistent compilation cache: every program that took over
    `COMPILE_CACHE_MIN_SECONDS` to compile is written to `folder`, keyed by the program, the
    JAX and XLA versions and flags, and the device; a later process compiling the same one
    reads it back (the CNN's train step: seconds to compile, a fraction of one to load). Call
    it first thing, like `use_host_cores`: JAX decides once per process, at its first
    compilation, whether to use the cache.

    Args:
      folder: where; None means ``$NNJAX_COMPILE_CACHE``, else JAX's own setting
        (``$JAX_COMPILATION_CACHE_DIR``), else ``~/.cache/nnjax/xla``; "off" (as the argument
        or the variable) leaves the cache as JAX has it (off unless JAX's variable is set).

    Returns:
      The folder in use, or None when off.

    Raises:
      ValueError: `folder` exists and is not a directory.
    """
    folder = (folder or os.environ.get(COMPILE_CACHE_ENV) or jax.config.jax_compilation_cache_dir
              or str(Path.home() / ".cache" / "nnjax" / "xla"))
    if folder == "off":
        return None
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"use_compile_cache: {folder} exists and is not a folder; give a folder for "
                         f"the compiled programs (or 'off')")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILE_CACHE_MIN_SECONDS)
    return folder


CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
"""The XLA options nnjax compiles its programs with on a CPU (`compiler_options`).

- ``xla_cpu_use_fusion_emitters: False``: XLA's CPU backend has two code generators for fused
  element-wise work; the older one (the "elemental" emitters) compiled the CNN's train step in
  1.7-2.1 s instead of 3.0-3.7 s at batch 128 (3.0 against 3.4-4.0 s at batch 1024), with
  steps as fast or faster (at batch 128, 48-62 against 60-75 ms per step in the same runs;
  the MLP's the same within noise).
- ``xla_backend_optimization_level: 1`` (LLVM's -O1 instead of -O2 for the code XLA generates;
  the matrix products are precompiled library kernels either way): the CNN's step at batch
  1024 on 2 devices compiled in 0.98-1.24 s against 1.33-1.59 s, with steps the same within
  noise (A/B in one process, 12 rounds: CNN batch 128 median 46.0 against 45.1 ms, MLP scan
  epoch 0.86 against 0.91 ms per step). Results differ from -O2's in the last bits of float32
  (1.2e-7 after 3 CNN steps), a run repeats exactly. At level 0 the compile took 0.4 s but the
  step ran 3 times slower.

Measured with jax 0.10.2 on the 2-core CPU of docs/benchmarks.md. The MLP compiles with
`CPU_COMPILER_OPTIONS_BY_MODEL` instead.

The elemental emitters also keep the CNN's gradients right: with XLA's default (MLIR) fusion
emitters, jaxlib 0.10.2 miscompiles the gradient of a 2x2 max pool (the maximum of strided
slices) over ReLU(gamma * z + beta) with 12 or more channels (float32 and float64; correct
op by op, with these options, or at LLVM -O0). docs/benchmarks.md has the reproducer, and
`compare_gradient_sources` compiles with these options too."""

CPU_COMPILER_OPTIONS_BY_MODEL = {"mlp": {"xla_backend_optimization_level": 1}}
"""Model kinds whose CPU programs compile with other options than `CPU_COMPILER_OPTIONS`.

The MLP keeps XLA's default (MLIR) emitters: on the second CPU (a Xeon with AVX-512, jax
0.10.2) the elemental emitters made its step 6-7% slower at batch 128 (scan epoch, median of
20 interleaved rounds, two processes: 0.580 and 0.584 against 0.544 and 0.546 ms per step;
the profile puts it in the 128x784 weight update, 0.08 against 0.05 ms) and saved only
0.13 s of its 0.5 s compile; level at batch 1024 (3.19 against 3.11 ms). The CNN keeps both
options: there they halve the compile (0.83 against 1.61 s at batch 128, same machine) with
the step level (32.6 against 33.3 ms)."""


def compiler_options(backend: str | None = None, model_kind: str | None = None) -> dict:
    """The options nnjax passes to ``.compile()`` for its programs on `backend`.

    On a CPU whose XLA knows them: `CPU_COMPILER_OPTIONS_BY_MODEL[model_kind]` where there is
    one, else `CPU_COMPILER_OPTIONS`; nothing elsewhere. `compile_ahead` passes them; so does
    ``jax.jit(step).lower(...).compile(compiler_options(model_kind="cnn"))``.

    Args:
      backend: "cpu", "gpu", ...; None means JAX's default backend.
      model_kind: the `Model.kind` the program trains or evaluates, or None.

    Returns:
      A new dict of XLA option names to values (empty where there are none to set).
    """
    backend = backend or jax.default_backend()
    options = CPU_COMPILER_OPTIONS_BY_MODEL.get(model_kind, CPU_COMPILER_OPTIONS)
    return dict(options) if backend == "cpu" and _cpu_options_known(tuple(sorted(options.items()))) else {}


@functools.cache
def _cpu_options_known(options: tuple) -> bool:
    """Whether this jaxlib's XLA accepts the (name, value) `options` (it rejects unknown names)."""
    probe = jax.device_put(np.float32(0), jax.devices("cpu")[0])
    try:
        jax.jit(jnp.negative).lower(probe).compile(dict(options))
    except jax.errors.JaxRuntimeError:
        return False
    return True


def compile_ahead(fn: Callable, *args, donate: bool = False, model_kind: str | None = None):
    """`fn` jitted and compiled ahead of time for `args`, with nnjax's `compiler_options()`.

    Args:
      fn: a pure function of `args`.
      args: example arguments (arrays or pytrees of them) fixing shapes, dtypes and shardings.
      donate: donate the first argument's buffers (a train step's carry).
      model_kind: the `Model.kind` of the program, for `compiler_options`.

    Returns:
      The compiled function, called with arguments like `args`.
    """
    jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
    return jitted.lower(*args).compile(compiler_options(model_kind=model_kind))


def resolve_devices(requested: int | str, model_kind: str, batch_size: int,
                    eval_batch_size: int, backend: str | None = None) -> int:
    """How many devices share each batch: `requested`, or for ``"auto"`` the measured default.

    ``"auto"`` uses every device of the backend where `DATA_PARALLEL_DEFAULTS` says data
    parallelism measured faster for this batch size, else one; then the largest count that
    divides both batch sizes (each device takes an equal share). On a CPU at most one device
    per core counts.

    Raises:
      ValueError: an int count larger than the devices there are, or not dividing the batch
        sizes.
    """
    backend = backend or jax.default_backend()
    available = len(jax.devices(backend))
    if backend == "cpu":
        available = min(available, os.cpu_count() or 1)
    if requested == "auto":
        smallest_split = DATA_PARALLEL_DEFAULTS.get((model_kind, backend))
        wanted = available if smallest_split is not None and batch_size >= smallest_split else 1
        return max(n for n in range(1, wanted + 1) if batch_size % n == 0 and eval_batch_size % n == 0)
    if requested > available:
        cores = os.cpu_count() or 1
        hint = (f"; call nnjax.training.use_host_cores() before JAX starts to get one per core ({cores})"
                if backend == "cpu" and available < cores else
                " (on a CPU at most one device per core: each device's share needs its own thread to "
                "meet the others in the cross-device reduction)")
        raise ValueError(f"train: devices={requested} but the {backend} backend has {available} usable{hint}")
    if batch_size % requested or eval_batch_size % requested:
        raise ValueError(f"train: devices={requested} must divide batch_size={batch_size} and "
                         f"eval_batch_size={eval_batch_size} (each device takes an equal share)")
    return requested


def _mesh(devices: int) -> Mesh | None:
    """A one-axis mesh over the first `devices` devices, or None for one device."""
    return None if devices == 1 else Mesh(np.array(jax.devices()[:devices]), (DEVICE_AXIS,))


def replicate(tree, devices: int = 1):
    """Puts `tree` where a step of `make_train_step(..., devices=devices)` wants its data and
    carry: on the default device, or replicated on each of the first `devices` devices."""
    mesh = _mesh(devices)
    return jax.device_put(tree, None if mesh is None else NamedSharding(mesh, PartitionSpec()))


def _split_batch(fn: Callable, devices: int, batch_args: int) -> Callable:
    """`fn(*replicated, *batch_args, device_axis)` as one call on the whole batch.

    With several devices, `fn` runs on each under `shard_map` on its share of the last
    `batch_args` arguments (split along their first axis) with ``device_axis=DEVICE_AXIS``,
    and must return values already reduced across the devices (replicated). On one device,
    it runs as is with ``device_axis=None``.
    """
    mesh = _mesh(devices)
    if mesh is None:
        return lambda *args: fn(*args, None)

    def call(*args):
        specs = (PartitionSpec(),) * (len(args) - batch_args) + (PartitionSpec(DEVICE_AXIS),) * batch_args
        local = jax.shard_map(lambda *a: fn(*a, DEVICE_AXIS), mesh=mesh, in_specs=specs,
                              out_specs=PartitionSpec(), check_vma=False)
        return local(*args)
    return call


def _targets(labels, label_smoothing):
    """One-hot rows for int labels, smoothed: (1 - s) one_hot + s / K."""
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES, dtype=jnp.float32)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / NUM_CLASSES


def _batch_loss(model: Model, params, state, inputs, targets, device_axis):
    """Mean softmax cross-entropy of a training batch (this device's share of it); aux is
    (logits, new_state)."""
    logits, new_state = model.apply(params, state, inputs, True, device_axis)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jnp.mean(softmax_cross_entropy(logits, targets)), (logits, new_state)


def _gradient_fn(model: Model, grads: str) -> Callable:
    """``(params, state, inputs, targets, device_axis=None) -> (grads, logits, new_state)``
    from either source; with a device axis, the gradients of this device's mean loss (batch
    norm's statistics spanning all devices), whose mean across devices is the whole batch's."""
    if grads == "autodiff":
        def autodiff(params, state, inputs, targets, device_axis=None):
            value_and_grad = jax.value_and_grad(_batch_loss, argnums=1, has_aux=True)
            (_, (logits, new_state)), g = value_and_grad(model, params, state, inputs, targets, device_axis)
            return g, logits, new_state
        return autodiff
    if model.manual_grads is None:
        raise ValueError(f"train: grads='manual' but the {model.kind} model has no hand-derived "
                         f"gradients; use grads='autodiff'")
    return model.manual_grads


class _Data(NamedTuple):
    images: jax.Array
    labels: jax.Array


def _cast_floats(tree, dtype):
    """Every floating-point leaf of `tree` as `dtype` (integer leaves untouched)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _gradient_in(model: Model, grads: str, compute_dtype: str) -> Callable:
    """`_gradient_fn` in `compute_dtype`: float32 as it is; otherwise the model's own mixed
    precision where it has one (`Model.mixed_precision`: its ``apply`` and ``manual_grads``
    with `compute_dtype` bound), else `_in_compute_dtype`."""
    if compute_dtype == "float32":
        return _gradient_fn(model, grads)
    if model.mixed_precision:
        def bound(fn):
            return None if fn is None else functools.partial(fn, compute_dtype=compute_dtype)
        return _gradient_fn(dataclasses.replace(model, apply=bound(model.apply),
                                                manual_grads=bound(model.manual_grads)), grads)
    return _in_compute_dtype(_gradient_fn(model, grads), compute_dtype)


def _in_compute_dtype(gradient: Callable, compute_dtype: str) -> Callable:
    """`gradient` run on `compute_dtype` copies of the parameters, inputs and targets, its
    gradients and batch-norm state cast back to the dtypes of the parameters and state it was
    given (mixed precision)."""
    dtype = jnp.dtype(compute_dtype)

    def mixed(params, state, inputs, targets, device_axis=None):
        g, logits, new_state = gradient(_cast_floats(params, dtype), state, inputs.astype(dtype),
                                        targets.astype(dtype), device_axis)
        g = jax.tree.map(lambda grad, p: grad.astype(p.dtype), g, params)
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)
        return g, logits.astype(jnp.float32), new_state
    return mixed


def make_batch_step(model: Model, optimizer: optax.GradientTransformation, grads: str,
                    label_smoothing: float = 0.0, devices: int = 1,
                    compute_dtype: str = "float32") -> Callable:
    """One optimizer step on the batch of examples that `batch` indexes.

    With ``devices > 1`` the batch is split across the first `devices` devices (`shard_map`):
    each computes the gradients of its share, batch norm averaging across all of them, and
    the gradients, loss and correct count are reduced across devices before the update.
    `data` and the carry must then be replicated on those devices.

    With ``compute_dtype="bfloat16"`` the gradients are computed in the model's own mixed
    precision (`Model.mixed_precision`), else on bfloat16 copies of the parameters and inputs
    (`TrainConfig.compute_dtype`); the update applies them, in float32, to the float32
    parameters.

    Returns:
      ``batch_step(carry, data, batch) -> (carry, (loss, correct))`` with
      ``carry = (params, opt_state, model_state, step)``, ``data`` the device-resident
      training set (uint8 images, int labels), ``batch`` the (B,) example indices of this
      step; ``loss`` is the batch's mean cross-entropy against the true labels and
      ``correct`` its number of correct predictions. `make_train_step` and `scan_steps`
      run it.
    """
    check_choice("make_batch_step", "compute_dtype", compute_dtype, COMPUTE_DTYPES)
    gradient = _gradient_in(model, grads, compute_dtype)

    def batch_gradients(params, state, images, labels, batch, device_axis):
        labels = labels[batch]
        inputs = model.prepare(images[batch])
        g, logits, new_state = gradient(params, state, inputs, _targets(labels, label_smoothing), device_axis)
        loss = jnp.mean(softmax_cross_entropy(logits, _targets(labels, 0.0)))
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
        if device_axis is not None:
            g, loss = jax.lax.pmean((g, loss), device_axis)
            correct = jax.lax.psum(correct, device_axis)
        return g, new_state, loss, correct

    gradients = _split_batch(batch_gradients, devices, batch_args=1)

    def batch_step(carry, data, batch):
        params, opt_state, state, index = carry
        g, new_state, loss, correct = gradients(params, state, data.images, data.labels, batch)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, new_state, index + 1), (loss, correct)
    return batch_step


def _indexed(batch_step: Callable) -> Callable:
    """`batch_step` on the row of the epoch's batches that the carry's step count names."""
    def step(carry, data, batches):
        return batch_step(carry, data, batches[carry[3]])
    return step


def make_train_step(model: Model, optimizer: optax.GradientTransformation, grads: str,
                    label_smoothing: float = 0.0, devices: int = 1,
                    compute_dtype: str = "float32") -> Callable:
    """One optimizer step on the batch that `batches[step]` indexes: `make_batch_step`
    (same arguments) on the epoch's index matrix.

    Returns:
      ``step(carry, data, batches) -> (carry, (loss, correct))``, ``batches`` the epoch's
      (steps, B) index matrix and ``carry[3]`` the step it is at (see `make_batch_step`). The
      step of the loop epoch, jitted; a scan epoch runs `scan_steps` instead.
    """
    return _indexed(make_batch_step(model, optimizer, grads, label_smoothing, devices, compute_dtype))


def _no_metrics():
    """Zero loss and correct-count sums, the start of `_add_metrics`."""
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)


def _add_metrics(sums, metrics):
    """Running sums of the steps' (loss, correct)."""
    (loss_sum, correct_sum), (loss, correct) = sums, metrics
    return loss_sum + loss.astype(jnp.float32), correct_sum + correct.astype(jnp.int32)


def scan_steps(batch_step: Callable, length: int) -> Callable:
    """`length` steps of `batch_step` (`make_batch_step`) as one `lax.scan`, from the step
    the carry is at.

    Measured on an H100 against a scan over the step count that indexes `batches` in each
    step and stacks each step's metrics (A/B in docs/benchmarks.md): the `length` rows of
    `batches` are cut once (``dynamic_slice``) and scanned over, so each step gets its batch
    indices as the scan's input (XLA then copies them ahead of the step instead of
    recomputing the slice inside the gather): the MLP's step took 16% less time at batch 1024
    (0.058 against 0.069 ms); and the metrics are summed in the scan's carry instead of written to
    a (length,) array per step: another 4-5%. Level on the CPU.

    Returns:
      ``(carry, data, batches) -> (carry, (loss_sum, correct_sum))``, the sums of the
      `length` steps' mean losses and correct counts; the carry's step must leave `length`
      rows of `batches` from it.

    Raises:
      ValueError: `length` is below 1 or, when traced, above the number of rows of `batches`.
    """
    if length < 1:
        raise ValueError(f"scan_steps: length={length}; it must be at least 1 step")

    def chunk(carry, data, batches):
        if length > batches.shape[0]:
            raise ValueError(f"scan_steps: length={length} steps, but batches has {batches.shape[0]} rows "
                             f"(shape {batches.shape}); pass the epoch's (steps, B) index matrix")

        def body(state, batch):
            carry, sums = state
            carry, metrics = batch_step(carry, data, batch)
            return (carry, _add_metrics(sums, metrics)), None
        rows = jax.lax.dynamic_slice_in_dim(batches, carry[3], length)
        return jax.lax.scan(body, (carry, _no_metrics()), rows)[0]
    return chunk


def _counted_chunk(step: Callable, length: int) -> Callable:
    """Up to ``length`` steps of `step` (`make_train_step`) as one compiled loop:
    ``(carry, data, batches, count) -> (carry, (loss_sum, correct_sum))``, running the first
    `count` (<= length), the metrics summed as in `scan_steps`.

    For CPU epochs that `length` does not divide: one program serves every call, the last one
    shorter. Its loop has no trip count known to the compiler, which a GPU pays for in every
    iteration (measured on an H100: 12-15 us more per step, +20-40% for the MLP), so
    `_scan_chunk_length` keeps it to the CPU (where it ran at the scan's speed).
    """
    def chunk(carry, data, batches, count):
        def body(_, state):
            carry, sums = state
            carry, metrics = step(carry, data, batches)
            return carry, _add_metrics(sums, metrics)
        return jax.lax.fori_loop(0, count, body, (carry, _no_metrics()))
    return chunk


def _scan_chunk_length(steps: int, backend: str | None = None) -> int:
    """Steps per call of a scan epoch, so that the progress bar moves about
    `SCAN_UPDATES_PER_EPOCH` times: a divisor of `steps` near ``steps / SCAN_UPDATES_PER_EPOCH``
    (every call the same `scan_steps`). Without one (937 steps, batch 64, is prime): on the
    CPU ``ceil(steps / SCAN_UPDATES_PER_EPOCH)`` with a shorter last call (`_counted_chunk`),
    elsewhere the whole epoch in one call (a GPU's epoch takes well under a second, and the
    counted loop would slow every step). `backend` defaults to ``jax.default_backend()``."""
    target = steps / SCAN_UPDATES_PER_EPOCH
    near = [d for d in range(max(1, int(target / 2)), int(2 * target) + 1) if steps % d == 0]
    if near:
        return min(near, key=lambda d: abs(d - target))
    return -(-steps // SCAN_UPDATES_PER_EPOCH) if (backend or jax.default_backend()) == "cpu" else steps


def make_evaluate(model: Model, devices: int = 1) -> Callable:
    """``(params, state, images, labels, mask) -> (loss_sum, correct_sum)`` over one batch.

    Inference mode (batch norm uses its running statistics); ``mask`` zeroes padding rows.
    With ``devices > 1`` the batch is split across that many devices, as in `make_train_step`.
    """
    def evaluate_batch(params, state, images, labels, mask, device_axis):
        logits, _ = model.apply(params, state, model.prepare(images), False)
        losses = softmax_cross_entropy(logits, _targets(labels, 0.0))
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        sums = jnp.sum(losses * mask), jnp.sum(correct * mask)
        return sums if device_axis is None else jax.lax.psum(sums, device_axis)
    return _split_batch(evaluate_batch, devices, batch_args=3)


class _EvalSet(NamedTuple):
    images: jax.Array
    labels: jax.Array
    mask: jax.Array
    size: int


def _eval_set(images, labels, batch_size: int, devices: int = 1) -> _EvalSet:
    """Puts an evaluation set on the device (replicated on `devices` of them), padded to a
    multiple of `batch_size`."""
    n = len(labels)
    pad = -n % batch_size
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return _EvalSet(*replicate((images, labels, mask), devices), n)


def evaluate(evaluate_batch: Callable, params, state, eval_set: _EvalSet,
             batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy over `eval_set`, one compiled call per batch on the device.

    Each call is waited for before the next, as the training steps are under data
    parallelism (`_run_epoch`); the calls are large, so this costs nothing measurable.
    """
    sums = [jax.block_until_ready(evaluate_batch(
                params, state, eval_set.images[i:i + batch_size], eval_set.labels[i:i + batch_size],
                eval_set.mask[i:i + batch_size]))
            for i in range(0, len(eval_set.mask), batch_size)]
    loss, correct = np.sum(jax.device_get(sums), axis=0)
    return float(loss) / eval_set.size, float(correct) / eval_set.size


def compare_gradient_sources(model: Model, params, state, inputs, targets,
                             repeats: int = 10, compute_dtype: str = "float32") -> dict:
    """Autodiff vs hand-derived gradients on one batch: agreement and time per call.

    The two sources `train` can step with: ``jax.value_and_grad`` of the model's loss (whose
    layers include nnjax's `jax.custom_vjp` layers, `dense_batch_fast` and the CNN's
    batch-level convolutions, batch norm and pooling, so autodiff chains their hand-derived
    backwards) and the model's whole hand-derived backward (`mlp_grads`, `cnn_grads`). The
    check of the hand-derived formulas against autodiff of the plain layers alone is
    ``python -m nnjax.gradcheck`` (`nnjax.network.cnn_loss_plain`, the vmapped `mlp_logits`).

    Args:
      model: a `Model` with `manual_grads`.
      params, state: the network.
      inputs, targets: one prepared batch and its (smoothed) one-hot targets.
      repeats: timed calls of each, after one warm-up call; the median is reported.
      compute_dtype: the precision both sources run in, as `TrainConfig.compute_dtype`:
        with ``"bfloat16"`` the hand-derived mixed-precision backward against autodiff of
        the mixed-precision forward (the same rounding points, so the float32 tolerances
        hold).

    Returns:
      ``{"passed", "report" (the `nnjax.gradcheck.compare` table), "autodiff_ms",
      "manual_ms"}``.
    """
    check_choice("compare_gradient_sources", "compute_dtype", compute_dtype, COMPUTE_DTYPES)
    options = compiler_options(model_kind=model.kind)
    sources = {name: jax.jit(lambda p, s, x, y, f=_gradient_in(model, name, compute_dtype): f(p, s, x, y)[0],
                             compiler_options=options)
               for name in GRAD_SOURCES}
    grads, times = {}, {}
    for name, fn in sources.items():
        grads[name] = jax.block_until_ready(fn(params, state, inputs, targets))
        elapsed = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(params, state, inputs, targets))
            elapsed.append(time.perf_counter() - start)
        times[name] = 1000 * float(np.median(elapsed))
    report = compare(grads["manual"], grads["autodiff"], rtol=GRADCHECK_RTOL, atol=GRADCHECK_ATOL)
    return {"passed": bool(report.passed), "report": str(report),
            "autodiff_ms": times["autodiff"], "manual_ms": times["manual"]}


def _write_atomically(path: str, write: Callable, durable: bool = False) -> None:
    """Calls ``write(file)`` on a temporary file beside `path`, then renames it over `path`.

    A crash of the program at any point leaves either the old file or the new one, never a
    partial one; the temporary file is removed if writing fails (a killed program leaves it
    behind, and `train` deletes it on its next start). ``durable=True`` also flushes the file
    to disk before the rename, so that the same holds if the machine loses power.
    """
    tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_stale_temporary_files(out_dir: str) -> None:
    """Deletes the temporary files a killed run left behind (`_write_atomically`'s, never a
    finished file)."""
    run_files = (CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE, CURVES_FILE)
    for name in os.listdir(out_dir):
        if name.endswith(".tmp") and any(name.startswith(f + ".") for f in run_files):
            os.unlink(os.path.join(out_dir, name))


def save_checkpoint(path: str, tree, meta: dict) -> None:
    """Writes a pytree of arrays and a JSON-able dict to `path` (.npz), atomically.

    Args:
      path: the checkpoint file.
      tree: any pytree of arrays (params, optimizer state, ...).
      meta: JSON-serializable information (epoch, history, config).
    """
    leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(tree))
    header = json.dumps({"meta": meta, "treedef": str(treedef), "leaves": len(leaves)})
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["header"] = np.frombuffer(header.encode(), dtype=np.uint8)
    _write_atomically(path, lambda f: np.savez(f, **arrays), durable=True)


def load_checkpoint(path: str, template):
    """Reads a checkpoint of `save_checkpoint` into the structure of `template`.

    Args:
      path: the checkpoint file.
      template: a pytree with the checkpoint's structure, shapes and dtypes (e.g. a freshly
        initialized run with the same config).

    Returns:
      ``(tree, meta)``.

    Raises:
      ValueError: the file is not such a checkpoint, or its structure, shapes or dtypes differ
        from `template`'s (naming the first difference).
    """
    template_leaves, treedef = jax.tree_util.tree_flatten(template)
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"load_checkpoint: {path} is not an nnjax checkpoint: not an .npz (zip) "
                         f"archive ({os.path.getsize(path)} bytes); it was damaged or is another "
                         f"kind of file")
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(bytes(f["header"]).decode())
            structure, meta = header["treedef"], header["meta"]
            leaves = [f[f"leaf_{i:05d}"] for i in range(header["leaves"])]
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_checkpoint: {path} is not a readable nnjax checkpoint "
                         f"({type(e).__name__}: {e}); it was damaged or is another kind of file") from e
    if structure != str(treedef) or len(leaves) != len(template_leaves):
        raise ValueError(f"load_checkpoint: {path} holds a different structure than this run "
                         f"expects:\n  checkpoint: {structure}\n  expected:   {treedef}")
    for i, (leaf, want) in enumerate(zip(leaves, template_leaves)):
        if leaf.shape != np.shape(want) or leaf.dtype != np.asarray(want).dtype:
            raise ValueError(f"load_checkpoint: {path} leaf {i} has shape {leaf.shape} dtype "
                             f"{leaf.dtype}, expected {np.shape(want)} {np.asarray(want).dtype}")
    return jax.tree_util.tree_unflatten(treedef, leaves), meta


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    """Saves loss and accuracy per epoch (training and evaluation) as a PNG.

    Args:
      history: the per-epoch records of `train` (keys ``train_loss``, ``train_accuracy`` and
        ``<eval>_loss``, ``<eval>_accuracy``).
      path: the PNG file.
      title: the figure's title.
    """
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    eval_name = "val" if "val_loss" in history[0] else "test"
    fig = Figure(figsize=(9, 3.5))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.14, top=0.88, wspace=0.3)
    for ax, metric, scale in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("log", "linear")):
        for split in ("train", eval_name):
            ax.plot(epochs, [r[f"{split}_{metric}"] for r in history], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=metric, yscale=scale)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))


class ResumeError(ValueError):
    """A run cannot resume: no checkpoint, or one from different settings or a different model."""


def _compile(model_kind: str, fn: Callable, *args, donate: bool = False):
    """`compile_ahead`, timed; returns (compiled, seconds)."""
    start = time.perf_counter()
    compiled = compile_ahead(fn, *args, donate=donate, model_kind=model_kind)
    return compiled, time.perf_counter() - start


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def _device_name() -> str:
    """E.g. ``cpu: AMD EPYC (2 cores)`` or ``gpu: NVIDIA H100 80GB HBM3 (16 CPU cores)``."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu: {_cpu_model()} ({os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind} ({os.cpu_count()} CPU cores)"


def _devices_note(devices: int) -> str:
    """E.g. ``one device`` or ``each batch split across 2 devices``."""
    return "one device" if devices == 1 else f"each batch split across {devices} devices"


def _write_json_lines(path: str, records: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    _write_atomically(path, lambda f: f.write(text.encode()))


class _RunState(NamedTuple):
    params: object
    opt_state: object
    model_state: object
    shuffle_key: jax.Array
    history: list


def _initial_state(model: Model, optimizer, config: TrainConfig, out_dir: str | None,
                   resume: bool, log: Callable) -> _RunState:
    """A fresh run from the seed, or the state of `out_dir`'s checkpoint when resuming."""
    checkpoint_path = os.path.join(out_dir, CHECKPOINT_FILE) if out_dir else None
    if resume and out_dir is None:
        raise ResumeError("train: resume=True needs out_dir (where the checkpoint is)")
    if resume and not os.path.exists(checkpoint_path):
        raise ResumeError(f"train: --resume given but there is no checkpoint at "
                          f"{checkpoint_path}; run without --resume to start afresh")
    init_key, shuffle_key = jax.random.split(jax.random.key(config.seed))
    params, model_state = model.init(init_key)
    fresh = _RunState(params, optimizer.init(params), model_state, shuffle_key, [])
    if not resume:
        return fresh
    try:
        (params, opt_state, model_state, key_data), meta = load_checkpoint(
            checkpoint_path, fresh[:3] + (jax.random.key_data(shuffle_key),))
    except ValueError as error:
        raise ResumeError(f"train: cannot resume: {error}") from None
    if not isinstance(meta, dict) or not {"config", "history"} <= set(meta):
        raise ResumeError(f"train: cannot resume: {checkpoint_path} was not written by train "
                          f"(its meta has no config and history)")
    expected = json.loads(json.dumps(dataclasses.asdict(config)))
    saved = {**_setting_defaults(), **meta["config"]}
    if saved != expected:
        changed = sorted(k for k in expected if saved.get(k) != expected[k])
        raise ResumeError(f"train: the checkpoint in {out_dir} comes from a different config "
                          f"(differs in {changed}); resume with the same settings or start afresh")
    log(f"resuming from the checkpoint of epoch {len(meta['history'])} in {checkpoint_path}")
    return _RunState(params, opt_state, model_state,
                     jax.random.wrap_key_data(jnp.asarray(key_data)), meta["history"])


def _setting_defaults() -> dict:
    """`TrainConfig`'s defaults, for checkpoints written before a setting existed."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING}


def epoch_batches(key, n_train: int, steps: int, batch_size: int) -> np.ndarray:
    """One epoch's batches as example indices: the first steps * batch_size entries of a
    permutation of the n_train examples, (steps, batch_size) int32 on the host.

    `train` draws epoch e's batches with ``epoch_batches(jax.random.fold_in(shuffle_key, e),
    ...)``. The permutation is NumPy's (PCG64), seeded with the bits of the `jax.random` key:
    the same key gives the same batches on every machine and backend, so a resumed run draws
    what an uninterrupted one draws. It is drawn on the host because `jax.random.permutation`
    sorts on the device: 28-29 ms per epoch of 60,000 examples on a 2-core CPU (jax 0.10.2), 7%
    of the MLP's epoch, against under 1 ms here.

    Args:
      key: the epoch's `jax.random` key.
      n_train: the number of training examples.
      steps, batch_size: the epoch's shape; steps * batch_size <= n_train.

    Returns:
      int32 array (steps, batch_size).
    """
    if steps * batch_size > n_train:
        raise ValueError(f"epoch_batches: steps * batch_size = {steps} * {batch_size} = {steps * batch_size} "
                         f"exceeds n_train = {n_train}; an epoch draws each example at most once")
    seed = np.asarray(jax.random.key_data(key)).ravel()
    order = np.random.default_rng(seed).permutation(n_train)[:steps * batch_size]
    return order.reshape(steps, batch_size).astype(np.int32)


class _Compiled(NamedTuple):
    batches: Callable
    """epoch key -> (steps, B) example indices on the devices, `epoch_batches`."""
    epoch_part: Callable
    """(carry, data, batches, count) -> (carry, (loss_sum, correct_sum)): `count` steps, one
    (loop) or up to `steps_per_call` (`scan_steps`, `_counted_chunk`)."""
    steps_per_call: int
    evaluate: Callable
    seconds: float
    one_call_in_flight: bool
    """Wait for each call before the next (data parallelism, see `_run_epoch`)."""


def _compile_run(model: Model, optimizer, config: TrainConfig, epoch_mode: str, devices: int,
                 run: _RunState, data: _Data, eval_set: _EvalSet) -> _Compiled:
    """Compiles the epoch's step or scan and the evaluation, ahead of time."""
    steps, batch_size = config.steps_per_epoch, config.batch_size
    def batches(key):
        return replicate(epoch_batches(key, config.n_train, steps, batch_size), devices)
    example_batches = batches(run.shuffle_key)
    carry = replicate((run.params, run.opt_state, run.model_state, jnp.int32(0)), devices)
    batch_step = make_batch_step(model, optimizer, config.grads, config.label_smoothing, devices,
                                 config.compute_dtype)
    steps_per_call = _scan_chunk_length(steps) if epoch_mode == "scan" else 1
    if epoch_mode == "scan" and steps % steps_per_call:
        counted, part_seconds = _compile(model.kind, _counted_chunk(_indexed(batch_step), steps_per_call), carry,
                                         data, example_batches, replicate(np.int32(steps_per_call), devices),
                                         donate=True)

        def epoch_part(carry, data, batches, count):
            return counted(carry, data, batches, replicate(np.int32(count), devices))
    else:
        program = scan_steps(batch_step, steps_per_call) if epoch_mode == "scan" else _indexed(batch_step)
        fixed, part_seconds = _compile(model.kind, program, carry, data, example_batches, donate=True)

        def epoch_part(carry, data, batches, count):
            return fixed(carry, data, batches)
    size = config.eval_batch_size
    evaluate_batch, eval_seconds = _compile(
        model.kind, make_evaluate(model, devices), run.params, run.model_state,
        eval_set.images[:size], eval_set.labels[:size], eval_set.mask[:size])
    return _Compiled(batches, epoch_part, steps_per_call, evaluate_batch,
                     part_seconds + eval_seconds, devices > 1)


def _run_epoch(compiled: _Compiled, carry, data: _Data, batches, batch_size: int, bar):
    """Runs the epoch's steps; returns (carry, mean of the steps' losses, correct count).

    The host reads the metrics (a sync) only about 20 times per epoch, for the progress bar.
    With data parallelism on a CPU every call is waited for: XLA runs each device's share
    on the host's thread pool and meets them in a cross-device reduction, and with several
    calls queued, a pool of two threads can fill with shares waiting for partners that
    cannot start (measured: a 40 s rendezvous timeout kills the process). Waiting costs one
    host round trip per step, under 1% of a CNN step.
    """
    steps = len(batches)
    counts = [min(compiled.steps_per_call, steps - start) for start in range(0, steps, compiled.steps_per_call)]
    refresh = max(1, len(counts) // 20)
    sums, done = [], 0
    for i, count in enumerate(counts):
        carry, part_sums = compiled.epoch_part(carry, data, batches, count)
        if compiled.one_call_in_flight:
            jax.block_until_ready(part_sums)
        sums.append(part_sums)
        done += count
        if (i + 1) % refresh == 0 or i + 1 == len(counts):
            loss_sum, correct_sum = jax.device_get(part_sums)
            bar.update(done * batch_size - bar.n)
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{correct_sum / (count * batch_size):.4f}")
    loss_sums, correct_sums = np.asarray(jax.device_get(sums), np.float64).T
    return carry, float(np.sum(loss_sums)) / steps, int(np.sum(correct_sums))


def _check_first_batch(model: Model, run: _RunState, data: _Data, first_batch,
                       config: TrainConfig, log: Callable) -> dict:
    """`compare_gradient_sources` on the run's first batch, in the run's precision, logged."""
    check = compare_gradient_sources(model, run.params, run.model_state,
                                     model.prepare(data.images[first_batch]),
                                     _targets(data.labels[first_batch], config.label_smoothing),
                                     compute_dtype=config.compute_dtype)
    log(f"gradient check on the first batch ({config.compute_dtype}, autodiff vs manual): "
        f"{'PASSED' if check['passed'] else 'FAILED'}; step time autodiff "
        f"{check['autodiff_ms']:.2f} ms, manual {check['manual_ms']:.2f} ms\n{check['report']}\n"
        f"(the two gradients training can step with; the autodiff loss's layers run their "
        f"hand-derived backwards through jax.custom_vjp, so this checks how they chain: "
        f"`make gradcheck` checks each formula against plain autodiff and finite differences)")
    return check


def train(model: Model, splits: Splits, config: TrainConfig, *, out_dir: str | None = None,
          resume: bool = False, stop_after_epoch: int | None = None, check_grads: bool = False,
          progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Trains `model` on `splits` as `config` says; writes the run's files to `out_dir`.

    Args:
      model: a `Model`.
      splits: the data (`load_splits`).
      config: the run's settings; ``config.n_train`` must equal the training set's size.
      out_dir: folder for ``checkpoint.npz`` (each epoch), ``metrics.jsonl``,
        ``results.json`` and ``curves.png`` (where matplotlib is installed); None writes
        nothing (and cannot resume).
      resume: continue from ``out_dir``'s checkpoint, which must come from the same config.
      stop_after_epoch: stop after this epoch's checkpoint, as if the run were killed
        (returns the partial results, writes no results.json); resume later.
      check_grads: before training, compare autodiff and manual gradients on the first batch
        in the run's precision and time both (`compare_gradient_sources`).
      progress: show a tqdm bar per epoch.
      log: where the per-epoch summary lines go.

    Returns:
      The results dict (also ``results.json``): test accuracy and loss, ``history`` (one
      record per epoch), times (training without compilation and evaluation, summed over the
      epochs, a resumed run's earlier ones included; compilation, this process's), samples/s,
      device, backend, epoch mode, number of devices, config and versions.

    Raises:
      ValueError: a bad setting (naming it); `ResumeError` when resuming is impossible.
    """
    config.validate()
    if config.n_train != len(splits.train_labels):
        raise ValueError(f"train: config.n_train={config.n_train} but the training set has "
                         f"{len(splits.train_labels)} examples")
    epoch_mode = resolve_epoch_mode(config.epoch_mode, model.kind)
    devices = resolve_devices(config.devices, model.kind, config.batch_size, config.eval_batch_size)
    optimizer = make_optimizer(config)
    run = _initial_state(model, optimizer, config, out_dir, resume, log)
    params, opt_state, model_state, shuffle_key = replicate(run[:4], devices)
    run = run._replace(params=params, opt_state=opt_state, model_state=model_state, shuffle_key=shuffle_key)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        _remove_stale_temporary_files(out_dir)
        if run.history:  # the checkpoint is the record: a kill between its write and the metrics' left them behind
            _write_json_lines(os.path.join(out_dir, METRICS_FILE), run.history)

    data = _Data(*replicate((splits.train_images, splits.train_labels), devices))
    eval_set = _eval_set(splits.eval_images, splits.eval_labels, config.eval_batch_size, devices)
    compiled = _compile_run(model, optimizer, config, epoch_mode, devices, run, data, eval_set)
    log(f"compiled in {compiled.seconds:.1f}s ({epoch_mode} epochs, {config.grads} gradients, "
        f"{_device_name()}, {_devices_note(devices)})")
    gradient_check = None
    if check_grads:
        first_batch = compiled.batches(jax.random.fold_in(run.shuffle_key, 0))[0]
        gradient_check = _check_first_batch(model, run, data, first_batch, config, log)

    config_dict = dataclasses.asdict(config)
    params, opt_state, model_state, history = run.params, run.opt_state, run.model_state, run.history
    samples = config.steps_per_epoch * config.batch_size
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        batches = compiled.batches(jax.random.fold_in(run.shuffle_key, epoch - 1))
        with tqdm(total=samples, unit="img", unit_scale=True, leave=False,
                  desc=f"epoch {epoch}/{config.epochs}", disable=not progress) as bar:
            carry, train_loss, train_correct = _run_epoch(
                compiled, replicate((params, opt_state, model_state, jnp.int32(0)), devices), data,
                batches, config.batch_size, bar)
        params, opt_state, model_state, _ = carry
        train_seconds = time.perf_counter() - start

        start = time.perf_counter()
        eval_loss, eval_accuracy = evaluate(compiled.evaluate, params, model_state, eval_set,
                                            config.eval_batch_size)
        eval_seconds = time.perf_counter() - start
        history.append({
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_correct / samples,
            f"{splits.eval_name}_loss": eval_loss,
            f"{splits.eval_name}_accuracy": eval_accuracy,
            "train_time_s": train_seconds,
            "samples_per_s": samples / train_seconds,
            "eval_time_s": eval_seconds,
        })
        log(f"epoch {epoch:3d}/{config.epochs}  train loss {history[-1]['train_loss']:.4f} "
            f"acc {100 * history[-1]['train_accuracy']:.2f}%  {splits.eval_name} loss "
            f"{eval_loss:.4f} acc {100 * eval_accuracy:.2f}%  {train_seconds:.1f}s "
            f"{samples / train_seconds:,.0f} samples/s")
        if out_dir:
            save_checkpoint(os.path.join(out_dir, CHECKPOINT_FILE),
                            (params, opt_state, model_state, jax.random.key_data(run.shuffle_key)),
                            {"epoch": epoch, "history": history, "config": config_dict})
            _write_json_lines(os.path.join(out_dir, METRICS_FILE), history)
        if stop_after_epoch is not None and stop_after_epoch <= epoch < config.epochs:
            log(f"stopped after epoch {epoch} as asked; continue with --resume")
            return {"stopped_after_epoch": epoch, "history": history, "config": config_dict}

    start = time.perf_counter()
    if splits.eval_name == "test":
        test_loss, test_accuracy = history[-1]["test_loss"], history[-1]["test_accuracy"]
    else:
        test_set = _eval_set(splits.test_images, splits.test_labels, config.eval_batch_size, devices)
        test_loss, test_accuracy = evaluate(compiled.evaluate, params, model_state, test_set,
                                            config.eval_batch_size)
    eval_time = time.perf_counter() - start + sum(r.get("eval_time_s", 0.0) for r in history)
    train_time = sum(r["train_time_s"] for r in history)
    results = {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_time_s": train_time,
        "compile_time_s": compiled.seconds,
        "eval_time_s": eval_time,
        "samples_per_s": len(history) * samples / train_time,
        "epochs": len(history),
        "epoch_mode": epoch_mode,
        "devices": devices,
        "device": _device_name(),
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "optax_version": optax.__version__,
        "gradient_check": gradient_check,
        "config": config_dict,
        "history": history,
    }
    if out_dir:
        _write_atomically(os.path.join(out_dir, RESULTS_FILE),
                          lambda f: f.write(json.dumps(results, indent=2).encode()))
        if importlib.util.find_spec("matplotlib") is None:
            log(f"no {CURVES_FILE}: matplotlib is not installed (pip install 'nnjax[viz]')")
        else:
            plot_curves(history, os.path.join(out_dir, CURVES_FILE),
                        f"{config.model.get('model', '')}: test accuracy {100 * test_accuracy:.2f}%")
    return results
