"""The training step and the compiled epoch: one optimizer step on a batch of example indices
(`make_batch_step`), the loop epoch's step (`make_train_step`), the scan epoch's chunk of
steps (`scan_steps`), each epoch's batches (`epoch_batches`), and the two gradient sources
the step can take, compared on one batch (`compare_gradient_sources`)."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnjax._checks import check_choice
from nnjax.gradcheck import compare
from nnjax.losses import softmax_cross_entropy
from nnjax.training.config import COMPUTE_DTYPES, GRAD_SOURCES
from nnjax.training import machine
from nnjax.training.models import NUM_CLASSES, Model
from nnjax.training.parallel import _split_batch

__all__ = [
    "GRADCHECK_RTOL", "GRADCHECK_ATOL", "SCAN_UPDATES_PER_EPOCH", "make_batch_step",
    "make_train_step", "scan_steps", "epoch_batches", "TrainingSet", "compare_gradient_sources",
]


SCAN_UPDATES_PER_EPOCH = 10
"""About how many calls a scan epoch is cut into, so that its progress bar moves
(`_scan_chunk_length`)."""

GRADCHECK_RTOL = 1e-3
GRADCHECK_ATOL = 1e-5
"""Tolerances of the float32 first-batch check: |manual - autodiff| <= atol + rtol |autodiff|.
The two sum the batch in different orders; their differences are ~1e-7 of the gradients'
scale, while a wrong derivation is off by the gradient's own size."""


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


class TrainingSet(NamedTuple):
    """The training set on the device(s), as a step reads it: ``images`` uint8 (N, 28, 28)
    and ``labels`` int32 (N,); a step's batch is a vector of row indices into both.
    `nnjax.training.replicate` puts it where a data-parallel step wants it."""
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
    options = machine.compiler_options(model_kind=model.kind)
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
