"""`train`: a whole run, from a fresh start or a checkpoint, epoch by epoch, to its results."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from nnjax.atomic import write_json
from nnjax.training.config import TrainConfig, _setting_defaults, make_optimizer, resolve_epoch_mode
from nnjax.training.evaluation import _EvalSet, _eval_set, evaluate, make_evaluate
from nnjax.training.files import (CHECKPOINT_FILE, CURVES_FILE, METRICS_FILE, RESULTS_FILE,
                                  _remove_stale_temporary_files, _write_json_lines,
                                  load_checkpoint, plot_curves, save_checkpoint)
from nnjax.training.machine import _device_name, compile_ahead
from nnjax.training.models import Model, Splits
from nnjax.training.parallel import _devices_note, replicate, resolve_devices
from nnjax.training.steps import (TrainingSet, _counted_chunk, _indexed, _scan_chunk_length, _targets,
                                  compare_gradient_sources, epoch_batches, make_batch_step, scan_steps)

__all__ = ["ResumeError", "train"]


class ResumeError(ValueError):
    """A run cannot resume: no checkpoint, or one from different settings or a different model."""


def _compile(model_kind: str, fn: Callable, *args, donate: bool = False):
    """`compile_ahead`, timed; returns (compiled, seconds)."""
    start = time.perf_counter()
    compiled = compile_ahead(fn, *args, donate=donate, model_kind=model_kind)
    return compiled, time.perf_counter() - start


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
                 run: _RunState, data: TrainingSet, eval_set: _EvalSet) -> _Compiled:
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


def _run_epoch(compiled: _Compiled, carry, data: TrainingSet, batches, batch_size: int, bar):
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


def _check_first_batch(model: Model, run: _RunState, data: TrainingSet, first_batch,
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

    data = TrainingSet(*replicate((splits.train_images, splits.train_labels), devices))
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
        write_json(os.path.join(out_dir, RESULTS_FILE), results)
        if importlib.util.find_spec("matplotlib") is None:
            log(f"no {CURVES_FILE}: matplotlib is not installed (pip install 'nnjax[viz]')")
        else:
            plot_curves(history, os.path.join(out_dir, CURVES_FILE),
                        f"{config.model.get('model', '')}: test accuracy {100 * test_accuracy:.2f}%")
    return results
