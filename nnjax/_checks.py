"""Argument checks shared by every public function.

Each check raises with a message that names the function, the argument, what was expected
and what came, so a learner can act on it without reading nnjax's source. Shape checks use
chex; inside `jax.jit` they run once, at trace time, and cost nothing when the step runs.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import chex
import jax.numpy as jnp


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
    shown = "(" + ", ".join("?" if d is None else str(d) for d in expected) + ("," if len(expected) == 1 else "") + ")"
    chex.assert_shape(
        x, tuple(expected),
        custom_message=f"{fn}: {arg} has shape {tuple(jnp.shape(x))}, expected {shown}{because}",
    )


def check_rank(fn: str, arg: str, x, rank: int, layout: str) -> None:
    """Asserts `x.ndim == rank`; `layout` names the axes, e.g. ``"(C, H, W)"``."""
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


def check_choice(fn: str, arg: str, value, allowed: Iterable) -> None:
    """Raises ValueError unless `value` is one of `allowed`, listing the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{fn}: {arg}={value!r} is not allowed; expected one of {allowed}")


def check_positive_int(fn: str, arg: str, value) -> int:
    """Returns `value` as an int, or raises ValueError/TypeError if it is not an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, jnp.integer)):
        raise TypeError(f"{fn}: {arg} must be a positive int, got {value!r} of type {type(value).__name__}")
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
