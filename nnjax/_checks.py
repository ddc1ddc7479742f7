"""Argument checks shared by every public function.

Each check raises with a message that names the function, the argument, what was expected
and what came, so a learner can act on it without reading nnjax's source. Shape checks use
chex; inside `jax.jit` they run once, at trace time, and cost nothing when the step runs.
"""
from __future__ import annotations

import operator
from typing import Iterable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _one_array(x):
    """A nested list or tuple of numbers as one array: chex would take it for several arrays."""
    return jnp.asarray(x) if isinstance(x, (list, tuple)) else x


def check_shape(fn: str, arg: str, x, expected: Sequence, because: str = "") -> None:
    """Asserts `x.shape == expected` (None in `expected` matches any size).

    Args:
      fn: the public function doing the check, e.g. ``"dense"``.
      arg: the argument's name, e.g. ``"x"``.
      x: the array.
      expected: the expected shape; ``None`` entries match any size.
      because: optional reason, e.g. ``" = (n_in,) to match W of shape (3, 5)"``.

    Raises:
      AssertionError: (chex's) naming fn, arg, the expected and the actual shape.
    """
    x = _one_array(x)
    shown = "(" + ", ".join("?" if d is None else str(d) for d in expected) + ("," if len(expected) == 1 else "") + ")"
    chex.assert_shape(
        x, tuple(expected),
        custom_message=f"{fn}: {arg} has shape {tuple(jnp.shape(x))}, expected {shown}{because}",
    )


def check_rank(fn: str, arg: str, x, rank: int, layout: str) -> None:
    """Asserts `x.ndim == rank`; `layout` names the axes, e.g. ``"(C, H, W)"``."""
    x = _one_array(x)
    chex.assert_rank(
        x, rank,
        custom_message=f"{fn}: {arg} has shape {tuple(jnp.shape(x))} (rank {jnp.ndim(x)}), "
                       f"expected rank {rank}: {layout}",
    )


def check_same_shape(fn: str, arg_a: str, a, arg_b: str, b) -> None:
    """Asserts two arrays have the same shape."""
    chex.assert_equal_shape(
        [a, b],
        custom_message=f"{fn}: {arg_a} has shape {tuple(jnp.shape(a))} but {arg_b} has shape "
                       f"{tuple(jnp.shape(b))}; they must match",
    )


def check_dict(fn: str, arg: str, value, keys: Iterable[str], made_by: str) -> None:
    """Raises TypeError unless `value` is a dict with exactly `keys`, naming what `made_by`
    (the function that builds such a dict, e.g. ``"conv2d_init"``) returns."""
    keys = sorted(keys)
    if not isinstance(value, dict) or sorted(value) != keys:
        got = f"keys {sorted(value)}" if isinstance(value, dict) else f"a {type(value).__name__}"
        raise TypeError(f"{fn}: {arg} must be a dict with keys {keys} as {made_by} returns, got {got}")


def check_float_leaves(fn: str, arg: str, tree: dict) -> None:
    """Raises TypeError unless every array in the dict `tree` (a layer's parameters or state) has
    a floating dtype, naming the entry."""
    for key, leaf in tree.items():
        dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{fn}: {arg}[{key!r}] must be a floating-point array, got dtype {dtype}")


def check_key(fn: str, key) -> None:
    """Raises TypeError unless `key` is a JAX random key: `jax.random.key(seed)` (or the older
    uint32 pair `jax.random.PRNGKey(seed)`)."""
    if isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                       or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))):
        return
    raise TypeError(f"{fn}: key must be a JAX random key such as jax.random.key(0), got {key!r}")


def check_number(fn: str, arg: str, value) -> float:
    """Returns the setting `value` as a float; raises TypeError unless it is a real number (a
    Python or numpy int or float, or a concrete 0-d array of one; not a bool)."""
    if (isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, jax.core.Tracer)
            and value.ndim == 0 and value.dtype != bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {arg}={value!r} must be a number")
    return float(value)


def check_choice(fn: str, arg: str, value, allowed: Iterable) -> None:
    """Raises ValueError unless `value` is one of `allowed`, listing the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{fn}: {arg}={value!r} is not allowed; expected one of {allowed}")


def check_int(fn: str, arg: str, value, what: str = "an int") -> int:
    """Returns `value` as an int: a Python or numpy int or a concrete 0-d integer array (anything
    `operator.index` takes), not a bool; raises TypeError naming `what` was expected."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {arg} must be {what}, got {value!r} of type {type(value).__name__}") from None


def check_positive_int(fn: str, arg: str, value) -> int:
    """Returns `value` as an int, or raises ValueError/TypeError if it is not an int >= 1."""
    value = check_int(fn, arg, value, "a positive int")
    if value < 1:
        raise ValueError(f"{fn}: {arg} must be a positive int (>= 1), got {value}")
    return int(value)


def as_pair(fn: str, arg: str, value, minimum: int = 1) -> tuple[int, int]:
    """Normalizes an int or a pair of ints to `(h, w)`, each >= `minimum`.

    Raises:
      TypeError / ValueError naming fn and arg when `value` is neither.
    """
    pair = (value, value) if isinstance(value, (int, jnp.integer)) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, (int, jnp.integer)) and not isinstance(v, bool) for v in pair)):
        raise TypeError(f"{fn}: {arg} must be an int or a pair of ints (h, w), got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: {arg} must be >= {minimum} on both axes, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_float_array(fn: str, arg: str, x):
    """Returns `x` as a jnp array of a floating dtype; raises TypeError for other dtypes."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: {arg} must be a floating-point array, got dtype {x.dtype}")
    return x


def check_real_array(fn: str, arg: str, x):
    """Returns `x` as a jnp array of integers or floats; raises TypeError for other dtypes
    (complex, bool)."""
    def not_real(got: str) -> TypeError:
        return TypeError(f"{fn}: {arg} must be an array of real numbers (ints or floats), got {got}")

    if isinstance(x, (str, bytes)):
        raise not_real(repr(x))
    try:
        array = jnp.asarray(x)
    except TypeError as error:
        raise not_real(repr(x)) from error
    if not (jnp.issubdtype(array.dtype, jnp.integer) or jnp.issubdtype(array.dtype, jnp.floating)):
        raise not_real(f"dtype {array.dtype}")
    return array


def check_float_dtype(fn: str, arg: str, dtype):
    """Returns `dtype` (a name such as "bfloat16" or a dtype) as a jnp floating dtype; raises
    TypeError naming `arg` for anything else."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(f"{fn}: {arg} must be a floating dtype such as 'bfloat16' or 'float32', got {dtype!r}")
    return resolved


def mixed_dtype(fn: str, compute_dtype, dtype):
    """The dtype a function taking ``compute_dtype=`` computes its products in: None (plain, in
    the arrays' own dtype) for None or for `dtype` itself, else the checked floating dtype."""
    if compute_dtype is None:
        return None
    compute_dtype = check_float_dtype(fn, "compute_dtype", compute_dtype)
    return None if compute_dtype == jnp.dtype(dtype) else compute_dtype
