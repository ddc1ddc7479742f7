"""The dense (fully connected) layer and weight initialization ("Weight Matrix and Bias Vector").

A layer with n_in inputs and n_out outputs holds W in R^(n_out x n_in) (row i: the weights
of output neuron i) and b in R^(n_out), and computes z = W x + b for one example x.

`dense_batch_mixed` computes the same on a batch of rows in mixed precision, with the matrix
products of `mixed_matmul` on operands that `written_transpose` lays out for them.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._checks import (
    check_choice, check_dict, check_float_dtype, check_float_leaves, check_key, check_positive_int, check_rank,
    check_real_array, check_shape,
)

__all__ = ["INITS", "init_variance", "init_weights", "dense_init", "dense"]

INITS = ("he", "xavier", "lecun", "zeros")
"""Names of the weight initializations; see `init_variance`."""


def init_variance(init: str, fan_in: int, fan_out: int, fn: str = "init_variance") -> float:
    """The variance of each initial weight for the scheme `init`.

    - "he": 2 / fan_in (He et al. 2015, for ReLU).
    - "xavier": 2 / (fan_in + fan_out) (Glorot and Bengio 2010).
    - "lecun": 1 / fan_in.
    - "zeros": 0.

    `fn` is the public function to name in error messages.

    Raises:
      ValueError: unknown `init` (listing the allowed ones) or non-positive fans.
    """
    check_choice(fn, "init", init, INITS)
    fan_in = check_positive_int(fn, "fan_in", fan_in)
    fan_out = check_positive_int(fn, "fan_out", fan_out)
    return {"he": 2 / fan_in, "xavier": 2 / (fan_in + fan_out), "lecun": 1 / fan_in, "zeros": 0.0}[init]


def init_weights(key, shape, fan_in: int, fan_out: int, init: str = "he", dtype=None,
                 fn: str = "init_weights"):
    """Draws a weight tensor from N(0, init_variance(init, fan_in, fan_out)).

    Shared by every layer with weights: for a dense layer fan_in = n_in, fan_out = n_out; for
    a convolution with W of shape (C_out, C_in, kh, kw), fan_in = C_in kh kw and
    fan_out = C_out kh kw.

    Args:
      key: a jax.random key.
      shape: the weight tensor's shape.
      fan_in, fan_out: positive ints, as above.
      init: one of "he", "xavier", "lecun", "zeros".
      dtype: floating dtype of the result; None is JAX's default float (float32, or float64
        under `jax.enable_x64(True)`).
      fn: the public function to name in error messages (e.g. "conv2d_init").

    Returns:
      An array of `shape` and `dtype`.

    Raises:
      TypeError: `key` is not a JAX random key, or `dtype` not a floating dtype.
      ValueError: as `init_variance`.
    """
    variance = init_variance(init, fan_in, fan_out, fn)
    check_key(fn, key)
    dtype = jnp.result_type(float) if dtype is None else check_float_dtype(fn, "dtype", dtype)
    if init == "zeros":
        return jnp.zeros(shape, dtype)
    return math.sqrt(variance) * jax.random.normal(key, shape, dtype)


def dense_init(key, n_in: int, n_out: int, init: str = "he", dtype=None):
    """Parameters of a dense layer: W ~ N(0, variance) of shape (n_out, n_in), b = 0.

    `init` picks the variance: "he" 2 / n_in, "xavier" 2 / (n_in + n_out), "lecun" 1 / n_in,
    "zeros" 0. The chapter's NeuralNetwork code is commented "# Xavier initialization" but
    draws `np.random.randn(n_out, n_in) * np.sqrt(2.0 / n_in)`, which is He's scheme; the
    default here, "he", is what that code does.

    Args:
      key: a jax.random key.
      n_in: number of inputs (positive int).
      n_out: number of outputs (positive int).
      init: one of "he", "xavier", "lecun", "zeros".
      dtype: floating dtype of W and b; None (the default) is JAX's default float: float32,
        or float64 under `jax.enable_x64(True)`.

    Returns:
      {"W": (n_out, n_in), "b": (n_out,)}.
    """
    n_in = check_positive_int("dense_init", "n_in", n_in)
    n_out = check_positive_int("dense_init", "n_out", n_out)
    W = init_weights(key, (n_out, n_in), n_in, n_out, init, dtype, "dense_init")
    return {"W": W, "b": jnp.zeros((n_out,), W.dtype)}


def check_dense_params(fn: str, params, name: str = "params") -> tuple[int, int]:
    """Checks that `params` is {"W": (n_out, n_in), "b": (n_out,)}; returns (n_out, n_in).

    Raises:
      TypeError: `params` is not a dict with exactly the keys "W" and "b", or holds
        non-floating arrays.
      AssertionError: (chex) W is not a matrix or b does not match W's rows.
    """
    check_dict(fn, name, params, ("W", "b"), "dense_init")
    check_float_leaves(fn, name, params)
    W, b = params["W"], params["b"]
    check_rank(fn, f"{name}['W']", W, 2, "(n_out, n_in)")
    shape = np.shape(W)
    check_shape(fn, f"{name}['b']", b, (shape[0],), f" = (n_out,) to match W of shape {shape}")
    return shape


def check_dense_stack(fn: str, params) -> list[int]:
    """Checks a network's params, a list of dense layers whose sizes chain; returns the sizes.

    Layer l (counting from 0) must be {"W": (n_(l+1), n_l), "b": (n_(l+1),)}, so that
    z^[l+1] = W^[l+1] a^[l] + b^[l+1] takes the previous layer's output.

    Returns:
      sizes [n_0, n_1, ..., n_L].

    Raises:
      TypeError: `params` is not a non-empty list (or tuple) of {"W", "b"} dicts.
      AssertionError: (chex) a W or b of the wrong rank or size.
    """
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(f"{fn}: params must be a non-empty list of {{'W', 'b'}} dicts, one per layer "
                        f"(as mlp_init returns), got {type(params).__name__} {params!r:.60}")
    n_out, n_in = check_dense_params(fn, params[0], "params[0]")
    sizes = [n_in, n_out]
    for l, layer in enumerate(params[1:], start=1):
        check_dense_params(fn, layer, f"params[{l}]")
        W = layer["W"]
        check_shape(fn, f"params[{l}]['W']", W, (None, sizes[-1]),
                    f" to take the {sizes[-1]} outputs of params[{l - 1}]")
        sizes.append(np.shape(W)[0])
    return sizes


def dense(params, x):
    """One dense layer on one example: z = W x + b.

    Args:
      params: {"W": (n_out, n_in), "b": (n_out,)}.
      x: one input, shape (n_in,).

    Returns:
      z, shape (n_out,).
    """
    check_dense_params("dense", params)
    W, b, x = jnp.asarray(params["W"]), jnp.asarray(params["b"]), check_real_array("dense", "x", x)
    check_shape("dense", "x", x, (W.shape[1],), f" = (n_in,) to match W of shape {W.shape}")
    return W @ x + b


def written_transpose(M):
    """M^T, shape (c, r) for M of shape (r, c), written out as its own row-major array.

    A plain ``M.T`` that feeds a matrix product becomes part of the product (a transposed
    operand), and XLA's CPU backend runs a bfloat16 product with a transposed operand as a
    float32 one on slower kernels (its bfloat16 kernels, YNNPACK's, take row-major operands
    only). The same transpose taken through a unit axis, (r, c) -> (r, c, 1) -> (c, 1, r) ->
    (c, r), is written out instead (jax 0.10.2); elsewhere it is an ordinary transpose.
    """
    r, c = M.shape
    return M.reshape(r, c, 1).transpose(1, 2, 0).reshape(c, r)


def mixed_matmul(a, b, compute_dtype, accumulate):
    """a @ b on `compute_dtype` operands, summed and returned in the dtype `accumulate`.

    With bfloat16 operands and float32 sums, XLA's CPU backend runs the product on AMX or
    AVX512-BF16 instructions where the CPU has them, if both operands are row-major arrays
    (see `written_transpose`).
    """
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=accumulate)


def dense_batch_mixed(params, A, compute_dtype):
    """The dense layer on a batch of rows in mixed precision: Z = A W^T + b.

    The product takes `compute_dtype` operands (A, and W^T written out) and sums in W's dtype;
    b is added in W's dtype. Shapes are not checked here (the public callers do).

    Args:
      params: {"W": (n_out, n_in), "b": (n_out,)}.
      A: inputs, shape (m, n_in).
      compute_dtype: the operands' dtype, e.g. jnp.bfloat16.

    Returns:
      Z, shape (m, n_out), in W's dtype.
    """
    W = params["W"]
    return mixed_matmul(A, written_transpose(W), compute_dtype, W.dtype) + params["b"]
