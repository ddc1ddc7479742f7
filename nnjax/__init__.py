"""nnjax: the neural-networks chapter as a JAX library of pure functions.

Submodules mirror the chapter: activations, losses, layers, backprop, network, jacobians,
gradcheck, tensor, data, training (and the optional viz). Import what you need, e.g.
``from nnjax import layers, backprop, gradcheck``.
"""
__version__ = "0.1.0"
