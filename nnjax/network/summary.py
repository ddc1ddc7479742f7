"""A Keras-style table of a network's layers, parameter shapes and counts ("Network Architecture").

Layer l of an MLP holds W^[l] of shape (n_l, n_(l-1)) and b^[l] of shape (n_l,), so
n_l * n_(l-1) + n_l parameters; a conv layer holds C_out * C_in * kh * kw + C_out, a batch-norm
layer gamma and beta, 2 * C. `summary` prints them layer by layer, like Keras's `model.summary()`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnjax.network.cnn import cnn_forward, cnn_num_blocks

__all__ = ["count_parameters", "SummaryRow", "summary_rows", "summary"]


def count_parameters(params) -> int:
    """The number of scalars in a parameter pytree: the sum of every leaf's size."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


class SummaryRow(NamedTuple):
    """One line of the summary table.

    Attributes:
      layer: the layer's name, e.g. "dense 1" or "conv1".
      weights: the weight-like parameter and its shape, e.g. "W (8, 4)" or "gamma (32,)"; "" if none.
      bias: the bias-like parameter, e.g. "b (8,)" or "beta (32,)"; "" if none.
      parameters: the layer's number of parameters.
      output_shape: the shape of one example's output, or None where it is unknown.
    """
    layer: str
    weights: str
    bias: str
    parameters: int
    output_shape: tuple | None


def _is_mlp(params) -> bool:
    return (isinstance(params, (list, tuple)) and len(params) > 0
            and all(isinstance(p, dict) and set(p) == {"W", "b"} for p in params))


def _param(name: str, value) -> str:
    return f"{name} {tuple(np.shape(value))}"


def _mlp_rows(params, input_shape) -> list[SummaryRow]:
    n_in = int(np.shape(params[0]["W"])[-1])
    if input_shape is not None and tuple(input_shape) != (n_in,):
        raise ValueError(f"summary: input_shape={tuple(input_shape)} does not match the MLP, whose "
                         f"params[0]['W'] of shape {tuple(np.shape(params[0]['W']))} expects ({n_in},)")
    rows = [SummaryRow("input", "", "", 0, (n_in,))]
    for l, layer in enumerate(params, start=1):
        rows.append(SummaryRow(f"dense {l}", _param("W", layer["W"]), _param("b", layer["b"]),
                               count_parameters(layer), (int(np.shape(layer["W"])[0]),)))
    return rows


def _cnn_output_shapes(params, input_shape) -> dict:
    """Shapes of every value `cnn_forward` caches for one example of `input_shape`, computing nothing."""
    state = {name: {stat: jax.ShapeDtypeStruct(np.shape(p["gamma"]), jnp.float32) for stat in ("mean", "var")}
             for name, p in params.items() if name.startswith("bn")}
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    cache = jax.eval_shape(lambda p, s, image: cnn_forward(p, s, image, train=False)[2], params, state, x)
    return {name: tuple(value.shape) for name, value in cache.items()}


def _cnn_rows(params, input_shape) -> list[SummaryRow]:
    blocks = cnn_num_blocks(params)
    shapes = _cnn_output_shapes(params, input_shape) if input_shape is not None else {}
    shapes["flat"] = (int(np.shape(params["dense1"]["W"])[1]),)
    shapes["dense1"] = shapes["hidden"] = (int(np.shape(params["dense1"]["W"])[0]),)
    shapes["logits"] = (int(np.shape(params["dense2"]["W"])[0]),)
    rows = [SummaryRow("input", "", "", 0, tuple(input_shape) if input_shape is not None else None)]
    for i in range(1, blocks + 1):
        conv, bn = params[f"conv{i}"], params[f"bn{i}"]
        rows += [
            SummaryRow(f"conv{i}", _param("W", conv["W"]), _param("b", conv["b"]), count_parameters(conv),
                       shapes.get(f"conv{i}")),
            SummaryRow(f"bn{i}", _param("gamma", bn["gamma"]), _param("beta", bn["beta"]), count_parameters(bn),
                       shapes.get(f"bn{i}")),
            SummaryRow(f"relu{i}", "", "", 0, shapes.get(f"relu{i}")),
            SummaryRow(f"max_pool{i}", "", "", 0, shapes.get(f"pool{i}")),
        ]
    rows += [
        SummaryRow("flatten", "", "", 0, shapes["flat"]),
        SummaryRow("dense1", _param("W", params["dense1"]["W"]), _param("b", params["dense1"]["b"]),
                   count_parameters(params["dense1"]), shapes["dense1"]),
        SummaryRow("relu", "", "", 0, shapes["hidden"]),
        SummaryRow("dense2", _param("W", params["dense2"]["W"]), _param("b", params["dense2"]["b"]),
                   count_parameters(params["dense2"]), shapes["logits"]),
    ]
    return rows


def summary_rows(params, input_shape=None) -> list[SummaryRow]:
    """The rows of `summary`'s table, one per layer (parameter-free layers with 0 parameters).

    Args:
      params: an MLP's list of {"W", "b"} (as `mlp_init` returns) or the CNN's dict
        {"conv1", "bn1", ..., "dense1", "dense2"} (as `cnn_init` returns); arrays, or
        `jax.ShapeDtypeStruct`s such as `jax.eval_shape(cnn_init, key)` gives, since only
        shapes are read.
      input_shape: the shape of one example: (n_0,) for an MLP (checked against W^[1]), or
        (C, H, W) for the CNN, needed there for the conv blocks' output shapes (without it they
        are unknown, None).

    Returns:
      A list of SummaryRow, starting with the input.

    Raises:
      TypeError: params is neither structure.
      ValueError: input_shape does not fit the network.
    """
    if _is_mlp(params):
        return _mlp_rows(params, input_shape)
    if isinstance(params, dict) and "dense1" in params:
        return _cnn_rows(params, input_shape)
    raise TypeError("summary: params must be an MLP's list of {'W', 'b'} dicts (nnjax.network.mlp_init) or "
                    "the CNN's dict {'conv1', 'bn1', ..., 'dense1', 'dense2'} (nnjax.network.cnn_init), "
                    f"got {type(params).__name__}")


def summary(params, input_shape=None, *, print_table: bool = False) -> str:
    """A table of the network's layers like Keras's `model.summary()`: layer, W shape, b shape,
    parameters, output shape, and the total.

    Args:
      params: an MLP's list of {"W", "b"} or the CNN's dict of layers (see `summary_rows`).
      input_shape: one example's shape; optional for an MLP, needed for the CNN's conv output
        shapes (e.g. (1, 28, 28)).
      print_table: also print the table.

    Returns:
      The table as text. For the CNN it ends with the batch-norm running statistics, which
      are state, not parameters.
    """
    rows = summary_rows(params, input_shape)
    header = ("Layer", "Weights", "Bias", "Parameters", "Output shape")
    cells = [header] + [(r.layer, r.weights, r.bias, f"{r.parameters:,}",
                         "?" if r.output_shape is None else str(r.output_shape)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "  ".join(  # noqa: E731
        cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
    width = sum(widths) + 2 * (len(widths) - 1)
    total = count_parameters(params)
    lines = [line(header), "=" * width, *(line(row) for row in cells[1:]), "=" * width,
             f"Total parameters: {total:,}"]
    if isinstance(params, dict):
        running = sum(2 * int(np.size(p["gamma"])) for name, p in params.items() if name.startswith("bn"))
        lines.append(f"Batch-norm running statistics (state, not trained): {running:,} values")
        if input_shape is None:
            lines.append("Pass input_shape=(C, H, W) to see the conv blocks' output shapes.")
    text = "\n".join(lines)
    if print_table:
        print(text)
    return text
