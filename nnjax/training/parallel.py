"""Data parallelism: each batch split across devices with `jax.shard_map`, how many devices a
run uses (`resolve_devices`, `DATA_PARALLEL_DEFAULTS`), and the data and carry replicated on
them (`replicate`)."""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_PARALLEL_DEFAULTS", "DEVICE_AXIS", "resolve_devices", "replicate"]


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


def _devices_note(devices: int) -> str:
    """E.g. ``one device`` or ``each batch split across 2 devices``."""
    return "one device" if devices == 1 else f"each batch split across {devices} devices"
