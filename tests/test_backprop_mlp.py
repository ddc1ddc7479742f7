"""nnjax.backprop.mlp: the chapter's delta recursion against autodiff, finite differences and the
chapter's own numpy code."""
import ast
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from jax.flatten_util import ravel_pytree

import nnjax.backprop
from nnjax.activations import ELEMENTWISE, softmax
from nnjax.backprop import mlp_backward, mlp_grads, mlp_grads_bce, mlp_grads_mse, mlp_logits_and_grads
from nnjax.losses import mse, sigmoid_binary_cross_entropy, softmax_cross_entropy
from nnjax.network import mlp_init, mlp_logits, mlp_logits_batch

LOSS_FNS = {"softmax_cross_entropy": softmax_cross_entropy, "mse": mse,
            "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy}


def random_mlp(seed, sizes, m=None):
    """float64 params with nonzero biases, and an input x (or a batch X of m rows) with targets."""
    rng = np.random.default_rng(seed)
    params = [{"W": jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)), "b": jnp.asarray(0.3 * rng.normal(size=n_out))}
              for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    shape = (sizes[0],) if m is None else (m, sizes[0])
    labels = rng.integers(0, sizes[-1], size=shape[:-1])
    return params, jnp.asarray(rng.normal(size=shape)), jnp.asarray(np.eye(sizes[-1])[labels])


def numerical_gradient(f, params, eps=1e-6):
    """Gradient of a scalar f at a pytree of params by central differences."""
    flat, unravel = ravel_pytree(params)
    steps = eps * jnp.eye(flat.size, dtype=flat.dtype)
    f_flat = jax.jit(jax.vmap(lambda v: f(unravel(v))))
    return unravel((f_flat(flat + steps) - f_flat(flat - steps)) / (2 * eps))


def assert_trees_close(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(leaf_a, leaf_b, rtol=rtol, atol=atol)


def example_loss(params, x, y, activation, loss):
    return LOSS_FNS[loss](mlp_logits(params, x, activation), y)


def batch_loss(params, X, Y, activation, loss):
    logits = jax.vmap(mlp_logits, in_axes=(None, 0, None))(params, X, activation)
    return jnp.mean(LOSS_FNS[loss](logits, Y))


@partial(jax.jit, static_argnames=("activation",))
def example_manual_and_autodiff(params, x, y, activation):
    """For each loss: mlp_backward's (grads, deltas), and by autodiff the grads and dL/dz^[l]."""
    sigma = ELEMENTWISE[activation][0]

    def loss_with_shifted_z(shifts, loss):  # dL/dz^[l] is the gradient w.r.t. a shift added to z^[l]
        a = x
        for l, (layer, shift) in enumerate(zip(params, shifts)):
            z = layer["W"] @ a + layer["b"] + shift
            a = sigma(z) if l < len(params) - 1 else z
        return LOSS_FNS[loss](a, y)

    zero_shifts = [jnp.zeros_like(layer["b"]) for layer in params]
    return {loss: (mlp_backward(params, x, y, activation, loss),
                   (jax.grad(example_loss)(params, x, y, activation, loss), jax.grad(loss_with_shifted_z)(zero_shifts, loss)))
            for loss in LOSS_FNS}


@partial(jax.jit, static_argnames=("activation",))
def batch_manual_and_autodiff(params, X, Y, activation):
    """mlp_grads, mlp_grads_mse and mlp_grads_bce beside jax.grad of the three mean losses, in one
    compiled call."""
    return ((mlp_grads(params, X, Y, activation), jax.grad(batch_loss)(params, X, Y, activation, "softmax_cross_entropy")),
            (mlp_grads_mse(params, X, Y, activation), jax.grad(batch_loss)(params, X, Y, activation, "mse")),
            (mlp_grads_bce(params, X, Y, activation),
             jax.grad(batch_loss)(params, X, Y, activation, "sigmoid_binary_cross_entropy")))


@partial(jax.jit, static_argnames=("activation",))
def mean_of_per_example_backward(params, X, Y, activation):
    per_example, _ = jax.vmap(mlp_backward, in_axes=(None, 0, 0, None))(params, X, Y, activation)
    return jax.tree.map(lambda g: g.mean(0), per_example)


@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_mlp_backward_matches_jax_grad_including_every_delta(activation, x64):
    params, x, y = random_mlp(0, [5, 6, 4, 3])
    for loss, ((grads, deltas), (auto_grads, auto_deltas)) in example_manual_and_autodiff(params, x, y, activation).items():
        assert_trees_close(grads, auto_grads, rtol=1e-11, atol=1e-13)
        assert len(deltas) == 3
        for delta, auto_delta in zip(deltas, auto_deltas):
            np.testing.assert_allclose(delta, auto_delta, rtol=1e-11, atol=1e-13, err_msg=loss)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_mlp_backward_matches_finite_differences(activation, x64):
    params, x, y = random_mlp(1, [3, 4, 2])
    for loss in LOSS_FNS:
        grads, _ = mlp_backward(params, x, y, activation, loss)
        numeric = numerical_gradient(lambda p: example_loss(p, x, y, activation, loss), params)
        assert_trees_close(grads, numeric, rtol=1e-6, atol=1e-8)


def test_output_deltas_are_the_chapters_simplifications(x64):
    params, x, y = random_mlp(2, [3, 4, 3])
    _, deltas = mlp_backward(params, x, y)
    logits = mlp_logits(params, x)
    np.testing.assert_allclose(deltas[-1], softmax(logits) - y, atol=1e-15)  # a^[L] - y
    _, deltas = mlp_backward(params, x, y, loss="mse")
    np.testing.assert_allclose(deltas[-1], 2 * (logits - y), atol=1e-15)
    _, deltas = mlp_backward(params, x, y, loss="sigmoid_binary_cross_entropy")
    np.testing.assert_allclose(deltas[-1], jax.nn.sigmoid(logits) - y, atol=1e-15)  # a^[L] - y again
    z1 = params[0]["W"] @ x + params[0]["b"]
    np.testing.assert_allclose(deltas[0], (params[1]["W"].T @ deltas[1]) * (z1 > 0), atol=1e-15)


@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_mlp_grads_match_jax_grad_and_the_mean_of_per_example_backward(activation, x64):
    params, X, Y = random_mlp(3, [5, 6, 4, 3], m=7)
    (ce, ce_auto), (sq, sq_auto), (bce, bce_auto) = batch_manual_and_autodiff(params, X, Y, activation)
    assert_trees_close(ce, ce_auto, rtol=1e-11, atol=1e-13)
    assert_trees_close(sq, sq_auto, rtol=1e-11, atol=1e-13)
    assert_trees_close(bce, bce_auto, rtol=1e-11, atol=1e-13)
    assert_trees_close(ce, mean_of_per_example_backward(params, X, Y, activation), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_gradients_agree_at_pre_activations_that_are_exactly_zero(activation, x64):
    """Zero biases (mlp_init's) and the XOR point (0, 0) make z^[1] = 0 exactly: the kink of
    ReLU, where hand-derived and automatic derivatives must make the same choice."""
    params = mlp_init(jax.random.key(0), [2, 4, 2], dtype=jnp.float64)
    X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    Y = jnp.eye(2)[jnp.array([0, 1, 1, 0])]
    auto = jax.grad(lambda p: jnp.mean(softmax_cross_entropy(mlp_logits_batch(p, X, activation), Y)))(params)
    assert_trees_close(mlp_grads(params, X, Y, activation), auto, rtol=1e-12, atol=1e-14)


def test_mlp_logits_and_grads_returns_the_forward_logits_and_mlp_grads(x64):
    params, X, Y = random_mlp(4, [5, 6, 3], m=4)
    logits, grads = mlp_logits_and_grads(params, X, Y, "tanh")
    np.testing.assert_allclose(logits, jax.vmap(mlp_logits, in_axes=(None, 0, None))(params, X, jnp.tanh),
                               rtol=1e-13, atol=1e-14)
    assert_trees_close(grads, mlp_grads(params, X, Y, "tanh"), rtol=0, atol=0)


def test_mlp_grads_match_finite_differences(x64):
    params, X, Y = random_mlp(4, [3, 4, 2], m=5)
    for manual, loss in ((mlp_grads, "softmax_cross_entropy"), (mlp_grads_mse, "mse")):
        numeric = numerical_gradient(lambda p: batch_loss(p, X, Y, "sigmoid", loss), params)
        assert_trees_close(manual(params, X, Y, "sigmoid"), numeric, rtol=1e-6, atol=1e-8)


def chapter_backward(weights, biases, X, Y):
    """The chapter's NeuralNetwork.forward + backward in numpy, examples as columns."""
    activations, pre_activations = [X], []
    A = X
    for l in range(len(weights)):
        Z = weights[l] @ A + biases[l]
        pre_activations.append(Z)
        A = np.exp(Z - Z.max(0)) / np.exp(Z - Z.max(0)).sum(0) if l == len(weights) - 1 else np.maximum(0, Z)
        activations.append(A)
    m = Y.shape[1]
    dA, weight_grads, bias_grads = activations[-1] - Y, [], []
    for l in range(len(weights) - 1, -1, -1):
        dZ = dA if l == len(weights) - 1 else dA * (pre_activations[l] > 0)
        weight_grads.insert(0, dZ @ activations[l].T / m)
        bias_grads.insert(0, dZ.sum(axis=1, keepdims=True) / m)
        dA = weights[l].T @ dZ
    return weight_grads, bias_grads


def test_mlp_grads_equal_the_chapters_numpy_code(x64):
    params, X, Y = random_mlp(5, [6, 5, 4, 3], m=8)
    weight_grads, bias_grads = chapter_backward([np.asarray(p["W"]) for p in params],
                                                [np.asarray(p["b"])[:, None] for p in params],
                                                np.asarray(X).T, np.asarray(Y).T)
    grads = mlp_grads(params, X, Y)
    for g, dW, db in zip(grads, weight_grads, bias_grads):
        np.testing.assert_allclose(g["W"], dW, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g["b"], db[:, 0], rtol=1e-12, atol=1e-14)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), m=st.integers(1, 5),
       activation=st.sampled_from(list(ELEMENTWISE)), seed=st.integers(0, 2**16))
def test_mlp_grads_equal_autodiff_for_random_sizes_and_batches(x64, sizes, m, activation, seed):
    params, X, Y = random_mlp(seed, sizes, m)
    (ce, ce_auto), (sq, sq_auto), (bce, bce_auto) = batch_manual_and_autodiff(params, X, Y, activation)
    assert_trees_close(ce, ce_auto, rtol=1e-10, atol=1e-12)
    assert_trees_close(sq, sq_auto, rtol=1e-10, atol=1e-12)
    assert_trees_close(bce, bce_auto, rtol=1e-10, atol=1e-12)
    assert [g["W"].shape for g in ce] == [p["W"].shape for p in params]


def test_everything_runs_under_jit_and_vmap():
    params, X, Y = random_mlp(6, [4, 5, 3], m=6)
    params, X, Y = jax.tree.map(lambda a: a.astype(jnp.float32), (params, X, Y))
    grads = jax.jit(mlp_grads)(params, X, Y)
    per_example, deltas = jax.jit(jax.vmap(mlp_backward, in_axes=(None, 0, 0)))(params, X, Y)
    assert_trees_close(grads, jax.tree.map(lambda g: g.mean(0), per_example), rtol=1e-5, atol=1e-6)
    assert [d.shape for d in deltas] == [(6, 5), (6, 3)]
    halves = jax.jit(jax.vmap(mlp_grads_mse, in_axes=(None, 0, 0)))(params, X.reshape(2, 3, 4), Y.reshape(2, 3, 3))
    assert_trees_close(jax.tree.map(lambda g: g.mean(0), halves), mlp_grads_mse(params, X, Y), rtol=1e-5, atol=1e-6)


def test_backprop_never_calls_autodiff():
    forbidden = {"grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "jacobian", "hessian", "linearize"}
    for path in pathlib.Path(nnjax.backprop.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jax":
                assert node.attr not in forbidden, f"{path.name}:{node.lineno} uses jax.{node.attr}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax"):
                names = {alias.name for alias in node.names}
                assert not names & forbidden, f"{path.name}:{node.lineno} imports {names & forbidden} from {node.module}"


@pytest.mark.parametrize("fn", [mlp_grads, mlp_grads_mse], ids=lambda f: f.__name__)
def test_batch_errors_name_function_argument_expected_and_actual(fn):
    name = fn.__name__
    params = mlp_init(jax.random.key(0), [4, 5, 3])
    X, Y = jnp.zeros((6, 4)), jnp.zeros((6, 3))
    with pytest.raises(ValueError, match=rf"{name}: activation=relu \(from jax\) is not one of nnjax's activations, so it has no hand-derived derivative; pass one of nnjax.activations"):
        fn(params, X, Y, jax.nn.relu)
    with pytest.raises(ValueError, match=rf"{name}: activation='elu' is not allowed; expected one of \['relu'"):
        fn(params, X, Y, "elu")
    with pytest.raises(AssertionError, match=rf"{name}: X has shape \(4,\) \(rank 1\), expected rank 2: \(m, n_0\)"):
        fn(params, X[0], Y)
    with pytest.raises(AssertionError, match=rf"{name}: X has shape \(6, 3\), expected \(\?, 4\) = \(m, n_0\) to match params\[0\]\['W'\] of shape \(5, 4\)"):
        fn(params, jnp.zeros((6, 3)), Y)
    with pytest.raises(AssertionError, match=rf"{name}: Y has shape \(5, 3\), expected \(6, 3\) = \(m, n_L\) to match X of shape \(6, 4\)"):
        fn(params, X, Y[:5])
    with pytest.raises(ValueError, match=rf"{name}: X must hold at least one example, got shape \(0, 4\)"):
        fn(params, X[:0], Y[:0])
    with pytest.raises(AssertionError, match=rf"{name}: params\[1\]\['W'\] has shape \(3, 6\), expected \(\?, 5\)"):
        fn([params[0], {"W": jnp.zeros((3, 6)), "b": jnp.zeros(3)}], X, Y)


def test_example_errors_name_function_argument_expected_and_actual():
    params = mlp_init(jax.random.key(0), [4, 5, 3])
    x, y = jnp.zeros(4), jnp.zeros(3)
    with pytest.raises(ValueError, match=r"mlp_backward: loss='hinge' is not allowed; expected one of \['softmax_cross_entropy', 'mse', 'sigmoid_binary_cross_entropy'\]"):
        mlp_backward(params, x, y, loss="hinge")
    with pytest.raises(ValueError, match=r"mlp_backward: activation=<lambda> \(from test_backprop_mlp\) is not one of nnjax's activations"):
        mlp_backward(params, x, y, lambda z: z)
    with pytest.raises(AssertionError, match=r"mlp_backward: y has shape \(4,\), expected \(3,\) = \(n_L,\) to match params\[-1\]\['W'\] of shape \(3, 5\)"):
        mlp_backward(params, x, jnp.zeros(4))
    with pytest.raises(AssertionError, match=r"mlp_backward: x has shape \(2, 4\), expected \(4,\) = \(n_0,\)"):
        mlp_backward(params, jnp.zeros((2, 4)), y)
    with pytest.raises(TypeError, match=r"mlp_backward: params\[0\] must be a dict with keys \['W', 'b'\]"):
        mlp_backward([{"w": jnp.zeros((5, 4)), "b": jnp.zeros(5)}], x, y)


def test_the_general_output_rule_composes_for_a_pair_outside_losses(x64):
    """delta^[L] = grad_a L * sigma'(z^[L]): a sigmoid output under MSE, as LOSSES' docstring shows."""
    from nnjax.activations import sigmoid
    from nnjax.backprop import activation_backward, mse_backward
    from nnjax.losses import mse

    z_L, y = jnp.array([0.3, -1.2, 2.0]), jnp.array([1.0, 0.0, 1.0])
    composed = activation_backward("sigmoid", z_L, mse_backward(sigmoid(z_L), y))
    np.testing.assert_allclose(composed, jax.grad(lambda z: mse(sigmoid(z), y))(z_L), rtol=1e-12)
