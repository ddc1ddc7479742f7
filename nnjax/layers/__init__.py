"""Layers, one module per chapter section; each layer is a pair `*_init(key, ...)` / `name(params, x)`.

Every layer maps ONE example; batch it with `jax.vmap(layer, in_axes=(None, 0))(params, X)`.
`conv2d_batch` is the convolution written for a whole batch (chunked im2col products), for
training steps that hold one; it equals the vmapped `conv2d`. `conv2d_batch_norm` is a
convolution then batch norm on a batch, its statistics from the patches' Gram matrix.
"""
from nnjax.layers.perceptron import *  # noqa: F401,F403  "The Perceptron", "The Neuron Model"
from nnjax.layers.dense import *  # noqa: F401,F403  "Weight Matrix and Bias Vector"
from nnjax.layers.conv import *  # noqa: F401,F403  "Convolutional Layer", "Stride and Padding"
from nnjax.layers.pooling import *  # noqa: F401,F403  "Pooling Layer"
from nnjax.layers.normalization import *  # noqa: F401,F403  "Normalization Techniques"
from nnjax.layers.conv_norm import *  # noqa: F401,F403  a convolution then batch norm, as one product
import importlib

_PARTS = ("perceptron", "dense", "conv", "pooling", "normalization", "conv_norm")
__all__ = [name for part in _PARTS for name in importlib.import_module(f"{__name__}.{part}").__all__]
