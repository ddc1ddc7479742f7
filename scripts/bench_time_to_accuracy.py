"""Seconds of training nnjax needs to reach a test accuracy: 98% for the MLP, 99% for the CNN.

Trains with nnjax's own training code (`nnjax.training`: the model, `make_optimizer`,
`make_train_step`, `make_evaluate`, the epoch mode `auto` picks) and scores the MNIST test
set every --eval-every steps. The clock runs only while training steps run: compilation is
timed apart (once per model: the seeds share the compiled step), and evaluation is not
counted. Each seed reshuffles and reinitializes; the script reports each seed and the mean.
The training set stays on the device (uint8; each step gathers its batch there), and each
epoch's batches are drawn as `train` draws them (`training.epoch_batches`).

On a GPU the settings are `GPU_SETTINGS` over `SETTINGS`: fewer, larger steps, and the CNN in
bfloat16 mixed precision (``--set cnn.compute_dtype=float32`` for float32).

    python scripts/bench_time_to_accuracy.py                     # both models, 3 seeds
    python scripts/bench_time_to_accuracy.py --models cnn --seeds 1
    python scripts/bench_time_to_accuracy.py --data synthetic --steps 2 --seeds 1   # smoke run
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from nnjax import training  # noqa: E402
from nnjax.atomic import write_json  # noqa: E402

SETTINGS = {
    "mlp": {"target": 0.98, "batch_size": 128, "epochs": 8, "optimizer": "adamw", "lr": 3e-3,
            "schedule": "cosine", "warmup_epochs": 0.5, "weight_decay": 1e-4, "label_smoothing": 0.0,
            "compute_dtype": "float32", "eval_every": 100},
    "cnn": {"target": 0.99, "batch_size": 128, "epochs": 2, "optimizer": "adamw", "lr": 3e-3,
            "schedule": "cosine", "warmup_epochs": 0.2, "weight_decay": 1e-4, "label_smoothing": 0.1,
            "compute_dtype": "float32", "eval_every": 25},
}
"""Per model: the accuracy to reach and the training settings on a CPU (the schedule spans
`epochs`; the run stops as soon as the target is reached). The CNN's, chosen on the CPU
(2026-11-26, 3 seeds each): a cosine over 2 epochs with label smoothing 0.1 met 99% after
575-750 steps, 31.0 s, where the earlier 3 epochs without smoothing took 850-925 steps,
43.4 s; with a 0.1-epoch warm-up, 600-725 steps; at lr 4e-3, 725 steps (one seed); batch 256
at lr 5e-3 met it for 1 seed of 3."""
GPU_SETTINGS = {
    "mlp": {"batch_size": 256, "epochs": 10, "eval_every": 20},
    "cnn": {"batch_size": 512, "epochs": 6, "lr": 5e-3, "label_smoothing": 0.1,
            "compute_dtype": "bfloat16", "eval_every": 10},
}
"""Per model: what differs on a GPU, where a step of 512 examples costs little more than one
of 128, so fewer, larger steps reach the target sooner. The CNN's batch, rate and smoothing
were chosen on the CPU (one seed, 2026-11-26): batch 512 with label smoothing 0.1 met 99%
after 420 steps (3.6 epochs); without smoothing, over 4 epochs, it peaked at 98.98%; batch
1024 at lr 8e-3 over 6 epochs peaked at 98.88%, and with smoothing at lr 1e-2 over 8 epochs
met 99% after 280 steps (no sooner on a GPU: a step of 1024 took 1.0 ms). bfloat16, measured
on an H200 (3 seeds each): 99% after 370-470 steps against 330-440 in float32 (the same
accuracy), 0.54-0.57 ms per step against 0.64-0.66, mean 0.23 s against 0.26 s
(docs/benchmarks.md, "GPU"). The MLP's: batch
512 at lr 5e-3 over 10 epochs met 98% for 2 seeds of 3 on the H200, and the same on the CPU
(so did lr 3e-3 over 12 epochs, 1 of 3, and label smoothing 0.1, 2 of 3); batch 256 at lr
3e-3 over 10 epochs met it for all 3 on the CPU (1220-1500 steps) and on an H100 (1240-1480
steps, 0.079-0.097 s of training)."""


def default_settings(backend: str) -> dict:
    """SETTINGS, with GPU_SETTINGS over them on a GPU."""
    extra = GPU_SETTINGS if backend == "gpu" else {}
    return {name: {**values, **extra.get(name, {})} for name, values in SETTINGS.items()}


EVAL_BATCH = 1000
N_TRAIN = 60_000
"""MNIST's training images (the synthetic data has as many)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated, from: mlp, cnn")
    parser.add_argument("--seeds", type=int, default=3, help="runs per model (seeds 0, 1, ...)")
    parser.add_argument("--data", choices=("real", "synthetic"), default="real",
                        help="real MNIST, or random data of its shape for a smoke run (no target is reachable)")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop after this many steps even if the target is not reached (smoke runs)")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default per model)")
    parser.add_argument("--epoch-mode", choices=training.EPOCH_MODES, default="auto",
                        help="nnjax's epoch mode: scan, loop, or auto (the measured default per model)")
    parser.add_argument("--grads", choices=training.GRAD_SOURCES, default="autodiff")
    parser.add_argument("--settings", dest="settings_from", choices=("auto", "cpu"), default="auto",
                        help="auto: the backend's (GPU_SETTINGS over SETTINGS on a GPU); cpu: SETTINGS on any backend")
    parser.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                        help="override a setting of SETTINGS, e.g. --set mlp.lr=3e-3 (repeatable)")
    parser.add_argument("--out", default="time_to_accuracy.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    args.settings = default_settings("cpu" if args.settings_from == "cpu" else jax.default_backend())
    for override in args.set:
        key, _, value = override.partition("=")
        model, _, name = key.partition(".")
        if model not in SETTINGS or name not in SETTINGS[model] or not value:
            parser.error(f"--set {override!r}: expected MODEL.KEY=VALUE with MODEL in {list(SETTINGS)} "
                         f"and KEY in {list(SETTINGS['mlp'])}")
        kind = type(SETTINGS[model][name])
        try:
            args.settings[model][name] = kind(value)
        except ValueError:
            parser.error(f"--set {override!r}: {name} takes a {kind.__name__}, got {value!r}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in SETTINGS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; allowed: mlp, cnn")
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps), ("--eval-every", args.eval_every),
                        *((f"--set {m}.eval_every", args.settings[m]["eval_every"]) for m in args.models)):
        if value is not None and value < 1:
            parser.error(f"{flag}={value}: must be >= 1")
    for model_name in args.models:
        try:
            train_config(model_name, args.settings[model_name], args, N_TRAIN)
        except (ValueError, TypeError) as error:
            parser.error(f"{model_name} settings: {error}")
    return args


def train_config(model_name: str, settings: dict, args, n_train: int):
    """(the `Model`, its checked `TrainConfig`) from a model's `settings` and the flags."""
    model = training.mlp_model() if model_name == "mlp" else training.cnn_model()
    config = training.TrainConfig(
        epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
        grads=args.grads, epoch_mode=args.epoch_mode, optimizer=settings["optimizer"],
        schedule=settings["schedule"], warmup_epochs=settings["warmup_epochs"],
        weight_decay=settings["weight_decay"], label_smoothing=settings["label_smoothing"],
        compute_dtype=settings["compute_dtype"], model=model.describe, n_train=n_train)
    config.validate()
    return model, config


def load_data(kind: str):
    """(train images, train labels, test images, test labels): uint8 images, int32 labels."""
    if kind == "real":
        from nnjax.data import load_mnist

        try:
            train, test = load_mnist("train"), load_mnist("test")
        except Exception as error:  # noqa: BLE001 - the loader's message says how to fix it
            raise SystemExit(f"bench_time_to_accuracy: MNIST cannot be loaded: {error}")
        return train[0], train[1].astype(np.int32), test[0], test[1].astype(np.int32)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(70_000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=70_000).astype(np.int32)
    return images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:], labels[N_TRAIN:]


class TrainingData(NamedTuple):
    """The training set on the device, as nnjax's train step indexes it (uint8 images, labels)."""
    images: jax.Array
    labels: jax.Array


def seed_runner(model_name: str, data, settings: dict, args):
    """Compiles one model's training chunk and evaluation once (the seed changes values, not
    shapes); returns ``(run, compile_s)`` with ``run(seed) -> dict`` one timed training run."""
    train_images, train_labels, test_images, test_labels = data
    model, config = train_config(model_name, settings, args, len(train_labels))
    mode = training.resolve_epoch_mode(config.epoch_mode, model.kind)
    total_steps = config.epochs * config.steps_per_epoch
    if args.steps is not None:
        total_steps = min(total_steps, args.steps)
    eval_every = min(args.eval_every or settings["eval_every"], total_steps)
    devices = training.resolve_devices(config.devices, model.kind, config.batch_size, EVAL_BATCH)
    optimizer = training.make_optimizer(config)
    step_args = (model, optimizer, config.grads, config.label_smoothing, devices, config.compute_dtype)
    device_data = TrainingData(*training.replicate((train_images, train_labels), devices))
    test_x, test_y, mask = training.replicate(
        (test_images, test_labels, np.ones((EVAL_BATCH,), np.float32)), devices)

    def start_state(seed: int):
        """The seed's initial carry and its epochs' batches (example indices), on the devices."""
        init_key, shuffle_key = jax.random.split(jax.random.key(seed))
        params, state = model.init(init_key)
        batches = np.concatenate([
            training.epoch_batches(jax.random.fold_in(shuffle_key, epoch), config.n_train,
                                   config.steps_per_epoch, config.batch_size) for epoch in range(config.epochs)])
        carry = (params, optimizer.init(params), state, np.int32(0))
        return training.replicate((carry, batches), devices)

    carry, batches = start_state(0)
    start = time.perf_counter()
    if mode == "scan":
        step = training.scan_steps(training.make_batch_step(*step_args), eval_every)
    else:
        step = training.make_train_step(*step_args)
    advance = training.compile_ahead(step, carry, device_data, batches, donate=True, model_kind=model.kind)
    evaluate_batch = training.compile_ahead(training.make_evaluate(model, devices), carry[0], carry[2],
                                            test_x[:EVAL_BATCH], test_y[:EVAL_BATCH], mask, model_kind=model.kind)
    compile_s = time.perf_counter() - start

    def test_accuracy(params, state) -> float:
        correct = [jax.block_until_ready(evaluate_batch(
                       params, state, test_x[i:i + EVAL_BATCH], test_y[i:i + EVAL_BATCH], mask))[1]
                   for i in range(0, len(test_labels) - EVAL_BATCH + 1, EVAL_BATCH)]
        return float(np.sum(jax.device_get(correct))) / (len(correct) * EVAL_BATCH)

    def run(seed: int) -> dict:
        carry, batches = start_state(seed)
        jax.block_until_ready((carry, batches))
        train_s, eval_s, done, curve, reached = 0.0, 0.0, 0, [], None
        while done + eval_every <= total_steps:
            start = time.perf_counter()
            if mode == "scan":
                carry, _ = advance(carry, device_data, batches)
            else:
                for _ in range(eval_every):
                    carry, metrics = advance(carry, device_data, batches)
                    if devices > 1:
                        jax.block_until_ready(metrics)
            jax.block_until_ready(carry)
            train_s += time.perf_counter() - start
            done += eval_every
            start = time.perf_counter()
            accuracy = test_accuracy(carry[0], carry[2])
            eval_s += time.perf_counter() - start
            curve.append({"step": done, "train_s": train_s, "test_accuracy": accuracy})
            if accuracy >= settings["target"]:
                reached = {"step": done, "epochs": done / config.steps_per_epoch, "train_s": train_s,
                           "test_accuracy": accuracy}
                break
        return {"seed": seed, "epoch_mode": mode, "devices": devices, "eval_s": eval_s,
                "train_s": train_s, "steps": done, "reached": reached, "curve": curve}
    return run, compile_s


def main(argv=None) -> int:
    training.use_host_cores()
    training.reuse_freed_memory()
    args = parse_args(argv)
    data = load_data(args.data)
    results = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "jax": jax.__version__, "backend": jax.default_backend(), "cores": os.cpu_count(),
                        "data": args.data, "grads": args.grads,
                        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                        "load_average_start": os.getloadavg()},
               "models": {}}
    for model_name in args.models:
        settings = args.settings[model_name]
        runs = []
        run_seed, compile_s = seed_runner(model_name, data, settings, args)
        print(f"{model_name}: compiled in {compile_s:.1f} s; settings {settings}", flush=True)
        for seed in range(args.seeds):
            run = run_seed(seed)
            runs.append(run)
            hit = run["reached"]
            print(f"{model_name} seed {seed}: " + (
                f"{100 * hit['test_accuracy']:.2f}% after {hit['train_s']:.1f} s of training "
                f"({hit['step']} steps, {hit['epochs']:.2f} epochs)" if hit else
                f"target {100 * settings['target']:.0f}% not reached in {run['steps']} steps "
                f"({run['train_s']:.1f} s; last {100 * run['curve'][-1]['test_accuracy']:.2f}%)" if run["curve"] else
                "no evaluation ran") + f"; {run['epoch_mode']} epochs", flush=True)
        times = [r["reached"]["train_s"] for r in runs if r["reached"]]
        summary = {"target": settings["target"], "settings": settings, "runs": runs,
                   "reached": len(times), "mean_train_s": float(np.mean(times)) if len(times) == len(runs) else None,
                   "compile_s": compile_s}
        results["models"][model_name] = summary
        mean = f"{summary['mean_train_s']:.1f} s" if summary["mean_train_s"] is not None else \
            f"not reached by every seed ({len(times)}/{len(runs)})"
        print(f"{model_name}: time to {100 * settings['target']:.0f}% test accuracy, mean over "
              f"{len(runs)} seeds: {mean} (compile {compile_s:.1f} s, excluded)", flush=True)
    results["meta"]["load_average_end"] = os.getloadavg()
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
