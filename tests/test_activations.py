"""nnjax.activations and nnjax.backprop.activation: values, hand derivatives, stability, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax import activations as A
from nnjax.backprop import activation_backward, softmax_backward

NAMES = list(A.ELEMENTWISE)

# Independent references written with numpy, from the chapter's formulas.
REFERENCE = {
    "relu": lambda z: np.maximum(0, z),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": lambda z: (np.exp(z) - np.exp(-z)) / (np.exp(z) + np.exp(-z)),
    "softplus": lambda z: np.log1p(np.exp(z)),
}


def grid64():
    """Points in [-6, 6] that avoid the ReLU kink at 0, in float64."""
    return jnp.linspace(-6.0, 6.0, 40, dtype=jnp.float64) + 0.0123


def central_difference(f, z, eps=1e-6):
    """Elementwise derivative of an elementwise f by central differences."""
    return (f(z + eps) - f(z - eps)) / (2 * eps)


def numerical_gradient(f, x, eps=1e-6):
    """Gradient of a scalar f at x by central differences, one coordinate at a time."""
    steps = eps * jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    f_batch = jax.vmap(f)
    return ((f_batch(x + steps) - f_batch(x - steps)) / (2 * eps)).reshape(x.shape)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_numpy_reference(name, x64):
    z = grid64()
    sigma, _ = A.ELEMENTWISE[name]
    np.testing.assert_allclose(sigma(z), REFERENCE[name](np.asarray(z)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_jax_grad(name, x64):
    z = grid64()
    sigma, sigma_prime = A.ELEMENTWISE[name]
    autodiff = jax.vmap(jax.grad(sigma))(z)
    np.testing.assert_allclose(sigma_prime(z), autodiff, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_finite_differences(name, x64):
    z = grid64()
    sigma, sigma_prime = A.ELEMENTWISE[name]
    np.testing.assert_allclose(sigma_prime(z), central_difference(sigma, z), rtol=1e-7, atol=1e-9)


def test_kink_conventions():
    assert float(A.relu_derivative(jnp.array(0.0))) == 0.0
    assert float(A.leaky_relu_derivative(jnp.array(0.0), 0.2)) == pytest.approx(0.2)
    assert float(A.leaky_relu(jnp.array(-2.0), negative_slope=0.2)) == pytest.approx(-0.4)


@pytest.mark.parametrize("name", NAMES)
def test_autodiff_takes_the_hand_derived_derivative_at_zero(name):
    """z = 0 exactly is common (zero biases, zero inputs): there jax.grad must agree with sigma'
    (jnp.maximum's own derivative would give ReLU 1/2)."""
    sigma, sigma_prime = A.ELEMENTWISE[name]
    zero = jnp.zeros(3)
    assert jnp.array_equal(jax.vmap(jax.grad(sigma))(zero), sigma_prime(zero)), name


def test_relu_keeps_nan():
    assert jnp.isnan(A.relu(jnp.nan)) and jnp.isnan(A.relu(jnp.array([1.0, jnp.nan]))[1])


def test_python_numbers_and_ints_are_floats_and_other_dtypes_are_refused():
    assert float(A.relu_derivative(0.0)) == 0.0 and float(A.relu_derivative(2)) == 1.0
    assert float(A.sigmoid(0)) == 0.5 and float(A.sigmoid_derivative(0)) == 0.25
    for name in NAMES + ["softmax", "log_softmax"]:
        fn = getattr(A, name)
        assert jnp.issubdtype(fn(jnp.array([-1, 0, 2])).dtype, jnp.floating), name
        with pytest.raises(TypeError, match=f"{name}: z must be an array of real numbers .* got dtype complex64"):
            fn(jnp.array([1j], jnp.complex64))
    with pytest.raises(TypeError, match=r"softmax: z must be an array of real numbers .* got dtype bool"):
        A.softmax(jnp.array([True, False]))
    with pytest.raises(ValueError, match=r"log_softmax: z has shape \(2, 0\): no classes along axis -1"):
        A.log_softmax(jnp.zeros((2, 0)))
    with pytest.raises(TypeError, match=r"leaky_relu: negative_slope must be an array of real numbers .* got 'a'"):
        A.leaky_relu(jnp.ones(3), "a")
    with pytest.raises(AssertionError, match=r"leaky_relu_derivative: negative_slope has shape \(3, 1\), expected \(\)"):
        A.leaky_relu_derivative(jnp.ones(3), jnp.ones((3, 1)))


def test_derivatives_keep_float64(x64):
    z = jnp.array([-1.0, 0.5], jnp.float64)
    for name in NAMES:
        assert A.ELEMENTWISE[name][1](z).dtype == jnp.float64, name


def test_tanh_is_rescaled_sigmoid(x64):
    z = grid64()
    np.testing.assert_allclose(A.tanh(z), 2 * A.sigmoid(2 * z) - 1, atol=1e-14)


def test_saturating_activations_are_finite_for_huge_inputs():
    z = jnp.array([-1e4, -100.0, 100.0, 1e4])
    for fn in (A.sigmoid, A.tanh, A.softplus, A.sigmoid_derivative, A.tanh_derivative, A.softplus_derivative):
        assert bool(jnp.all(jnp.isfinite(fn(z)))), fn.__name__
    np.testing.assert_allclose(A.softplus(z), [0.0, 0.0, 100.0, 1e4], atol=1e-30)
    np.testing.assert_allclose(A.sigmoid(z), [0.0, 0.0, 1.0, 1.0], atol=1e-30)


def test_softmax_sums_to_one_along_axis():
    z = jax.random.normal(jax.random.key(0), (3, 5))
    np.testing.assert_allclose(A.softmax(z).sum(axis=-1), 1, rtol=1e-6)
    np.testing.assert_allclose(A.softmax(z, axis=0).sum(axis=0), 1, rtol=1e-6)
    reference = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(A.softmax(z), reference, rtol=1e-5)


def test_softmax_and_log_softmax_are_stable_for_huge_logits():
    z = jnp.array([1e4, 0.0, -1e4])
    np.testing.assert_allclose(A.softmax(z), [1.0, 0.0, 0.0], atol=1e-30)
    np.testing.assert_allclose(A.log_softmax(z), [0.0, -1e4, -2e4], rtol=1e-6)
    np.testing.assert_allclose(A.softmax(z + 1e30), A.softmax(jnp.zeros(3) + 1e30))  # finite, uniform
    assert bool(jnp.all(jnp.isfinite(A.softmax(jnp.full(3, 1e30)))))


def test_softmax_is_shift_invariant_and_log_softmax_is_its_log(x64):
    z = jnp.array([0.3, -1.2, 2.0], jnp.float64)
    np.testing.assert_allclose(A.softmax(z + 50), A.softmax(z), rtol=1e-13)
    np.testing.assert_allclose(A.log_softmax(z), jnp.log(A.softmax(z)), rtol=1e-13)


def test_softmax_jacobian_matches_jacfwd(x64):
    z = jnp.array([0.3, -1.2, 2.0, 0.7], jnp.float64)
    np.testing.assert_allclose(A.softmax_jacobian(z), jax.jacfwd(A.softmax)(z), rtol=1e-12, atol=1e-15)
    s = A.softmax(z)
    np.testing.assert_allclose(A.softmax_jacobian(z), np.diag(s) - np.outer(s, s), atol=1e-15)
    np.testing.assert_allclose(A.softmax_jacobian(z).sum(axis=0), 0, atol=1e-15)


def test_softmax_jacobian_rejects_a_batch():
    with pytest.raises(AssertionError, match=r"softmax_jacobian: z has shape \(2, 3\).*expected rank 1"):
        A.softmax_jacobian(jnp.zeros((2, 3)))


def test_activation_name_accepts_names_and_functions_only():
    for name, (fn, _) in A.ELEMENTWISE.items():
        assert A.activation_name(name) == name
        assert A.activation_name(fn) == name
        assert A.get_activation(fn) == A.ELEMENTWISE[name]
    with pytest.raises(ValueError, match=r"activation_name: activation='gelu' is not allowed; expected one of \['relu'"):
        A.activation_name("gelu")
    with pytest.raises(ValueError, match=r"mlp_grads: activation=relu \(from jax\) is not one of nnjax's activations.*relu, leaky_relu"):
        A.activation_name(jax.nn.relu, "mlp_grads")


@pytest.mark.parametrize("name", NAMES)
def test_activation_backward_matches_vjp(name, x64):
    z = grid64()
    delta = jnp.cos(3 * z)
    sigma, _ = A.ELEMENTWISE[name]
    _, vjp = jax.vjp(sigma, z)
    np.testing.assert_allclose(activation_backward(name, z, delta), vjp(delta)[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(activation_backward(sigma, z, delta), vjp(delta)[0], rtol=1e-12, atol=1e-15)


def test_softmax_backward_matches_vjp_and_finite_differences(x64):
    z = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, -3.0, 0.0]], jnp.float64)
    delta = jnp.array([[1.0, -2.0, 0.5, 0.25], [0.0, 3.0, -1.0, 2.0]], jnp.float64)
    _, vjp = jax.vjp(A.softmax, z)
    np.testing.assert_allclose(softmax_backward(z, delta), vjp(delta)[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(softmax_backward(z[0], delta[0]), A.softmax_jacobian(z[0]).T @ delta[0], atol=1e-15)
    numeric = numerical_gradient(lambda v: jnp.sum(A.softmax(v) * delta), z)
    np.testing.assert_allclose(softmax_backward(z, delta), numeric, rtol=1e-7, atol=1e-9)


def test_backward_errors_name_function_argument_and_shapes():
    with pytest.raises(AssertionError, match=r"activation_backward: z has shape \(3,\) but delta has shape \(4,\)"):
        activation_backward("relu", jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"activation_backward: activation='swish' is not allowed; expected one of"):
        activation_backward("swish", jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"activation_backward: activation=gelu \(from jax\) is not one of nnjax's activations"):
        activation_backward(jax.nn.gelu, jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(TypeError, match=r"activation_backward: z must be a floating-point array, got dtype int"):
        activation_backward("relu", jnp.arange(3), jnp.zeros(3))
    with pytest.raises(AssertionError, match=r"softmax_backward: z has shape \(2, 3\) but delta has shape \(3,\)"):
        softmax_backward(jnp.zeros((2, 3)), jnp.zeros(3))


def test_everything_runs_under_jit_and_vmap():
    z = jax.random.normal(jax.random.key(1), (4, 3))

    def per_example(a):
        values = {name: (sigma(a), sigma_prime(a), activation_backward(name, a, 2 * a))
                  for name, (sigma, sigma_prime) in A.ELEMENTWISE.items()}
        return values, A.softmax_jacobian(a), softmax_backward(a, a), A.log_softmax(a)

    values, jacobians, softmax_grads, log_probs = jax.jit(jax.vmap(per_example))(z)
    for name, (sigma, sigma_prime) in A.ELEMENTWISE.items():
        np.testing.assert_allclose(values[name][0], sigma(z), rtol=1e-6)
        np.testing.assert_allclose(values[name][1], sigma_prime(z), rtol=1e-6)
        np.testing.assert_allclose(values[name][2], 2 * z * sigma_prime(z), rtol=1e-6)
    np.testing.assert_allclose(jacobians, np.stack([A.softmax_jacobian(r) for r in z]), atol=1e-7)
    np.testing.assert_allclose(softmax_grads, softmax_backward(z, z), atol=1e-7)
    np.testing.assert_allclose(log_probs, A.log_softmax(z), atol=1e-7)


def test_bad_inputs_name_the_activation_and_the_argument():
    with pytest.raises(TypeError, match=r"relu: z must be an array of real numbers \(ints or floats\), got 'a'"):
        A.relu("a")
    with pytest.raises(ValueError, match=r"softmax: axis=5 is not an axis of z of shape \(3,\); expected an int in \[-1, 1\)"):
        A.softmax(jnp.ones(3), axis=5)
    with pytest.raises(ValueError, match=r"log_softmax: axis=-2 is not an axis of z of shape \(3,\)"):
        A.log_softmax(jnp.ones(3), axis=-2)


def test_leaky_relu_keeps_the_dtype_of_z_whatever_the_slope(x64):
    z = jnp.array([-1.0, 2.0], jnp.float32)
    assert A.leaky_relu(z, np.float64(0.1)).dtype == A.leaky_relu_derivative(z, np.float64(0.1)).dtype == jnp.float32
    np.testing.assert_allclose(A.leaky_relu(z, np.float64(0.1)), [-0.1, 2.0], rtol=1e-7)


def test_softmax_axis_takes_any_integer_and_refuses_other_types():
    z = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    for axis in (0, np.int64(0), jnp.int32(0)):
        np.testing.assert_allclose(A.softmax(z, axis=axis), jax.nn.softmax(z, axis=0), rtol=1e-6)
    for axis in (None, 1.0, (0, 1), True):
        with pytest.raises(TypeError, match=r"softmax: axis must be an int, got"):
            A.softmax(z, axis=axis)
