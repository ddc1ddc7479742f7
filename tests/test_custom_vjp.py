"""Tests for nnjax.backprop.custom_vjp: same values as the plain layers, same gradients as
jax.grad of the plain layers (under jax.vmap and jax.jit), and the hand-derived backward is the
one that runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.custom_vjp import (
    avg_pool2d_fast, batch_norm_batch_fast, conv2d_fast, dense_batch_fast, max_pool2d_fast,
)
from nnjax.backprop.pooling import max_pool2d_backward
from nnjax.layers.conv import conv2d, conv2d_init
from nnjax.layers.dense import dense
from nnjax.layers.normalization import batch_norm
from nnjax.layers.pooling import avg_pool2d, max_pool2d


def random(shape, seed, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@pytest.mark.parametrize("stride,padding", [(1, "valid"), (2, "same"), ((1, 2), (2, 1))])
def test_conv2d_fast_values_and_batched_gradients_match_plain(x64, stride, padding):
    params = {"W": random((4, 3, 3, 3), 0, np.float64), "b": random((4,), 1, np.float64)}
    X = random((5, 3, 7, 9), 2, np.float64)
    weights = random(jax.vmap(lambda x: conv2d(params, x, stride, padding))(X).shape, 3, np.float64)

    def loss(layer, params, X):
        Z = jax.vmap(lambda x: layer(params, x, stride, padding))(X)
        return jnp.sum(jnp.tanh(Z) * weights)

    def both(params, X):
        return [(jax.vmap(lambda x: layer(params, x, stride, padding))(X),
                 jax.grad(loss, argnums=(1, 2))(layer, params, X)) for layer in (conv2d_fast, conv2d)]

    (out, grads), (out_ref, grads_ref) = jax.jit(both)(params, X)
    np.testing.assert_allclose(out, out_ref, rtol=1e-12, atol=1e-12)
    for leaf, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(leaf, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window,stride", [(2, None), ((2, 3), None), (3, 3), (3, 1), ((2, 3), (1, 2))])
def test_pool_fast_values_and_batched_gradients_match_plain(x64, window, stride):
    X = random((4, 2, 7, 9), 4, np.float64)
    weights = random(jax.vmap(lambda x: max_pool2d(x, window, stride))(X).shape, 5, np.float64)

    def loss(layer, X):
        return jnp.sum(jnp.sin(jax.vmap(lambda x: layer(x, window, stride))(X)) * weights)

    def all_pairs(X):
        return [(jax.vmap(lambda x: layer(x, window, stride))(X), jax.grad(loss, argnums=1)(layer, X))
                for layer in (max_pool2d_fast, max_pool2d, avg_pool2d_fast, avg_pool2d)]

    results = jax.jit(all_pairs)(X)
    for (out, grad), (out_ref, grad_ref) in [results[:2], results[2:]]:
        np.testing.assert_allclose(out, out_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_max_pool2d_fast_gradient_is_the_hand_derived_tie_rule():
    # Ties: the custom VJP sends a tied window's whole delta to its first maximum, as
    # max_pool2d_backward does, and so does autodiff of the plain max_pool2d.
    x = jnp.zeros((1, 2, 2))
    grad_fast = jax.grad(lambda x: jnp.sum(max_pool2d_fast(x)))(x)
    grad_plain = jax.grad(lambda x: jnp.sum(max_pool2d(x)))(x)
    np.testing.assert_array_equal(grad_fast, max_pool2d_backward(x, jnp.ones((1, 1, 1))))
    np.testing.assert_array_equal(grad_fast, [[[1., 0.], [0., 0.]]])
    np.testing.assert_array_equal(grad_plain, grad_fast)


@pytest.mark.parametrize("fast,plain,args", [
    (conv2d_fast, conv2d, ({"W": jnp.ones((3, 2, 3, 3)), "b": jnp.zeros(3)}, jnp.ones((2, 5, 5)))),
    (max_pool2d_fast, max_pool2d, (jnp.ones((2, 4, 4)),)),
    (avg_pool2d_fast, avg_pool2d, (jnp.ones((2, 4, 4)),)),
    (dense_batch_fast, jax.vmap(dense, in_axes=(None, 0)), ({"W": jnp.ones((3, 4)), "b": jnp.zeros(3)}, jnp.ones((5, 4)))),
])
def test_fast_layers_are_custom_vjp_calls(fast, plain, args):
    assert "custom_vjp_call" in str(jax.make_jaxpr(fast)(*args))
    assert "custom_vjp_call" not in str(jax.make_jaxpr(plain)(*args))


def test_per_example_gradients_and_unbatched_calls():
    params = {"W": random((3, 1, 3, 3), 6), "b": random((3,), 7)}
    X = random((3, 1, 6, 6), 8)

    def per_example_loss(layer, pool, params, x):
        return jnp.sum(pool(jax.nn.relu(layer(params, x))) ** 2)

    fast = jax.jit(jax.vmap(jax.grad(lambda p, x: per_example_loss(conv2d_fast, max_pool2d_fast, p, x)),
                            in_axes=(None, 0)))(params, X)
    plain = jax.vmap(jax.grad(lambda p, x: per_example_loss(conv2d, max_pool2d, p, x)), in_axes=(None, 0))(params, X)
    for leaf, ref in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
        assert leaf.shape[0] == 3
        np.testing.assert_allclose(leaf, ref, rtol=1e-5, atol=1e-5)


def test_small_cnn_loss_gradients_match_plain_layers():
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    params = [conv2d_init(keys[0], 1, 4, 3), conv2d_init(keys[1], 4, 6, 3),
              {"W": 0.1 * jax.random.normal(keys[2], (10, 6)), "b": jnp.zeros(10)}]
    X = random((8, 1, 14, 14), 9)
    Y = jax.nn.one_hot(jnp.arange(8) % 10, 10)

    def loss(conv, pool, params, X):
        def logits(x):
            h = pool(jax.nn.relu(conv(params[0], x)))  # (4, 6, 6)
            h = pool(jax.nn.relu(conv(params[1], h, 2, "same")), 3, 1).reshape(-1)  # (6, 1, 1)
            return params[2]["W"] @ h + params[2]["b"]
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(jax.vmap(logits)(X)) * Y, axis=-1))

    grad = jax.jit(jax.grad(loss, argnums=2), static_argnums=(0, 1))
    fast = grad(conv2d_fast, max_pool2d_fast, params, X)
    plain = grad(conv2d, max_pool2d, params, X)
    for leaf, ref in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
        np.testing.assert_allclose(leaf, ref, rtol=1e-4, atol=1e-6)


def test_errors_name_the_fast_function():
    params = {"W": jnp.ones((3, 2, 3, 3)), "b": jnp.zeros(3)}
    with pytest.raises(AssertionError, match=r"conv2d_fast: x has shape \(4, 7, 7\).*C_in = 2"):
        conv2d_fast(params, jnp.ones((4, 7, 7)))
    with pytest.raises(ValueError, match=r"conv2d_fast: padding='full' is not allowed"):
        conv2d_fast(params, jnp.ones((2, 7, 7)), padding="full")
    with pytest.raises(ValueError, match=r"max_pool2d_fast: window \(9, 9\) is larger"):
        max_pool2d_fast(jnp.ones((2, 7, 7)), 9)
    with pytest.raises(ValueError, match="avg_pool2d_fast: stride must be >= 1"):
        avg_pool2d_fast(jnp.ones((2, 7, 7)), 2, 0)
    dense_params = {"W": jnp.ones((3, 4)), "b": jnp.zeros(3)}
    with pytest.raises(AssertionError, match=r"dense_batch_fast: A has shape \(4,\) \(rank 1\), expected rank 2: \(m, n_in\)"):
        dense_batch_fast(dense_params, jnp.ones(4))
    with pytest.raises(AssertionError, match=r"dense_batch_fast: A has shape \(2, 5\), expected \(\?, 4\) = \(m, n_in\)"):
        dense_batch_fast(dense_params, jnp.ones((2, 5)))
    with pytest.raises(TypeError, match=r"dense_batch_fast: A must be an array of real numbers .* got dtype bool"):
        dense_batch_fast(dense_params, jnp.ones((2, 4), bool))


def test_forward_mode_is_not_defined():
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: max_pool2d_fast(x), (jnp.ones((1, 4, 4)),), (jnp.ones((1, 4, 4)),))


@pytest.mark.parametrize("layout, example_shape", [("CHW", (3, 4, 5)), ("HWC", (4, 5, 3)), ("CHW", (3,))])
def test_batch_norm_batch_fast_equals_vmapped_batch_norm_and_its_vjp(x64, layout, example_shape):
    rng = np.random.default_rng(6)
    params = {"gamma": jnp.asarray(rng.normal(size=3)), "beta": jnp.asarray(rng.normal(size=3))}
    state = {"mean": jnp.asarray(rng.normal(size=3)), "var": jnp.asarray(rng.uniform(0.5, 2, size=3))}
    X = jnp.asarray(rng.normal(size=(7,) + example_shape))
    delta = jnp.asarray(rng.normal(size=X.shape))

    def vmapped(params, X):
        return jax.vmap(lambda x: batch_norm(params, state, x, train=True, momentum=0.8, layout=layout),
                        axis_name="batch", out_axes=(0, None))(X)

    def fast(params, X):
        return batch_norm_batch_fast(params, state, X, momentum=0.8, layout=layout)

    (Y, new_state), vjp = jax.vjp(vmapped, params, X)
    (Y_fast, new_state_fast), vjp_fast = jax.vjp(fast, params, X)
    np.testing.assert_allclose(Y_fast, Y, rtol=1e-12, atol=1e-12)
    for name in ("mean", "var"):
        np.testing.assert_allclose(new_state_fast[name], new_state[name], rtol=1e-12)
    no_state_cotangent = jax.tree.map(jnp.zeros_like, new_state)
    (grads, dX), (grads_fast, dX_fast) = vjp((delta, no_state_cotangent)), vjp_fast((delta, no_state_cotangent))
    np.testing.assert_allclose(dX_fast, dX, rtol=1e-10, atol=1e-12)
    for name in ("gamma", "beta"):
        np.testing.assert_allclose(grads_fast[name], grads[name], rtol=1e-10, atol=1e-12)


def test_dense_batch_fast_equals_the_vmapped_layer_and_its_vjp(x64):
    rng = np.random.default_rng(7)
    params = {"W": jnp.asarray(rng.normal(size=(3, 5))), "b": jnp.asarray(rng.normal(size=3))}
    A, delta = jnp.asarray(rng.normal(size=(6, 5))), jnp.asarray(rng.normal(size=(6, 3)))
    Z, vjp = jax.vjp(jax.vmap(dense, in_axes=(None, 0)), params, A)
    Z_fast, vjp_fast = jax.vjp(jax.jit(dense_batch_fast), params, A)
    np.testing.assert_allclose(Z_fast, Z, rtol=1e-12)
    for got, want in zip(jax.tree.leaves(vjp_fast(delta)), jax.tree.leaves(vjp(delta))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_dense_batch_fast_gradients_keep_their_inputs_dtypes():
    params = {"W": random((3, 5), 1, jnp.bfloat16), "b": random((3,), 2, jnp.bfloat16)}
    grads = jax.grad(lambda p, A: jnp.sum(dense_batch_fast(p, A).astype(jnp.float32)), argnums=(0, 1))(
        params, random((4, 5), 3, jnp.bfloat16))
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.bfloat16)}
