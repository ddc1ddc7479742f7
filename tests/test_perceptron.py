"""nnjax.layers.perceptron: the decision rule, Rosenblatt's learning rule, its trace, the neuron."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.activations import relu, sigmoid
from nnjax.layers import neuron, perceptron, perceptron_fit, perceptron_fit_trace

XOR_X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = jnp.array([-1, 1, 1, -1])


def separable_data(seed=0, n=40, d=3, margin=0.1):
    """Points labelled by a random hyperplane, keeping only those at least `margin` away from it."""
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=d), 0.3
    X = rng.uniform(-1, 1, size=(4 * n, d))
    scores = (X @ w + b) / np.linalg.norm(w)
    keep = np.abs(scores) > margin
    return jnp.asarray(X[keep][:n], jnp.float32), jnp.asarray(np.where(scores[keep][:n] >= 0, 1, -1))


def test_perceptron_is_sign_of_the_affine_score_with_sign_zero_positive():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    X = jnp.array([[1.0, 1.0], [3.0, 1.0], [1.5, 1.0], [0.0, 0.0]])  # scores -0.5, 1.5, 0.0, 0.5
    got = [int(perceptron(params, x)) for x in X]
    assert got == [-1, 1, 1, 1]
    assert perceptron(params, X[0]).dtype == jnp.int32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_converges_on_separable_data(seed):
    X, y = separable_data(seed)
    params, mistakes = perceptron_fit(X, y, epochs=60)
    mistakes = np.asarray(mistakes)
    assert mistakes.shape == (60,) and mistakes[0] > 0
    first_clean = int(np.argmax(mistakes == 0))
    assert mistakes[first_clean] == 0 and np.all(mistakes[first_clean:] == 0)
    predictions = jax.vmap(perceptron, in_axes=(None, 0))(params, X)
    np.testing.assert_array_equal(predictions, y)


def test_fit_learns_and_but_never_xor():
    and_y = jnp.array([-1, -1, -1, 1])
    params, mistakes = perceptron_fit(XOR_X, and_y, epochs=20)
    assert int(mistakes[-1]) == 0
    np.testing.assert_array_equal(jax.vmap(perceptron, in_axes=(None, 0))(params, XOR_X), and_y)
    params, mistakes = perceptron_fit(XOR_X, XOR_Y, epochs=200)
    assert np.all(np.asarray(mistakes) > 0)
    assert np.any(jax.vmap(perceptron, in_axes=(None, 0))(params, XOR_X) != XOR_Y)


def test_fit_from_zeros_is_invariant_to_the_learning_rate():
    X, y = separable_data(3)
    params_1, mistakes_1 = perceptron_fit(X, y, epochs=30, lr=1.0)
    params_small, mistakes_small = perceptron_fit(X, y, epochs=30, lr=0.25)
    np.testing.assert_array_equal(mistakes_1, mistakes_small)
    np.testing.assert_allclose(params_small["w"], 0.25 * params_1["w"], rtol=1e-6)


def test_trace_replays_every_update_of_rosenblatts_rule():
    X, y = separable_data(4, n=20)
    trace = perceptron_fit_trace(X, y, epochs=30, lr=0.5)
    params, mistakes = perceptron_fit(X, y, epochs=30, lr=0.5)
    np.testing.assert_array_equal(trace.mistakes_per_epoch, mistakes)
    assert len(trace.w) == len(trace.b) == len(trace.example) == len(trace.epoch) == int(mistakes.sum()) + 1
    np.testing.assert_array_equal(trace.w[0], 0)
    assert trace.b[0] == 0 and trace.example[0] == -1
    np.testing.assert_allclose(trace.w[-1], params["w"], rtol=1e-6)
    np.testing.assert_allclose(trace.b[-1], params["b"], rtol=1e-6)
    for k in range(1, len(trace.w)):
        i = trace.example[k]
        previous = {"w": jnp.asarray(trace.w[k - 1]), "b": jnp.asarray(trace.b[k - 1])}
        assert int(perceptron(previous, X[i])) != int(y[i])  # an update only follows a mistake
        np.testing.assert_allclose(trace.w[k] - trace.w[k - 1], 0.5 * y[i] * X[i], atol=1e-6)
        np.testing.assert_allclose(trace.b[k] - trace.b[k - 1], 0.5 * y[i], atol=1e-6)
    assert np.all(np.diff(trace.epoch[1:]) >= 0)
    np.testing.assert_array_equal(np.bincount(trace.epoch[1:], minlength=30), mistakes)


def test_neuron_applies_the_activation_to_the_affine_score():
    params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(-0.25)}
    x = jnp.array([1.0, 2.0, 0.5])
    z = 0.5 - 2.0 + 1.0 - 0.25
    assert float(neuron(params, x)) == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-6)
    assert float(neuron(params, x, activation="relu")) == 0.0
    assert float(neuron(params, x, activation=jnp.tanh)) == pytest.approx(np.tanh(z), rel=1e-6)
    assert float(neuron(params, x, relu)) == 0.0


def test_everything_runs_under_jit_and_vmap():
    X, y = separable_data(5, n=12)
    fit = jax.jit(perceptron_fit, static_argnames="epochs")
    params_jit, mistakes_jit = fit(X, y, epochs=25)
    params, mistakes = perceptron_fit(X, y, epochs=25)
    np.testing.assert_array_equal(mistakes_jit, mistakes)
    np.testing.assert_allclose(params_jit["w"], params["w"], rtol=1e-6)
    predict = jax.jit(jax.vmap(perceptron, in_axes=(None, 0)))
    np.testing.assert_array_equal(predict(params, X), [perceptron(params, x) for x in X])
    unit = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(0.1)}
    activations = jax.jit(jax.vmap(lambda p, x: neuron(p, x, sigmoid), in_axes=(None, 0)))(unit, X)
    np.testing.assert_allclose(activations, sigmoid(X @ unit["w"] + 0.1), rtol=1e-6)


def test_errors_name_function_argument_and_what_was_expected():
    good = {"w": jnp.zeros(2), "b": jnp.array(0.0)}
    with pytest.raises(AssertionError, match=r"perceptron: x has shape \(3,\), expected \(2,\) = \(d,\) to match params\['w'\] of shape \(2,\)"):
        perceptron(good, jnp.zeros(3))
    with pytest.raises(AssertionError, match=r"perceptron: params\['b'\] has shape \(1,\), expected \(\)"):
        perceptron({"w": jnp.zeros(2), "b": jnp.zeros(1)}, jnp.zeros(2))
    with pytest.raises(AssertionError, match=r"neuron: params\['w'\] has shape \(2, 2\) \(rank 2\), expected rank 1"):
        neuron({"w": jnp.zeros((2, 2)), "b": jnp.array(0.0)}, jnp.zeros(2))
    with pytest.raises(TypeError, match=r"neuron: params must be a dict with keys \['b', 'w'\] as perceptron_fit returns, got keys \['W', 'b'\]"):
        neuron({"W": jnp.zeros(2), "b": jnp.array(0.0)}, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"neuron: activation='softmax' is not allowed; expected one of \['relu'"):
        neuron(good, jnp.zeros(2), activation="softmax")
    with pytest.raises(TypeError, match=r"neuron: activation must be a callable"):
        neuron(good, jnp.zeros(2), activation=3)
    with pytest.raises(ValueError, match=r"perceptron_fit: y must hold labels in \{-1, \+1\}, got values \[0, 1\]"):
        perceptron_fit(XOR_X, jnp.array([0, 1, 1, 0]), epochs=3)
    with pytest.raises(AssertionError, match=r"perceptron_fit: y has shape \(3,\), expected \(4,\) = \(n,\) to match X of shape \(4, 2\)"):
        perceptron_fit(XOR_X, XOR_Y[:3], epochs=3)
    with pytest.raises(AssertionError, match=r"perceptron_fit: X has shape \(2,\) \(rank 1\), expected rank 2: \(n, d\)"):
        perceptron_fit(XOR_X[0], XOR_Y[:2], epochs=3)
    with pytest.raises(ValueError, match=r"perceptron_fit: epochs must be a positive int \(>= 1\), got 0"):
        perceptron_fit(XOR_X, XOR_Y, epochs=0)
    with pytest.raises(TypeError, match=r"perceptron_fit_trace: epochs must be a positive int, got 2.5"):
        perceptron_fit_trace(XOR_X, XOR_Y, epochs=2.5)
    with pytest.raises(ValueError, match=r"perceptron_fit_trace: lr must be > 0, got -1.0"):
        perceptron_fit_trace(XOR_X, XOR_Y, epochs=2, lr=-1.0)
