"""nnjax.layers.dense and nnjax.backprop.dense: z = W x + b, initialization, the backward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nnjax.backprop import dense_backward, dense_batch_backward
from nnjax.layers import INITS, conv2d_init, dense, dense_init, init_variance, init_weights


def numerical_gradient(f, x, eps=1e-6):
    """Gradient of a scalar f at x by central differences, one coordinate at a time."""
    steps = eps * jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    f_batch = jax.vmap(f)
    return ((f_batch(x + steps) - f_batch(x - steps)) / (2 * eps)).reshape(x.shape)


def layer64(seed, n_in, n_out):
    """A dense layer with a nonzero bias, an input and an upstream delta, all float64."""
    rng = np.random.default_rng(seed)
    params = {"W": jnp.asarray(rng.normal(size=(n_out, n_in))), "b": jnp.asarray(rng.normal(size=n_out))}
    return params, jnp.asarray(rng.normal(size=n_in)), jnp.asarray(rng.normal(size=n_out))


@jax.jit
def manual_and_autodiff_batch_grads(params, X, Delta):
    """dense_backward summed over a batch, dense_batch_backward, and jax.grad of sum(Z * Delta),
    in one compiled call."""
    grads, dX = jax.vmap(dense_backward, in_axes=(None, 0, 0))(params, X, Delta)
    loss = lambda p, inputs: jnp.sum(jax.vmap(dense, in_axes=(None, 0))(p, inputs) * Delta)
    return ((jax.tree.map(lambda g: g.sum(0), grads), dX), dense_batch_backward(params, X, Delta),
            jax.grad(loss, argnums=(0, 1))(params, X))


def test_dense_is_w_times_x_plus_b():
    W = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    b = np.array([0.25, -1.0])
    x = np.array([2.0, -1.0, 0.5])
    z = dense({"W": jnp.asarray(W), "b": jnp.asarray(b)}, jnp.asarray(x))
    np.testing.assert_allclose(z, [2 - 2 + 1.5 + 0.25, -2 - 0.5 - 1.0], rtol=1e-6)
    assert z.shape == (2,)


@pytest.mark.parametrize("init", INITS)
def test_init_draws_weights_of_the_documented_variance(init):
    n_in, n_out = 300, 200
    params = dense_init(jax.random.key(7), n_in, n_out, init)
    assert params["W"].shape == (n_out, n_in) and params["b"].shape == (n_out,)
    np.testing.assert_array_equal(params["b"], 0)
    expected = {"he": 2 / n_in, "xavier": 2 / (n_in + n_out), "lecun": 1 / n_in, "zeros": 0.0}[init]
    assert init_variance(init, n_in, n_out) == pytest.approx(expected)
    assert float(jnp.var(params["W"])) == pytest.approx(expected, rel=0.03, abs=1e-12)
    assert abs(float(jnp.mean(params["W"]))) < 0.05 * np.sqrt(expected) + 1e-12


def test_default_init_is_he_as_in_the_chapters_code():
    he = dense_init(jax.random.key(3), 50, 20, "he")
    default = dense_init(jax.random.key(3), 50, 20)
    np.testing.assert_array_equal(default["W"], he["W"])
    assert not np.allclose(dense_init(jax.random.key(4), 50, 20)["W"], he["W"])
    assert dense_init(jax.random.key(3), 5, 2, dtype=jnp.bfloat16)["W"].dtype == jnp.bfloat16


def test_init_weights_uses_the_given_fans_for_conv_kernels():
    c_out, c_in, kh, kw = 64, 32, 3, 3
    W = init_weights(jax.random.key(0), (c_out, c_in, kh, kw), c_in * kh * kw, c_out * kh * kw, "xavier")
    assert W.shape == (c_out, c_in, kh, kw)
    assert float(jnp.var(W)) == pytest.approx(2 / (c_in * 9 + c_out * 9), rel=0.03)


def test_dense_backward_matches_vjp_and_finite_differences(x64):
    params, x, delta = layer64(0, 5, 3)
    grads, dx = dense_backward(params, x, delta)
    z, vjp = jax.vjp(dense, params, x)
    auto_params, auto_x = vjp(delta)
    assert z.shape == delta.shape
    np.testing.assert_allclose(grads["W"], auto_params["W"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grads["b"], auto_params["b"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dx, auto_x, rtol=1e-13, atol=1e-15)
    loss = lambda p, a: jnp.dot(delta, dense(p, a))  # dL/dz = delta
    np.testing.assert_allclose(grads["W"], numerical_gradient(lambda W: loss({**params, "W": W}, x), params["W"]),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grads["b"], numerical_gradient(lambda b: loss({**params, "b": b}, x), params["b"]),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dx, numerical_gradient(lambda a: loss(params, a), x), rtol=1e-7, atol=1e-9)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_in=st.integers(1, 9), n_out=st.integers(1, 9), m=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_dense_backward_summed_over_a_batch_equals_autodiff(x64, n_in, n_out, m, seed):
    params, _, _ = layer64(seed, n_in, n_out)
    rng = np.random.default_rng(seed + 1)
    X, Delta = jnp.asarray(rng.normal(size=(m, n_in))), jnp.asarray(rng.normal(size=(m, n_out)))
    per_example, batch, (auto_params, auto_X) = manual_and_autodiff_batch_grads(params, X, Delta)
    for grads, dX in (per_example, batch):
        np.testing.assert_allclose(grads["W"], auto_params["W"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(grads["b"], auto_params["b"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dX, auto_X, rtol=1e-12, atol=1e-13)
        assert grads["W"].shape == (n_out, n_in) and dX.shape == (m, n_in)


def test_everything_runs_under_jit_and_vmap():
    params = dense_init(jax.random.key(0), 4, 3)
    X = jax.random.normal(jax.random.key(1), (6, 4))
    Z = jax.jit(jax.vmap(dense, in_axes=(None, 0)))(params, X)
    np.testing.assert_allclose(Z, X @ params["W"].T + params["b"], rtol=1e-5, atol=1e-6)
    grads, dX = jax.jit(jax.vmap(dense_backward, in_axes=(None, 0, 0)))(params, X, Z)
    np.testing.assert_allclose(grads["W"], np.einsum("mi,mj->mij", Z, X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dX, Z @ params["W"], rtol=1e-5, atol=1e-6)
    init = jax.jit(dense_init, static_argnums=(1, 2, 3))(jax.random.key(2), 4, 3, "lecun")
    assert init["W"].shape == (3, 4)
    keys = jax.random.split(jax.random.key(3), 5)
    assert jax.vmap(lambda k: dense_init(k, 4, 3)["W"])(keys).shape == (5, 3, 4)


def test_errors_name_function_argument_expected_and_actual():
    params = {"W": jnp.zeros((3, 5)), "b": jnp.zeros(3)}
    with pytest.raises(AssertionError, match=r"dense: x has shape \(4,\), expected \(5,\) = \(n_in,\) to match W of shape \(3, 5\)"):
        dense(params, jnp.zeros(4))
    with pytest.raises(AssertionError, match=r"dense: x has shape \(2, 5\), expected \(5,\)"):
        dense(params, jnp.zeros((2, 5)))
    with pytest.raises(AssertionError, match=r"dense: params\['b'\] has shape \(5,\), expected \(3,\) = \(n_out,\) to match W of shape \(3, 5\)"):
        dense({"W": jnp.zeros((3, 5)), "b": jnp.zeros(5)}, jnp.zeros(5))
    with pytest.raises(AssertionError, match=r"dense: params\['W'\] has shape \(5,\) \(rank 1\), expected rank 2: \(n_out, n_in\)"):
        dense({"W": jnp.zeros(5), "b": jnp.zeros(5)}, jnp.zeros(5))
    with pytest.raises(TypeError, match=r"dense: params must be a dict with keys \['W', 'b'\] as dense_init returns, got keys \['W'\]"):
        dense({"W": jnp.zeros((3, 5))}, jnp.zeros(5))
    with pytest.raises(AssertionError, match=r"dense_backward: delta has shape \(4,\), expected \(3,\) = \(n_out,\) to match W of shape \(3, 5\)"):
        dense_backward(params, jnp.zeros(5), jnp.zeros(4))
    with pytest.raises(AssertionError, match=r"dense_backward: x has shape \(3,\), expected \(5,\) = \(n_in,\)"):
        dense_backward(params, jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(AssertionError, match=r"dense_batch_backward: A has shape \(5,\) \(rank 1\), expected rank 2: \(m, n_in\)"):
        dense_batch_backward(params, jnp.zeros(5), jnp.zeros((1, 3)))
    with pytest.raises(AssertionError, match=r"dense_batch_backward: A has shape \(2, 4\), expected \(\?, 5\) = \(m, n_in\) to match W of shape \(3, 5\)"):
        dense_batch_backward(params, jnp.zeros((2, 4)), jnp.zeros((2, 3)))
    with pytest.raises(AssertionError, match=r"dense_batch_backward: Delta has shape \(2, 4\), expected \(2, 3\) = \(m, n_out\)"):
        dense_batch_backward(params, jnp.zeros((2, 5)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dense_init: init='glorot' is not allowed; expected one of \['he', 'xavier', 'lecun', 'zeros'\]"):
        dense_init(jax.random.key(0), 3, 2, "glorot")
    with pytest.raises(ValueError, match=r"dense_init: n_out must be a positive int \(>= 1\), got 0"):
        dense_init(jax.random.key(0), 3, 0)
    with pytest.raises(TypeError, match=r"dense_init: n_in must be a positive int, got 2.0 of type float"):
        dense_init(jax.random.key(0), 2.0, 3)
    with pytest.raises(ValueError, match=r"init_weights: fan_in must be a positive int \(>= 1\), got -1"):
        init_weights(jax.random.key(0), (2, 2), -1, 2, "he")
    with pytest.raises(ValueError, match=r"init_variance: init='normal' is not allowed"):
        init_variance("normal", 2, 2)
    with pytest.raises(ValueError, match=r"conv2d_init: init='kaiming' is not allowed"):
        conv2d_init(jax.random.key(0), 2, 4, 3, init="kaiming")
    with pytest.raises(TypeError, match=r"dense_init: key must be a JAX random key such as jax.random.key\(0\), got 42"):
        dense_init(42, 3, 2)
    with pytest.raises(TypeError, match=r"dense_init: dtype must be a floating dtype .* got .*int32"):
        dense_init(jax.random.key(0), 3, 2, dtype=jnp.int32)
    assert dense_init(jax.random.PRNGKey(0), 3, 2)["W"].shape == (2, 3)  # the older uint32 keys work too
    with pytest.raises(TypeError, match=r"dense: params\['W'\] must be a floating-point array, got dtype bool"):
        dense({"W": jnp.ones((2, 3), bool), "b": jnp.zeros(2, bool)}, jnp.ones(3))
    with pytest.raises(TypeError, match=r"dense: x must be an array of real numbers .* got dtype complex64"):
        dense(params, jnp.ones(5, jnp.complex64))
    with pytest.raises(TypeError, match=r"dense_backward: delta must be an array of real numbers .* got dtype complex64"):
        dense_backward(params, jnp.ones(5), jnp.ones(3, jnp.complex64))
    lists = {"W": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], "b": [0.0, 0.0]}  # nested lists are one matrix
    with pytest.raises(AssertionError, match=r"dense: x has shape \(4,\), expected \(3,\)"):
        dense(lists, jnp.ones(4))
    np.testing.assert_allclose(dense(lists, jnp.ones(3)), [6.0, 6.0])
