"""nnjax.network.mlp: init, the forward pass layer by layer, its cached z and a, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.activations import relu, tanh
from nnjax.network import layer_forward, mlp_activations, mlp_forward, mlp_init, mlp_logits, mlp_logits_batch

SIZES = [4, 6, 5, 3]


def numpy_forward(params, x, sigma=lambda z: np.maximum(z, 0)):
    """The chapter's forward algorithm in numpy: z = W a + b; a = sigma(z); softmax at the end."""
    a = np.asarray(x, np.float64)
    zs = []
    for l, layer in enumerate(params):
        zs.append(np.asarray(layer["W"], np.float64) @ a + np.asarray(layer["b"], np.float64))
        a = sigma(zs[-1]) if l < len(params) - 1 else np.exp(zs[-1] - zs[-1].max()) / np.exp(zs[-1] - zs[-1].max()).sum()
    return zs, a


def with_bias(params, seed=0):
    """params with nonzero biases, so a test notices a missing b."""
    rng = np.random.default_rng(seed)
    return [{"W": p["W"], "b": jnp.asarray(rng.normal(size=p["b"].shape), p["W"].dtype)} for p in params]


def test_init_builds_one_layer_per_pair_of_sizes():
    params = mlp_init(jax.random.key(0), SIZES)
    assert [p["W"].shape for p in params] == [(6, 4), (5, 6), (3, 5)]
    assert [p["b"].shape for p in params] == [(6,), (5,), (3,)]
    assert all(float(jnp.abs(p["b"]).max()) == 0 for p in params)
    assert not np.allclose(params[1]["W"][:, :4], params[0]["W"][:5])  # each layer draws its own key
    zeros = mlp_init(jax.random.key(0), SIZES, init="zeros")
    assert all(float(jnp.abs(p["W"]).max()) == 0 for p in zeros)
    big = mlp_init(jax.random.key(1), [400, 300, 10], init="lecun")
    assert float(jnp.var(big[0]["W"])) == pytest.approx(1 / 400, rel=0.03)


def test_logits_forward_and_activations_match_numpy():
    params = with_bias(mlp_init(jax.random.key(1), SIZES))
    x = jnp.array([0.5, -1.0, 2.0, 0.25])
    zs_ref, probs_ref = numpy_forward(params, x)
    np.testing.assert_allclose(mlp_logits(params, x), zs_ref[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mlp_forward(params, x), probs_ref, rtol=1e-5, atol=1e-7)
    assert float(mlp_forward(params, x).sum()) == pytest.approx(1.0, rel=1e-6)
    zs, activations = mlp_activations(params, x)
    assert len(zs) == 3 and len(activations) == 4
    np.testing.assert_array_equal(activations[0], x)
    for z, z_ref in zip(zs, zs_ref):
        np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-6)
    for z, a in zip(zs[:-1], activations[1:-1]):
        np.testing.assert_array_equal(a, relu(z))
    np.testing.assert_allclose(activations[-1], probs_ref, rtol=1e-5, atol=1e-7)


def test_layer_forward_is_the_chapters_layer_and_the_mlps_hidden_step():
    """a = sigma(W x + b) for one example; vmapped, the chapter's A = sigma(W X + b 1^T) by rows."""
    params = with_bias(mlp_init(jax.random.key(4), SIZES))
    x = jnp.array([0.5, -1.0, 2.0, 0.25])
    W, b = np.asarray(params[0]["W"]), np.asarray(params[0]["b"])
    np.testing.assert_allclose(layer_forward(params[0], x, "tanh"), np.tanh(W @ np.asarray(x) + b), rtol=1e-6)
    _, activations = mlp_activations(params, x)
    np.testing.assert_array_equal(layer_forward(params[0], x), activations[1])
    X = jax.random.normal(jax.random.key(5), (6, 4))
    A = jax.vmap(layer_forward, in_axes=(None, 0, None))(params[0], X, jax.nn.sigmoid)
    np.testing.assert_allclose(A, (1 / (1 + np.exp(-(W @ np.asarray(X).T + b[:, None])))).T, rtol=1e-5)
    with pytest.raises(ValueError, match=r"layer_forward: activation='swish' is not allowed; expected one of \['relu'"):
        layer_forward(params[0], x, "swish")
    with pytest.raises(AssertionError, match=r"layer_forward: x has shape \(2, 4\), expected \(4,\) = \(n_in,\) "
                                             r"to match W of shape \(6, 4\)"):
        layer_forward(params[0], jnp.ones((2, 4)))


def test_activation_choice_applies_to_hidden_layers_only():
    params = with_bias(mlp_init(jax.random.key(2), SIZES))
    x = jnp.array([0.5, -1.0, 2.0, 0.25])
    zs_ref, _ = numpy_forward(params, x, np.tanh)
    for activation in (tanh, "tanh"):
        np.testing.assert_allclose(mlp_logits(params, x, activation), zs_ref[-1], rtol=1e-5, atol=1e-6)
    gelu_logits = mlp_logits(params, x, jax.nn.gelu)  # any callable works in the forward pass
    assert gelu_logits.shape == (3,) and not np.allclose(gelu_logits, zs_ref[-1])
    single = mlp_init(jax.random.key(3), [4, 3])
    np.testing.assert_allclose(mlp_logits(single, x), single[0]["W"] @ x, rtol=1e-6)


def test_everything_runs_under_jit_and_vmap():
    params = with_bias(mlp_init(jax.random.key(4), SIZES))
    X = jax.random.normal(jax.random.key(5), (7, 4))
    batched = jax.jit(jax.vmap(lambda p, x: (mlp_logits(p, x), mlp_forward(p, x), mlp_activations(p, x)),
                               in_axes=(None, 0)))
    logits, probs, (zs, activations) = batched(params, X)
    for i in range(len(X)):
        zs_ref, probs_ref = numpy_forward(params, X[i])
        np.testing.assert_allclose(logits[i], zs_ref[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probs[i], probs_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(zs[-1], logits, rtol=1e-6)
    np.testing.assert_allclose(activations[-1], probs, rtol=1e-6)
    init = jax.jit(lambda k: mlp_init(k, SIZES, "xavier"))(jax.random.key(6))
    assert [p["W"].shape for p in init] == [(6, 4), (5, 6), (3, 5)]


def test_init_rejects_bad_sizes_and_init():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"mlp_init: sizes must be a list \[n_0, \.\.\., n_L\] of at least 2 positive ints.*got \[784\]"):
        mlp_init(key, [784])
    with pytest.raises(ValueError, match=r"mlp_init: sizes must be a list.*got 784"):
        mlp_init(key, 784)
    with pytest.raises(ValueError, match=r"mlp_init: sizes must hold positive ints, got sizes\[1\] = 0 in \[4, 0, 3\]"):
        mlp_init(key, [4, 0, 3])
    with pytest.raises(ValueError, match=r"mlp_init: sizes must hold positive ints, got sizes\[2\] = 2.5"):
        mlp_init(key, [4, 3, 2.5])
    with pytest.raises(ValueError, match=r"mlp_init: init='uniform' is not allowed; expected one of \['he', 'xavier', 'lecun', 'zeros'\]"):
        mlp_init(key, [4, 3], init="uniform")


@pytest.mark.parametrize("fn", [mlp_logits, mlp_forward, mlp_activations], ids=lambda f: f.__name__)
def test_forward_errors_name_function_argument_expected_and_actual(fn):
    name = fn.__name__
    params = mlp_init(jax.random.key(0), SIZES)
    with pytest.raises(AssertionError, match=rf"{name}: x has shape \(5,\), expected \(4,\) = \(n_0,\) to match params\[0\]\['W'\] of shape \(6, 4\)"):
        fn(params, jnp.zeros(5))
    with pytest.raises(AssertionError, match=rf"{name}: x has shape \(2, 4\), expected \(4,\)"):
        fn(params, jnp.zeros((2, 4)))
    broken_chain = [params[0], {"W": jnp.zeros((5, 7)), "b": jnp.zeros(5)}, params[2]]
    with pytest.raises(AssertionError, match=rf"{name}: params\[1\]\['W'\] has shape \(5, 7\), expected \(\?, 6\) to take the 6 outputs of params\[0\]"):
        fn(broken_chain, jnp.zeros(4))
    wrong_bias = [params[0], {"W": params[1]["W"], "b": jnp.zeros(6)}, params[2]]
    with pytest.raises(AssertionError, match=rf"{name}: params\[1\]\['b'\] has shape \(6,\), expected \(5,\)"):
        fn(wrong_bias, jnp.zeros(4))
    with pytest.raises(TypeError, match=rf"{name}: params\[2\] must be a dict with keys \['W', 'b'\] as dense_init returns, got keys \['W'\]"):
        fn([params[0], params[1], {"W": params[2]["W"]}], jnp.zeros(4))
    with pytest.raises(TypeError, match=rf"{name}: params must be a non-empty list of \{{'W', 'b'\}} dicts"):
        fn(params[0], jnp.zeros(4))
    with pytest.raises(TypeError, match=rf"{name}: params must be a non-empty list"):
        fn([], jnp.zeros(4))
    with pytest.raises(ValueError, match=rf"{name}: activation='gelu' is not allowed; expected one of \['relu'"):
        fn(params, jnp.zeros(4), "gelu")
    with pytest.raises(TypeError, match=rf"{name}: activation must be a callable"):
        fn(params, jnp.zeros(4), 1.5)


def test_logits_batch_equals_vmapped_logits_and_autodiff_of_them(x64):
    params = with_bias(mlp_init(jax.random.key(0), SIZES, dtype=jnp.float64))
    X = jnp.asarray(np.random.default_rng(1).normal(size=(7, SIZES[0])))
    vmapped = jax.vmap(mlp_logits, in_axes=(None, 0, None))
    np.testing.assert_allclose(mlp_logits_batch(params, X, tanh), vmapped(params, X, tanh), rtol=1e-12)

    def loss(logits_fn):
        return lambda params, X: jnp.sum(jnp.sin(logits_fn(params, X, tanh)))

    fast = jax.jit(jax.grad(loss(mlp_logits_batch), argnums=(0, 1)))(params, X)
    plain = jax.grad(loss(vmapped), argnums=(0, 1))(params, X)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert str(jax.make_jaxpr(mlp_logits_batch)(params, X)).count("custom_vjp_call") == len(SIZES) - 1


def test_logits_batch_errors_name_the_argument():
    params = mlp_init(jax.random.key(0), SIZES)
    with pytest.raises(AssertionError, match=r"mlp_logits_batch: X has shape \(4,\) \(rank 1\), expected rank 2: \(m, n_0\)"):
        mlp_logits_batch(params, jnp.zeros(4))
    with pytest.raises(AssertionError, match=r"mlp_logits_batch: X has shape \(2, 5\), expected \(\?, 4\) = \(m, n_0\) to match params\[0\]\['W'\] of shape \(6, 4\)"):
        mlp_logits_batch(params, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"mlp_logits_batch: activation='gelu' is not allowed"):
        mlp_logits_batch(params, jnp.zeros((2, 4)), "gelu")
