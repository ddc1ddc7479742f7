"""Train the CNN (conv-BN-ReLU-pool twice, then dense-ReLU-dense) on MNIST.

    python experiments/mnist_cnn.py                  # defaults: >= 99.3% test accuracy
    python experiments/mnist_cnn.py --grads manual   # train on the hand-derived backprop
    python experiments/mnist_cnn.py --val 5000       # score a held-out validation set per epoch
    python experiments/mnist_cnn.py --help

The network is `nnjax.network.cnn_apply`: two blocks of a valid 3x3 convolution, batch norm
(batch statistics in training, running statistics at test time), ReLU and 2x2 max pooling,
then a dense layer of 128 ReLU units and the 10 logits. No data augmentation. Training:
AdamW with a short linear warm-up and a cosine decay to zero, label smoothing 0.1.
"""
from __future__ import annotations

from _common import build_parser, positive_ints, run

from nnjax import training

DEFAULTS = {
    "epochs": 10, "batch_size": 64, "lr": 2e-3, "optimizer": "adamw", "schedule": "cosine",
    "warmup_epochs": 0.5, "weight_decay": 0.01, "label_smoothing": 0.1, "eval_batch_size": 200,
}


def main(argv=None) -> dict:
    parser = build_parser("mnist_cnn", __doc__.split("\n\n")[0], DEFAULTS)
    network = parser.add_argument_group("network")
    network.add_argument("--channels", type=positive_ints("channel counts", "32,64"), default=(32, 64),
                         help="output channels of each conv block, comma-separated")
    network.add_argument("--hidden", type=int, default=128, help="units of the hidden dense layer")
    args = parser.parse_args(argv)
    if args.hidden < 1:
        parser.error(f"--hidden must be a positive integer, got {args.hidden}")
    return run(parser, args, training.cnn_model(args.channels, args.hidden))


if __name__ == "__main__":
    main()
