"""Hand-derived backward passes (the chapter's delta formulas); no jax.grad or jax.vjp inside.

Each `*_backward` takes the upstream gradient delta = dL/d(output) of ONE example and returns
`(param_grads, dx)`, or `dx` alone for layers without parameters. The batch-level forms, for
speed, take a whole batch: `dense_batch_backward`, `batch_norm_batch_backward`, `conv2d_weight_grad`,
`conv2d_param_grads`, `conv2d_input_grad`, `conv2d_batch_norm_backward` (parameter gradients
summed over the batch).
"""
from nnjax.backprop.activation import *  # noqa: F401,F403
from nnjax.backprop.dense import *  # noqa: F401,F403
from nnjax.backprop.mlp import *  # noqa: F401,F403
from nnjax.backprop.conv import *  # noqa: F401,F403
from nnjax.backprop.pooling import *  # noqa: F401,F403
from nnjax.backprop.normalization import *  # noqa: F401,F403
from nnjax.backprop.conv_norm import *  # noqa: F401,F403
from nnjax.backprop.custom_vjp import *  # noqa: F401,F403
from nnjax.backprop.cnn import *  # noqa: F401,F403
import importlib

_PARTS = ("activation", "dense", "mlp", "conv", "pooling", "normalization", "conv_norm", "custom_vjp", "cnn")
__all__ = [name for part in _PARTS for name in importlib.import_module(f"{__name__}.{part}").__all__]
