"""Forward and backward passes of an MLP step by step ("Forward Propagation", "Backpropagation").

`trace_forward` keeps every z^[l] and a^[l] of one example; `trace_backward` adds every
delta^[l] = dL/dz^[l] and the weight gradients. Both print as the chapter's equations with
the numbers filled in, e.g. ``z^[1] = W^[1] a^[0] + b^[1] = ...`` and ``a^[1] = relu(z^[1]) = ...``,
which is what the chapter's step-by-step diagrams show. They are built on
`nnjax.network.mlp_activations` and `nnjax.backprop.mlp_backward`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnjax import losses
from nnjax._checks import check_choice
from nnjax.activations import ELEMENTWISE, relu, sigmoid, softmax
from nnjax.backprop.mlp import mlp_backward
from nnjax.network.mlp import mlp_activations

__all__ = ["OUTPUTS", "LayerTrace", "ForwardTrace", "LayerGradient", "BackwardTrace",
           "trace_forward", "trace_backward", "format_array"]

OUTPUTS: dict[str, Callable] = {"softmax": softmax, "linear": lambda z: z, "sigmoid": sigmoid}
"""The output layer's function a^[L] = f(z^[L]), by name."""

_LOSS_OUTPUT = {
    # loss -> (output function, delta^[L] = dL/dz^[L], the chapter's grad_a L * f'(z^[L])
    # worked out for the pair, the loss function)
    "softmax_cross_entropy": ("softmax", "softmax(z^[L]) - y", losses.softmax_cross_entropy),
    "mse": ("linear", "2 (z^[L] - y)", losses.mse),
    "sigmoid_binary_cross_entropy": ("sigmoid", "sigmoid(z^[L]) - y", losses.sigmoid_binary_cross_entropy),
}


def format_array(a, digits: int = 3, max_items: int = 8) -> str:
    """A vector or matrix on one line, e.g. ``[[0.300, -0.500], [1.200, 0.400]]``.

    Args:
      a: an array of rank 0, 1 or 2.
      digits: decimals per number.
      max_items: an axis longer than this shows its first 3 and last 2 entries around "...".

    Returns:
      The text.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        text = f"{a:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    items = [format_array(row, digits, max_items) for row in (a if len(a) <= max_items else [*a[:3], *a[-2:]])]
    if len(a) > max_items:
        items[3:3] = ["..."]
    return "[" + ", ".join(items) + "]"


def _name_of(activation) -> str:
    """The name to print for an activation callable or name."""
    if isinstance(activation, str):
        return activation
    for name, (fn, _) in ELEMENTWISE.items():
        if activation is fn:
            return name
    return getattr(activation, "__name__", "sigma")


class LayerTrace(NamedTuple):
    """Layer l of a forward pass: z^[l] = W^[l] a^[l-1] + b^[l] and a^[l] = sigma(z^[l]).

    Attributes:
      W: (n_l, n_(l-1)). b: (n_l,). z: (n_l,). a: (n_l,).
    """
    W: jax.Array
    b: jax.Array
    z: jax.Array
    a: jax.Array


@dataclass(frozen=True)
class ForwardTrace:
    """Every step of one example's forward pass.

    Attributes:
      x: a^[0], shape (n_0,).
      layers: (LayerTrace of layer 1, ..., of layer L); `layer(l)` indexes them as the chapter does.
      activation: the hidden layers' activation, by name.
      output: the output layer's function: "softmax", "linear" or "sigmoid".
    """
    x: jax.Array
    layers: tuple[LayerTrace, ...]
    activation: str
    output: str

    def layer(self, l: int) -> LayerTrace:
        """Layer l in the chapter's numbering, l = 1, ..., L."""
        if not 1 <= l <= len(self.layers):
            raise IndexError(f"ForwardTrace.layer: l={l} is out of range; layers are numbered 1..{len(self.layers)}")
        return self.layers[l - 1]

    @property
    def zs(self) -> list[jax.Array]:
        """[z^[1], ..., z^[L]]."""
        return [layer.z for layer in self.layers]

    @property
    def activations(self) -> list[jax.Array]:
        """[a^[0], ..., a^[L]], a^[0] = x."""
        return [self.x] + [layer.a for layer in self.layers]

    @property
    def y_hat(self) -> jax.Array:
        """The network's output a^[L]."""
        return self.layers[-1].a

    def format(self, digits: int = 3, max_shown_weights: int = 16) -> str:
        """The pass as the chapter's equations with numbers, one step per line.

        Args:
          digits: decimals per number.
          max_shown_weights: W^[l] and b^[l] are written out (on a line of their own) when
            W^[l] has at most this many entries; otherwise only the result z^[l] is.
        """
        f = lambda a: format_array(a, digits)  # noqa: E731
        depth = len(self.layers)
        lines = [f"Forward pass: {len(self.layers)} layers, hidden activation {self.activation}, "
                 f"output {self.output}",
                 f"a^[0] = x = {f(self.x)}"]
        for l, step in enumerate(self.layers, start=1):
            sigma = self.output if l == depth else self.activation
            equation = f"  z^[{l}] = W^[{l}] a^[{l - 1}] + b^[{l}]"
            lines.append(f"layer {l}: W^[{l}] {tuple(step.W.shape)}, b^[{l}] {tuple(step.b.shape)}")
            if step.W.size <= max_shown_weights:
                indent = " " * equation.index("=")
                lines += [equation, f"{indent}= {f(step.W)} {f(self.activations[l - 1])} + {f(step.b)}",
                          f"{indent}= {f(step.z)}"]
            else:
                lines.append(f"{equation} = {f(step.z)}")
            lines.append(f"  a^[{l}] = {sigma}(z^[{l}]) = {f(step.a)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class LayerGradient(NamedTuple):
    """Layer l of a backward pass.

    Attributes:
      delta: delta^[l] = dL/dz^[l], shape (n_l,).
      dW: dL/dW^[l] = delta^[l] (a^[l-1])^T, shape (n_l, n_(l-1)).
      db: dL/db^[l] = delta^[l], shape (n_l,).
    """
    delta: jax.Array
    dW: jax.Array
    db: jax.Array


@dataclass(frozen=True)
class BackwardTrace:
    """Every step of one example's backward pass, with the forward pass it started from.

    Attributes:
      forward: the ForwardTrace (its output function is the one `loss` goes with).
      y: the target, shape (n_L,).
      loss: the loss's name, a key of `nnjax.backprop.LOSSES`: "softmax_cross_entropy", "mse" or
        "sigmoid_binary_cross_entropy".
      loss_value: L for this example (a scalar).
      layers: (LayerGradient of layer 1, ..., of layer L); `layer(l)` indexes them from 1.
    """
    forward: ForwardTrace
    y: jax.Array
    loss: str
    loss_value: jax.Array
    layers: tuple[LayerGradient, ...]

    def layer(self, l: int) -> LayerGradient:
        """Layer l's gradients in the chapter's numbering, l = 1, ..., L."""
        if not 1 <= l <= len(self.layers):
            raise IndexError(f"BackwardTrace.layer: l={l} is out of range; layers are numbered 1..{len(self.layers)}")
        return self.layers[l - 1]

    @property
    def deltas(self) -> list[jax.Array]:
        """[delta^[1], ..., delta^[L]]."""
        return [layer.delta for layer in self.layers]

    @property
    def grads(self) -> list[dict]:
        """The weight gradients in params' structure: [{"W": dL/dW^[l], "b": dL/db^[l]}, ...]."""
        return [{"W": layer.dW, "b": layer.db} for layer in self.layers]

    def format(self, digits: int = 3) -> str:
        """The backward pass as the chapter's equations with numbers, from layer L down to 1."""
        f = lambda a: format_array(a, digits)  # noqa: E731
        depth = len(self.layers)
        activation = self.forward.activation
        lines = [f"Backward pass: loss {self.loss}, hidden activation {activation}, output {self.forward.output}",
                 f"y = {f(self.y)}, a^[{depth}] = {f(self.forward.y_hat)}, L = {f(self.loss_value)}"]
        for l in range(depth, 0, -1):
            step = self.layers[l - 1]
            if l == depth:
                lines.append(f"delta^[{l}] = dL/dz^[{l}] = {_LOSS_OUTPUT[self.loss][1].replace('[L]', f'[{l}]')} "
                             f"= {f(step.delta)}")
            else:
                upstream = self.forward.layer(l + 1).W.T @ self.layers[l].delta
                derivative = ELEMENTWISE[activation][1](self.forward.layer(l).z)
                lines.append(f"delta^[{l}] = (W^[{l + 1}])^T delta^[{l + 1}] * {activation}'(z^[{l}]) "
                             f"= {f(upstream)} * {f(derivative)} = {f(step.delta)}")
            lines += [f"  dL/dW^[{l}] = delta^[{l}] (a^[{l - 1}])^T = {f(step.dW)}",
                      f"  dL/db^[{l}] = delta^[{l}] = {f(step.db)}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def trace_forward(params, x, activation: Callable | str = relu, output: str = "softmax") -> ForwardTrace:
    """The forward pass of one example, keeping z^[l] and a^[l] of every layer.

    a^[0] = x; z^[l] = W^[l] a^[l-1] + b^[l]; a^[l] = sigma(z^[l]) for l < L and
    a^[L] = output(z^[L]).

    Args:
      params: list of L dense layers [{"W": (n_l, n_(l-1)), "b": (n_l,)}], as `mlp_init` returns.
      x: one input, shape (n_0,).
      activation: sigma of the hidden layers, a callable or a name in nnjax.activations.ELEMENTWISE.
      output: "softmax" (classification, the default as in `mlp_forward`), "linear"
        (regression, a^[L] = z^[L]) or "sigmoid" (binary).

    Returns:
      A ForwardTrace; `str(trace)` prints every step with its numbers.
    """
    check_choice("trace_forward", "output", output, OUTPUTS)
    zs, activations = mlp_activations(params, x, activation)
    outs = activations[1:-1] + [OUTPUTS[output](zs[-1])]
    layers = tuple(LayerTrace(p["W"], p["b"], z, a) for p, z, a in zip(params, zs, outs))
    return ForwardTrace(activations[0], layers, _name_of(activation), output)


def trace_backward(params, x, y, loss: str = "softmax_cross_entropy",
                   activation: Callable | str = relu) -> BackwardTrace:
    """The backward pass of one example: delta^[l] and the weight gradients of every layer.

    delta^[L] = softmax(z^[L]) - y for loss="softmax_cross_entropy" (softmax output),
    2 (z^[L] - y) for loss="mse" (linear output) or sigmoid(z^[L]) - y for
    loss="sigmoid_binary_cross_entropy" (sigmoid output): the chapter's three pairs. Then for
    l = L - 1, ..., 1 delta^[l] = (W^[l+1])^T delta^[l+1] * sigma'(z^[l]),
    dL/dW^[l] = delta^[l] (a^[l-1])^T, dL/db^[l] = delta^[l]. The gradients equal `jax.grad` of
    the loss (the function of that name in `nnjax.losses`) of `mlp_logits(params, x)`.

    Args:
      params: list of L dense layers, as `mlp_init` returns.
      x: one input, shape (n_0,).
      y: its target, shape (n_L,): one-hot for cross-entropy, any values for "mse", values in
        [0, 1] for binary cross-entropy.
      loss: "softmax_cross_entropy", "mse" or "sigmoid_binary_cross_entropy".
      activation: sigma of the hidden layers, one of nnjax.activations' elementwise functions or
        its name (their derivatives are known by hand).

    Returns:
      A BackwardTrace; `str(trace)` prints every step with its numbers.
    """
    check_choice("trace_backward", "loss", loss, _LOSS_OUTPUT)
    output, _, loss_fn = _LOSS_OUTPUT[loss]
    grads, deltas = mlp_backward(params, x, y, activation, loss)
    forward = trace_forward(params, x, activation, output)
    layers = tuple(LayerGradient(delta, g["W"], g["b"]) for delta, g in zip(deltas, grads))
    y = jnp.asarray(y)
    return BackwardTrace(forward, y, loss, loss_fn(forward.zs[-1], y), layers)
