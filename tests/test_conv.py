"""Tests for nnjax.layers.conv and nnjax.backprop.conv.

Forward passes are checked against a naive loop written here from the chapter's formula,
Output_{c,i,j} = sum_{c_in} sum_m sum_n I[c_in, i*s+m, j*s+n] K[c, c_in, m, n] + b_c on the
zero-padded input; backward passes against jax.vjp and central finite differences (float64).
"""
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnjax.backprop.conv import conv2d_backward, conv2d_input_grad, conv2d_param_grads, conv2d_weight_grad
from nnjax.layers.conv import (
    conv2d, conv2d_im2col, conv2d_init, conv_output_size, conv_padding, im2col,
)

KERNELS = [1, 3, 5]
STRIDES = [1, 2, (1, 2)]
PADDINGS = ["valid", "same", 1, (2, 1)]
IN_SHAPE = (2, 7, 10)  # C_in, H, W: non-square; with stride 2 some rows are reached by no window
C_OUT = 3


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def reference_pads(in_hw, kernel, stride, padding):
    """((top, bottom), (left, right)) written out independently of nnjax."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        pads = []
        for n, k, s in zip(in_hw, kernel, stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    ph, pw = pair(padding)
    return (ph, ph), (pw, pw)


def naive_conv(W, b, x, stride, pads):
    """The chapter's formula, looped over output positions, in numpy."""
    W, b, x = np.asarray(W), np.asarray(b), np.asarray(x)
    c_out, _, kh, kw = W.shape
    sh, sw = stride
    xp = np.pad(x, ((0, 0),) + tuple(pads))
    out_h = (xp.shape[1] - kh) // sh + 1
    out_w = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((c_out, out_h, out_w), xp.dtype)
    for c in range(c_out):
        for i in range(out_h):
            for j in range(out_w):
                patch = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw]
                out[c, i, j] = np.sum(patch * W[c]) + b[c]
    return out


def make_case(kernel, dtype, seed=0):
    rng = np.random.default_rng(seed)
    kh, kw = pair(kernel)
    params = {"W": jnp.asarray(rng.normal(size=(C_OUT, IN_SHAPE[0], kh, kw)), dtype),
              "b": jnp.asarray(rng.normal(size=(C_OUT,)), dtype)}
    return params, jnp.asarray(rng.normal(size=IN_SHAPE), dtype)


# Every stride/padding combination with the 3x3 kernel; kernels 1 and 5 on a spread of them.
CASES = ([(3, s, p) for s, p in itertools.product(STRIDES, PADDINGS)]
         + [(k, s, p) for k in (1, 5) for s, p in [(1, "valid"), (2, "same"), ((1, 2), (2, 1)), (2, 1)]])


def naive_loss_directional_derivatives(params, x, delta, stride, pads, directions, eps=1e-6):
    """Central differences of L = sum(naive_conv(...) * delta) along each (dW, db, dx) direction."""
    W, b, x, delta = (np.asarray(a) for a in (params["W"], params["b"], x, delta))

    def loss(W, b, x):
        return np.sum(naive_conv(W, b, x, stride, pads) * delta)

    return np.array([(loss(W + eps * dW, b + eps * db, x + eps * dx) - loss(W - eps * dW, b - eps * db, x - eps * dx))
                     / (2 * eps) for dW, db, dx in directions])


@pytest.mark.parametrize("kernel,stride,padding", CASES + [((2, 3), (2, 1), "same")])
def test_forward_and_backward_against_naive_loop_vjp_and_finite_differences(x64, kernel, stride, padding):
    params, x = make_case(kernel, jnp.float64, seed=1)
    pads = reference_pads(IN_SHAPE[1:], pair(kernel), pair(stride), padding)
    expected = naive_conv(params["W"], params["b"], x, pair(stride), pads)
    rng = np.random.default_rng(2)
    delta = jnp.asarray(rng.normal(size=expected.shape))

    def everything(params, x, delta):
        _, vjp = jax.vjp(lambda p, x: conv2d(p, x, stride, padding), params, x)
        return (conv2d(params, x, stride, padding), conv2d_im2col(params, x, stride, padding),
                conv2d_backward(params, x, delta, stride, padding), vjp(delta))

    z, z_im2col, (grads, dx), (grads_ref, dx_ref) = jax.jit(everything)(params, x, delta)
    np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z_im2col, expected, rtol=1e-12, atol=1e-12)
    assert conv_padding(IN_SHAPE[1:], pair(kernel), pair(stride), padding) == pads
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)

    directions = [(rng.normal(size=params["W"].shape), rng.normal(size=C_OUT), rng.normal(size=IN_SHAPE))
                  for _ in range(3)]
    fd = naive_loss_directional_derivatives(params, x, delta, pair(stride), pads, directions)
    predicted = [np.vdot(grads["W"], dW) + np.vdot(grads["b"], db) + np.vdot(dx, dxx) for dW, db, dxx in directions]
    np.testing.assert_allclose(predicted, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stride,padding", [(2, "valid"), ((1, 2), (2, 1)), (2, "same")])
def test_batch_level_grads_sum_per_example_grads(stride, padding):
    params, _ = make_case(3, jnp.float32)
    rng = np.random.default_rng(4)
    X = jnp.asarray(rng.normal(size=(5,) + IN_SHAPE), jnp.float32)
    out_shape = conv2d(params, X[0], stride, padding).shape
    delta = jnp.asarray(rng.normal(size=(5,) + out_shape), jnp.float32)
    pads = conv_padding(IN_SHAPE[1:], (3, 3), pair(stride), padding)

    def both(params, X, delta):
        per_example = jax.vmap(lambda x, d: conv2d_backward(params, x, d, stride, padding))(X, delta)
        batch = (conv2d_weight_grad(X, delta, (3, 3), pair(stride), pads),
                 conv2d_param_grads(X, delta, (3, 3), pair(stride), pads, chunk=2),
                 conv2d_input_grad(params["W"], delta, IN_SHAPE[1:], pair(stride), pads))
        return per_example, batch

    (per_example, dX), (dW, param_grads, dX_batch) = jax.jit(both)(params, X, delta)
    np.testing.assert_allclose(dW, per_example["W"].sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(param_grads["W"], per_example["W"].sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(param_grads["b"], per_example["b"].sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dX_batch, dX, rtol=1e-5, atol=1e-5)


def test_im2col_columns_are_receptive_fields():
    x = jnp.arange(2 * 4 * 5, dtype=jnp.float32).reshape(2, 4, 5)
    cols = im2col(x, (2, 3), stride=(2, 1), padding=0)
    assert cols.shape == (2 * 2 * 3, 2 * 3)
    xn = np.asarray(x)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(cols[:, i * 3 + j], xn[:, 2 * i:2 * i + 2, j:j + 3].reshape(-1))


def test_same_padding_matches_lax_same_and_puts_odd_pixel_bottom_right():
    assert conv_padding((7, 8), (4, 4), (1, 1), "same") == ((1, 2), (1, 2))
    assert conv_padding((7, 8), (3, 3), (2, 2), "same") == ((1, 1), (0, 1))
    params, x = make_case(4, jnp.float32)
    for stride in [1, 2, 3]:
        out = conv2d(params, x, stride, "same")
        assert out.shape[1:] == (math.ceil(7 / stride), math.ceil(10 / stride))
        ref = jax.lax.conv_general_dilated(x[None], params["W"], (stride, stride), "SAME",
                                           dimension_numbers=("NCHW", "OIHW", "NCHW"))[0]
        np.testing.assert_allclose(out, ref + params["b"][:, None, None], rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(in_size=st.integers(1, 12), kernel=st.integers(1, 6), stride=st.integers(1, 4),
       padding=st.integers(0, 3))
def test_conv_output_size_is_the_chapter_formula_and_matches_conv2d(in_size, kernel, stride, padding):
    expected = (in_size - kernel + 2 * padding) // stride + 1
    if expected < 1:
        with pytest.raises(ValueError, match="does not fit"):
            conv_output_size(in_size, kernel, stride, padding)
        return
    assert conv_output_size(in_size, kernel, stride, padding) == expected
    params = {"W": jnp.ones((1, 1, kernel, 1)), "b": jnp.zeros(1)}
    out = conv2d(params, jnp.ones((1, in_size, 1)), (stride, 1), (padding, 0))
    assert out.shape == (1, expected, 1)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_output_size_takes_the_padding_modes_of_conv2d(padding):
    for in_size, kernel, stride in [(28, 3, 1), (28, 3, 2), (7, 3, 2), (5, 5, 1), (6, 4, 3), (10, 1, 4)]:
        params = {"W": jnp.ones((1, 1, kernel, 1)), "b": jnp.zeros(1)}
        out = conv2d(params, jnp.ones((1, in_size, 1)), (stride, 1), padding)
        assert conv_output_size(in_size, kernel, stride, padding) == out.shape[1], (in_size, kernel, stride)
    assert conv_output_size(28, 3, 2, "same") == 14 and conv_output_size(28, 3, 2, "valid") == 13
    with pytest.raises(ValueError, match=r"conv_output_size: padding='full' is not allowed; expected one of \['valid', 'same'\]"):
        conv_output_size(4, 3, padding="full")
    with pytest.raises(TypeError, match=r"padding must be an int >= 0 \(zeros on each side\), 'valid' or 'same', got array"):
        conv_output_size(28, 3, 1, np.array([1, 1]))


def test_conv_output_size_examples_and_errors():
    assert conv_output_size(28, 3) == 26
    assert conv_output_size(28, 3, stride=2, padding=1) == 14
    assert conv_output_size(5, 5) == 1
    with pytest.raises(ValueError, match="kernel_size=5 does not fit in_size=4"):
        conv_output_size(4, 5)
    with pytest.raises(ValueError, match="stride"):
        conv_output_size(4, 3, stride=0)
    with pytest.raises(ValueError, match="padding"):
        conv_output_size(4, 3, padding=-1)
    with pytest.raises(TypeError, match="padding"):
        conv_output_size(4, 3, padding=(1, 1))


def test_init_shapes_variance_and_zeros():
    params = conv2d_init(jax.random.PRNGKey(0), 16, 64, (3, 3))
    assert params["W"].shape == (64, 16, 3, 3) and params["b"].shape == (64,)
    np.testing.assert_array_equal(params["b"], 0)
    np.testing.assert_allclose(jnp.var(params["W"]), 2 / (16 * 9), rtol=0.1)
    xavier = conv2d_init(jax.random.PRNGKey(1), 16, 64, 3, init="xavier")
    np.testing.assert_allclose(jnp.var(xavier["W"]), 2 / (16 * 9 + 64 * 9), rtol=0.1)
    np.testing.assert_array_equal(conv2d_init(jax.random.PRNGKey(0), 2, 3, 3, init="zeros")["W"], 0)
    with pytest.raises(ValueError, match="init"):
        conv2d_init(jax.random.PRNGKey(0), 2, 3, 3, init="glorot")


def test_jit_and_vmap_agree_with_per_example_calls():
    params, _ = make_case(3, jnp.float32)
    X = jnp.asarray(np.random.default_rng(6).normal(size=(4,) + IN_SHAPE), jnp.float32)
    batched = jax.jit(jax.vmap(lambda p, x: conv2d(p, x, 2, "same"), (None, 0)))(params, X)
    for n in range(4):
        np.testing.assert_allclose(batched[n], conv2d(params, X[n], 2, "same"), rtol=1e-5, atol=1e-5)


def test_padding_as_list_equals_tuple():
    params, x = make_case(3, jnp.float32)
    np.testing.assert_array_equal(conv2d(params, x, 1, [2, 1]), conv2d(params, x, 1, (2, 1)))


@pytest.mark.parametrize("fn", [conv2d, conv2d_im2col])
def test_errors_name_the_problem(fn):
    params, x = make_case(3, jnp.float32)
    with pytest.raises(AssertionError, match=r"C = 3 channels must equal C_in = 2"):
        fn(params, jnp.ones((3, 7, 9)))
    with pytest.raises(ValueError, match=r"padding='SAME' is not allowed; expected one of \['valid', 'same'\]"):
        fn(params, x, padding="SAME")
    with pytest.raises(TypeError, match="padding"):
        fn(params, x, padding=1.5)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        fn(params, x, padding=-1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fn(params, x, stride=0)
    with pytest.raises(ValueError, match=r"kernel \(3, 3\) is larger than the padded input \(2, 9\)"):
        fn(params, jnp.ones((2, 2, 9)))
    with pytest.raises(AssertionError, match=r"\(rank 4\), expected rank 3"):
        fn(params, jnp.ones((1,) + IN_SHAPE))
    with pytest.raises(AssertionError, match=r"W has shape \(3, 2, 3\).*expected rank 4"):
        fn({"W": jnp.ones((3, 2, 3)), "b": jnp.zeros(3)}, x)
    with pytest.raises(AssertionError, match=r"b has shape \(4,\)"):
        fn({"W": params["W"], "b": jnp.zeros(4)}, x)
    with pytest.raises(TypeError, match="floating-point"):
        fn(params, jnp.ones(IN_SHAPE, jnp.int32))


def test_backward_and_im2col_errors():
    params, x = make_case(3, jnp.float32)
    with pytest.raises(AssertionError, match=r"conv2d_backward: delta has shape \(3, 4, 4\), expected \(3, 5, 8\)"):
        conv2d_backward(params, x, jnp.ones((3, 4, 4)))
    with pytest.raises(AssertionError, match="conv2d_backward: x has shape"):
        conv2d_backward(params, jnp.ones((5, 7, 10)), jnp.ones((3, 5, 8)))
    with pytest.raises(ValueError, match="im2col: kernel"):
        im2col(x, 10)
    with pytest.raises(TypeError, match="explicit padding"):
        im2col(x, 3, padding=((1, 1), (1, 1), (1, 1)))
