"""Scoring a network on a held-out set: one compiled call per large batch, the set resident on
the device and padded to whole batches."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnjax.losses import softmax_cross_entropy
from nnjax.training.models import Model
from nnjax.training.parallel import _split_batch, replicate
from nnjax.training.steps import _targets

__all__ = ["make_evaluate", "evaluate"]


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
    parallelism (`nnjax.training.run`); the calls are large, so this costs nothing measurable.
    """
    sums = [jax.block_until_ready(evaluate_batch(
                params, state, eval_set.images[i:i + batch_size], eval_set.labels[i:i + batch_size],
                eval_set.mask[i:i + batch_size]))
            for i in range(0, len(eval_set.mask), batch_size)]
    loss, correct = np.sum(jax.device_get(sums), axis=0)
    return float(loss) / eval_set.size, float(correct) / eval_set.size
