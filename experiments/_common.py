"""The command line shared by the MNIST experiments: flags, checks, and the run itself."""
from __future__ import annotations

import argparse
import os
import sys

from nnjax import training
from nnjax.data import DataError

__all__ = ["build_parser", "config_from_args", "run", "positive_int", "non_negative_int", "positive_float",
           "non_negative_float", "positive_ints", "device_count"]


def _number(convert, what: str, accept):
    """An argparse `type` that converts with `convert` and refuses values `accept` rejects."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


positive_int = _number(int, "a positive integer", lambda v: v >= 1)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a number > 0", lambda v: v > 0)
non_negative_float = _number(float, "a number >= 0", lambda v: v >= 0)


def device_count(text: str) -> int | str:
    """An argparse `type` for ``--devices``: ``auto`` or a positive int."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None


def positive_ints(what: str, example: str):
    """An argparse `type` for comma-separated positive integers, e.g. widths ``128,64``."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} like {example}, got {text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected one or more positive {what} like {example}, got {text!r}")
        return values
    return parse


def build_parser(name: str, description: str, defaults: dict) -> argparse.ArgumentParser:
    """The experiments' shared flags, with this experiment's `defaults` shown in --help.

    Args:
      name: the experiment's name; its output goes to ``runs/<name>`` by default.
      description: the --help text.
      defaults: defaults for epochs, batch_size, lr, optimizer, schedule, warmup_epochs,
        weight_decay, label_smoothing and (optionally) eval_batch_size.
    """
    parser = argparse.ArgumentParser(
        prog=f"experiments/{name}.py", description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--epochs", type=positive_int, default=defaults["epochs"],
                     help="passes over the training set")
    run.add_argument("--batch-size", type=positive_int, default=defaults["batch_size"],
                     help="examples per optimizer step")
    run.add_argument("--lr", type=positive_float, default=defaults["lr"],
                     help="peak learning rate")
    run.add_argument("--seed", type=non_negative_int, default=0,
                     help="seed of initialization and shuffling; same seed and device, same numbers")
    run.add_argument("--out", default=os.path.join("runs", name),
                     help="folder for checkpoint.npz, metrics.jsonl, results.json, curves.png")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint (same settings)")
    run.add_argument("--grads", choices=training.GRAD_SOURCES, default="autodiff",
                     help="gradients from jax.value_and_grad or from the hand-derived backprop")
    run.add_argument("--gradcheck", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                     help="compare autodiff and manual gradients on the first batch, in the run's "
                          "--compute-dtype, and time both (default: on with --grads manual)")
    run.add_argument("--epoch-mode", choices=training.EPOCH_MODES, default="auto",
                     help="one lax.scan per epoch, a Python loop over the jitted step, or the "
                          "measured default for this model and backend")
    run.add_argument("--compute-dtype", choices=training.COMPUTE_DTYPES, default="float32",
                     help="dtype of each step's matrix products; bfloat16 is mixed precision "
                          "(parameters, optimizer, loss, batch norm and the CNN's first block stay "
                          "float32): faster on GPUs and on CPUs with AMX/AVX512-BF16")
    run.add_argument("--devices", type=device_count, default="auto",
                     help="devices sharing each batch (on a CPU, one per core), or 'auto': the "
                          "measured default for this model and backend")
    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=training.OPTIMIZERS, default=defaults["optimizer"],
                     help="optax optimizer (sgd uses Nesterov momentum 0.9)")
    opt.add_argument("--schedule", choices=training.SCHEDULES, default=defaults["schedule"],
                     help="learning-rate schedule: warm-up then cosine decay, one-cycle, constant")
    opt.add_argument("--warmup-epochs", type=non_negative_float, default=argparse.SUPPRESS,
                     help=f"linear warm-up of the cosine schedule, in epochs (default: "
                          f"{defaults['warmup_epochs']:g}, at most half the epochs)")
    parser.set_defaults(default_warmup_epochs=defaults["warmup_epochs"])
    opt.add_argument("--weight-decay", type=non_negative_float, default=defaults["weight_decay"],
                     help="decoupled weight decay (adamw only)")
    opt.add_argument("--label-smoothing", type=non_negative_float,
                     default=defaults["label_smoothing"],
                     help="train on targets (1 - s) one_hot + s / 10")
    data = parser.add_argument_group("data")
    data.add_argument("--limit-train", type=positive_int, default=None,
                      help="train on the first N training images only (smoke tests)")
    data.add_argument("--val", type=non_negative_int, default=0,
                      help="hold out the last N training images as a validation set scored each "
                           "epoch (the test set is then scored once, at the end)")
    data.add_argument("--eval-batch-size", type=positive_int, default=defaults.get("eval_batch_size", 1000),
                      help="examples per evaluation call")
    output = parser.add_argument_group("output")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    output.add_argument("--compile-cache", default=None, metavar="DIR|off",
                        help="folder keeping compiled programs across runs, so a re-run skips most "
                             f"compilation (default: ${training.COMPILE_CACHE_ENV}, else "
                             "~/.cache/nnjax/xla); off: compile afresh")
    output.add_argument("--stop-after-epoch", type=positive_int, default=None,
                        help="stop after this epoch's checkpoint, as if killed; --resume continues")
    return parser


def config_from_args(args: argparse.Namespace, model: training.Model,
                     n_train: int) -> training.TrainConfig:
    """The run's `TrainConfig` from parsed flags; raises ValueError for a bad combination."""
    config = training.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        grads=args.grads, epoch_mode=args.epoch_mode, optimizer=args.optimizer,
        schedule=args.schedule,
        warmup_epochs=getattr(args, "warmup_epochs", min(args.default_warmup_epochs, args.epochs / 2)),
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        compute_dtype=args.compute_dtype, eval_batch_size=args.eval_batch_size, devices=args.devices, model=model.describe,
        n_train=n_train)
    config.validate()
    return config


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, model: training.Model) -> dict:
    """Loads MNIST, trains `model` as `args` say, prints the test accuracy; returns the results.

    Bad settings, missing data and an unusable checkpoint end the program with a one-line
    error (exit status 2 for flags, 1 otherwise) instead of a traceback.
    """
    training.use_host_cores()
    training.reuse_freed_memory()
    try:
        training.use_compile_cache(args.compile_cache)
    except ValueError as error:
        parser.error(f"--compile-cache: {error}")
    try:
        splits = training.load_splits(args.limit_train, args.val)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as error:
        parser.error(str(error))
    try:
        config = config_from_args(args, model, len(splits.train_labels))
        training.resolve_devices(config.devices, model.kind, config.batch_size, config.eval_batch_size)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    check_grads = getattr(args, "gradcheck", args.grads == "manual")
    try:
        results = training.train(model, splits, config, out_dir=args.out, resume=args.resume,
                                 stop_after_epoch=args.stop_after_epoch, check_grads=check_grads,
                                 progress=not args.no_progress)
    except training.ResumeError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if "test_accuracy" in results:
        print(f"results in {args.out}/: {training.RESULTS_FILE}, {training.METRICS_FILE}, "
              f"{training.CURVES_FILE}, {training.CHECKPOINT_FILE}")
        print(f"training {results['train_time_s']:.1f}s ({results['samples_per_s']:,.0f} samples/s), "
              f"compilation {results['compile_time_s']:.1f}s, evaluation "
              f"{results['eval_time_s']:.1f}s, on {results['device']}")
        print(f"test accuracy: {100 * results['test_accuracy']:.2f}%")
    return results
