"""nnjax.jacobians: the chain rule as a product of layer Jacobians, against jax.jacfwd."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnjax.activations
from nnjax.activations import ELEMENTWISE
from nnjax.jacobians import (activation_jacobian, chain_rule_check, dense_jacobian, layer_jacobians, mlp_jacobian,
                             softmax_jacobian)
from nnjax.layers import dense
from nnjax.network import mlp_forward, mlp_logits


def random_mlp(seed, sizes):
    """float64 params with nonzero biases and one input."""
    rng = np.random.default_rng(seed)
    params = [{"W": jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)), "b": jnp.asarray(0.3 * rng.normal(size=n_out))}
              for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return params, jnp.asarray(rng.normal(size=sizes[0]))


def test_dense_jacobian_is_w(x64):
    params, x = random_mlp(0, [4, 3])
    np.testing.assert_array_equal(dense_jacobian(params[0]), params[0]["W"])
    np.testing.assert_allclose(jax.jacfwd(lambda a: dense(params[0], a))(x), dense_jacobian(params[0]), rtol=1e-15)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_jacobian_is_diagonal_of_the_derivative(name, x64):
    z = jnp.array([-2.0, -0.3, 0.4, 1.7], jnp.float64)
    sigma, sigma_prime = ELEMENTWISE[name]
    J = activation_jacobian(name, z)
    np.testing.assert_allclose(J, jax.jacfwd(sigma)(z), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(J, np.diag(np.asarray(sigma_prime(z))))
    np.testing.assert_array_equal(activation_jacobian(sigma, z), J)


def test_softmax_jacobian_is_reexported():
    assert softmax_jacobian is nnjax.activations.softmax_jacobian


@pytest.mark.parametrize("output", ["logits", "probs"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_product_of_layer_jacobians_equals_jacfwd(activation, output, x64):
    params, x = random_mlp(1, [5, 6, 4, 3])
    network = mlp_forward if output == "probs" else mlp_logits
    autodiff = jax.jacfwd(lambda a: network(params, a, activation))(x)
    product = mlp_jacobian(params, x, activation, output)
    assert product.shape == (3, 5)
    np.testing.assert_allclose(product, autodiff, rtol=1e-12, atol=1e-14)
    check = chain_rule_check(params, x, activation, output)
    np.testing.assert_allclose(check.product, product, rtol=1e-15)
    np.testing.assert_allclose(check.autodiff, autodiff, rtol=1e-15)
    assert float(check.max_abs_diff) < 1e-13


def test_layer_jacobians_are_the_chains_factors_in_forward_order(x64):
    params, x = random_mlp(2, [3, 4, 2])
    factors = layer_jacobians(params, x, "sigmoid", output="probs")
    z1 = params[0]["W"] @ x + params[0]["b"]
    z2 = params[1]["W"] @ jax.nn.sigmoid(z1) + params[1]["b"]
    expected = [params[0]["W"], activation_jacobian("sigmoid", z1), params[1]["W"], softmax_jacobian(z2)]
    assert [f.shape for f in factors] == [(4, 3), (4, 4), (2, 4), (2, 2)]
    for got, want in zip(factors, expected):
        np.testing.assert_allclose(got, want, rtol=1e-14)
    np.testing.assert_allclose(factors[3] @ factors[2] @ factors[1] @ factors[0],
                               mlp_jacobian(params, x, "sigmoid", "probs"), rtol=1e-14)
    assert len(layer_jacobians(params, x, "sigmoid")) == 3


def test_everything_runs_under_jit_and_vmap():
    params, _ = random_mlp(3, [4, 5, 3])
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    jacobians = jax.jit(jax.vmap(lambda a: mlp_jacobian(params, a, output="probs")))(X)
    checks = jax.jit(jax.vmap(lambda a: chain_rule_check(params, a)))(X)
    for i, x in enumerate(X):
        np.testing.assert_allclose(jacobians[i], jax.jacfwd(lambda a: mlp_forward(params, a))(x), rtol=1e-4, atol=1e-6)
    assert checks.product.shape == (6, 3, 4) and float(checks.max_abs_diff.max()) < 1e-5
    diagonals = jax.vmap(lambda z: activation_jacobian("tanh", z))(X)
    np.testing.assert_allclose(diagonals[:, 1, 1], 1 - jnp.tanh(X[:, 1]) ** 2, rtol=1e-6)


def test_errors_name_function_argument_expected_and_actual():
    params, x = random_mlp(4, [4, 5, 3])
    with pytest.raises(AssertionError, match=r"activation_jacobian: z has shape \(2, 3\) \(rank 2\), expected rank 1"):
        activation_jacobian("relu", jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"activation_jacobian: activation=gelu \(from jax\) is not one of nnjax's activations"):
        activation_jacobian(jax.nn.gelu, jnp.zeros(3))
    for softmax in ("softmax", nnjax.activations.softmax):
        with pytest.raises(ValueError, match=r"activation_jacobian: softmax is not elementwise .* use nnjax.activations.softmax_jacobian"):
            activation_jacobian(softmax, jnp.zeros(3))
    with pytest.raises(AssertionError, match=r"dense_jacobian: params\['b'\] has shape \(2,\), expected \(3,\)"):
        dense_jacobian({"W": jnp.zeros((3, 4)), "b": jnp.zeros(2)})
    for fn in (mlp_jacobian, layer_jacobians, chain_rule_check):
        name = fn.__name__
        with pytest.raises(AssertionError, match=rf"{name}: x has shape \(3,\), expected \(4,\) = \(n_0,\) to match params\[0\]\['W'\] of shape \(5, 4\)"):
            fn(params, jnp.zeros(3))
        with pytest.raises(ValueError, match=rf"{name}: output='loss' is not allowed; expected one of \['logits', 'probs'\]"):
            fn(params, x, output="loss")
        with pytest.raises(ValueError, match=rf"{name}: activation='swish' is not allowed"):
            fn(params, x, "swish")
        with pytest.raises(AssertionError, match=rf"{name}: params\[1\]\['W'\] has shape \(3, 4\), expected \(\?, 5\)"):
            fn([params[0], {"W": jnp.zeros((3, 4)), "b": jnp.zeros(3)}], x)
