"""Backward pass of the dense layer z = W x + b ("Backpropagation", parameter gradients).

With delta = dL/dz for one example, since z_i = sum_j W_ij x_j + b_i:
    dL/dW_ij = delta_i x_j      ->  dL/dW = delta x^T      (n_out, n_in)
    dL/db_i  = delta_i          ->  dL/db = delta          (n_out,)
    dL/dx_j  = sum_i W_ij delta_i ->  dL/dx = W^T delta    (n_in,)
"""
from __future__ import annotations

import jax.numpy as jnp

from nnjax._checks import check_shape
from nnjax.layers.dense import check_dense_params

__all__ = ["dense_backward"]


def dense_backward(params, x, delta):
    """Gradients of a dense layer for one example: dW = delta x^T, db = delta, dx = W^T delta.

    Args:
      params: {"W": (n_out, n_in), "b": (n_out,)}.
      x: the layer's input, shape (n_in,).
      delta: dL/dz, shape (n_out,).

    Returns:
      ({"W": delta x^T of shape (n_out, n_in), "b": delta of shape (n_out,)},
       W^T delta of shape (n_in,)).
    """
    n_out, n_in = check_dense_params("dense_backward", params)
    W = params["W"]
    x, delta = jnp.asarray(x), jnp.asarray(delta)
    check_shape("dense_backward", "x", x, (n_in,), f" = (n_in,) to match W of shape {W.shape}")
    check_shape("dense_backward", "delta", delta, (n_out,), f" = (n_out,) to match W of shape {W.shape}")
    return {"W": jnp.outer(delta, x), "b": delta}, W.T @ delta
