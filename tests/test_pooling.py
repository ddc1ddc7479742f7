"""Tests for nnjax.layers.pooling and nnjax.backprop.pooling.

Forward passes against naive loops over the windows; backward passes against jax.vjp (inputs
without ties), against a naive loop that routes each delta to the first maximum of its window
(inputs with ties), and against central finite differences in float64.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.pooling import avg_pool2d_backward, max_pool2d_argmax, max_pool2d_backward
from nnjax.layers.pooling import avg_pool2d, max_pool2d, max_pool2d_blocks, pool_output_shape

IN_SHAPE = (2, 7, 9)  # C, H, W: non-square, sizes not divisible by the windows
# (window, stride): default stride, overlapping windows (stride < window), gaps (stride > window),
# non-square windows and strides.
SETTINGS = [(2, None), (3, None), (3, 2), (2, 1), ((2, 3), (1, 2)), (2, 3), (1, None)]


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def resolve(window, stride):
    return pair(window), pair(window if stride is None else stride)


def naive_pool(x, window, stride, reduce):
    x = np.asarray(x)
    (kh, kw), (sh, sw) = resolve(window, stride)
    out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], out_h, out_w), x.dtype)
    for c in range(x.shape[0]):
        for i in range(out_h):
            for j in range(out_w):
                out[c, i, j] = reduce(x[c, i * sh:i * sh + kh, j * sw:j * sw + kw])
    return out


def naive_max_pool_backward(x, delta, window, stride):
    """Each delta goes to the first (row-major) maximum of its window; overlaps accumulate."""
    x, delta = np.asarray(x), np.asarray(delta)
    (kh, kw), (sh, sw) = resolve(window, stride)
    dx = np.zeros_like(x)
    for c, i, j in np.ndindex(delta.shape):
        patch = x[c, i * sh:i * sh + kh, j * sw:j * sw + kw]
        m, n = np.unravel_index(np.argmax(patch), patch.shape)  # np.argmax: first maximum
        dx[c, i * sh + m, j * sw + n] += delta[c, i, j]
    return dx


def random(shape, seed, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@pytest.mark.parametrize("window", [2, 3, (2, 3), (3, 1), 1])
def test_max_pool2d_blocks_is_max_pool2d_with_stride_window(window):
    # IN_SHAPE (2, 7, 9) leaves rows/columns that no window reaches: they are cropped.
    x = random(IN_SHAPE, 3)
    expected = naive_pool(x, window, None, np.max)
    np.testing.assert_array_equal(max_pool2d_blocks(x, window), expected)
    np.testing.assert_array_equal(max_pool2d_blocks(jnp.moveaxis(x, 0, -1), window, layout="HWC"),
                                  np.moveaxis(expected, 0, -1))
    with pytest.raises(ValueError, match=r"max_pool2d_blocks: window \(8, 8\) is larger"):
        max_pool2d_blocks(x, 8)


@pytest.mark.parametrize("window,stride", SETTINGS)
def test_forward_matches_naive_loops(window, stride):
    x = random(IN_SHAPE, 0)
    np.testing.assert_allclose(max_pool2d(x, window, stride), naive_pool(x, window, stride, np.max), rtol=1e-6)
    np.testing.assert_allclose(avg_pool2d(x, window, stride), naive_pool(x, window, stride, np.mean),
                               rtol=1e-5, atol=1e-6)


def test_common_configuration_halves_each_dimension():
    x = random((3, 8, 6), 1)
    assert max_pool2d(x).shape == (3, 4, 3)
    assert avg_pool2d(x).shape == (3, 4, 3)
    assert pool_output_shape((7, 9), (2, 2), (2, 2)) == (3, 4)


@pytest.mark.parametrize("window,stride", SETTINGS)
def test_backward_matches_vjp_and_finite_differences(x64, window, stride):
    x = random(IN_SHAPE, 2, np.float64)
    out_shape = max_pool2d(x, window, stride).shape
    delta = random(out_shape, 3, np.float64)
    direction = random(IN_SHAPE, 4, np.float64)
    eps = 1e-6

    def run(x, delta, direction):
        results = []
        for forward, backward in [(max_pool2d, max_pool2d_backward), (avg_pool2d, avg_pool2d_backward)]:
            def loss(x):
                return jnp.vdot(forward(x, window, stride), delta)

            _, vjp = jax.vjp(lambda x: forward(x, window, stride), x)
            fd = (loss(x + eps * direction) - loss(x - eps * direction)) / (2 * eps)
            results.append((backward(x, delta, window, stride), vjp(delta)[0], fd))
        return results

    for dx, dx_ref, fd in jax.jit(run)(x, delta, direction):
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jnp.vdot(dx, direction), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("window,stride", [(2, None), (3, 1), (3, 2), ((2, 3), (1, 2))])
def test_max_backward_routes_ties_to_the_first_maximum(window, stride):
    # Small integers: many windows hold their maximum twice or more (ReLU zeros do the same).
    x = jnp.asarray(np.random.default_rng(5).integers(0, 3, size=IN_SHAPE), jnp.float32)
    delta = random(max_pool2d(x, window, stride).shape, 6)
    dx = max_pool2d_backward(x, delta, window, stride)
    np.testing.assert_allclose(dx, naive_max_pool_backward(x, delta, window, stride), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(dx), jnp.sum(delta), rtol=1e-5)


@pytest.mark.parametrize("window,stride", [(2, None), (3, 1), ((2, 3), (1, 2))])
def test_autodiff_of_max_pool2d_routes_ties_like_the_hand_derived_backward(window, stride):
    """On tied windows (all-black image corners, ReLU zeros) jax.grad of the forward sends each
    window's delta to its first maximum, as `max_pool2d_backward` does."""
    x = jnp.asarray(np.random.default_rng(7).integers(0, 2, size=IN_SHAPE), jnp.float32)
    delta = random(max_pool2d(x, window, stride).shape, 8)
    autodiff = jax.vjp(lambda x: max_pool2d(x, window, stride), x)[1](delta)[0]
    np.testing.assert_allclose(autodiff, max_pool2d_backward(x, delta, window, stride), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(jax.vjp(lambda x: max_pool2d(x), jnp.ones((1, 2, 2)))[1](jnp.ones((1, 1, 1)))[0],
                                  [[[1.0, 0.0], [0.0, 0.0]]])


def test_max_pool2d_keeps_nan():
    x = jnp.zeros((1, 4, 4)).at[0, 1, 1].set(jnp.nan).at[0, 2, 3].set(jnp.nan)
    assert jnp.array_equal(jnp.isnan(max_pool2d(x)), jnp.array([[[True, False], [False, True]]]))


def test_argmax_index_is_the_first_maximum():
    x = jnp.asarray([[[1., 3., 3., 0.],
                      [3., 2., 5., 5.]]])
    np.testing.assert_array_equal(max_pool2d_argmax(x, 2), [[[1, 2]]])
    np.testing.assert_array_equal(max_pool2d_argmax(x, (1, 2), (1, 1)), [[[1, 0, 0], [0, 1, 0]]])


def test_overlapping_windows_accumulate_in_shared_elements():
    # One large element shared by all four 2x2 windows of a 3x3 input (stride 1).
    x = jnp.zeros((1, 3, 3)).at[0, 1, 1].set(10.)
    delta = jnp.asarray([[[1., 2.], [3., 4.]]])
    expected = np.zeros((1, 3, 3))
    expected[0, 1, 1] = 10.
    np.testing.assert_allclose(max_pool2d_backward(x, delta, 2, 1), expected)
    spread = avg_pool2d_backward(x, delta, 2, 1)
    np.testing.assert_allclose(spread[0, 1, 1], 10. / 4)
    np.testing.assert_allclose(spread[0, 0, 0], 1. / 4)


def test_jit_and_vmap_agree_with_per_example_calls():
    X = random((3,) + IN_SHAPE, 7)
    delta = random((3, 2, 3, 4), 8)
    pooled = jax.jit(jax.vmap(lambda x: max_pool2d(x, 2)))(X)
    routed = jax.jit(jax.vmap(lambda x, d: max_pool2d_backward(x, d, 2)))(X, delta)
    for n in range(3):
        np.testing.assert_array_equal(pooled[n], max_pool2d(X[n], 2))
        np.testing.assert_allclose(routed[n], max_pool2d_backward(X[n], delta[n], 2))


@pytest.mark.parametrize("fn", [max_pool2d, avg_pool2d])
def test_forward_errors(fn):
    name = fn.__name__
    x = random(IN_SHAPE, 9)
    with pytest.raises(ValueError, match=rf"{name}: window \(8, 8\) is larger than the input's spatial size \(7, 9\)"):
        fn(x, 8)
    with pytest.raises(ValueError, match=f"{name}: stride must be >= 1"):
        fn(x, 2, 0)
    with pytest.raises(ValueError, match=f"{name}: window must be >= 1"):
        fn(x, 0)
    with pytest.raises(TypeError, match=f"{name}: window must be an int or a pair"):
        fn(x, 2.0)
    with pytest.raises(AssertionError, match=rf"{name}: x has shape \(7, 9\) \(rank 2\), expected rank 3"):
        fn(x[0], 2)
    with pytest.raises(TypeError, match="floating-point"):
        fn(jnp.ones(IN_SHAPE, jnp.int32), 2)


@pytest.mark.parametrize("fn", [max_pool2d_backward, avg_pool2d_backward])
def test_backward_errors(fn):
    name = fn.__name__
    x = random(IN_SHAPE, 10)
    with pytest.raises(AssertionError, match=rf"{name}: delta has shape \(2, 3, 3\), expected \(2, 3, 4\)"):
        fn(x, jnp.ones((2, 3, 3)), 2)
    with pytest.raises(ValueError, match=f"{name}: window"):
        fn(x, jnp.ones((2, 1, 1)), (8, 2))


def test_a_nan_in_a_window_gets_the_delta_in_every_backward_as_in_autodiff(x64):
    """max_pool2d returns NaN for a window holding one; its delta goes to the NaN in autodiff, in
    the hand-derived backward, in max_pool2d_fast's and in the argmax alike."""
    from nnjax.backprop.custom_vjp import max_pool2d_fast

    x = jnp.array([[[1.0, jnp.nan, 0.5, 0.2], [3.0, 2.0, 0.1, 0.4]]])
    delta = jnp.array([[[1.0, 2.0]]])
    autodiff = jax.vjp(max_pool2d, x)[1](delta)[0]
    np.testing.assert_array_equal(autodiff, [[[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(max_pool2d_backward(x, delta), autodiff)
    np.testing.assert_array_equal(jax.vjp(max_pool2d_fast, x)[1](delta)[0], autodiff)
    np.testing.assert_array_equal(max_pool2d_argmax(x), [[[1, 0]]])


def test_of_several_nans_in_a_window_the_first_gets_the_delta(x64):
    x = jnp.array([[[3.0, jnp.nan], [jnp.nan, 2.0]]])
    delta = jnp.array([[[5.0]]])
    expected = [[[0.0, 5.0], [0.0, 0.0]]]
    np.testing.assert_array_equal(jax.vjp(max_pool2d, x)[1](delta)[0], expected)
    np.testing.assert_array_equal(max_pool2d_backward(x, delta), expected)
    np.testing.assert_array_equal(max_pool2d_argmax(x), [[[1]]])
