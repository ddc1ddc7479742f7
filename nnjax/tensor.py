"""The chapter's tensor operations, shape-checked, with errors that say why a shape is wrong.

Chapter section "Tensors and Tensor Operations":

    Operation          Description                              Example
    Reshape            change shape, preserve elements          (6,) -> (2, 3)
    Transpose          permute axes                             (B, H, W, C) -> (B, C, H, W)
    Broadcasting       expand dimensions for elementwise ops    (3,) + (2, 3) -> (2, 3)
    Concatenate        join along axis                          two (B, 10) -> (B, 20)
    Stack              create new axis                          two (H, W) -> (2, H, W)
    Squeeze/Unsqueeze  remove/add size-1 dimensions             (1, 3, 1) -> (3,)

plus batched matrix multiplication, (A @ B)_{b,i,j} = sum_k A_{b,i,k} B_{b,k,j}, and einsum.

Each operation is two parts: a shape rule that computes the output shape from the input
shapes (or raises `ValueError` explaining why the operation is invalid), and a thin function
that runs the rule and then calls `jax.numpy`. `explain(op, *shapes, **kwargs)` runs the
same rule without any array, so the shape it returns and the error it raises are exactly
those of the real function:

    >>> explain("reshape", (2, 3, 4), shape=(6, -1))
    (6, 4)
    >>> explain("reshape", (2, 3, 4), shape=(5, 5))
    Traceback (most recent call last):
    ValueError: reshape: cannot reshape (2, 3, 4) to (5, 5): 24 elements cannot fill 25
"""
from __future__ import annotations

import inspect
import math
import string
from typing import Callable, Sequence

import jax.numpy as jnp

__all__ = [
    "reshape", "transpose", "broadcast", "broadcast_shapes", "concatenate", "stack",
    "squeeze", "unsqueeze", "batched_matmul", "einsum", "explain", "OPERATIONS",
]

Shape = tuple[int, ...]


def _is_int(value) -> bool:
    return isinstance(value, (int, jnp.integer)) and not isinstance(value, bool)


def _as_shape(op: str, arg: str, shape, allow_minus_one: bool = False) -> Shape:
    """`shape` as a tuple of ints >= 0 (or -1 where allowed); an int n means (n,)."""
    if _is_int(shape):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(_is_int(d) for d in shape):
        raise TypeError(f"{op}: {arg} must be a tuple of ints, got {shape!r}")
    shape = tuple(int(d) for d in shape)
    lowest = -1 if allow_minus_one else 0
    bad = [d for d in shape if d < lowest]
    if bad:
        allowed = "sizes >= 0 or a single -1" if allow_minus_one else "sizes >= 0"
        raise ValueError(f"{op}: {arg}={shape} has size {bad[0]}; expected {allowed}")
    return shape


def _normalize_axis(op: str, axis, ndim: int, shape: Shape, arg: str = "axis") -> int:
    """`axis` in [-ndim, ndim) as a non-negative int, or an error naming the valid range."""
    if not _is_int(axis):
        raise TypeError(f"{op}: {arg} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: {arg}={axis} is out of range for shape {shape} "
                         f"(rank {ndim}); expected {-ndim} <= {arg} < {ndim}")
    return int(axis) % ndim


def _axes_tuple(op: str, axis, arg: str = "axis") -> tuple:
    """An int or a sequence of ints as a tuple."""
    if _is_int(axis):
        return (axis,)
    if isinstance(axis, (tuple, list)):
        return tuple(axis)
    raise TypeError(f"{op}: {arg} must be an int or a tuple of ints, got {axis!r}")


# ---------------------------------------------------------------------------------------
# Shape rules: input shapes (and settings) -> output shape, or a ValueError saying why not.
# ---------------------------------------------------------------------------------------

def _reshape_rule(x: Shape, *, shape) -> Shape:
    target = _as_shape("reshape", "shape", shape, allow_minus_one=True)
    size = math.prod(x)
    unknown = [i for i, d in enumerate(target) if d == -1]
    if len(unknown) > 1:
        raise ValueError(f"reshape: cannot reshape {x} to {target}: only one size may be -1 "
                         f"(it is inferred from the others), got {len(unknown)}")
    known = math.prod(d for d in target if d != -1)
    if unknown:
        if known == 0 or size % known:
            reason = ("the other sizes hold 0 elements, so -1 is undetermined" if known == 0 else
                      f"{size} elements do not divide into groups of {known}")
            raise ValueError(f"reshape: cannot reshape {x} to {target}: {reason}")
        target = tuple(size // known if d == -1 else d for d in target)
    elif known != size:
        reason = (f"{size} elements cannot fill {known}" if size < known else
                  f"{size} elements do not fit in {known}")
        raise ValueError(f"reshape: cannot reshape {x} to {target}: {reason}")
    return target


def _transpose_rule(x: Shape, *, axes=None) -> Shape:
    ndim = len(x)
    if axes is None:
        return x[::-1]
    axes = _axes_tuple("transpose", axes, "axes")
    if not all(_is_int(a) for a in axes):
        raise TypeError(f"transpose: axes must be ints, got {axes!r}")
    if len(axes) != ndim:
        raise ValueError(f"transpose: axes {axes} has {len(axes)} entries but the input {x} "
                         f"has {ndim} axes; axes must be a permutation of {tuple(range(ndim))}")
    normalized = [_normalize_axis("transpose", a, ndim, x, "axes entry") for a in axes]
    repeated = sorted({a for a in normalized if normalized.count(a) > 1})
    missing = sorted(set(range(ndim)) - set(normalized))
    if repeated:
        raise ValueError(f"transpose: axes {axes} is not a permutation of {tuple(range(ndim))}: "
                         f"axis {', '.join(map(str, repeated))} repeated, "
                         f"axis {', '.join(map(str, missing))} missing")
    return tuple(x[a] for a in normalized)


def broadcast_shapes(*shapes) -> Shape:
    """The shape that elementwise operations on arrays of these shapes produce.

    Broadcasting aligns shapes from the right; on each axis the sizes must be equal or 1
    (a size-1 axis is repeated), and a missing axis counts as 1. The chapter's example:
    (3,) + (2, 3) -> (2, 3).

    Args:
      *shapes: tuples of ints.

    Returns:
      The broadcast shape.

    Raises:
      ValueError: naming the axis (counted from the right, as broadcasting aligns) and the
        sizes that clash, e.g. ``axis -1: 3 vs 4, neither is 1``.
    """
    shapes = tuple(_as_shape("broadcast_shapes", f"shape {i}", s) for i, s in enumerate(shapes))
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        sizes = [s[axis] for s in shapes if len(s) >= -axis]
        distinct = sorted({d for d in sizes if d != 1})
        if len(distinct) > 1:
            listed = ", ".join(map(str, shapes[:-1])) + f" with {shapes[-1]}"
            raise ValueError(f"broadcast_shapes: cannot broadcast {listed}: axis {axis}: "
                             f"{' vs '.join(map(str, distinct))}, "
                             f"{'neither' if len(distinct) == 2 else 'none'} is 1")
        out.append(distinct[0] if distinct else 1)
    return tuple(out)


def _broadcast_rule(x: Shape, *, shape) -> Shape:
    target = _as_shape("broadcast", "shape", shape)
    if len(x) > len(target):
        raise ValueError(f"broadcast: cannot broadcast {x} to {target}: the input has "
                         f"{len(x)} axes, the target only {len(target)}; broadcasting adds "
                         f"axes on the left, it never removes them")
    for axis in range(-len(x), 0):
        if x[axis] not in (1, target[axis]):
            raise ValueError(f"broadcast: cannot broadcast {x} to {target}: axis {axis}: "
                             f"{x[axis]} vs {target[axis]}; an input size must be 1 or "
                             f"equal the target's")
    return target


def _concatenate_rule(*shapes: Shape, axis=0) -> Shape:
    if not shapes:
        raise ValueError("concatenate: needs at least one array, got none")
    first = shapes[0]
    for i, s in enumerate(shapes[1:], start=1):
        if len(s) != len(first):
            raise ValueError(f"concatenate: array 0 has shape {first} (rank {len(first)}) but "
                             f"array {i} has shape {s} (rank {len(s)}); all must have the same rank")
    if not first:
        raise ValueError("concatenate: cannot concatenate scalars (shape ()); they have no "
                         "axis to join along; use stack")
    axis = _normalize_axis("concatenate", axis, len(first), first)
    for i, s in enumerate(shapes[1:], start=1):
        for a, (d0, d) in enumerate(zip(first, s)):
            if a != axis and d0 != d:
                raise ValueError(f"concatenate: array 0 has shape {first} but array {i} has "
                                 f"shape {s}: axis {a}: {d0} vs {d}; every axis except the "
                                 f"joined axis={axis} must match")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


def _stack_rule(*shapes: Shape, axis=0) -> Shape:
    if not shapes:
        raise ValueError("stack: needs at least one array, got none")
    first = shapes[0]
    for i, s in enumerate(shapes[1:], start=1):
        if s != first:
            raise ValueError(f"stack: array 0 has shape {first} but array {i} has shape {s}; "
                             f"stacking needs identical shapes")
    axis = _normalize_axis("stack", axis, len(first) + 1, first)
    return first[:axis] + (len(shapes),) + first[axis:]


def _squeeze_rule(x: Shape, *, axis=None) -> Shape:
    if axis is None:
        return tuple(d for d in x if d != 1)
    axes = {_normalize_axis("squeeze", a, len(x), x) for a in _axes_tuple("squeeze", axis)}
    for a in sorted(axes):
        if x[a] != 1:
            raise ValueError(f"squeeze: cannot squeeze axis {a} of {x}: its size is {x[a]}, "
                             f"not 1; only size-1 axes can be removed")
    return tuple(d for a, d in enumerate(x) if a not in axes)


def _unsqueeze_rule(x: Shape, *, axis) -> Shape:
    axes = _axes_tuple("unsqueeze", axis)
    ndim = len(x) + len(axes)
    normalized = [_normalize_axis("unsqueeze", a, ndim, x) for a in axes]
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"unsqueeze: axis {axes} names the same output axis twice")
    rest = iter(x)
    return tuple(1 if a in normalized else next(rest) for a in range(ndim))


def _batched_matmul_rule(a: Shape, b: Shape) -> Shape:
    for name, s, layout in (("a", a, "(B, M, K)"), ("b", b, "(B, K, N)")):
        if len(s) != 3:
            raise ValueError(f"batched_matmul: {name} has shape {s} (rank {len(s)}), "
                             f"expected rank 3: {layout}")
    if a[0] != b[0]:
        raise ValueError(f"batched_matmul: batch sizes differ: a is (B, M, K) = {a} with "
                         f"B = {a[0]}, b is (B, K, N) = {b} with B = {b[0]}")
    if a[2] != b[1]:
        raise ValueError(f"batched_matmul: inner dimensions differ: a is (B, M, K) = {a} with "
                         f"K = {a[2]}, b is (B, K, N) = {b} with K = {b[1]}; "
                         f"(A @ B)_bij = sum_k A_bik B_bkj needs the same K")
    return (a[0], a[1], b[2])


def _parse_subscripts(spec: str, term: str) -> list:
    """'b...ij' -> ['b', '...', 'i', 'j']; letters only, at most one ellipsis."""
    parts = term.replace("...", ".")
    if parts.count(".") > 1:
        raise ValueError(f"einsum: {spec!r}: term {term!r} has more than one '...'")
    bad = [c for c in parts if c != "." and c not in string.ascii_letters]
    if bad:
        raise ValueError(f"einsum: {spec!r}: term {term!r} has {bad[0]!r}; "
                         f"subscripts are letters a-z, A-Z and '...'")
    return ["..." if c == "." else c for c in parts]


def _einsum_rule(*shapes: Shape, spec) -> Shape:
    if not isinstance(spec, str):
        raise TypeError(f"einsum: spec must be a string such as 'bik,bkj->bij', got {spec!r}")
    inputs, arrow, output = spec.partition("->")
    terms = [_parse_subscripts(spec, t) for t in inputs.split(",")]
    if len(terms) != len(shapes):
        raise ValueError(f"einsum: {spec!r} names {len(terms)} operand(s) but "
                         f"{len(shapes)} were given")
    sizes: dict[str, tuple[int, int]] = {}
    ellipsis_shapes = []
    for i, (term, shape) in enumerate(zip(terms, shapes)):
        letters = [c for c in term if c != "..."]
        has_ellipsis = "..." in term
        if len(shape) != len(letters) and not (has_ellipsis and len(shape) >= len(letters)):
            expect = f"at least {len(letters)}" if has_ellipsis else f"{len(letters)}"
            raise ValueError(f"einsum: {spec!r}: operand {i} has shape {shape} (rank "
                             f"{len(shape)}) but its subscripts {''.join(term)!r} need rank {expect}")
        n_ellipsis = len(shape) - len(letters)
        dims = iter(shape)
        for c in term:
            if c == "...":
                ellipsis_shapes.append(tuple(next(dims) for _ in range(n_ellipsis)))
                continue
            size = next(dims)
            if c in sizes and sizes[c][0] != size:
                seen_size, seen_operand = sizes[c]
                raise ValueError(f"einsum: {spec!r}: letter {c!r} has size {seen_size} in "
                                 f"operand {seen_operand} but {size} in operand {i}; a letter "
                                 f"names one axis size")
            sizes.setdefault(c, (size, i))
    batch = broadcast_shapes(*ellipsis_shapes) if ellipsis_shapes else ()
    if arrow:
        out_terms = _parse_subscripts(spec, output)
        for c in out_terms:
            if c != "..." and out_terms.count(c) > 1:
                raise ValueError(f"einsum: {spec!r}: output letter {c!r} appears twice")
            if c != "..." and c not in sizes:
                raise ValueError(f"einsum: {spec!r}: output letter {c!r} is in no input")
        if "..." in out_terms and not ellipsis_shapes:
            raise ValueError(f"einsum: {spec!r}: the output has '...' but no input does")
    else:
        counts = {c: sum(t.count(c) for t in terms) for c in sizes}
        out_terms = (["..."] if ellipsis_shapes else []) + sorted(c for c, n in counts.items() if n == 1)
    out = []
    for c in out_terms:
        out.extend(batch if c == "..." else (sizes[c][0],))
    return tuple(out)


OPERATIONS: dict[str, tuple[Callable, str]] = {
    "reshape": (_reshape_rule, "explain('reshape', x_shape, shape=new_shape)"),
    "transpose": (_transpose_rule, "explain('transpose', x_shape, axes=None)"),
    "broadcast": (_broadcast_rule, "explain('broadcast', x_shape, shape=target_shape)"),
    "broadcast_shapes": (broadcast_shapes, "explain('broadcast_shapes', shape_1, shape_2, ...)"),
    "concatenate": (_concatenate_rule, "explain('concatenate', shape_1, shape_2, ..., axis=0)"),
    "stack": (_stack_rule, "explain('stack', shape_1, shape_2, ..., axis=0)"),
    "squeeze": (_squeeze_rule, "explain('squeeze', x_shape, axis=None)"),
    "unsqueeze": (_unsqueeze_rule, "explain('unsqueeze', x_shape, axis=axis)"),
    "batched_matmul": (_batched_matmul_rule, "explain('batched_matmul', a_shape, b_shape)"),
    "einsum": (_einsum_rule, "explain('einsum', shape_1, ..., spec='bik,bkj->bij')"),
}
"""op name -> (shape rule, how to call `explain` for it)."""


def explain(op: str, *shapes, **kwargs) -> Shape:
    """The output shape of a tensor operation for given input shapes, computing nothing.

    Uses the very shape rule the real function runs, so for valid inputs the result equals
    `op(...)`'s output shape, and for invalid ones it raises the same `ValueError`.

    Args:
      op: one of `OPERATIONS`: ``"reshape"``, ``"transpose"``, ``"broadcast"``,
        ``"broadcast_shapes"``, ``"concatenate"``, ``"stack"``, ``"squeeze"``,
        ``"unsqueeze"``, ``"batched_matmul"``, ``"einsum"``.
      *shapes: the input shapes, tuples of ints.
      **kwargs: the operation's settings: ``shape=`` (reshape, broadcast), ``axes=``
        (transpose), ``axis=`` (concatenate, stack, squeeze, unsqueeze), ``spec=`` (einsum).

    Returns:
      The output shape, a tuple of ints.

    Examples:
      ``explain("transpose", (8, 28, 28, 3), axes=(0, 3, 1, 2)) == (8, 3, 28, 28)``;
      ``explain("concatenate", (32, 10), (32, 10), axis=1) == (32, 20)``;
      ``explain("einsum", (2, 5, 8), (2, 7, 8), spec="bqd,bkd->bqk") == (2, 5, 7)``.

    Raises:
      ValueError: an unknown `op`, or an invalid operation, saying why.
      TypeError: settings the operation does not take, showing how to call it.
    """
    if op not in OPERATIONS:
        raise ValueError(f"explain: op={op!r} is not allowed; expected one of {list(OPERATIONS)}")
    rule, usage = OPERATIONS[op]
    shapes = tuple(_as_shape(op, f"shape {i}", s) for i, s in enumerate(shapes))
    try:
        inspect.signature(rule).bind(*shapes, **kwargs)
    except TypeError as err:
        raise TypeError(f"explain: {op} called with {len(shapes)} shape(s) and settings "
                        f"{sorted(kwargs)} ({err}); call it as {usage}") from None
    return rule(*shapes, **kwargs)


# ---------------------------------------------------------------------------------------
# The operations: the shape rule first (it raises for invalid input), then jax.numpy.
# ---------------------------------------------------------------------------------------

def _shape(x) -> Shape:
    return tuple(jnp.shape(x))


def reshape(x, shape):
    """Changes the shape, keeping the elements in row-major order: (6,) -> (2, 3).

    Args:
      x: array of any shape.
      shape: the new shape; one entry may be -1, inferred from the element count.

    Returns:
      `x`'s elements in the new shape.

    Raises:
      ValueError: when the element counts differ, e.g. ``reshape: cannot reshape (2, 3, 4)
        to (5, 5): 24 elements cannot fill 25``, or -1 cannot be inferred.
    """
    x = jnp.asarray(x)
    return jnp.reshape(x, _reshape_rule(_shape(x), shape=shape))


def transpose(x, axes=None):
    """Permutes the axes: output axis i is input axis ``axes[i]``; (B, H, W, C) -> (B, C, H, W)
    with ``axes=(0, 3, 1, 2)``.

    Args:
      x: array of rank n.
      axes: a permutation of (0, ..., n - 1) (negative entries count from the end);
        None reverses the axes.

    Raises:
      ValueError: when `axes` is not a permutation of the input's axes (wrong length, an
        axis repeated or missing, out of range).
    """
    x = jnp.asarray(x)
    _transpose_rule(_shape(x), axes=axes)
    return jnp.transpose(x, axes)


def broadcast(x, shape):
    """Expands `x` to `shape` by repeating size-1 axes and adding axes on the left.

    Args:
      x: array whose shape broadcasts to `shape`, e.g. (3,) -> (2, 3).
      shape: the target shape.

    Raises:
      ValueError: naming the axis where the input size is neither 1 nor the target's.
    """
    x = jnp.asarray(x)
    return jnp.broadcast_to(x, _broadcast_rule(_shape(x), shape=shape))


def concatenate(xs: Sequence, axis: int = 0):
    """Joins arrays along an existing axis: two (B, 10) along axis 1 -> (B, 20).

    Args:
      xs: a non-empty sequence of arrays of the same rank, equal on every axis but `axis`.
      axis: the axis to join along.

    Raises:
      ValueError: naming the arrays and the axis where they differ off the joined axis.
    """
    xs = [jnp.asarray(x) for x in xs]
    _concatenate_rule(*map(_shape, xs), axis=axis)
    return jnp.concatenate(xs, axis=axis)


def stack(xs: Sequence, axis: int = 0):
    """Stacks same-shaped arrays along a new axis: two (H, W) -> (2, H, W).

    Args:
      xs: a non-empty sequence of arrays of identical shape.
      axis: where the new axis goes in the output, -(n + 1) <= axis <= n for rank-n inputs.

    Raises:
      ValueError: naming the first array whose shape differs.
    """
    xs = [jnp.asarray(x) for x in xs]
    _stack_rule(*map(_shape, xs), axis=axis)
    return jnp.stack(xs, axis=axis)


def squeeze(x, axis=None):
    """Removes size-1 axes: (1, 3, 1) -> (3,).

    Args:
      x: array.
      axis: an int or tuple of ints naming size-1 axes to remove; None removes all of them.

    Raises:
      ValueError: when a named axis does not have size 1.
    """
    x = jnp.asarray(x)
    return jnp.reshape(x, _squeeze_rule(_shape(x), axis=axis))


def unsqueeze(x, axis):
    """Adds size-1 axes: (3,) with axis=0 -> (1, 3); axis=(0, -1) -> (1, 3, 1).

    Args:
      x: array of rank n.
      axis: an int or tuple of ints, positions in the OUTPUT (rank n + len(axis)),
        negative counting from its end.

    Raises:
      ValueError: for an axis outside the output's range or named twice.
    """
    x = jnp.asarray(x)
    return jnp.reshape(x, _unsqueeze_rule(_shape(x), axis=axis))


def batched_matmul(a, b):
    """(A @ B)_{b,i,j} = sum_k A_{b,i,k} B_{b,k,j}: (B, M, K) @ (B, K, N) -> (B, M, N).

    Args:
      a: shape (B, M, K).
      b: shape (B, K, N).

    Returns:
      Shape (B, M, N).

    Raises:
      ValueError: for a rank other than 3, different batch sizes B, or different inner
        sizes K (naming the K of each).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _batched_matmul_rule(_shape(a), _shape(b))
    return jnp.matmul(a, b)


def einsum(spec: str, *operands):
    """Einstein summation: ``einsum('bik,bkj->bij', A, B)`` is the batched matrix product,
    ``einsum('bqd,bkd->bqk', Q, K)`` attention's Q K^T.

    A letter names one axis size: every axis it labels must have exactly that size (NumPy
    would also stretch a size-1 axis; here that is an error, so a typo in the subscripts
    cannot pass silently). Letters absent from the output are summed over. Without '->' the
    output is '...' followed by the letters that appear once, in alphabetical order (NumPy's
    rule). '...' stands for leading axes that broadcast against each other; leaving it out
    of an explicit output sums over them.

    Args:
      spec: the subscripts, e.g. ``"bik,bkj->bij"``.
      *operands: one array per comma-separated term.

    Raises:
      ValueError: for a term whose length differs from its operand's rank, a letter with
        two sizes, an output letter not in any input, or a wrong operand count.
    """
    operands = [jnp.asarray(x) for x in operands]
    _einsum_rule(*map(_shape, operands), spec=spec)
    return jnp.einsum(spec, *operands)
