"""PyTorch peer: the benchmark models as `nn.Sequential` (NCHW), `optim.SGD`, eager mode and
`torch.compile`. Run as a module (`python -m bench_peers.torch_peer`), it measures the
compiled rows in a child process so that bench.py can time-box their compile."""
from __future__ import annotations

import argparse
import json
import sys

from bench_peers import common

try:
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - depends on the optional extra
    raise common.PeerUnavailable(f"skipped (not installed: {error.name})") from error


# Steps of the compiled row's warm-up: the first compiles, CUDA graphs record on a later one.
WARMUP_STEPS = 3


def build(model: str) -> nn.Module:
    """The benchmark model as an `nn.Sequential`."""
    torch.manual_seed(0)
    if model == "mlp":
        sizes = common.MLP_SIZES
        layers = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))
    c0, c1, c2 = common.CNN_CHANNELS
    bn = dict(eps=common.BN_EPS, momentum=1 - common.BN_MOMENTUM)
    return nn.Sequential(
        nn.Conv2d(c0, c1, 3), nn.BatchNorm2d(c1, **bn), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3), nn.BatchNorm2d(c2, **bn), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 25, common.CNN_HIDDEN), nn.ReLU(),
        nn.Linear(common.CNN_HIDDEN, common.NUM_CLASSES),
    )


def compile_mode(device: str) -> str | None:
    """`torch.compile`'s mode for `device`: "reduce-overhead" on a GPU (CUDA graphs: the step's
    forward and backward kernels replayed by one launch each, since these small steps are
    launch-bound there), the default mode (None) on a CPU, where CUDA graphs do not apply."""
    return "reduce-overhead" if device == "cuda" else None


def make_trainer(model: str, data: common.EpochData, lr: float, compiled: bool,
                 threads: int | None = None, device: str = "cpu", mode: str | None = None,
                 compute_dtype: str = "float32") -> common.Trainer:
    """One PyTorch row: eager, or with the model and its loss in `torch.compile`.

    Args:
        threads: intra-op threads (`torch.set_num_threads`); None keeps PyTorch's default
            (one per core).
        device: "cpu" or "cuda"; on "cuda" the epoch's batches are put on the GPU before
            timing (as the JAX rows' are) and each timed call waits for the GPU to finish.
        mode: `torch.compile`'s mode when `compiled` (None: its default).
        compute_dtype: "float32", or "bfloat16" for PyTorch's mixed precision (the forward
            and loss under `torch.autocast`, float32 parameters).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    net = build(model).train().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)

    def loss_of(x, y):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16"):
            return nn.functional.cross_entropy(net(x), y)

    loss_fn = torch.compile(loss_of, mode=mode) if compiled else loss_of
    xs = [torch.from_numpy(x).contiguous().to(device) for x in data.inputs(model)]
    ys = [torch.from_numpy(y).long().to(device) for y in data.labels]
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        optimizer.step()

    def first_step():
        for _ in range(WARMUP_STEPS if compiled else 1):
            step(xs[0], ys[0])
        synchronize()

    def epoch():
        for x, y in zip(xs, ys):
            step(x, y)
        synchronize()

    name = ("PyTorch compile" if compiled else "PyTorch eager") + (f" {threads} thread" if threads == 1 else "")
    note = f"torch {torch.__version__}, " + (torch.cuda.get_device_name() if device == "cuda"
                                             else f"{torch.get_num_threads()} threads")
    if compiled:
        note += f", mode {mode or 'default'}"
    return common.Trainer(name, "peer", first_step, epoch, common.step_flops(model, data.batch_size), note=note)


def main(argv=None) -> int:
    """Measures one compiled (or eager) row on an .npz epoch and prints its timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=common.MODELS, required=True)
    parser.add_argument("--epoch-file", required=True, help=".npz with the EpochData fields images, labels, pixels")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eager", action="store_true", help="measure eager mode instead")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model trains")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: the forward and loss under torch.autocast")
    args = parser.parse_args(argv)
    with open(args.epoch_file, "rb") as handle:
        import numpy as np

        saved = np.load(handle)
        data = common.EpochData(saved["images"], saved["labels"], saved["pixels"])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"torch_peer: --device cuda but torch {torch.__version__} sees no CUDA device")
    mode = None if args.eager else compile_mode(args.device)
    trainer = make_trainer(args.model, data, args.lr, compiled=not args.eager, threads=args.threads,
                           device=args.device, mode=mode, compute_dtype=args.compute_dtype)
    try:
        first = common.timed(trainer.first_step)
    except Exception as error:  # noqa: BLE001 - CUDA graphs refused: the default mode still measures
        if mode is None:
            raise
        trainer = make_trainer(args.model, data, args.lr, compiled=True, threads=args.threads, device=args.device,
                               compute_dtype=args.compute_dtype)
        trainer.note += f" (mode {mode} failed: {type(error).__name__}: {str(error)[:120]})"
        first = common.timed(trainer.first_step)
    times = [common.timed(trainer.epoch) for _ in range(args.repeats)]
    json.dump({"name": trainer.name, "first_step_s": first, "epoch_s": times, "note": trainer.note}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
