"""nnjax: the neural-networks chapter as a JAX library of pure functions.

Submodules mirror the chapter: activations, losses, layers, backprop, network, jacobians,
gradcheck, tensor, data, training, atomic (and the optional viz). Import what you need, e.g.
``from nnjax import layers, backprop, gradcheck``; ``import nnjax`` then ``nnjax.layers``
works too (each submodule is imported on first use).
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("activations", "losses", "layers", "backprop", "network", "jacobians", "gradcheck", "tensor",
               "data", "training", "atomic", "viz")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
