"""The experiments' CNN: shapes, forward against a composition of the layers, hand-derived
cnn_grads against jax.grad of cnn_loss in float64, state updates, and error inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.cnn import cnn_grads, cnn_value_and_grads
from nnjax.layers.conv import conv2d
from nnjax.layers.pooling import max_pool2d
from nnjax.network.cnn import cnn_apply, cnn_forward, cnn_init, cnn_loss

SMALL = dict(in_shape=(2, 14, 12), channels=(3, 4), hidden=6, classes=5)


def _batch(key, m, in_shape, classes):
    kx, ky = jax.random.split(key)
    X = jax.random.normal(kx, (m, *in_shape))
    Y = jax.nn.one_hot(jax.random.randint(ky, (m,), 0, classes), classes)
    return X, Y


def _perturbed(key, params, state):
    """Random gamma, beta, biases and running statistics, so every parameter matters."""
    leaves, tree = jax.tree.flatten((params, state))
    keys = jax.random.split(key, len(leaves))
    noisy = [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    params, state = jax.tree.unflatten(tree, noisy)
    state = jax.tree.map(jnp.abs, state)
    return params, state


def test_default_network_shapes():
    params, state = cnn_init(jax.random.PRNGKey(0))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["conv1"] == {"W": (32, 1, 3, 3), "b": (32,)}
    assert shapes["conv2"] == {"W": (64, 32, 3, 3), "b": (64,)}
    assert shapes["bn1"] == {"gamma": (32,), "beta": (32,)}
    assert shapes["bn2"] == {"gamma": (64,), "beta": (64,)}
    assert shapes["dense1"] == {"W": (128, 1600), "b": (128,)}
    assert shapes["dense2"] == {"W": (10, 128), "b": (10,)}
    assert jax.tree.map(jnp.shape, state) == {"bn1": {"mean": (32,), "var": (32,)},
                                              "bn2": {"mean": (64,), "var": (64,)}}
    _, _, cache = jax.eval_shape(lambda x: cnn_forward(params, state, x, train=False),
                                 jax.ShapeDtypeStruct((1, 28, 28), jnp.float32))
    assert [cache[k].shape for k in ("conv1", "pool1", "conv2", "pool2", "flat", "logits")] == [
        (32, 26, 26), (32, 13, 13), (64, 11, 11), (64, 5, 5), (1600,), (10,)]


def test_eval_forward_is_the_composition_of_the_layers():
    params, state = _perturbed(jax.random.PRNGKey(1), *cnn_init(jax.random.PRNGKey(2), **SMALL))
    x = jax.random.normal(jax.random.PRNGKey(3), SMALL["in_shape"])

    @jax.jit
    def composition(params, state, x):
        h = x
        for i in (1, 2):
            z = conv2d(params[f"conv{i}"], h)
            bn, st = params[f"bn{i}"], state[f"bn{i}"]
            u = (bn["gamma"][:, None, None] * (z - st["mean"][:, None, None])
                 / jnp.sqrt(st["var"][:, None, None] + 1e-5) + bn["beta"][:, None, None])
            h = max_pool2d(jnp.maximum(u, 0.0), 2)
        hidden = jnp.maximum(params["dense1"]["W"] @ h.reshape(-1) + params["dense1"]["b"], 0.0)
        return params["dense2"]["W"] @ hidden + params["dense2"]["b"]

    expected = composition(params, state, x)
    logits, _ = jax.jit(lambda p, s, x: cnn_apply(p, s, x, train=False))(params, state, x)
    _, new_state = cnn_apply(params, state, x, train=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert new_state is state


def test_grads_match_jax_grad_in_float64(x64):
    params, state = cnn_init(jax.random.PRNGKey(4), **SMALL)
    params, state = jax.tree.map(lambda a: a.astype(jnp.float64), _perturbed(jax.random.PRNGKey(5), params, state))
    X, Y = _batch(jax.random.PRNGKey(6), 4, SMALL["in_shape"], SMALL["classes"])

    @jax.jit
    def both(params, state, X, Y):
        return (jax.value_and_grad(cnn_loss, has_aux=True)(params, state, X, Y),
                cnn_value_and_grads(params, state, X, Y))

    ((ref_loss, ref_state), ref_grads), ((loss, new_state), grads) = both(params, state, X, Y)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        ref = ref_grads
        for key in path:
            ref = ref[key.key]
        np.testing.assert_allclose(g, ref, rtol=1e-8, atol=1e-11, err_msg=jax.tree_util.keystr(path))
    for k in ("bn1", "bn2"):
        for s in ("mean", "var"):
            np.testing.assert_allclose(new_state[k][s], ref_state[k][s], rtol=1e-12)
    assert float(jnp.abs(grads["conv1"]["W"]).max()) > 0


def test_cnn_grads_returns_grads_and_state_and_updates_running_statistics():
    params, state = cnn_init(jax.random.PRNGKey(7), **SMALL)
    X, Y = _batch(jax.random.PRNGKey(8), 3, SMALL["in_shape"], SMALL["classes"])
    grads, new_state = jax.jit(cnn_grads)(params, state, X, Y)
    _, loss_state = cnn_loss(params, state, X, Y)
    conv1 = jax.vmap(lambda x: conv2d(params["conv1"], x))(X)
    mu, var, m = conv1.mean(axis=(0, 2, 3)), conv1.var(axis=(0, 2, 3)), conv1.size // conv1.shape[1]
    np.testing.assert_allclose(new_state["bn1"]["mean"], 0.1 * mu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_state["bn1"]["var"], 0.9 + 0.1 * var * m / (m - 1), rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state, loss_state)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_training_steps_lower_the_loss():
    params, state = cnn_init(jax.random.PRNGKey(9), **SMALL)
    X, Y = _batch(jax.random.PRNGKey(10), 8, SMALL["in_shape"], SMALL["classes"])
    step = jax.jit(cnn_value_and_grads)
    (first, state), grads = step(params, state, X, Y)
    for _ in range(20):
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        (loss, state), grads = step(params, state, X, Y)
    assert loss < 0.5 * first


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(in_shape=(1, 28)), TypeError, r"in_shape must be \(C, H, W\)"),
    (dict(in_shape=(1, 3, 3)), ValueError, "too small: after conv1 the feature map is 1x1"),
    (dict(in_shape=(1, 6, 6)), ValueError, "kernel_size=3 does not fit in_size=2"),
    (dict(channels=()), TypeError, "channels"),
    (dict(channels=(8, 0)), ValueError, r"channels\[1\]"),
    (dict(hidden=0), ValueError, "hidden"),
    (dict(classes=1.5), TypeError, "classes"),
])
def test_init_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        cnn_init(jax.random.PRNGKey(0), **kwargs)


@pytest.fixture(scope="module")
def small_net():
    return cnn_init(jax.random.PRNGKey(11), **SMALL)


@pytest.mark.parametrize("x_shape, error, pattern", [
    ((4, 2, 11, 9), AssertionError, r"rank 3.*cnn_loss"),
    ((3, 14, 12), AssertionError, r"C = 2, the input channels of conv1"),
    ((2, 18, 12), ValueError, r"\(4, 3, 1\) = 12 features .* dense1\['W'\] takes 8"),
])
def test_apply_shape_errors(small_net, x_shape, error, pattern):
    params, state = small_net
    with pytest.raises(error, match=pattern):
        cnn_apply(params, state, jnp.ones(x_shape), train=False)


def test_train_outside_vmap_and_bad_structures_raise(small_net):
    params, state = small_net
    x = jnp.ones(SMALL["in_shape"])
    with pytest.raises(NameError, match="jax.vmap"):
        cnn_apply(params, state, x, train=True)
    with pytest.raises(ValueError, match="expected"):
        cnn_apply({k: v for k, v in params.items() if k != "bn2"}, state, x, train=False)
    with pytest.raises(ValueError, match="state"):
        cnn_apply(params, {"bn1": state["bn1"]}, x, train=False)


@pytest.mark.parametrize("fn", [cnn_loss, cnn_grads])
def test_batch_errors(small_net, fn):
    params, state = small_net
    X, Y = _batch(jax.random.PRNGKey(12), 2, SMALL["in_shape"], SMALL["classes"])
    with pytest.raises(AssertionError, match=r"X.*rank 4"):
        fn(params, state, X[0], Y)
    with pytest.raises(AssertionError, match=r"Y has shape \(2, 4\)"):
        fn(params, state, X, Y[:, :4])
