"""The experiments' CNN: shapes, forward against a composition of the layers, hand-derived
cnn_grads (and jax.grad of cnn_loss, whose conv1 has a custom_vjp) against autodiff of the
plain composition in float64, state updates, and error inputs."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.cnn import cnn_grads, cnn_logits_and_grads, cnn_value_and_grads
from nnjax.layers.conv import conv2d
from nnjax.layers.conv_norm import conv2d_batch_norm_pays
from nnjax.layers.normalization import batch_norm
from nnjax.layers.pooling import max_pool2d
from nnjax.network.cnn import cnn_apply, cnn_apply_batch, cnn_forward, cnn_init, cnn_loss, cnn_loss_plain
from nnjax.training import compiler_options

SMALL = dict(in_shape=(2, 14, 12), channels=(3, 4), hidden=6, classes=5)
FUSED_FIRST = dict(in_shape=(1, 14, 12), channels=(12, 4), hidden=6, classes=5)
"""conv1's patches (9 features and the bias) are narrower than its 12 channels, so in training
its conv and batch norm run as one layer (`conv2d_batch_norm_fast`); conv2's are not."""


def _batch(seed, m, in_shape=SMALL["in_shape"], classes=SMALL["classes"]):
    """Random images and one-hot labels (numpy: no per-shape jax.random compilation)."""
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(m, *in_shape)))
    Y = jnp.asarray(np.eye(classes)[rng.integers(0, classes, m)])
    return X, Y


def _perturbed(seed, params, state):
    """Random gamma, beta, biases and running statistics, so every parameter matters."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree.flatten((params, state))
    noisy = [np.asarray(leaf) + 0.3 * rng.normal(size=leaf.shape) for leaf in leaves]
    params, state = jax.tree.unflatten(tree, noisy)
    return jax.tree.map(jnp.asarray, params), jax.tree.map(lambda v: jnp.asarray(np.abs(v)), state)


def _net(config):
    """cnn_init's structure for `config`, filled with He-scaled numpy draws (cnn_init's own
    jax.random draws compile once per weight shape, seconds each on a CPU)."""
    params, state = jax.eval_shape(lambda key: cnn_init(key, **config), jax.random.PRNGKey(0))
    rng = np.random.default_rng(11)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "gamma" in name or "var" in name:
            return jnp.ones(leaf.shape)
        if "['W']" not in name:
            return jnp.zeros(leaf.shape)
        return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[1:])), jnp.float32)
    return jax.tree_util.tree_map_with_path(draw, (params, state))


@pytest.fixture(scope="module")
def small_net():
    return _net(SMALL)


@pytest.fixture(scope="module", params=[SMALL, FUSED_FIRST], ids=["conv_then_bn", "conv1_fused"])
def net_and_shape(request):
    """Both ways a training block runs: (params, state, in_shape)."""
    return (*_net(request.param), request.param["in_shape"])


def test_the_fused_configuration_fuses_conv1_only():
    params, _ = _net(FUSED_FIRST)
    assert conv2d_batch_norm_pays(params["conv1"]["W"]) and not conv2d_batch_norm_pays(params["conv2"]["W"])
    assert not conv2d_batch_norm_pays(_net(SMALL)[0]["conv1"]["W"])


def test_default_network_shapes():
    params, state = jax.eval_shape(cnn_init, jax.random.PRNGKey(0))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["conv1"] == {"W": (32, 1, 3, 3), "b": (32,)}
    assert shapes["conv2"] == {"W": (64, 32, 3, 3), "b": (64,)}
    assert shapes["bn1"] == {"gamma": (32,), "beta": (32,)}
    assert shapes["bn2"] == {"gamma": (64,), "beta": (64,)}
    assert shapes["dense1"] == {"W": (128, 1600), "b": (128,)}
    assert shapes["dense2"] == {"W": (10, 128), "b": (10,)}
    assert jax.tree.map(jnp.shape, state) == {"bn1": {"mean": (32,), "var": (32,)},
                                              "bn2": {"mean": (64,), "var": (64,)}}
    _, _, cache = jax.eval_shape(lambda p, s, x: cnn_forward(p, s, x, train=False),
                                 params, state, jax.ShapeDtypeStruct((1, 28, 28), jnp.float32))
    assert [cache[k].shape for k in ("conv1", "pool1", "conv2", "pool2", "flat", "logits")] == [
        (32, 26, 26), (32, 13, 13), (64, 11, 11), (64, 5, 5), (1600,), (10,)]


def test_eval_forward_is_the_composition_of_the_layers(small_net):
    params, state = _perturbed(1, *small_net)
    x = _batch(3, 1)[0][0]

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
    logits, new_state = jax.jit(lambda p, s, x: cnn_apply(p, s, x, train=False))(params, state, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, new_state, state)


@pytest.mark.parametrize("train", [True, False])
def test_apply_batch_equals_vmapped_apply(x64, net_and_shape, train):
    *net, in_shape = net_and_shape
    params, state = _perturbed(2, *net)
    X, _ = _batch(4, 5, in_shape)

    @jax.jit
    def both(params, state, X):
        per_example = jax.vmap(lambda x: cnn_apply(params, state, x, train=train),
                               axis_name="batch", out_axes=(0, None))(X)
        return per_example, cnn_apply_batch(params, state, X, train=train)

    (expected, expected_state), (logits, new_state) = both(params, state, X)
    np.testing.assert_allclose(logits, expected, rtol=1e-12, atol=1e-12)
    _assert_trees_close(new_state, expected_state, rtol=1e-12)
    with pytest.raises(AssertionError, match=r"cnn_apply_batch: X has shape \(\d, 14, 12\).*rank 4"):
        cnn_apply_batch(params, state, X[0], train=train)


def _reference_loss(params, state, X, Y):
    """cnn_loss composed from the plain layers (no custom_vjp inside, so jax.grad of it is
    autodiff all the way), batch norm in training mode under vmap."""
    def logits(x):
        h, new_state = x, {}
        for i in (1, 2):
            z = conv2d(params[f"conv{i}"], h)
            u, new_state[f"bn{i}"] = batch_norm(params[f"bn{i}"], state[f"bn{i}"], z, train=True)
            h = max_pool2d(jnp.maximum(u, 0.0), 2)
        hidden = jnp.maximum(params["dense1"]["W"] @ h.reshape(-1) + params["dense1"]["b"], 0.0)
        return params["dense2"]["W"] @ hidden + params["dense2"]["b"], new_state

    Z, new_state = jax.vmap(logits, axis_name="batch", out_axes=(0, None))(X)
    return jnp.mean(-jnp.sum(Y * jax.nn.log_softmax(Z), axis=-1)), new_state


def _assert_trees_close(actual, expected, **tolerances):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, err_msg=jax.tree_util.keystr(path), **tolerances)


def test_grads_match_autodiff_in_float64(x64, net_and_shape):
    """Compiled with nnjax's CNN options: XLA's default CPU fusion emitters (jaxlib 0.10.2)
    miscompile the plain reference's pooled-ReLU gradient at 12 channels (`training.CPU_COMPILER_OPTIONS`)."""
    *net, in_shape = net_and_shape
    params, state = _perturbed(5, *net)
    X, Y = _batch(6, 4, in_shape)
    assert X.dtype == params["conv1"]["W"].dtype == jnp.float64

    @partial(jax.jit, compiler_options=compiler_options(model_kind="cnn"))
    def all_four(params, state, X, Y):
        return (jax.value_and_grad(_reference_loss, has_aux=True)(params, state, X, Y),
                cnn_value_and_grads(params, state, X, Y),
                jax.value_and_grad(cnn_loss, has_aux=True)(params, state, X, Y),
                jax.value_and_grad(cnn_loss_plain, has_aux=True)(params, state, X, Y))

    ((ref_loss, ref_state), ref_grads), *results = all_four(params, state, X, Y)
    assert float(jnp.abs(ref_grads["conv1"]["W"]).max()) > 0
    for (loss, new_state), grads in results:
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        _assert_trees_close(grads, ref_grads, rtol=1e-8, atol=1e-11)
        _assert_trees_close(new_state, ref_state, rtol=1e-12)


def test_logits_and_grads_give_the_training_forward_logits(x64, net_and_shape):
    *net, in_shape = net_and_shape
    params, state = _perturbed(7, *net)
    X, Y = _batch(8, 4, in_shape)
    logits, new_state, grads = jax.jit(cnn_logits_and_grads)(params, state, X, Y)
    expected, expected_state = jax.vmap(lambda x: cnn_apply(params, state, x, train=True),
                                        axis_name="batch", out_axes=(0, None))(X)
    np.testing.assert_allclose(logits, expected, rtol=1e-12, atol=1e-13)
    _assert_trees_close(new_state, expected_state, rtol=1e-12)
    _assert_trees_close(grads, cnn_grads(params, state, X, Y)[0], rtol=1e-12, atol=1e-14)


_jit_cnn_grads = jax.jit(cnn_grads)


def _numpy_conv(X, W, b):
    """Valid cross-correlation of a batch, from the chapter's sum over (c, m, n), in numpy."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(X), W.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, np.asarray(W)) + np.asarray(b)[:, None, None]


def test_cnn_grads_returns_grads_and_updates_running_statistics(net_and_shape):
    params, state, in_shape = net_and_shape
    X, Y = _batch(8, 8, in_shape)
    grads, new_state = _jit_cnn_grads(params, state, X, Y)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    conv1 = _numpy_conv(X, params["conv1"]["W"], params["conv1"]["b"])
    mu, var, m = conv1.mean(axis=(0, 2, 3)), conv1.var(axis=(0, 2, 3)), conv1.size // conv1.shape[1]
    np.testing.assert_allclose(new_state["bn1"]["mean"], 0.1 * mu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_state["bn1"]["var"], 0.9 + 0.1 * var * m / (m - 1), rtol=1e-4)


def test_training_steps_lower_the_loss(small_net):
    params, state = small_net
    X, Y = _batch(10, 8)
    loss = jax.jit(lambda p, s: cnn_loss(p, s, X, Y)[0])
    first = loss(params, state)
    for _ in range(20):
        grads, state = _jit_cnn_grads(params, state, X, Y)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert loss(params, state) < 0.5 * first


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(in_shape=(1, 28)), TypeError, r"in_shape must be \(C, H, W\)"),
    (dict(in_shape=(1, 3, 3)), ValueError, "too small: after conv1 the feature map is 1x1"),
    (dict(in_shape=(1, 6, 6)), ValueError, "cnn_init: in_shape=\\(1, 6, 6\\) is too small for 2 conv blocks: before conv2 the feature map is 2x2"),
    (dict(channels=()), TypeError, "channels"),
    (dict(channels=(8, 0)), ValueError, r"channels\[1\]"),
    (dict(hidden=0), ValueError, "hidden"),
    (dict(classes=1.5), TypeError, "classes"),
])
def test_init_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        cnn_init(jax.random.PRNGKey(0), **kwargs)


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


@pytest.mark.parametrize("fn", [cnn_loss, cnn_loss_plain, cnn_grads])
def test_batch_errors(small_net, fn):
    params, state = small_net
    X, Y = _batch(12, 2)
    with pytest.raises(AssertionError, match=r"X.*rank 4"):
        fn(params, state, X[0], Y)
    with pytest.raises(AssertionError, match=r"Y has shape \(2, 4\)"):
        fn(params, state, X, Y[:, :4])
