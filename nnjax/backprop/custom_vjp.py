"""Layers whose autodiff gradient IS the hand-derived backward, through `jax.custom_vjp`.

`conv2d_fast`, `max_pool2d_fast` and `avg_pool2d_fast` take the same arguments and compute the
same values as `nnjax.layers.conv2d`, `max_pool2d` and `avg_pool2d`, one example at a time;
under `jax.grad` (and `jax.vjp`, through `jax.vmap` and `jax.jit`) JAX runs
`nnjax.backprop.conv2d_backward`, `max_pool2d_backward` and `avg_pool2d_backward` instead of
differentiating the forward's primitives. Autodiff users get the chapter's delta formulas, and
the speed of whichever formulation was measured faster.

Measured on a 2-core CPU (jax 0.10.2; see the speed notes of each function): the max-pool
backward is the large win (autodiff scatters through the window selections; the hand-derived
mask runs channels-last and vectorizes). The convolution's hand-derived backward wins for
layers with few input channels and loses for wide ones at small batches, because under
`jax.vmap` a custom backward runs per example: its weight gradient is a batched product then a
sum over the batch, where autodiff of the vmapped forward contracts the batch inside one
convolution. Pick per layer; the functions are drop-in replacements.

Only reverse mode is defined: `jax.jvp`/`jax.jacfwd` through these functions raise.
"""
from __future__ import annotations

from functools import partial

import jax

from nnjax.backprop.conv import conv2d_backward
from nnjax.backprop.pooling import avg_pool2d_backward, max_pool2d_backward
from nnjax.layers.conv import check_conv_args, conv2d
from nnjax.layers.pooling import avg_pool2d, check_pool_args, max_pool2d

__all__ = ["conv2d_fast", "max_pool2d_fast", "avg_pool2d_fast"]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv2d(stride, pads, params, x):
    return conv2d(params, x, stride, pads)


def _conv2d_forward(stride, pads, params, x):
    return conv2d(params, x, stride, pads), (params, x)


def _conv2d_backward(stride, pads, residuals, delta):
    params, x = residuals
    return conv2d_backward(params, x, delta, stride, pads)


_conv2d.defvjp(_conv2d_forward, _conv2d_backward)


def conv2d_fast(params, x, stride=1, padding="valid"):
    """`nnjax.layers.conv2d` whose gradient is `conv2d_backward` (hand-derived).

    Same arguments, checks and result as `conv2d`; the difference is only under `jax.grad`.

    Speed (CPU, one conv layer forward + gradient of a vmapped batch, against autodiff of
    `conv2d`): faster for C_in = 1, 8, 16 (e.g. 6 vs 20 ms for 1->32 channels on 28x28 at
    batch 128) and for 32->64 channels on 13x13 at batch 1024 (0.70 vs 0.83 s), slower for
    32->64 at batch 128 (69 vs 48 ms).
    """
    W, b, x, stride, pads = check_conv_args("conv2d_fast", params, x, stride, padding)
    return _conv2d(stride, pads, {"W": W, "b": b}, x)


def _pool_vjp(forward, backward):
    """A pooling layer `forward(x, window, stride)` with `backward(x, delta, window, stride)` as its VJP."""

    @partial(jax.custom_vjp, nondiff_argnums=(0, 1))
    def pool(window, stride, x):
        return forward(x, window, stride)

    def pool_forward(window, stride, x):
        return forward(x, window, stride), x

    def pool_backward(window, stride, x, delta):
        return (backward(x, delta, window, stride),)

    pool.defvjp(pool_forward, pool_backward)
    return pool


_max_pool2d = _pool_vjp(max_pool2d, max_pool2d_backward)
_avg_pool2d = _pool_vjp(avg_pool2d, avg_pool2d_backward)


def max_pool2d_fast(x, window=2, stride=None):
    """`nnjax.layers.max_pool2d` whose gradient is `max_pool2d_backward` (hand-derived).

    Same arguments, checks and result; under `jax.grad` each window's delta goes to its first
    maximum (autodiff of `max_pool2d` splits ties instead; both sum to delta).
    """
    x, window, stride = check_pool_args("max_pool2d_fast", x, window, stride)
    return _max_pool2d(window, stride, x)


def avg_pool2d_fast(x, window=2, stride=None):
    """`nnjax.layers.avg_pool2d` whose gradient is `avg_pool2d_backward` (hand-derived)."""
    x, window, stride = check_pool_args("avg_pool2d_fast", x, window, stride)
    return _avg_pool2d(window, stride, x)
