"""trace_forward / trace_backward: hand-computed values, jax.grad, and the printed steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax import activations, losses
from nnjax.network import mlp_init, mlp_logits
from nnjax.network.trace import LayerTrace, format_array, trace_backward, trace_forward

# A tiny fixed 2 -> 2 -> 1 network, small enough to compute by hand.
W1 = [[1.0, -1.0], [-2.0, 0.5]]
B1 = [0.5, 0.25]
W2 = [[2.0, -3.0]]
B2 = [0.1]
X = [1.0, 0.5]
SIZES = [3, 5, 4, 3]  # every random network here has these sizes, so JAX compiles each op once


def _tiny():
    return [{"W": jnp.array(W1), "b": jnp.array(B1)}, {"W": jnp.array(W2), "b": jnp.array(B2)}]


def test_forward_matches_hand_computation():
    trace = trace_forward(_tiny(), jnp.array(X), output="linear")
    # z1 = W1 x + b1 = [1*1 - 1*0.5 + 0.5, -2*1 + 0.5*0.5 + 0.25] = [1.0, -1.5]
    np.testing.assert_allclose(trace.layer(1).z, [1.0, -1.5], rtol=1e-6)
    # a1 = relu(z1) = [1.0, 0.0]
    np.testing.assert_allclose(trace.layer(1).a, [1.0, 0.0], rtol=1e-6)
    # z2 = W2 a1 + b2 = 2*1 - 3*0 + 0.1 = 2.1; linear output a2 = z2
    np.testing.assert_allclose(trace.layer(2).z, [2.1], rtol=1e-6)
    np.testing.assert_allclose(trace.y_hat, [2.1], rtol=1e-6)
    np.testing.assert_allclose(trace.activations[0], X)
    assert len(trace.zs) == 2 and len(trace.activations) == 3
    assert isinstance(trace.layer(2), LayerTrace)
    np.testing.assert_allclose(trace.layer(2).W, W2)


def test_backward_matches_hand_computation():
    trace = trace_backward(_tiny(), jnp.array(X), jnp.array([1.0]), loss="mse")
    # L = (y - z2)^2 = (1 - 2.1)^2 = 1.21; delta2 = 2 (z2 - y) = 2.2
    np.testing.assert_allclose(trace.loss_value, 1.21, rtol=1e-5)
    np.testing.assert_allclose(trace.layer(2).delta, [2.2], rtol=1e-5)
    # dW2 = delta2 a1^T = 2.2 * [1, 0]; db2 = delta2
    np.testing.assert_allclose(trace.layer(2).dW, [[2.2, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(trace.layer(2).db, [2.2], rtol=1e-5)
    # delta1 = W2^T delta2 * relu'(z1) = [2 * 2.2, -3 * 2.2] * [1, 0] = [4.4, 0]
    np.testing.assert_allclose(trace.layer(1).delta, [4.4, 0.0], rtol=1e-5)
    # dW1 = delta1 x^T = [[4.4, 2.2], [0, 0]]
    np.testing.assert_allclose(trace.layer(1).dW, [[4.4, 2.2], [0.0, 0.0]], rtol=1e-5)
    assert trace.forward.output == "linear"


@pytest.mark.parametrize("output, fn", [("softmax", activations.softmax), ("sigmoid", activations.sigmoid),
                                        ("linear", lambda z: z)])
def test_forward_output_functions(output, fn):
    params = mlp_init(jax.random.key(1), SIZES)
    x = jnp.array([0.3, -1.2, 0.7])
    trace = trace_forward(params, x, activation="tanh", output=output)
    np.testing.assert_allclose(trace.layer(1).a, jnp.tanh(trace.layer(1).z), rtol=1e-6)
    np.testing.assert_allclose(trace.y_hat, fn(trace.zs[-1]), rtol=1e-6)
    np.testing.assert_allclose(trace.zs[-1], mlp_logits(params, x, activation="tanh"), rtol=1e-6)


def _loss_of_params(loss, activation):
    loss_fn = getattr(losses, loss)
    return lambda params, x, y: loss_fn(mlp_logits(params, x, activation), y)


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy", "sigmoid_binary_cross_entropy"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_backward_grads_equal_jax_grad(x64, loss, activation):
    key_params, key_x, key_y = jax.random.split(jax.random.key(7), 3)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), mlp_init(key_params, SIZES))
    x = jax.random.normal(key_x, (3,), jnp.float64)
    y = jax.nn.one_hot(1, 3, dtype=jnp.float64) if loss != "mse" else jax.random.normal(key_y, (3,), jnp.float64)
    trace = trace_backward(params, x, y, loss=loss, activation=activation)
    expected = jax.jit(jax.grad(_loss_of_params(loss, activation)))(params, x, y)
    for got, want in zip(trace.grads, expected):
        np.testing.assert_allclose(got["W"], want["W"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["b"], want["b"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(trace.loss_value, _loss_of_params(loss, activation)(params, x, y), rtol=1e-12)


def test_deltas_are_gradients_wrt_z(x64):
    """delta^[l] = dL/dz^[l]: compared with jax.grad of the loss w.r.t. an offset added to z^[l]."""
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), mlp_init(jax.random.key(3), SIZES))
    x, y = jnp.array([0.4, -0.9, 0.2]), jnp.array([0.0, 1.0, 0.0])
    trace = trace_backward(params, x, y, loss="softmax_cross_entropy", activation="sigmoid")

    def loss_with_offset(offset, layer):
        a = x
        for l, p in enumerate(params, start=1):
            z = p["W"] @ a + p["b"] + (offset if l == layer else 0.0)
            a = z if l == len(params) else activations.sigmoid(z)
        return losses.softmax_cross_entropy(a, y)

    for l in range(1, len(params) + 1):
        zero = jnp.zeros(params[l - 1]["b"].shape)
        dL_dz = jax.jit(jax.grad(loss_with_offset), static_argnums=1)(zero, l)
        np.testing.assert_allclose(trace.layer(l).delta, dL_dz, rtol=1e-10, atol=1e-12)


def test_str_shows_the_chapters_steps():
    forward = str(trace_forward(_tiny(), jnp.array(X), output="linear"))
    assert "a^[0] = x = [1.000, 0.500]" in forward
    assert ("  z^[1] = W^[1] a^[0] + b^[1]\n"
            "        = [[1.000, -1.000], [-2.000, 0.500]] [1.000, 0.500] + [0.500, 0.250]\n"
            "        = [1.000, -1.500]\n") in forward
    assert "a^[1] = relu(z^[1]) = [1.000, 0.000]" in forward
    assert "a^[2] = linear(z^[2]) = [2.100]" in forward
    backward = str(trace_backward(_tiny(), jnp.array(X), jnp.array([1.0]), loss="mse"))
    assert "delta^[2] = dL/dz^[2] = 2 (z^[2] - y) = [2.200]" in backward
    assert "delta^[1] = (W^[2])^T delta^[2] * relu'(z^[1]) = [4.400, -6.600] * [1.000, 0.000] = [4.400, 0.000]" \
        in backward
    assert "dL/dW^[1] = delta^[1] (a^[0])^T = [[4.400, 2.200], [0.000, 0.000]]" in backward
    assert backward.index("delta^[2]") < backward.index("delta^[1]")


def test_str_of_a_large_network_stays_short():
    rng = np.random.default_rng(0)
    params = [{"W": rng.normal(size=(20, 50)), "b": np.zeros(20)}, {"W": rng.normal(size=(10, 20)), "b": np.zeros(10)}]
    text = trace_forward(params, np.ones(50)).format(digits=2)
    assert "..." in text and "z^[1] = W^[1] a^[0] + b^[1] = [" in text
    assert max(len(line) for line in text.splitlines()) < 200


def test_format_array():
    assert format_array([1, -0.00001, 2.5]) == "[1.000, 0.000, 2.500]"
    assert format_array([[1, 2], [3, 4]], digits=1) == "[[1.0, 2.0], [3.0, 4.0]]"
    assert format_array(np.arange(10), digits=0) == "[0, 1, 2, ..., 8, 9]"


def test_errors():
    params, x = _tiny(), jnp.array(X)
    with pytest.raises(ValueError, match="output.*softmax"):
        trace_forward(params, x, output="tanh")
    with pytest.raises(ValueError, match="loss.*mse"):
        trace_backward(params, x, jnp.array([1.0]), loss="hinge")
    with pytest.raises(ValueError, match="activation"):
        trace_backward(params, x, jnp.array([1.0]), loss="mse", activation=jnp.sin)
    with pytest.raises(AssertionError, match="x"):
        trace_forward(params, jnp.ones(3))
    with pytest.raises(IndexError, match="1..2"):
        trace_forward(params, x).layer(0)
    with pytest.raises(IndexError, match="1..2"):
        trace_backward(params, x, jnp.array([1.0]), loss="mse").layer(3)
