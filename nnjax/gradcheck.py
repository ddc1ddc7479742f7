"""Gradient checking: hand-derived gradients against autodiff and finite differences.

Three tools and one command:

- `compare(grads_a, grads_b)` measures, leaf by leaf, how far two gradient pytrees are
  apart and prints as a table that names each leaf by its place in the network
  (``layer 1 / W`` is the chapter's W^[1], ``params[0]["W"]``).
- `numerical_grad(f, params)` is the definition of the derivative, evaluated:
  dL/dtheta_i ~ (L(theta + eps e_i) - L(theta - eps e_i)) / (2 eps).
- `check(loss_fn, manual_grad_fn, params, *args)` compares a hand-derived gradient with
  `jax.grad(loss_fn)`.
- ``python -m nnjax.gradcheck`` runs every hand-derived backward pass in `nnjax.backprop`
  against `jax.vjp` and against central differences, in float64, and prints one table.

Example (a 4-8-3 MLP on a batch of 16):

    >>> loss = lambda p, X, Y: jnp.mean(losses.softmax_cross_entropy(
    ...     jax.vmap(network.mlp_logits, (None, 0))(p, X), Y))
    >>> with jax.enable_x64(True):
    ...     print(check(loss, backprop.mlp_grads, params, X, Y))
    leaf         shape   max abs err  max rel err  status
    -----------  ------  -----------  -----------  ------
    layer 1 / W  (8, 4)  0.0e+00      0.0e+00      ok
    layer 1 / b  (8,)    0.0e+00      0.0e+00      ok
    layer 2 / W  (3, 8)  0.0e+00      0.0e+00      ok
    layer 2 / b  (3,)    0.0e+00      0.0e+00      ok
    all 4 leaves agree (|a - b| <= 1e-07 + 1e-05 |b|)
"""
from __future__ import annotations

import argparse
import sys
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from nnjax import activations, backprop, layers, losses, network

__all__ = ["LeafReport", "GradCheckReport", "leaf_names", "compare", "numerical_grad", "check",
           "Case", "CaseResult", "CASES", "run_case", "main"]


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeafReport:
    """How far two gradients are apart on one leaf of the parameter pytree.

    Attributes:
      name: the leaf's place in the tree, e.g. ``"layer 1 / W"``.
      shape: the leaf's shape.
      max_abs_err: max_i |a_i - b_i|.
      max_rel_err: max_i |a_i - b_i| / max(|a_i|, |b_i|, tiny): symmetric, 0 where both are 0,
        and up to 2 where one side is 0 (so it flags sign errors and missing terms even for
        tiny values; judge near-zero entries by `max_abs_err`).
      passed: |a_i - b_i| <= atol + rtol |b_i| for every i (NumPy's `allclose` rule, with
        `b` the reference); False if any entry is NaN.
    """
    name: str
    shape: tuple
    max_abs_err: float
    max_rel_err: float
    passed: bool


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, a rule under the headers."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, rows)])


def _err(value: float) -> str:
    return f"{value:.1e}"


@dataclass(frozen=True)
class GradCheckReport:
    """The result of `compare`: one `LeafReport` per leaf, and whether all passed.

    `str(report)` is an aligned table (leaf, shape, max abs err, max rel err, ok/FAIL) with
    a summary line.
    """
    rows: tuple[LeafReport, ...]
    passed: bool
    rtol: float = 1e-5
    atol: float = 1e-7

    def __str__(self) -> str:
        table = _table(
            ["leaf", "shape", "max abs err", "max rel err", "status"],
            [[r.name, str(r.shape), _err(r.max_abs_err), _err(r.max_rel_err),
              "ok" if r.passed else "FAIL"] for r in self.rows],
        )
        failed = [r.name for r in self.rows if not r.passed]
        tolerance = f"|a - b| <= {self.atol:g} + {self.rtol:g} |b|"
        summary = (f"all {len(self.rows)} leaves agree ({tolerance})" if not failed else
                   f"FAIL: {len(failed)} of {len(self.rows)} leaves disagree ({tolerance}): "
                   + ", ".join(failed))
        near_zero = [r.name for r in self.rows if r.passed and r.max_rel_err > self.rtol]
        if near_zero:
            summary += (f"\n({', '.join(near_zero)}: a large relative error but ok, because the "
                        f"gradient is near 0 and the error within atol={self.atol:g})")
        return f"{table}\n{summary}"


# ---------------------------------------------------------------------------------------
# Leaf names
# ---------------------------------------------------------------------------------------

def _key_name(node, key) -> str:
    """One step of a tree path as text: list index i -> 'layer {i+1}', dict key as is."""
    if isinstance(key, SequenceKey):
        return f"layer {key.idx + 1}" if isinstance(node, list) else f"[{key.idx}]"
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, GetAttrKey):
        return key.name
    return str(key)


def _child(node, key):
    if isinstance(key, SequenceKey):
        return node[key.idx]
    if isinstance(key, DictKey):
        return node[key.key]
    if isinstance(key, GetAttrKey):
        return getattr(node, key.name)
    return None


def leaf_names(tree) -> list[str]:
    """The names of `tree`'s leaves, in `jax.tree_util.tree_leaves` order.

    A list index i becomes ``layer {i+1}`` (a network is a list of layer params, and the
    chapter counts layers from 1), a tuple index ``[i]``, a dict key or attribute itself,
    joined with `` / ``: ``[{"W": ., "b": .}]`` -> ``["layer 1 / W", "layer 1 / b"]``. A
    bare array is named ``value``.
    """
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node, parts = tree, []
        for key in path:
            parts.append(_key_name(node, key))
            node = _child(node, key)
        names.append(" / ".join(parts) or "value")
    return names


# ---------------------------------------------------------------------------------------
# compare, numerical_grad, check
# ---------------------------------------------------------------------------------------

def _leaf_report(name: str, a, b, rtol: float, atol: float) -> LeafReport:
    for arg, leaf in (("grads_a", a), ("grads_b", b)):
        dtype = np.asarray(leaf).dtype
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(f"compare: leaf {name!r} of {arg} has dtype {dtype}; gradients of real "
                            f"parameters are real numbers")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"compare: leaf {name!r} has shape {a.shape} in grads_a but "
                         f"{b.shape} in grads_b")
    diff = np.abs(a - b)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.finfo(np.float64).tiny)
    return LeafReport(
        name=name,
        shape=a.shape,
        max_abs_err=float(diff.max(initial=0.0)),
        max_rel_err=float((diff / scale).max(initial=0.0)),
        passed=bool(np.all(diff <= atol + rtol * np.abs(b))),
    )


def compare(grads_a, grads_b, *, rtol: float = 1e-5, atol: float = 1e-7) -> GradCheckReport:
    """Compares two gradient pytrees leaf by leaf.

    Args:
      grads_a: gradients to check (e.g. hand-derived), any pytree of arrays.
      grads_b: the reference (e.g. `jax.grad`), the same structure and shapes.
      rtol, atol: a leaf passes when |a - b| <= atol + rtol |b| everywhere.

    Returns:
      A `GradCheckReport`; `print` it for the table.

    Raises:
      ValueError: when the trees differ in structure (naming the leaves found in only one
        of them) or a leaf differs in shape (naming the leaf).
      TypeError: a leaf that is not real numbers (complex, say: comparing it as real would
        drop its imaginary part).
    """
    names_a, names_b = leaf_names(grads_a), leaf_names(grads_b)
    tree_a, tree_b = jax.tree_util.tree_structure(grads_a), jax.tree_util.tree_structure(grads_b)
    if tree_a != tree_b:
        only_a = [n for n in names_a if n not in names_b]
        only_b = [n for n in names_b if n not in names_a]
        detail = (f"only in grads_a: {only_a}; only in grads_b: {only_b}" if only_a or only_b
                  else f"same leaf names {names_a} but different containers: {tree_a} vs {tree_b}")
        raise ValueError(f"compare: grads_a and grads_b have different tree structures; {detail}")
    rows = tuple(_leaf_report(name, a, b, rtol, atol) for name, a, b in
                 zip(names_a, jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)))
    return GradCheckReport(rows=rows, passed=all(r.passed for r in rows), rtol=rtol, atol=atol)


def numerical_grad(f: Callable, params, eps: float = 1e-6, *, chunk_elements: int = 2 ** 20):
    """Central differences of a scalar function for every entry of a pytree.

    dL/dtheta_i ~ (f(theta + eps e_i) - f(theta - eps e_i)) / (2 eps), with an error of
    order eps^2 from the Taylor series plus rounding of order u |f| / eps (u the unit
    roundoff). In float32 (u ~ 6e-8) no eps makes both small, so use float64 (u ~ 1e-16),
    where eps = 1e-6 leaves errors near 1e-10:

        with jax.enable_x64(True):
            params64 = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
            grads = numerical_grad(loss, params64)

    All parameters are flattened into one vector theta; the directions e_i are evaluated
    with `jax.vmap`, in chunks (`jax.lax.map` with a batch size) so that about
    `chunk_elements` parameter values are in flight at once; all compiled once per call.

    Args:
      f: params -> scalar, traceable by JAX.
      params: a pytree of floating-point arrays.
      eps: the step.
      chunk_elements: memory bound: `chunk_elements // theta.size` directions (at least 1)
        are evaluated together, each holding two perturbed copies of theta.

    Returns:
      A pytree like `params` holding the estimated gradient.

    Raises:
      TypeError: for a non-floating leaf.
      ValueError: when `f` does not return a scalar, or eps <= 0.

    Warns:
      UserWarning: when a leaf is float32 or lower precision (the estimate is then off by
        1e-3 to 1e-1 relative).
    """
    if not eps > 0:
        raise ValueError(f"numerical_grad: eps must be > 0 (the step of the differences), got {eps!r}")
    names = leaf_names(params)
    leaves = [jnp.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]
    for name, leaf in zip(names, leaves):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"numerical_grad: leaf {name!r} has dtype {leaf.dtype}; "
                            f"only floating-point leaves can be perturbed")
    low = [f"{n} ({leaf.dtype})" for n, leaf in zip(names, leaves) if jnp.finfo(leaf.dtype).bits < 64]
    if low:
        warnings.warn(f"numerical_grad: leaves {low} are below float64; central differences "
                      f"then carry rounding errors of order u |f| / eps (float32: 1e-3 to 1e-1 "
                      f"relative with eps={eps}), too large to check a gradient. Run under `with "
                      f"jax.enable_x64(True):` with float64 params.", stacklevel=2)
    out = jax.eval_shape(f, params)
    if getattr(out, "shape", None) != ():
        raise ValueError(f"numerical_grad: f must return a scalar, got "
                         f"{getattr(out, 'shape', type(out).__name__)}")

    def central_differences(params):
        flat, unravel = ravel_pytree(params)
        step = jnp.asarray(eps, flat.dtype)
        f_pair = jax.vmap(lambda theta: f(unravel(theta)))

        def along(i):  # (f(theta + eps e_i) - f(theta - eps e_i)) / (2 eps)
            e_i = jnp.zeros_like(flat).at[i].set(step)
            plus, minus = f_pair(jnp.stack([flat + e_i, flat - e_i]))
            return (plus - minus) / (2 * step)

        directions = jnp.arange(flat.size)
        chunk = max(1, chunk_elements // max(flat.size, 1))
        grads = (jax.vmap(along)(directions) if chunk >= flat.size else
                 jax.lax.map(along, directions, batch_size=chunk))
        return unravel(grads.astype(flat.dtype))

    return jax.jit(central_differences)(params)


def check(loss_fn: Callable, manual_grad_fn: Callable, params, *args,
          rtol: float = 1e-5, atol: float = 1e-7) -> GradCheckReport:
    """Hand-derived gradients against autodiff: `manual_grad_fn(params, *args)` vs
    `jax.grad(loss_fn)(params, *args)`.

    Args:
      loss_fn: (params, *args) -> scalar loss.
      manual_grad_fn: (params, *args) -> gradients shaped like `params`.
      params: the point to check at.
      *args: the rest of both functions' arguments (e.g. X, Y).
      rtol, atol: tolerances of `compare`; the autodiff gradient is the reference.

    Returns:
      `compare(manual, autodiff)`.

    Raises:
      ValueError: when `loss_fn` does not return a scalar.
    """
    out = jax.eval_shape(loss_fn, params, *args)
    if getattr(out, "shape", None) != ():
        raise ValueError(f"check: loss_fn must return a scalar loss, got shape "
                         f"{getattr(out, 'shape', type(out).__name__)}; reduce it (e.g. jnp.mean)")
    return compare(manual_grad_fn(params, *args), jax.grad(loss_fn)(params, *args),
                   rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# The command: every hand-derived backward vs jax.vjp vs central differences, in float64
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One hand-derived backward pass to check.

    `make(rng)` (rng a `numpy.random.Generator`) returns `(inputs, forward, backward)`:
    `inputs` a dict (or list) of the float64 arrays to differentiate, named as the table
    shows them; `forward(inputs) -> output` the layer or loss; `backward(inputs, delta) ->
    grads` the hand-derived pass, `grads` shaped like `inputs`, `delta = dL/d(output)`.
    `run_case` draws a random `delta` (1 for a scalar output) and compares `backward`
    against `jax.vjp(forward, inputs)` and against central differences of
    `sum(forward(inputs) * delta)`. `make` may return a fourth item, `values(inputs)`: the
    same values as `forward`, computed faster, for the finite differences (which evaluate it
    twice per input entry).
    """
    layer: str
    setting: str
    make: Callable

    @property
    def name(self) -> str:
        return f"{self.layer} ({self.setting})" if self.setting else self.layer


@dataclass(frozen=True)
class CaseResult:
    """A case's two comparisons (manual vs autodiff, manual vs finite differences), or the
    error it raised."""
    case: Case
    vs_autodiff: GradCheckReport | None
    vs_finite_diff: GradCheckReport | None
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and self.vs_autodiff.passed and self.vs_finite_diff.passed


AUTODIFF_TOL = {"rtol": 1e-8, "atol": 1e-10}
"""Manual vs `jax.vjp` in float64: the same math in another order, so rounding only (~1e-15)."""
FINITE_DIFF_TOL = {"rtol": 1e-5, "atol": 1e-7}
"""Manual vs central differences with eps = 1e-6 in float64: errors near 1e-10 times scale."""


_QUICK_COMPILE = {"xla_backend_optimization_level": 0}
"""Each case's graph is tiny and runs once, so compiling dominates: skip LLVM's optimizations
(about 40% less time for the whole command; the float64 results are the same)."""


def run_case(case: Case, rng: np.random.Generator) -> CaseResult:
    """Runs one case: the three gradients in one compiled function, then two `compare`s.

    Call under `jax.enable_x64(True)`. An exception inside the case becomes `error`.
    """
    try:
        if jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
            raise RuntimeError("run_case needs float64: call it under `with jax.enable_x64(True):`")
        inputs, forward, backward, *values = case.make(rng)
        values = values[0] if values else forward
        inputs = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), inputs)
        out = jax.eval_shape(forward, inputs)
        delta = jnp.asarray(1.0 if out.shape == () else rng.standard_normal(out.shape), jnp.float64)

        def three_gradients(inputs, delta):
            manual = backward(inputs, delta)
            autodiff = jax.vjp(forward, inputs)[1](delta)[0]
            finite = numerical_grad(lambda p: jnp.sum(values(p) * delta), inputs)
            return manual, autodiff, finite

        compiled = jax.jit(three_gradients).lower(inputs, delta).compile(_QUICK_COMPILE)
        manual, autodiff, finite = compiled(inputs, delta)
        return CaseResult(case, compare(manual, autodiff, **AUTODIFF_TOL),
                          compare(manual, finite, **FINITE_DIFF_TOL))
    except Exception as err:  # a broken case is a row of the table, not a crash of the command
        return CaseResult(case, None, None, error=f"{type(err).__name__}: {err}")


def _normal(rng: np.random.Generator, *shape, scale: float = 1.0):
    return scale * rng.standard_normal(shape)


def _away_from_zero(z):
    """Moves entries at least 0.1 away from 0, so no kink (ReLU's at 0) lies within eps."""
    return z + 0.1 * np.sign(z)


def _one_hot(rng: np.random.Generator, batch: int, classes: int):
    return np.eye(classes)[rng.integers(0, classes, batch)]


def _mlp_params(rng: np.random.Generator, sizes: Sequence[int]) -> list:
    """[{"W": (n_l, n_{l-1}), "b": (n_l,)}] with entries of variance 1 / n_{l-1}."""
    return [{"W": _normal(rng, n_out, n_in, scale=n_in ** -0.5), "b": _normal(rng, n_out, scale=0.1)}
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _dims(shape: tuple) -> str:
    """(2, 6, 5) -> '2x6x5', for short case names."""
    return "x".join(map(str, shape))


def _scaled(grads_fn: Callable) -> Callable:
    """backward(inputs, delta) for a scalar loss whose manual gradient is grads_fn(inputs)."""
    return lambda p, delta: jax.tree_util.tree_map(lambda g: delta * g, grads_fn(p))


def _activation_case(name: str) -> Case:
    def make(rng):
        sigma = activations.ELEMENTWISE[name][0]
        return ({"z": _away_from_zero(_normal(rng, 3, 4, scale=2.0))}, lambda p: sigma(p["z"]),
                lambda p, delta: {"z": backprop.activation_backward(name, p["z"], delta)})
    return Case("activation_backward", name, make)


def _softmax_case() -> Case:
    def make(rng):
        return ({"z": _normal(rng, 2, 5, scale=2.0)}, lambda p: activations.softmax(p["z"]),
                lambda p, delta: {"z": backprop.softmax_backward(p["z"], delta)})
    return Case("softmax_backward", "2x5", make)


def _softmax_cross_entropy_case() -> Case:
    def make(rng):
        y = _one_hot(rng, 1, 5)[0]
        return ({"z": _normal(rng, 5, scale=3.0)}, lambda p: losses.softmax_cross_entropy(p["z"], y),
                _scaled(lambda p: {"z": backprop.softmax_cross_entropy_backward(p["z"], y)}))
    return Case("softmax_cross_entropy_backward", "K=5", make)


def _sigmoid_binary_cross_entropy_case() -> Case:
    def make(rng):
        y = rng.uniform(size=4)
        return ({"z": _normal(rng, 4, scale=3.0)}, lambda p: losses.sigmoid_binary_cross_entropy(p["z"], y),
                _scaled(lambda p: {"z": backprop.sigmoid_binary_cross_entropy_backward(p["z"], y)}))
    return Case("sigmoid_binary_cross_entropy_backward", "K=4", make)


def _mse_case() -> Case:
    def make(rng):
        y = _normal(rng, 4)
        return ({"y_hat": _normal(rng, 4)}, lambda p: losses.mse(p["y_hat"], y),
                _scaled(lambda p: {"y_hat": backprop.mse_backward(p["y_hat"], y)}))
    return Case("mse_backward", "K=4", make)


def _layer_case(layer: str, setting: str, forward: Callable, backward: Callable,
                param_shapes: dict, x_shape: tuple) -> Case:
    """A layer `forward(params, x)` with `backward(params, x, delta) -> (grads, dx)`;
    the table names its gradients by the param keys and ``x``."""
    def make(rng):
        inputs = {name: _normal(rng, *shape) for name, shape in param_shapes.items()}
        inputs["x"] = _normal(rng, *x_shape)
        split = lambda p: ({k: p[k] for k in param_shapes}, p["x"])

        def manual(p, delta):
            grads, dx = backward(*split(p), delta)
            return {**grads, "x": dx}
        return inputs, lambda p: forward(*split(p)), manual
    return Case(layer, setting, make)


def _dense_case() -> Case:
    return _layer_case("dense_backward", "n_in=4, n_out=3",
                       lambda params, x: layers.dense(params, x),
                       lambda params, x, delta: backprop.dense_backward(params, x, delta),
                       {"W": (3, 4), "b": (3,)}, (4,))


def _dense_batch_case() -> Case:
    return _layer_case("dense_batch_backward", "batch 5, n_in=4, n_out=3",
                       lambda params, X: jax.vmap(layers.dense, in_axes=(None, 0))(params, X),
                       backprop.dense_batch_backward, {"W": (3, 4), "b": (3,)}, (5, 4))


def _conv_case(c_in: int, c_out: int, kernel: tuple, hw: tuple, stride, padding) -> Case:
    return _layer_case(
        "conv2d_backward",
        f"{kernel[0]}x{kernel[1]}, stride {stride}, padding {padding}, x {_dims((c_in, *hw))}",
        lambda params, x: layers.conv2d(params, x, stride=stride, padding=padding),
        lambda params, x, delta: backprop.conv2d_backward(params, x, delta, stride=stride,
                                                          padding=padding),
        {"W": (c_out, c_in, *kernel), "b": (c_out,)}, (c_in, *hw))


def _pool_case(kind: str, window: int, stride, x_shape: tuple) -> Case:
    def make(rng):
        forward = getattr(layers, f"{kind}_pool2d")
        backward = getattr(backprop, f"{kind}_pool2d_backward")
        return ({"x": _normal(rng, *x_shape)},
                lambda p: forward(p["x"], window=window, stride=stride),
                lambda p, delta: {"x": backward(p["x"], delta, window=window, stride=stride)})
    return Case(f"{kind}_pool2d_backward",
                f"window {window}, stride {stride or window}, x {_dims(x_shape)}", make)


def _batch_norm_case(x_shape: tuple, batch: int = 4) -> Case:
    def make(rng):
        state = layers.batch_norm_init(x_shape[0])[1]
        inputs = {"gamma": _normal(rng, x_shape[0]), "beta": _normal(rng, x_shape[0]),
                  "x": _normal(rng, batch, *x_shape, scale=2.0) + 1}
        params_of = lambda p: {"gamma": p["gamma"], "beta": p["beta"]}

        def forward(p):
            one = lambda x: layers.batch_norm(params_of(p), state, x, train=True, axis_name="batch")[0]
            return jax.vmap(one, axis_name="batch")(p["x"])

        def manual(p, delta):
            one = lambda x, d: backprop.batch_norm_backward(params_of(p), x, d, axis_name="batch")
            grads, dx = jax.vmap(one, axis_name="batch")(p["x"], delta)
            return {**jax.tree_util.tree_map(lambda g: g.sum(0), grads), "x": dx}
        return inputs, forward, manual
    return Case("batch_norm_backward", f"vmap, batch {batch}, x {_dims(x_shape)}", make)


def _conv_batch_norm_case(c_in: int, c_out: int, hw: tuple, stride, padding, batch: int = 3) -> Case:
    """`conv2d_batch_norm_backward` against the plain composition it replaces: `conv2d_batch`
    then `batch_norm` in training mode under `jax.vmap`."""
    def make(rng):
        state = layers.batch_norm_init(c_out)[1]
        inputs = {"W": _normal(rng, c_out, c_in, 3, 3), "b": _normal(rng, c_out), "gamma": _normal(rng, c_out),
                  "beta": _normal(rng, c_out), "x": _normal(rng, batch, c_in, *hw, scale=2.0) + 1}
        split = lambda p: ({"W": p["W"], "b": p["b"]}, {"gamma": p["gamma"], "beta": p["beta"]}, p["x"])

        def forward(p):
            conv, bn, X = split(p)
            Z = layers.conv2d_batch(conv, X, stride=stride, padding=padding)
            return jax.vmap(lambda z: layers.batch_norm(bn, state, z, train=True)[0], axis_name="batch")(Z)

        def manual(p, delta):
            conv_grads, bn_grads, dX = backprop.conv2d_batch_norm_backward(*split(p), delta, stride=stride,
                                                                           padding=padding)
            return {**conv_grads, **bn_grads, "x": dX}
        return inputs, forward, manual
    return Case("conv2d_batch_norm_backward",
                f"3x3, stride {stride}, padding {padding}, batch {batch}, x {_dims((c_in, *hw))}, C_out {c_out}", make)


def _norm_case(name: str, x_shape: tuple, param_shape: tuple, **kwargs) -> Case:
    setting = ", ".join([f"x {_dims(x_shape)}"] + [f"{k} {v}" for k, v in kwargs.items()])
    return _layer_case(
        f"{name}_backward", setting,
        lambda params, x: getattr(layers, name)(params, x, **kwargs),
        lambda params, x, delta: getattr(backprop, f"{name}_backward")(params, x, delta, **kwargs),
        {"gamma": param_shape, "beta": param_shape}, x_shape)


def _mlp_backward_case(loss: str) -> Case:
    def make(rng):
        params, x = _mlp_params(rng, [4, 5, 3]), _normal(rng, 4)
        y = {"softmax_cross_entropy": _one_hot(rng, 1, 3)[0], "mse": _normal(rng, 3),
             "sigmoid_binary_cross_entropy": rng.uniform(size=3)}[loss]

        def forward(p):
            return getattr(losses, loss)(network.mlp_logits(p, x, activation=activations.tanh), y)
        return params, forward, _scaled(
            lambda p: backprop.mlp_backward(p, x, y, activation=activations.tanh, loss=loss)[0])
    short = {"softmax_cross_entropy": "softmax CE", "mse": "MSE", "sigmoid_binary_cross_entropy": "sigmoid BCE"}
    return Case("mlp_backward", f"4-5-3, tanh, {short[loss]}", make)


def _mlp_grads_case(activation_name: str) -> Case:
    def make(rng):
        activation = activations.ELEMENTWISE[activation_name][0]
        params, X, Y = _mlp_params(rng, [4, 5, 3, 3]), _normal(rng, 6, 4), _one_hot(rng, 6, 3)

        def loss(p):
            logits = jax.vmap(lambda x: network.mlp_logits(p, x, activation=activation))(X)
            return jnp.mean(losses.softmax_cross_entropy(logits, Y))
        return params, loss, _scaled(lambda p: backprop.mlp_grads(p, X, Y, activation=activation))
    return Case("mlp_grads", f"4-5-3-3, {activation_name}, batch 6", make)


def _mlp_grads_mse_case() -> Case:
    def make(rng):
        params, X, Y = _mlp_params(rng, [3, 4, 2]), _normal(rng, 5, 3), _normal(rng, 5, 2)

        def loss(p):
            y_hat = jax.vmap(lambda x: network.mlp_logits(p, x, activation=activations.tanh))(X)
            return jnp.mean(losses.mse(y_hat, Y))
        return params, loss, _scaled(
            lambda p: backprop.mlp_grads_mse(p, X, Y, activation=activations.tanh))
    return Case("mlp_grads_mse", "3-4-2, tanh, batch 5", make)


def _cnn_case(channels: tuple = (2, 3)) -> Case:
    """The whole CNN, against autodiff of its plain layers (`cnn_loss_plain`; `cnn_loss` would
    run the same hand-derived layer backwards) and finite differences of `cnn_loss` (the same
    values from the batch-level layers: both CNN cases in 4 s, 86 s with the plain layers);
    with channels (12, 3) its conv1 runs as `conv2d_batch_norm` (10 patch features for 12
    channels)."""
    def make(rng):
        in_shape, batch, classes = (1, 12, 11), 4, 3
        shapes = jax.eval_shape(lambda key: network.cnn_init(key, in_shape=in_shape, channels=channels,
                                                             hidden=5, classes=classes),
                                jax.random.key(0))
        params = jax.tree_util.tree_map(lambda s: _normal(rng, *s.shape, scale=_fan_in(s.shape) ** -0.5),
                                        shapes[0])
        state = jax.tree_util.tree_map(lambda s: np.ones(s.shape), shapes[1])
        X, Y = _normal(rng, batch, *in_shape), _one_hot(rng, batch, classes)
        return (params, lambda p: network.cnn_loss_plain(p, state, X, Y)[0],
                _scaled(lambda p: backprop.cnn_grads(p, state, X, Y)[0]),
                lambda p: network.cnn_loss(p, state, X, Y)[0])
    return Case("cnn_grads", f"x 1x12x11, channels {channels[0]}-{channels[1]}, hidden 5, batch 4", make)


def _fan_in(shape: tuple) -> int:
    """Inputs per output unit of a weight (C_in kh kw for conv, n_in for dense); 1 for vectors."""
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


CASES: list[Case] = [
    *[_activation_case(name) for name in activations.ELEMENTWISE],
    _softmax_case(),
    _softmax_cross_entropy_case(),
    _sigmoid_binary_cross_entropy_case(),
    _mse_case(),
    _dense_case(),
    _dense_batch_case(),
    _mlp_backward_case("softmax_cross_entropy"),
    _mlp_backward_case("mse"),
    _mlp_backward_case("sigmoid_binary_cross_entropy"),
    _mlp_grads_case("relu"),
    _mlp_grads_case("sigmoid"),
    _mlp_grads_mse_case(),
    _conv_case(2, 3, (3, 3), (6, 5), 1, "valid"),
    _conv_case(2, 3, (3, 3), (7, 6), 2, "same"),
    _conv_case(2, 2, (3, 2), (6, 7), (2, 1), (1, 2)),
    _conv_case(3, 2, (1, 1), (4, 5), 1, "same"),
    _conv_case(1, 2, (5, 5), (8, 7), 3, 2),
    _pool_case("max", 2, None, (2, 6, 4)),
    _pool_case("max", 3, 2, (2, 7, 5)),
    _pool_case("avg", 2, None, (2, 6, 4)),
    _pool_case("avg", 3, 1, (2, 5, 6)),
    _batch_norm_case((3,)),
    _batch_norm_case((2, 3, 4)),
    _norm_case("layer_norm", (2, 3, 4), (2, 3, 4)),
    _norm_case("instance_norm", (3, 4, 5), (3,)),
    _norm_case("group_norm", (4, 3, 3), (4,), num_groups=2),
    _conv_batch_norm_case(1, 12, (6, 5), 1, "valid"),
    _conv_batch_norm_case(2, 3, (7, 6), 2, "same"),
    _cnn_case(),
    _cnn_case((12, 3)),
]
"""Every hand-derived backward pass in `nnjax.backprop`, at small shapes: what
``python -m nnjax.gradcheck`` runs. Adding a layer is one entry."""


def _results_table(results: Sequence[CaseResult]) -> str:
    """Each case's name on a line of its own, then its gradients indented, one row each (the
    names are too long for a column of their own in 80-character terminals)."""
    rows, names = [], {}
    for res in results:
        names[len(rows)] = res.case.name
        if res.error:
            rows.append(["  -", "-", "-", "-", "ERROR"])
            continue
        for a, f in zip(res.vs_autodiff.rows, res.vs_finite_diff.rows):
            rows.append(["  " + a.name, str(a.shape), _err(a.max_abs_err), _err(f.max_abs_err),
                         "ok" if a.passed and f.passed else "FAIL"])
    header, rule, *lines = _table(["gradient", "shape", "vs autodiff", "vs finite diff", "status"],
                                  rows).split("\n")
    return "\n".join([header, rule, *[part for i, line in enumerate(lines)
                                       for part in ([names[i]] if i in names else []) + [line]]])


def _stable_hash(text: str) -> int:
    """A seed per case from its name, so `--only` draws the same inputs as a full run."""
    return zlib.crc32(text.encode())


def _matches(case: Case, name: str) -> bool:
    """--only NAME selects a case by its full name, its setting (e.g. ``relu``), its layer
    or a prefix of the layer (``conv2d`` for ``conv2d_backward``)."""
    return name in (case.name, case.setting) or case.layer.startswith(name)


def main(argv: Sequence[str] | None = None, cases: Sequence[Case] | None = None) -> int:
    """``python -m nnjax.gradcheck``: prints the table; returns 0 if every gradient agrees.

    Args:
      argv: command-line arguments (default: `sys.argv[1:]`): ``--only LAYER ...`` runs the
        cases of those layers (or full case names), ``--seed N`` draws other inputs,
        ``--list`` prints the case names.
      cases: the cases to choose from (default: `CASES`); tests pass their own.
    """
    cases = list(CASES if cases is None else cases)
    parser = argparse.ArgumentParser(
        prog="python -m nnjax.gradcheck",
        description="Hand-derived gradients (nnjax.backprop) vs autodiff (jax.vjp) vs central "
                    "finite differences, in float64, for every layer. Columns: max |manual - "
                    "other| over each gradient's entries.")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these layers or cases (see --list)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for the inputs (default 0)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.only:
        chosen = [c for c in cases if any(_matches(c, name) for name in args.only)]
        unknown = [name for name in args.only if not any(_matches(c, name) for c in cases)]
        if unknown:
            parser.error(f"--only: no case matches {unknown}; choose from "
                         f"{sorted({c.layer for c in cases})} (or a full name from --list)")
        cases = chosen
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    with jax.enable_x64(True):
        results = [run_case(case, np.random.default_rng([args.seed, _stable_hash(case.name)]))
                   for case in cases]
    print("Hand-derived gradients (nnjax.backprop) vs autodiff (jax.vjp) and vs central\n"
          "differences (eps = 1e-6), in float64. Each error is max |manual - other| over the\n"
          "gradient's entries.\n")
    print(_results_table(results))
    for res in results:
        if res.error:
            print(f"ERROR in {res.case.name}: {res.error}")
    failed = [r for r in results if not r.passed]
    grads = sum(len(r.vs_autodiff.rows) for r in results if not r.error)
    tol = (f"tolerance |manual - other| <= atol + rtol |other|:\n  vs autodiff "
           f"rtol={AUTODIFF_TOL['rtol']:g}, atol={AUTODIFF_TOL['atol']:g}; vs finite diff "
           f"rtol={FINITE_DIFF_TOL['rtol']:g}, atol={FINITE_DIFF_TOL['atol']:g}")
    if failed:
        print(f"\nFAIL: {len(failed)} of {len(results)} cases disagree: "
              + ", ".join(r.case.name for r in failed) + f"\n{tol}")
        return 1
    print(f"\nall {grads} gradients in {len(results)} cases agree; {tol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
