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


def make_trainer(model: str, data: common.EpochData, lr: float, compiled: bool,
                 threads: int | None = None, device: str = "cpu") -> common.Trainer:
    """One PyTorch row: eager, or with the model wrapped in `torch.compile` (default mode).

    Args:
        threads: intra-op threads (`torch.set_num_threads`); None keeps PyTorch's default
            (one per core).
        device: "cpu" or "cuda"; on "cuda" the epoch's batches are put on the GPU before
            timing (as the JAX rows' are) and each timed call waits for the GPU to finish.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    net = build(model).train().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    forward = torch.compile(net) if compiled else net
    xs = [torch.from_numpy(x).contiguous().to(device) for x in data.inputs(model)]
    ys = [torch.from_numpy(y).long().to(device) for y in data.labels]
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    def first_step():
        step(xs[0], ys[0])
        synchronize()

    def epoch():
        for x, y in zip(xs, ys):
            step(x, y)
        synchronize()

    name = ("PyTorch compile" if compiled else "PyTorch eager") + (f" {threads} thread" if threads == 1 else "")
    note = f"torch {torch.__version__}, " + (torch.cuda.get_device_name() if device == "cuda"
                                             else f"{torch.get_num_threads()} threads")
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
    args = parser.parse_args(argv)
    with open(args.epoch_file, "rb") as handle:
        import numpy as np

        saved = np.load(handle)
        data = common.EpochData(saved["images"], saved["labels"], saved["pixels"])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"torch_peer: --device cuda but torch {torch.__version__} sees no CUDA device")
    trainer = make_trainer(args.model, data, args.lr, compiled=not args.eager, threads=args.threads,
                           device=args.device)
    first = common.timed(trainer.first_step)
    times = [common.timed(trainer.epoch) for _ in range(args.repeats)]
    json.dump({"name": trainer.name, "first_step_s": first, "epoch_s": times, "note": trainer.note}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
