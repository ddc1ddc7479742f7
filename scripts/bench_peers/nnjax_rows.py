"""The nnjax rows, measured through nnjax's own training code: `nnjax.training.mlp_model` /
`cnn_model` and `make_train_step`, the step `nnjax.training.train` runs, with plain SGD.

As in `train`, the data stays on the device as uint8 (the step gathers and standardizes its
batch) and the step's carry is donated; the batches are taken in the benchmark's fixed order.
Each batch is split across as many devices as `train` would use (`resolve_devices("auto")`:
on a CPU presented as several devices, the CNN's batches are; the MLP's are not), and the
steps are compiled as `train` compiles them (`training.compile_ahead`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench_peers import common
from nnjax import training

GRAD_SOURCES = training.GRAD_SOURCES


def _model(model: str) -> training.Model:
    return training.mlp_model() if model == "mlp" else training.cnn_model()


def _setup(model: str, data: common.EpochData, lr: float, grads: str, make_step, compute_dtype: str,
           seed: int = 0):
    """`make_step` (`training.make_train_step` or `make_batch_step`) with SGD, and its inputs."""
    net = _model(model)
    devices = training.resolve_devices("auto", net.kind, data.batch_size, data.batch_size)
    optimizer = optax.sgd(lr)
    step = make_step(net, optimizer, grads, devices=devices, compute_dtype=compute_dtype)
    params, state = net.init(jax.random.key(seed))
    n = data.steps * data.batch_size
    device_data = training.TrainingSet(*training.replicate((data.pixels.reshape(n, 28, 28), data.labels.reshape(n)), devices))
    batches = training.replicate(np.arange(n, dtype=np.int32).reshape(data.steps, data.batch_size), devices)
    trained = training.replicate((params, optimizer.init(params), state), devices)
    return step, trained, device_data, batches, devices


def _note(devices: int) -> str:
    return "" if devices == 1 else f"batch split across {devices} devices"


def _fresh_carry(trained, devices):
    params, opt_state, state = trained
    return params, opt_state, state, training.replicate(jnp.int32(0), devices)


def loop_trainer(model: str, data: common.EpochData, lr: float, grads: str,
                 compute_dtype: str = "float32") -> common.Trainer:
    """nnjax's jitted train step called once per batch from Python (``epoch_mode="loop"``);
    with several devices each step is waited for, as `train` does."""
    step, trained, device_data, batches, devices = _setup(model, data, lr, grads, training.make_train_step,
                                                          compute_dtype)
    holder = {"trained": trained, "compiled": None}

    def first_step():
        holder["compiled"] = training.compile_ahead(step, _fresh_carry(holder["trained"], devices), device_data,
                                                    batches, donate=True, model_kind=model)
        carry, metrics = holder["compiled"](_fresh_carry(holder["trained"], devices), device_data, batches)
        jax.block_until_ready((carry, metrics))
        holder["trained"] = carry[:3]

    def epoch():
        carry = _fresh_carry(holder["trained"], devices)
        for _ in range(data.steps):
            carry, metrics = holder["compiled"](carry, device_data, batches)
            if devices > 1:
                jax.block_until_ready(metrics)
        jax.block_until_ready(carry)
        holder["trained"] = carry[:3]

    return common.Trainer(f"nnjax {grads} loop", "nnjax", first_step, epoch,
                          common.step_flops(model, data.batch_size),
                          lambda: common.xla_flops(holder["compiled"]), _note(devices))


def scan_trainer(model: str, data: common.EpochData, lr: float, grads: str,
                 compute_dtype: str = "float32") -> common.Trainer:
    """nnjax's train step as the body of one `lax.scan` over the epoch (``epoch_mode="scan"``,
    `training.scan_steps`).

    Its warm-up is the ahead-of-time compile of the epoch (no step is run).
    """
    step, trained, device_data, batches, devices = _setup(model, data, lr, grads, training.make_batch_step,
                                                          compute_dtype)
    run_epoch = training.scan_steps(step, data.steps)
    holder = {"trained": trained, "compiled": None}

    def first_step():
        holder["compiled"] = training.compile_ahead(run_epoch, _fresh_carry(holder["trained"], devices),
                                                    device_data, batches, donate=True, model_kind=model)

    def epoch():
        carry, metrics = holder["compiled"](_fresh_carry(holder["trained"], devices), device_data, batches)
        jax.block_until_ready((carry, metrics))
        holder["trained"] = carry[:3]

    return common.Trainer(f"nnjax {grads} scan", "nnjax", first_step, epoch,
                          common.step_flops(model, data.batch_size), note=_note(devices))


def make_trainers(model: str, data: common.EpochData, lr: float,
                  compute_dtype: str = "float32") -> list[common.Trainer]:
    """nnjax with autodiff and with hand-derived gradients, each as a loop and a scan epoch, in
    `compute_dtype` (`training.make_batch_step`)."""
    return [make(model, data, lr, grads, compute_dtype) for grads in GRAD_SOURCES
            for make in (loop_trainer, scan_trainer)]
