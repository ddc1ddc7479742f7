"""Running a pure JAX train step two ways: jitted and called from a Python loop, or a whole
epoch in one `lax.scan`. Used by the nnjax rows and the hand-written raw-JAX rows alike."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from bench_peers.common import EpochData, Trainer, step_flops, xla_flops

Step = Callable[[Any, jax.Array, jax.Array], Any]


def in_compute_dtype(tree, compute_dtype: str):
    """`tree`'s floating-point arrays as `compute_dtype`: the hand-written mixed precision of the
    raw-JAX and Equinox rows, which compute on a low-precision copy of the params and inputs
    (float32 returns `tree` itself)."""
    if compute_dtype == "float32":
        return tree
    return jax.tree.map(lambda a: a.astype(compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _block(tree) -> None:
    jax.block_until_ready(tree)


def loop_trainer(name: str, family: str, step: Step, carry, data: EpochData, model: str,
                 targets: str = "one_hot", note: str = "") -> Trainer:
    """A trainer calling `jax.jit(step)` once per batch from Python.

    Args:
        step: pure `(carry, x, y) -> carry` for one batch; `carry` holds params (and state).
        carry: the initial carry.
        targets: "one_hot" (float (B, 10)) or "labels" (int (B,)) for `y`.
    """
    jitted = jax.jit(step, donate_argnums=0)
    inputs = data.inputs(model)
    labels = data.one_hot() if targets == "one_hot" else data.labels
    xs = [jax.device_put(x) for x in inputs]
    ys = [jax.device_put(y) for y in labels]
    holder = {"carry": carry}

    def first_step():
        holder["carry"] = jitted(holder["carry"], xs[0], ys[0])
        _block(holder["carry"])

    def epoch():
        current = holder["carry"]
        for x, y in zip(xs, ys):
            current = jitted(current, x, y)
        _block(current)
        holder["carry"] = current

    def cost_analysis():
        return xla_flops(jitted.lower(holder["carry"], xs[0], ys[0]).compile())

    return Trainer(name, family, first_step, epoch, step_flops(model, data.batch_size),
                   cost_analysis, note)


def scan_trainer(name: str, family: str, step: Step, carry, data: EpochData, model: str,
                 targets: str = "one_hot", note: str = "") -> Trainer:
    """A trainer running the whole epoch as one jitted `lax.scan` over the batches.

    Its warm-up is the ahead-of-time compile of the epoch (no step is run).
    """

    def run_epoch(carry, xs, ys):
        def body(c, batch):
            return step(c, *batch), None

        return jax.lax.scan(body, carry, (xs, ys))[0]

    jitted = jax.jit(run_epoch, donate_argnums=0)
    labels = data.one_hot() if targets == "one_hot" else data.labels
    xs = jax.device_put(data.inputs(model))
    ys = jax.device_put(labels)
    holder = {"carry": carry, "compiled": None}

    def first_step():
        holder["compiled"] = jitted.lower(holder["carry"], xs, ys).compile()

    def epoch():
        holder["carry"] = holder["compiled"](holder["carry"], xs, ys)
        _block(holder["carry"])

    return Trainer(name, family, first_step, epoch, step_flops(model, data.batch_size), note=note)
