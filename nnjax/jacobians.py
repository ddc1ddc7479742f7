"""The chain rule as a product of matrices ("The Chain Rule for Matrices", "Chain Rule Matrices").

For z = f(a) with z in R^n and a in R^m, the Jacobian dz/da is the n x m matrix of
d z_i / d a_j. For one example through an MLP every step has a simple Jacobian:
    z^[l] = W^[l] a^[l-1] + b^[l]   ->  dz^[l]/da^[l-1] = W^[l]
    a^[l] = sigma(z^[l])            ->  da^[l]/dz^[l]   = diag(sigma'(z^[l]))
    a^[L] = softmax(z^[L])          ->  da^[L]/dz^[L]   = diag(s) - s s^T
and the Jacobian of the whole network is their product, last layer first:
    d z^[L] / d x = W^[L] diag(sigma'(z^[L-1])) W^[L-1] ... diag(sigma'(z^[1])) W^[1].
Backpropagation multiplies the same chain from the left by a row vector instead of forming it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from nnjax._checks import check_choice, check_rank, check_shape
from nnjax.activations import activation_name, get_activation, relu, softmax, softmax_jacobian
from nnjax.layers.dense import check_dense_params, check_dense_stack
from nnjax.network.mlp import mlp_activations, mlp_forward, mlp_logits

__all__ = ["dense_jacobian", "activation_jacobian", "softmax_jacobian", "layer_jacobians",
           "mlp_jacobian", "chain_rule_check", "ChainRuleCheck", "OUTPUTS"]

OUTPUTS = ("logits", "probs")
"""What `mlp_jacobian` differentiates: the logits z^[L] or the probabilities softmax(z^[L])."""


def dense_jacobian(params):
    """dz/da of z = W a + b: the weight matrix W itself, shape (n_out, n_in).

    Args:
      params: {"W": (n_out, n_in), "b": (n_out,)}.

    Returns:
      W, shape (n_out, n_in).
    """
    check_dense_params("dense_jacobian", params)
    return params["W"]


def activation_jacobian(name, z):
    """da/dz of the elementwise a = sigma(z): the diagonal matrix diag(sigma'(z)).

    Args:
      name: "relu", "leaky_relu", "sigmoid", "tanh", "softplus", or the function itself.
      z: pre-activation of one example, shape (n,).

    Returns:
      diag(sigma'(z)), shape (n, n).
    """
    if name == "softmax" or name is softmax:
        raise ValueError("activation_jacobian: softmax is not elementwise (each output depends on every "
                         "z_j), so its Jacobian is not diagonal: use nnjax.activations.softmax_jacobian(z)")
    _, sigma_prime = get_activation(name, "activation_jacobian")
    z = jnp.asarray(z)
    check_rank("activation_jacobian", "z", z, 1, "(n,) pre-activation of one example")
    return jnp.diag(sigma_prime(z))


def _factors(fn: str, params, x, activation, output: str) -> list:
    """The chain's factors in forward order; `fn` names the public caller in error messages."""
    name = activation_name(activation, fn)
    check_choice(fn, "output", output, OUTPUTS)
    sizes = check_dense_stack(fn, params)
    x = jnp.asarray(x)
    check_shape(fn, "x", x, (sizes[0],), f" = (n_0,) to match params[0]['W'] of shape {params[0]['W'].shape}")
    zs, _ = mlp_activations(params, x, name)
    factors = []
    for l, layer in enumerate(params):
        factors.append(dense_jacobian(layer))
        if l < len(params) - 1:
            factors.append(activation_jacobian(name, zs[l]))
    if output == "probs":
        factors.append(softmax_jacobian(zs[-1]))
    return factors


def _product(factors):
    """J_k ... J_2 J_1 for factors [J_1, ..., J_k]."""
    J = factors[0]
    for factor in factors[1:]:
        J = factor @ J
    return J


def layer_jacobians(params, x, activation: Callable | str = relu, output: str = "logits") -> list:
    """The factors of the chain rule for one example, in forward order.

    [W^[1], diag(sigma'(z^[1])), W^[2], ..., W^[L]] and, for output="probs", the softmax
    Jacobian diag(s) - s s^T at z^[L] last.

    Args:
      params: list of L dense layers, as `nnjax.network.mlp_init` returns.
      x: one input, shape (n_0,).
      activation: sigma of the hidden layers (one of nnjax.activations' elementwise functions
        or its name).
      output: "logits" or "probs".

    Returns:
      A list of matrices; their product, last first, is d(output)/dx.
    """
    return _factors("layer_jacobians", params, x, activation, output)


def mlp_jacobian(params, x, activation: Callable | str = relu, output: str = "logits"):
    """d(output)/dx of an MLP for one example, as the product of its layer Jacobians.

    J = J_L ... J_1 with J_l = diag(sigma'(z^[l])) W^[l] for hidden layers, J_L = W^[L] for
    the logits, or (diag(s) - s s^T) W^[L] for output="probs".

    Args:
      params, x, activation, output: as for `layer_jacobians`.

    Returns:
      The Jacobian, shape (n_L, n_0).
    """
    return _product(_factors("mlp_jacobian", params, x, activation, output))


class ChainRuleCheck(NamedTuple):
    """The chain-rule product beside autodiff's Jacobian of the same network."""
    product: jax.Array
    """J_L ... J_1 from `mlp_jacobian`, shape (n_L, n_0)."""
    autodiff: jax.Array
    """jax.jacfwd of the whole network at x, shape (n_L, n_0)."""
    max_abs_diff: jax.Array
    """max |product - autodiff|, a scalar."""


def chain_rule_check(params, x, activation: Callable | str = relu, output: str = "logits") -> ChainRuleCheck:
    """Shows that the product of the layer Jacobians is the network's Jacobian.

    Compares `mlp_jacobian` with jax.jacfwd of `mlp_logits` (or `mlp_forward` for
    output="probs") at x.

    Args:
      params, x, activation, output: as for `layer_jacobians`.

    Returns:
      ChainRuleCheck(product, autodiff, max_abs_diff).
    """
    product = _product(_factors("chain_rule_check", params, x, activation, output))
    network = mlp_forward if output == "probs" else mlp_logits
    autodiff = jax.jacfwd(lambda a: network(params, a, activation))(jnp.asarray(x))
    return ChainRuleCheck(product, autodiff, jnp.max(jnp.abs(product - autodiff)))
