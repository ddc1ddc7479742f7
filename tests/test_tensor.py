"""nnjax.tensor: each operation against NumPy, explain() against the real output shapes,
and the message of every invalid operation."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnjax import tensor

RNG = np.random.default_rng(0)


def arange(*shape):
    return np.arange(math.prod(shape), dtype=np.float32).reshape(shape)


# --- each operation against NumPy, and explain() against the output shape -----------------

CASES = [
    # (op, numpy reference, input shapes, settings)
    ("reshape", lambda x, shape: np.reshape(x, shape), [(6,)], {"shape": (2, 3)}),
    ("reshape", lambda x, shape: np.reshape(x, shape), [(2, 3, 4)], {"shape": (4, -1)}),
    ("reshape", lambda x, shape: np.reshape(x, shape), [(2, 3, 4)], {"shape": (-1,)}),
    ("reshape", lambda x, shape: np.reshape(x, shape), [()], {"shape": (1, 1)}),
    ("reshape", lambda x, shape: np.reshape(x, shape), [(0, 3)], {"shape": (3, 0)}),
    ("transpose", lambda x, axes: np.transpose(x, axes), [(2, 4, 5, 3)], {"axes": (0, 3, 1, 2)}),
    ("transpose", lambda x, axes: np.transpose(x, axes), [(2, 3, 4)], {"axes": (-1, 0, 1)}),
    ("transpose", lambda x, axes: np.transpose(x, axes), [(2, 3, 4)], {"axes": None}),
    ("transpose", lambda x, axes: np.transpose(x, axes), [()], {"axes": ()}),
    ("broadcast", lambda x, shape: np.broadcast_to(x, shape), [(3,)], {"shape": (2, 3)}),
    ("broadcast", lambda x, shape: np.broadcast_to(x, shape), [(4, 1)], {"shape": (2, 4, 5)}),
    ("broadcast", lambda x, shape: np.broadcast_to(x, shape), [()], {"shape": (2, 2)}),
    ("concatenate", lambda *xs, axis: np.concatenate(xs, axis), [(5, 10), (5, 10)], {"axis": 1}),
    ("concatenate", lambda *xs, axis: np.concatenate(xs, axis), [(1, 4), (3, 4), (2, 4)], {"axis": 0}),
    ("concatenate", lambda *xs, axis: np.concatenate(xs, axis), [(2, 3, 1), (2, 3, 4)], {"axis": -1}),
    ("stack", lambda *xs, axis: np.stack(xs, axis), [(4, 5), (4, 5)], {"axis": 0}),
    ("stack", lambda *xs, axis: np.stack(xs, axis), [(4, 5)] * 3, {"axis": -1}),
    ("stack", lambda *xs, axis: np.stack(xs, axis), [(4, 5)] * 3, {"axis": 1}),
    ("squeeze", lambda x, axis: np.squeeze(x, axis), [(1, 3, 1)], {"axis": None}),
    ("squeeze", lambda x, axis: np.squeeze(x, axis), [(1, 3, 1)], {"axis": 0}),
    ("squeeze", lambda x, axis: np.squeeze(x, axis), [(1, 3, 1)], {"axis": (0, -1)}),
    ("squeeze", lambda x, axis: np.squeeze(x, axis), [(2, 3)], {"axis": None}),
    ("unsqueeze", lambda x, axis: np.expand_dims(x, axis), [(3,)], {"axis": 0}),
    ("unsqueeze", lambda x, axis: np.expand_dims(x, axis), [(3,)], {"axis": -1}),
    ("unsqueeze", lambda x, axis: np.expand_dims(x, axis), [(2, 3)], {"axis": (0, -1)}),
    ("unsqueeze", lambda x, axis: np.expand_dims(x, axis), [(2, 3)], {"axis": 1}),
    ("batched_matmul", np.matmul, [(2, 3, 4), (2, 4, 5)], {}),
    ("batched_matmul", np.matmul, [(1, 1, 1), (1, 1, 7)], {}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(2, 3, 4), (2, 4, 5)], {"spec": "bik,bkj->bij"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(2, 5, 8), (2, 7, 8)], {"spec": "bqd,bkd->bqk"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(3, 4), (4, 2)], {"spec": "ij,jk"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(3, 3)], {"spec": "ii->"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(3, 3)], {"spec": "ii->i"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(3,), (4,)], {"spec": "i,j->ij"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(5, 2, 3), (3, 4)], {"spec": "...ij,...jk"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(6, 1, 2, 3), (5, 3, 4)], {"spec": "...ij,...jk->...ik"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(2, 3)], {"spec": "ij->ji"}),
    ("einsum", lambda *xs, spec: np.einsum(spec, *xs), [(2, 3), (2, 3)], {"spec": "Ab,Ab->A"}),
]


def _call(op, xs, kwargs):
    fn = getattr(tensor, op)
    if op in ("concatenate", "stack"):
        return fn(xs, **kwargs)
    if op == "einsum":
        return fn(kwargs["spec"], *xs)
    return fn(*xs, **kwargs)


@pytest.mark.parametrize("op, reference, shapes, kwargs", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_operation_matches_numpy_and_explain(op, reference, shapes, kwargs):
    xs = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    out = np.asarray(_call(op, xs, kwargs))
    expected = reference(*xs, **kwargs)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.shape == expected.shape
    assert tensor.explain(op, *shapes, **kwargs) == expected.shape


@pytest.mark.parametrize("shapes", [[(3,), (2, 3)], [(2, 1, 4), (5, 1)], [(), (4,)], [(1,), (1,)],
                                    [(1, 3), (2, 1), (4, 1, 1)], [(0, 1), (1, 5)]])
def test_broadcast_shapes_matches_numpy(shapes):
    assert tensor.broadcast_shapes(*shapes) == np.broadcast_shapes(*shapes)
    assert tensor.explain("broadcast_shapes", *shapes) == np.broadcast_shapes(*shapes)


def test_chapter_table_examples():
    """The chapter's table, row by row, through explain()."""
    assert tensor.explain("reshape", (6,), shape=(2, 3)) == (2, 3)
    assert tensor.explain("transpose", (8, 28, 28, 3), axes=(0, 3, 1, 2)) == (8, 3, 28, 28)
    assert tensor.explain("broadcast_shapes", (3,), (2, 3)) == (2, 3)
    assert tensor.explain("concatenate", (32, 10), (32, 10), axis=1) == (32, 20)
    assert tensor.explain("stack", (28, 28), (28, 28)) == (2, 28, 28)
    assert tensor.explain("squeeze", (1, 3, 1)) == (3,)
    assert tensor.explain("batched_matmul", (4, 2, 3), (4, 3, 5)) == (4, 2, 5)


def test_operations_run_under_jit():
    import jax

    x = arange(2, 3, 4)
    out = jax.jit(lambda x: tensor.transpose(tensor.reshape(x, (6, 4)), (1, 0)))(x)
    np.testing.assert_array_equal(out, x.reshape(6, 4).T)


# --- property tests: explain() agrees with NumPy on random shapes ---------------------------

dims = st.lists(st.integers(1, 4), min_size=0, max_size=4)


@settings(max_examples=15, deadline=None)
@given(shape=dims, data=st.data())
def test_reshape_property(shape, data):
    """Any regrouping of the factors is accepted and matches NumPy; a changed count fails."""
    size = math.prod(shape)
    factors = [f for d in shape for f in _prime_factors(d)]
    order = data.draw(st.permutations(factors))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(order)), max_size=3)))
    target = [math.prod(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(order)])]
    if target and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    x = arange(*shape)
    expected = np.reshape(x, target).shape
    assert tensor.explain("reshape", tuple(shape), shape=tuple(target)) == expected
    assert tensor.reshape(x, tuple(target)).shape == expected
    wrong = (size + data.draw(st.integers(1, 5)),)
    with pytest.raises(ValueError, match=f"{size} elements cannot fill {wrong[0]}"):
        tensor.explain("reshape", tuple(shape), shape=wrong)
    with pytest.raises(ValueError, match=f"{size} elements cannot fill {wrong[0]}"):
        tensor.reshape(x, wrong)


def _prime_factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@settings(max_examples=15, deadline=None)
@given(a=st.lists(st.integers(1, 3), max_size=4), b=st.lists(st.integers(1, 3), max_size=4))
def test_broadcast_property(a, b):
    """tensor.broadcast_shapes and tensor.broadcast agree with NumPy, valid or not."""
    a, b = tuple(a), tuple(b)
    try:
        expected = np.broadcast_shapes(a, b)
    except ValueError:
        with pytest.raises(ValueError, match="neither is 1"):
            tensor.explain("broadcast_shapes", a, b)
        return
    assert tensor.explain("broadcast_shapes", a, b) == expected
    assert tensor.broadcast(arange(*a), expected).shape == expected
    assert tensor.explain("broadcast", a, shape=expected) == expected


# --- every error message ------------------------------------------------------------------

ERRORS = [
    ("reshape", [(2, 3, 4)], {"shape": (5, 5)},
     r"reshape: cannot reshape \(2, 3, 4\) to \(5, 5\): 24 elements cannot fill 25"),
    ("reshape", [(2, 3, 4)], {"shape": (5,)}, r"cannot reshape \(2, 3, 4\) to \(5,\): 24 elements do not fit in 5"),
    ("reshape", [(2, 3)], {"shape": (-1, -1)}, r"only one size may be -1.*got 2"),
    ("reshape", [(2, 3)], {"shape": (4, -1)}, r"6 elements do not divide into groups of 4"),
    ("reshape", [(0, 3)], {"shape": (0, -1)}, r"the other sizes hold 0 elements, so -1 is undetermined"),
    ("reshape", [(6,)], {"shape": (2, -3)}, r"shape=\(2, -3\) has size -3; expected sizes >= 0 or a single -1"),
    ("transpose", [(2, 3, 4)], {"axes": (0, 0, 1)},
     r"axes \(0, 0, 1\) is not a permutation of \(0, 1, 2\): axis 0 repeated, axis 2 missing"),
    ("transpose", [(2, 3, 4)], {"axes": (1, 0)}, r"axes \(1, 0\) has 2 entries but the input \(2, 3, 4\) has 3 axes"),
    ("transpose", [(2, 3)], {"axes": (0, 2)}, r"axes entry=2 is out of range for shape \(2, 3\) \(rank 2\); expected -2 <= axes entry < 2"),
    ("broadcast_shapes", [(3,), (2, 4)], {}, r"cannot broadcast \(3,\) with \(2, 4\): axis -1: 3 vs 4, neither is 1"),
    ("broadcast_shapes", [(2, 1), (3, 1), (1, 5)], {}, r"axis -2: 2 vs 3, neither is 1"),
    ("broadcast_shapes", [(2,), (3,), (4,)], {}, r"axis -1: 2 vs 3 vs 4, none is 1"),
    ("broadcast", [(3,)], {"shape": (2, 4)},
     r"broadcast: cannot broadcast \(3,\) to \(2, 4\): axis -1: 3 vs 4; an input size must be 1 or equal the target's"),
    ("broadcast", [(3,)], {"shape": (1,)}, r"axis -1: 3 vs 1"),
    ("broadcast", [(2, 3)], {"shape": (3,)}, r"the input has 2 axes, the target only 1"),
    ("concatenate", [(5, 10), (5, 12)], {"axis": 0},
     r"array 0 has shape \(5, 10\) but array 1 has shape \(5, 12\): axis 1: 10 vs 12; every axis except the joined axis=0 must match"),
    ("concatenate", [(5, 10), (5,)], {"axis": 0}, r"array 1 has shape \(5,\) \(rank 1\); all must have the same rank"),
    ("concatenate", [], {"axis": 0}, r"concatenate: needs at least one array"),
    ("concatenate", [(), ()], {"axis": 0}, r"cannot concatenate scalars"),
    ("concatenate", [(2, 3), (2, 3)], {"axis": 2}, r"concatenate: axis=2 is out of range for shape \(2, 3\)"),
    ("stack", [(4, 5), (5, 4)], {"axis": 0}, r"array 0 has shape \(4, 5\) but array 1 has shape \(5, 4\); stacking needs identical shapes"),
    ("stack", [(4, 5), (4, 5)], {"axis": 3}, r"stack: axis=3 is out of range .*expected -3 <= axis < 3"),
    ("stack", [], {}, r"stack: needs at least one array"),
    ("squeeze", [(2, 3, 1)], {"axis": 1}, r"squeeze: cannot squeeze axis 1 of \(2, 3, 1\): its size is 3, not 1"),
    ("squeeze", [(1, 3)], {"axis": 2}, r"squeeze: axis=2 is out of range"),
    ("unsqueeze", [(2, 3)], {"axis": 3}, r"unsqueeze: axis=3 is out of range .*expected -3 <= axis < 3"),
    ("unsqueeze", [(2, 3)], {"axis": (0, -4)}, r"unsqueeze: axis \(0, -4\) names the same output axis twice"),
    ("batched_matmul", [(2, 3, 4), (2, 5, 6)], {},
     r"inner dimensions differ: a is \(B, M, K\) = \(2, 3, 4\) with K = 4, b is \(B, K, N\) = \(2, 5, 6\) with K = 5"),
    ("batched_matmul", [(2, 3, 4), (3, 4, 6)], {}, r"batch sizes differ: .* B = 2, .* B = 3"),
    ("batched_matmul", [(3, 4), (4, 6)], {}, r"a has shape \(3, 4\) \(rank 2\), expected rank 3: \(B, M, K\)"),
    ("einsum", [(2, 3), (4, 5)], {"spec": "ij,jk->ik"},
     r"letter 'j' has size 3 in operand 0 but 4 in operand 1"),
    ("einsum", [(1, 3), (2, 3)], {"spec": "ij,ij->ij"}, r"letter 'i' has size 1 in operand 0 but 2 in operand 1"),
    ("einsum", [(2, 3)], {"spec": "ijk->i"}, r"operand 0 has shape \(2, 3\) \(rank 2\) but its subscripts 'ijk' need rank 3"),
    ("einsum", [(2,)], {"spec": "...ij->i"}, r"need rank at least 2"),
    ("einsum", [(2, 3)], {"spec": "ij,jk->ik"}, r"names 2 operand\(s\) but 1 were given"),
    ("einsum", [(2, 3)], {"spec": "ij->iz"}, r"output letter 'z' is in no input"),
    ("einsum", [(2, 3)], {"spec": "ij->ii"}, r"output letter 'i' appears twice"),
    ("einsum", [(2, 3)], {"spec": "i1->i"}, r"term 'i1' has '1'; subscripts are letters"),
    ("einsum", [(2, 3)], {"spec": "ij->...i"}, r"the output has '...' but no input does"),
    ("einsum", [(2, 3)], {"spec": "......ij->ij"}, r"more than one '...'"),
]


@pytest.mark.parametrize("op, shapes, kwargs, message", ERRORS,
                         ids=[f"{e[0]}-{e[1]}-{e[2]}" for e in ERRORS])
def test_error_messages_from_explain_and_function(op, shapes, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        tensor.explain(op, *shapes, **kwargs)
    assert str(err.value).startswith(f"{op}: "), "the message names the operation first"
    if op == "broadcast_shapes":
        with pytest.raises(ValueError, match=message):
            tensor.broadcast_shapes(*shapes)
        return
    xs = [np.zeros(s, np.float32) for s in shapes]
    with pytest.raises(ValueError, match=message):
        _call(op, xs, kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda: tensor.explain("flatten", (2, 3)), r"op='flatten' is not allowed; expected one of \['reshape'"),
    (lambda: tensor.explain("reshape", (2, 3), axes=(1, 0)), r"call it as explain\('reshape', x_shape, shape=new_shape\)"),
    (lambda: tensor.explain("batched_matmul", (2, 3, 4)), r"call it as explain\('batched_matmul', a_shape, b_shape\)"),
    (lambda: tensor.explain("squeeze", (2, -3)), r"squeeze: shape 0=\(2, -3\) has size -3; expected sizes >= 0"),
])
def test_explain_usage_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: tensor.reshape(np.zeros(6), "23"), r"reshape: shape must be a tuple of ints, got '23'"),
    (lambda: tensor.transpose(np.zeros((2, 3)), (0.0, 1)), r"transpose: axes must be ints"),
    (lambda: tensor.squeeze(np.zeros((1, 3)), 0.5), r"squeeze: axis must be an int or a tuple of ints"),
    (lambda: tensor.stack([np.zeros(2)], axis="0"), r"stack: axis must be an int, got '0'"),
    (lambda: tensor.explain("einsum", (2,), spec=None), r"einsum: spec must be a string"),
])
def test_type_errors(call, message):
    with pytest.raises(TypeError, match=message):
        call()
