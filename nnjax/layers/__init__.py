"""Layers, one module per chapter section; each layer is a pair `*_init(key, ...)` / `name(params, x)`.

Every layer maps ONE example; batch it with `jax.vmap(layer, in_axes=(None, 0))(params, X)`.
"""
from nnjax.layers.perceptron import *  # noqa: F401,F403  "The Perceptron", "The Neuron Model"
from nnjax.layers.dense import *  # noqa: F401,F403  "Weight Matrix and Bias Vector"
from nnjax.layers.conv import *  # noqa: F401,F403  "Convolutional Layer", "Stride and Padding"
from nnjax.layers.pooling import *  # noqa: F401,F403  "Pooling Layer"
from nnjax.layers.normalization import *  # noqa: F401,F403  "Normalization Techniques"
