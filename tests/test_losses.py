"""nnjax.losses and the loss backward passes: values, gradients, stability at the extremes, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax import losses as L
from nnjax.activations import sigmoid, softmax
from nnjax.backprop import mse_backward, sigmoid_binary_cross_entropy_backward, softmax_cross_entropy_backward


def numerical_gradient(f, x, eps=1e-6):
    """Gradient of a scalar f at x by central differences, one coordinate at a time."""
    steps = eps * jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    f_batch = jax.vmap(f)
    return ((f_batch(x + steps) - f_batch(x - steps)) / (2 * eps)).reshape(x.shape)


def batch64():
    """Two examples with 4 classes: logits, one-hot targets, probabilities in (0, 1)."""
    logits = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.0, 1.5, -3.0, 0.0]], jnp.float64)
    y = jnp.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], jnp.float64)
    return logits, y, jax.nn.sigmoid(logits)


def test_values_match_the_chapter_formulas(x64):
    logits, y, p = batch64()
    z, t, q = map(np.asarray, (logits, y, p))
    np.testing.assert_allclose(L.mse(logits, y), ((t - z) ** 2).sum(-1), rtol=1e-14)
    np.testing.assert_allclose(L.binary_cross_entropy(p, y), -(t * np.log(q) + (1 - t) * np.log(1 - q)), rtol=1e-13)
    np.testing.assert_allclose(L.binary_cross_entropy_with_logits(logits, y), L.binary_cross_entropy(p, y), rtol=1e-13)
    np.testing.assert_allclose(L.sigmoid_binary_cross_entropy(logits, y), L.binary_cross_entropy(p, y).sum(-1), rtol=1e-13)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(L.cross_entropy(jnp.asarray(probs), y), -(t * np.log(probs)).sum(-1), rtol=1e-13)
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, y), L.cross_entropy(jnp.asarray(probs), y), rtol=1e-13)


def test_reduction_is_over_the_last_axis_only():
    logits = jnp.zeros((2, 3, 5))
    y = jax.nn.one_hot(jnp.zeros((2, 3), int), 5)
    for loss in (L.mse, L.cross_entropy, L.softmax_cross_entropy):
        assert loss(softmax(logits) if loss is L.cross_entropy else logits, y).shape == (2, 3), loss.__name__
    for loss in (L.binary_cross_entropy, L.binary_cross_entropy_with_logits):
        assert loss(jnp.full((2, 3), 0.5), jnp.ones((2, 3))).shape == (2, 3), loss.__name__
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, y), np.log(5), rtol=1e-6)


HAND_GRADIENTS = {
    "mse": (L.mse, lambda y_hat, y: 2 * (y_hat - y)),
    "softmax_cross_entropy": (L.softmax_cross_entropy, lambda z, y: softmax(z) - y),
    "binary_cross_entropy_with_logits": (L.binary_cross_entropy_with_logits, lambda z, y: sigmoid(z) - y),
    "sigmoid_binary_cross_entropy": (L.sigmoid_binary_cross_entropy, lambda z, y: sigmoid(z) - y),
    "binary_cross_entropy": (L.binary_cross_entropy, lambda p, y: (p - y) / (p * (1 - p))),
    "cross_entropy": (L.cross_entropy, lambda p, y: -y / p),
}


@pytest.mark.parametrize("name", HAND_GRADIENTS)
def test_gradients_match_jax_grad_and_finite_differences(name, x64):
    loss, hand = HAND_GRADIENTS[name]
    logits, y, p = batch64()
    inputs = p if name in ("binary_cross_entropy", "cross_entropy") else logits
    total = lambda v: jnp.sum(loss(v, y))
    np.testing.assert_allclose(hand(inputs, y), jax.grad(total)(inputs), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hand(inputs, y), numerical_gradient(total, inputs), rtol=1e-7, atol=1e-8)


def test_loss_backward_functions_match_vjp(x64):
    logits, y, _ = batch64()
    for backward, loss in ((softmax_cross_entropy_backward, L.softmax_cross_entropy), (mse_backward, L.mse),
                           (sigmoid_binary_cross_entropy_backward, L.sigmoid_binary_cross_entropy)):
        _, vjp = jax.vjp(lambda z: loss(z, y), logits)
        np.testing.assert_allclose(backward(logits, y), vjp(jnp.ones(2))[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(backward(logits, y), numerical_gradient(lambda z: jnp.sum(loss(z, y)), logits),
                                   rtol=1e-7, atol=1e-8)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.array([[1e4, 0.0, -1e4], [-1e30, 1e30, 0.0]])
    y = jnp.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, y), [1e4, 0.0], rtol=1e-6)
    grads = jax.grad(lambda z: jnp.sum(L.softmax_cross_entropy(z, y)))(logits)
    np.testing.assert_allclose(grads, [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(softmax_cross_entropy_backward(logits, y), grads, atol=1e-6)


def test_binary_cross_entropy_with_logits_is_stable_for_huge_logits():
    z = jnp.array([1e4, -1e4, 1e4, -1e4, 0.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(L.binary_cross_entropy_with_logits(z, y), [0, 0, 1e4, 1e4, np.log(2)], rtol=1e-6, atol=1e-30)
    grads = jax.grad(lambda v: jnp.sum(L.binary_cross_entropy_with_logits(v, y)))(z)
    np.testing.assert_allclose(grads, [0, 0, 1, -1, -0.5], atol=1e-6)


def test_binary_cross_entropy_is_finite_at_zero_and_one():
    p = jnp.array([0.0, 1.0, 0.0, 1.0])
    y = jnp.array([0.0, 1.0, 1.0, 0.0])
    values = L.binary_cross_entropy(p, y)
    assert bool(jnp.all(jnp.isfinite(values)))
    np.testing.assert_allclose(values[:2], 0.0, atol=1e-30)
    assert float(values[2]) > 80 and float(values[3]) > 80  # confidently wrong: large but finite
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda q: jnp.sum(L.binary_cross_entropy(q, y)))(p))))
    assert bool(jnp.all(jnp.isfinite(L.cross_entropy(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))))


def test_errors_name_function_arguments_and_shapes():
    cases = [(L.mse, "mse", "y_hat"), (L.binary_cross_entropy, "binary_cross_entropy", "p"),
             (L.binary_cross_entropy_with_logits, "binary_cross_entropy_with_logits", "z"),
             (L.cross_entropy, "cross_entropy", "p"), (L.softmax_cross_entropy, "softmax_cross_entropy", "logits"),
             (softmax_cross_entropy_backward, "softmax_cross_entropy_backward", "logits"),
             (mse_backward, "mse_backward", "y_hat")]
    for loss, fn, arg in cases:
        with pytest.raises(AssertionError, match=rf"{fn}: {arg} has shape \(2, 3\) but y has shape \(2, 4\)"):
            loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
        with pytest.raises(TypeError, match=rf"{fn}: {arg} must be a floating-point array, got dtype int"):
            loss(jnp.zeros((2, 3), int), jnp.zeros((2, 3)))


def test_everything_runs_under_jit_and_vmap():
    logits = jax.random.normal(jax.random.key(0), (3, 4))
    y = jax.nn.one_hot(jnp.array([0, 3, 1]), 4)

    def per_example(z, t):
        p = sigmoid(z)
        return (L.mse(z, t), L.binary_cross_entropy(p, t), L.binary_cross_entropy_with_logits(z, t),
                L.cross_entropy(softmax(z), t), L.softmax_cross_entropy(z, t),
                softmax_cross_entropy_backward(z, t), mse_backward(z, t))

    batched = jax.jit(jax.vmap(per_example))(logits, y)
    direct = per_example(logits, y)
    for got, want in zip(batched, direct):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_softmax_cross_entropy_with_a_masked_class_and_its_gradients(x64):
    """A -inf logit whose target is 0 adds nothing (not 0 * -inf = NaN); the gradients stay
    finite: dL/dz = softmax(z) - y, and dL/dy = -log_softmax(z) (0 at the masked class)."""
    z = jnp.array([0.3, -jnp.inf, 2.0])
    y = jnp.array([1.0, 0.0, 0.0])
    log_p = jax.nn.log_softmax(jnp.array([0.3, 2.0]))
    np.testing.assert_allclose(L.softmax_cross_entropy(z, y), -log_p[0], rtol=1e-12)
    dz, dy = jax.grad(L.softmax_cross_entropy, argnums=(0, 1))(z, y)
    np.testing.assert_allclose(dz, softmax(z) - y, rtol=1e-12)
    np.testing.assert_allclose(dy, [-log_p[0], 0.0, -log_p[1]], rtol=1e-12)


def test_softmax_cross_entropy_gradient_with_respect_to_the_targets(x64):
    """dL/dy_k = -log_softmax(z)_k for every class, those with y_k = 0 included (soft targets)."""
    z = jnp.array([0.3, -1.0, 2.0])
    for y in (jnp.array([1.0, 0.0, 0.0]), jnp.array([0.2, 0.5, 0.3])):
        np.testing.assert_allclose(jax.grad(L.softmax_cross_entropy, argnums=1)(z, y), -jax.nn.log_softmax(z),
                                   rtol=1e-12)
