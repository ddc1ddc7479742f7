"""A run's settings: `TrainConfig` (everything that determines its numbers), the optimizer and
schedule it names, and how an epoch runs (`EPOCH_MODE_DEFAULTS`)."""

from __future__ import annotations

import dataclasses
import math

import jax
import optax

from nnjax._checks import check_choice, check_number, check_positive_int

__all__ = [
    "GRAD_SOURCES", "EPOCH_MODES", "OPTIMIZERS", "SCHEDULES", "COMPUTE_DTYPES",
    "EPOCH_MODE_DEFAULTS", "TrainConfig", "make_optimizer", "resolve_epoch_mode",
]


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
        for name in ("epochs", "batch_size", "eval_batch_size", "n_train", "lr", "warmup_epochs",
                     "weight_decay", "label_smoothing"):
            if not isinstance(getattr(self, name), (int, float)):
                raise TypeError(f"TrainConfig: {name}={getattr(self, name)!r} must be a Python int or float "
                                f"(the run's config is saved as JSON beside its checkpoint)")
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


def _setting_defaults() -> dict:
    """`TrainConfig`'s defaults, for checkpoints written before a setting existed."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING}
