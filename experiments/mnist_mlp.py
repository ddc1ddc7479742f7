"""Train the chapter's MLP (784-128-64-10, ReLU hidden layers, softmax output) on MNIST.

    python experiments/mnist_mlp.py                  # defaults: >= 98% test accuracy
    python experiments/mnist_mlp.py --grads manual   # train on the hand-derived backprop
    python experiments/mnist_mlp.py --help

The network is `nnjax.network.mlp_logits` exactly as the chapter builds it; only the training
recipe is modern: AdamW with decoupled weight decay, a one-epoch linear warm-up and a cosine
decay of the learning rate to zero, label smoothing 0.05, on standardized pixels.
"""
from __future__ import annotations

from _common import build_parser, positive_ints, run

from nnjax import training
from nnjax.activations import ELEMENTWISE
from nnjax.layers import INITS

DEFAULTS = {
    "epochs": 20, "batch_size": 128, "lr": 2e-3, "optimizer": "adamw", "schedule": "cosine",
    "warmup_epochs": 1.0, "weight_decay": 0.05, "label_smoothing": 0.05,
}


def main(argv=None) -> dict:
    parser = build_parser("mnist_mlp", __doc__.split("\n\n")[0], DEFAULTS)
    network = parser.add_argument_group("network")
    network.add_argument("--hidden", type=positive_ints("widths", "128,64"), default="128,64",
                         help="hidden-layer widths, comma-separated (the chapter: 128,64)")
    network.add_argument("--activation", choices=list(ELEMENTWISE), default="relu",
                         help="hidden-layer activation")
    network.add_argument("--init", choices=INITS, default="he", help="weight initialization")
    args = parser.parse_args(argv)
    model = training.mlp_model((784, *args.hidden, 10), args.activation, args.init)
    return run(parser, args, model)


if __name__ == "__main__":
    main()
