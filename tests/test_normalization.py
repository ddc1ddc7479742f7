"""Batch, layer, instance and group norm: forwards against numpy, backwards against jax.vjp and
finite differences, batch norm under vmap and (in a subprocess) pmap on 4 CPU devices."""
import functools
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.custom_vjp import batch_norm_batch_fast
from nnjax.backprop.normalization import (
    batch_norm_backward, batch_norm_batch_backward, group_norm_backward, instance_norm_backward,
    layer_norm_backward,
)
from nnjax.layers.normalization import (
    batch_norm, batch_norm_init, group_norm, group_norm_init, instance_norm, instance_norm_init,
    layer_norm, layer_norm_init,
)

EPS = 1e-5


def _normal(seed, shape):
    """Standard normal test data from numpy (no per-shape jax.random compilation)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def _random_affine(seed, shape):
    """gamma, beta drawn at random so the tests see them act (init gives ones and zeros)."""
    return {"gamma": 1.0 + 0.5 * _normal(seed, shape), "beta": _normal(seed + 1000, shape)}


@functools.partial(jax.jit, static_argnames=("momentum", "eps"))
def _train_batch(params, state, X, momentum=0.9, eps=EPS):
    """batch_norm over a whole batch: vmap with the axis name, new state returned once."""
    return jax.vmap(lambda x: batch_norm(params, state, x, train=True, momentum=momentum, eps=eps),
                    axis_name="batch", out_axes=(0, None))(X)


def _numpy_batch_norm(X, gamma, beta, eps=EPS):
    """The chapter's mu_B, sigma_B^2, x_hat, y over the batch (and H, W), written in numpy."""
    X = np.asarray(X, np.float64)
    axes = (0,) + tuple(range(2, X.ndim))
    shape = (1, -1) + (1,) * (X.ndim - 2)
    mu, var = X.mean(axis=axes), X.var(axis=axes)
    x_hat = (X - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return np.asarray(gamma).reshape(shape) * x_hat + np.asarray(beta).reshape(shape), mu, var


@pytest.mark.parametrize("shape", [(6, 4), (5, 3, 4, 6)], ids=["features", "images"])
def test_batch_norm_train_matches_whole_batch_formula(shape):
    params = _random_affine(0, (shape[1],))
    state = {"mean": jnp.linspace(-1.0, 1.0, shape[1]), "var": jnp.linspace(0.5, 2.0, shape[1])}
    X = 3.0 + 2.0 * _normal(1, shape)
    Y, new_state = _train_batch(params, state, X, momentum=0.8)
    ref, mu, var = _numpy_batch_norm(X, params["gamma"], params["beta"])
    m = X.size // shape[1]
    np.testing.assert_allclose(Y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"], 0.8 * np.asarray(state["mean"]) + 0.2 * mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.8 * np.asarray(state["var"]) + 0.2 * var * m / (m - 1),
                               rtol=1e-5, atol=1e-5)


def test_batch_norm_init_shapes_and_values():
    params, state = batch_norm_init(3)
    np.testing.assert_array_equal(params["gamma"], np.ones(3))
    np.testing.assert_array_equal(params["beta"], np.zeros(3))
    np.testing.assert_array_equal(state["mean"], np.zeros(3))
    np.testing.assert_array_equal(state["var"], np.ones(3))


def test_batch_norm_train_output_is_standardized_at_init():
    params, state = batch_norm_init(4)
    Y, _ = _train_batch(params, state, 5.0 + 3.0 * _normal(2, (64, 4)))
    np.testing.assert_allclose(Y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(Y.var(axis=0), 1.0, atol=1e-3)


@pytest.mark.parametrize("shape", [(4,), (3, 4, 5)], ids=["features", "images"])
def test_batch_norm_eval_uses_running_statistics_without_named_axis(shape):
    params = _random_affine(3, (shape[0],))
    state = {"mean": jnp.linspace(-1.0, 1.0, shape[0]), "var": jnp.linspace(0.5, 2.0, shape[0])}
    x = _normal(4, shape)
    y, same_state = batch_norm(params, state, x, train=False)
    b = (-1,) + (1,) * (len(shape) - 1)
    ref = (np.asarray(params["gamma"]).reshape(b) * (np.asarray(x) - np.asarray(state["mean"]).reshape(b))
           / np.sqrt(np.asarray(state["var"]).reshape(b) + EPS) + np.asarray(params["beta"]).reshape(b))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert same_state is state


def test_batch_norm_eval_is_per_example_and_jits():
    params, state = batch_norm_init(3)
    state = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    X = _normal(5, (4, 3))
    Y = jax.jit(jax.vmap(lambda x: batch_norm(params, state, x, train=False)[0]))(X)
    np.testing.assert_allclose(Y[1], batch_norm(params, state, X[1], train=False)[0], rtol=1e-6)


def test_running_statistics_converge_to_data_statistics():
    params, state = batch_norm_init(2)
    X = jnp.array([[1.0, -2.0], [3.0, 2.0], [5.0, 0.0]])
    for _ in range(150):
        _, state = _train_batch(params, state, X, momentum=0.9)
    np.testing.assert_allclose(state["mean"], np.mean(np.asarray(X), axis=0), rtol=1e-5)
    np.testing.assert_allclose(state["var"], np.var(np.asarray(X), axis=0, ddof=1), rtol=1e-5)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])
def test_layer_norm_matches_numpy(shape):
    params = _random_affine(6, shape)
    x = 2.0 + _normal(7, shape)
    xn = np.asarray(x, np.float64)
    ref = np.asarray(params["gamma"]) * (xn - xn.mean()) / np.sqrt(xn.var() + EPS) + np.asarray(params["beta"])
    np.testing.assert_allclose(layer_norm(params, x), ref, rtol=1e-5, atol=1e-5)


def test_layer_norm_init_shapes():
    assert layer_norm_init(5)["gamma"].shape == (5,)
    params = layer_norm_init((2, 3))
    np.testing.assert_array_equal(params["gamma"], np.ones((2, 3)))
    np.testing.assert_array_equal(params["beta"], np.zeros((2, 3)))


def _numpy_group_norm(x, gamma, beta, groups, eps=EPS):
    """Loop over groups: standardize each group's channels and pixels together."""
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    size = x.shape[0] // groups
    for g in range(groups):
        block = x[g * size:(g + 1) * size]
        y[g * size:(g + 1) * size] = (block - block.mean()) / np.sqrt(block.var() + eps)
    return np.asarray(gamma)[:, None, None] * y + np.asarray(beta)[:, None, None]


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_matches_numpy(groups):
    params = _random_affine(8, (6,))
    x = _normal(9, (6, 3, 5))
    np.testing.assert_allclose(group_norm(params, x, groups),
                               _numpy_group_norm(x, params["gamma"], params["beta"], groups),
                               rtol=1e-5, atol=1e-5)


def test_instance_norm_matches_numpy_per_channel():
    params = _random_affine(10, (3,))
    x = _normal(11, (3, 4, 5))
    xn = np.asarray(x, np.float64)
    mu, var = xn.mean(axis=(1, 2), keepdims=True), xn.var(axis=(1, 2), keepdims=True)
    ref = (np.asarray(params["gamma"])[:, None, None] * (xn - mu) / np.sqrt(var + EPS)
           + np.asarray(params["beta"])[:, None, None])
    np.testing.assert_allclose(instance_norm(params, x), ref, rtol=1e-5, atol=1e-5)


def test_instance_and_group_norm_init():
    for init in (instance_norm_init, group_norm_init):
        params = init(4)
        np.testing.assert_array_equal(params["gamma"], np.ones(4))
        np.testing.assert_array_equal(params["beta"], np.zeros(4))


# ---- backward passes: jax.vjp and finite differences, float64 ----------------------------

def _directional_fd(f, args, directions, h=1e-6):
    """Central difference of scalar f along `directions` (a pytree like args): <grad f, v>."""
    plus = jax.tree.map(lambda a, v: a + h * v, args, directions)
    minus = jax.tree.map(lambda a, v: a - h * v, args, directions)
    return (f(*plus) - f(*minus)) / (2 * h)


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _check_backward(forward, params, x, manual):
    """manual(params, x, delta) -> (param_grads, dx) against jax.vjp and finite differences."""
    delta = _normal(12, jax.eval_shape(forward, params, x).shape)
    directions = ({name: _normal(13 + i, a.shape) for i, (name, a) in enumerate(params.items())},
                  _normal(15, x.shape))

    @jax.jit
    def all_gradients(params, x):
        _, vjp = jax.vjp(forward, params, x)
        fd = _directional_fd(lambda p, v: jnp.vdot(delta, forward(p, v)), (params, x), directions)
        return manual(params, x, delta), vjp(delta), fd

    (grads, dx), (ref_grads, ref_dx), fd = all_gradients(params, x)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-9, atol=1e-10)
    for name in ("gamma", "beta"):
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(_dot((grads, dx), directions), fd, rtol=1e-6)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 5)], ids=["features", "images"])
def test_batch_norm_backward(x64, shape):
    params = _random_affine(13, (shape[1],))
    _, state = batch_norm_init(shape[1])
    X = 1.0 + 2.0 * _normal(14, shape)

    def forward(p, X):
        return _train_batch(p, state, X)[0]

    def manual(p, X, D):
        grads, dx = jax.vmap(lambda x, d: batch_norm_backward(p, x, d), axis_name="batch")(X, D)
        return jax.tree.map(lambda g: g.sum(axis=0), grads), dx

    _check_backward(forward, params, X, manual)


@pytest.mark.parametrize("shape, layout", [((5, 3), "CHW"), ((4, 2, 3, 5), "CHW"), ((4, 3, 5, 2), "HWC")],
                         ids=["features", "images", "images-channels-last"])
def test_batch_norm_batch_backward(x64, shape, layout):
    """The whole-batch backward (its means taken from the parameter gradients) against jax.vjp
    of the vmapped forward and finite differences, and equal to the per-example backward."""
    channels = shape[1] if layout == "CHW" else shape[-1]
    params = _random_affine(17, (channels,))
    _, state = batch_norm_init(channels)
    X = 1.0 + 2.0 * _normal(18, shape)

    def forward(p, X):
        return jax.vmap(lambda x: batch_norm(p, state, x, train=True, layout=layout), axis_name="batch",
                        out_axes=(0, None))(X)[0]

    def manual(p, X, D):
        return batch_norm_batch_backward(p, X, D, layout=layout)

    _check_backward(forward, params, X, manual)
    D = _normal(19, shape)
    per_example, dx = jax.vmap(lambda x, d: batch_norm_backward(params, x, d, layout=layout), axis_name="batch")(X, D)
    grads, dX = manual(params, X, D)
    np.testing.assert_allclose(dX, dx, rtol=1e-10, atol=1e-12)
    for name in ("gamma", "beta"):
        np.testing.assert_allclose(grads[name], per_example[name].sum(axis=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4)])
def test_layer_norm_backward(x64, shape):
    params = _random_affine(15, shape)
    x = _normal(16, shape)
    _check_backward(layer_norm, params, x, layer_norm_backward)


def test_instance_norm_backward(x64):
    params = _random_affine(17, (3,))
    x = _normal(18, (3, 4, 5))
    _check_backward(instance_norm, params, x, instance_norm_backward)


@pytest.mark.parametrize("groups", [1, 2])
def test_group_norm_backward(x64, groups):
    params = _random_affine(19, (4,))
    x = _normal(20, (4, 3, 2))
    _check_backward(lambda p, v: group_norm(p, v, groups), params, x,
                    lambda p, v, d: group_norm_backward(p, v, d, groups))


# ---- synchronized batch norm across 4 CPU devices -----------------------------------------

_PMAP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from nnjax.layers.normalization import batch_norm
    from nnjax.backprop.normalization import batch_norm_backward
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    params = {"gamma": jnp.asarray(1.0 + rng.normal(size=3)), "beta": jnp.arange(3.0)}
    state = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
    X = jnp.asarray(2.0 + rng.normal(size=(8, 3, 4, 5)))
    D = jnp.asarray(rng.normal(size=X.shape))

    def forward_backward(x, d, axis_name):
        y, new_state = batch_norm(params, state, x, train=True, axis_name=axis_name)
        return y, new_state, batch_norm_backward(params, x, d, axis_name=axis_name)

    Y1, s1, (g1, dx1) = jax.vmap(lambda x, d: forward_backward(x, d, "batch"), axis_name="batch",
                                 out_axes=(0, None, 0))(X, D)
    # 4 devices x 2 examples each: the statistics run over the device axis and the local one
    Y4, s4, (g4, dx4) = jax.pmap(
        jax.vmap(lambda x, d: forward_backward(x, d, ("device", "local")), axis_name="local"),
        axis_name="device")(X.reshape(4, 2, 3, 4, 5), D.reshape(4, 2, 3, 4, 5))
    np.testing.assert_allclose(Y4.reshape(X.shape), Y1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx4.reshape(X.shape), dx1, rtol=1e-4, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(s4[k].reshape(8, 3), np.broadcast_to(s1[k], (8, 3)), rtol=1e-5, atol=1e-6)
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(g4[k].reshape(8, 3).sum(0), g1[k].sum(0), rtol=1e-4, atol=1e-4)
    print("SYNCED-BN-OK")
""")


def test_batch_norm_pmap_on_four_devices_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", _PMAP_SCRIPT], env=env, cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SYNCED-BN-OK" in result.stdout


# ---- errors -------------------------------------------------------------------------------

def test_batch_norm_train_outside_vmap_explains_the_fix():
    params, state = batch_norm_init(3)
    with pytest.raises(NameError, match=r"jax.vmap\(\.\.\., axis_name='batch'\)"):
        batch_norm(params, state, jnp.ones(3), train=True)
    with pytest.raises(NameError, match="pass train=False"):
        batch_norm(params, state, jnp.ones(3), train=True)
    with pytest.raises(ValueError, match="pass train=False"):  # the API's errors are ValueError or TypeError
        batch_norm(params, state, jnp.ones(3), train=True)
    with pytest.raises(NameError, match=r"batch_norm_backward: .*with that axis name\)$"):
        batch_norm_backward(params, jnp.ones(3), jnp.ones(3))  # no train=False to point to


def test_batch_norm_train_with_wrong_axis_name_raises():
    params, state = batch_norm_init(3)
    with pytest.raises(NameError, match="'devices'"):
        jax.vmap(lambda x: batch_norm(params, state, x, train=True, axis_name="devices"),
                 axis_name="batch")(jnp.ones((2, 3)))


def test_batch_norm_needs_more_than_one_value_per_feature():
    params, state = batch_norm_init(3)
    with pytest.raises(ValueError, match="more than one value"):
        _train_batch(params, state, jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="batch_norm_backward: batch statistics need more than one value"):
        jax.vmap(lambda x, d: batch_norm_backward(params, x, d), axis_name="batch")(jnp.ones((1, 3)), jnp.ones((1, 3)))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda p, s: batch_norm(p, s, jnp.ones(4), train=False), AssertionError, r"gamma.*\(3,\).*x of shape \(4,\)"),
    (lambda p, s: batch_norm(p, s, jnp.ones((3, 4)), train=False), ValueError, r"rank 2.*\(C, H, W\)"),
    (lambda p, s: batch_norm(p, {"mean": jnp.zeros(2), "var": jnp.ones(3)}, jnp.ones(3), train=False),
     AssertionError, r'state\["mean"\]'),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train=False, eps=0.0), ValueError, "eps must be > 0"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train=False, eps="1e-5"), TypeError, "eps"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train=False, momentum=1.5), ValueError, r"momentum.*\[0, 1\]"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train="yes"), TypeError, "train must be"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3, jnp.int32), train=False), TypeError, "floating"),
    (lambda p, s: batch_norm({"gamma": jnp.ones(3)}, s, jnp.ones(3), train=False), TypeError,
     r"batch_norm: params must be a dict with keys \['beta', 'gamma'\] as batch_norm_init returns, got keys \['gamma'\]"),
    (lambda p, s: batch_norm(p, {"mean": jnp.zeros(3)}, jnp.ones(3), train=False), TypeError,
     r"batch_norm: state must be a dict with keys \['mean', 'var'\] as batch_norm_init returns, got keys \['mean'\]"),
    (lambda p, s: batch_norm(p, None, jnp.ones(3), train=False), TypeError, r"state must be a dict .* got a NoneType"),
    (lambda p, s: batch_norm({**p, "gamma": jnp.ones(3, jnp.complex64)}, s, jnp.ones(3), train=False), TypeError,
     r"batch_norm: params\['gamma'\] must be a floating-point array, got dtype complex64"),
    (lambda p, s: layer_norm({**layer_norm_init(3), "W": jnp.ones(3)}, jnp.ones(3)), TypeError,
     r"layer_norm: params must be a dict with keys \['beta', 'gamma'\] as layer_norm_init returns, got keys \['W', 'beta', 'gamma'\]"),
    (lambda p, s: layer_norm_init("3"), TypeError, r"layer_norm_init: shape must be an int or a tuple of ints"),
    (lambda p, s: batch_norm_init(0), ValueError, "num_features"),
    (lambda p, s: batch_norm_backward(p, jnp.ones(3), jnp.ones(4)), AssertionError, "delta"),
    (lambda p, s: batch_norm_batch_backward(p, jnp.ones((2, 3)), jnp.ones((2, 4))), AssertionError,
     r"batch_norm_batch_backward.*delta"),
    (lambda p, s: batch_norm_batch_backward(p, jnp.ones(3), jnp.ones(3)), AssertionError,
     r"batch_norm_batch_backward: X has shape \(3,\) \(rank 1\).*\(m, F\)"),
    (lambda p, s: batch_norm_batch_backward(p, jnp.ones((2, 4)), jnp.ones((2, 4))), AssertionError,
     r"gamma.*\(4,\), the features \(channels\) of X of shape \(2, 4\)"),
    (lambda p, s: batch_norm_batch_fast(p, s, jnp.ones(3)), AssertionError,
     r"batch_norm_batch_fast: X has shape \(3,\) \(rank 1\), expected rank"),
    (lambda p, s: batch_norm_batch_fast(p, s, jnp.ones((2, 5))), AssertionError,
     r'batch_norm_batch_fast: params\["gamma"\] has shape \(3,\), expected \(5,\), the features \(channels\) '
     r"of X of shape \(2, 5\)"),
    (lambda p, s: batch_norm_batch_fast(p, s, jnp.ones((0, 3))), ValueError,
     r"batch_norm_batch_fast: X has shape \(0, 3\), an empty batch"),
    (lambda p, s: batch_norm_batch_fast(p, s, jnp.ones((2, 3)), momentum=2.0), ValueError,
     r"batch_norm_batch_fast: momentum must be in \[0, 1\]"),
    (lambda p, s: batch_norm_batch_fast(p, s, jnp.ones((2, 3)), eps=0.0), ValueError,
     r"batch_norm_batch_fast: eps must be > 0"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train=False, momentum=jnp.array(2.0)), ValueError,
     r"batch_norm: momentum must be in \[0, 1\], got 2.0"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train=False, momentum="0.9"), TypeError,
     r"batch_norm: momentum='0.9' must be a number"),
    (lambda p, s: batch_norm(p, s, jnp.ones(3), train=False, momentum=jnp.array([0.9, 1.5, 0.5])), ValueError,
     r"batch_norm: momentum must be in \[0, 1\]"),
    (lambda p, s: batch_norm_batch_fast(p, s, jnp.ones((1, 3))), ValueError,
     r"batch_norm_batch_fast: batch statistics need more than one value per feature .* got X of shape \(1, 3\)"),
])
def test_batch_norm_errors(call, error, pattern):
    params, state = batch_norm_init(3)
    with pytest.raises(error, match=pattern):
        call(params, state)


def test_settings_as_arrays_numpy_numbers_or_traced_values_are_taken():
    """0-d arrays for eps and momentum, a per-feature momentum, and (per-example batch_norm) a
    momentum traced under jit."""
    params, state = batch_norm_init(3)
    X = _normal(3, (4, 3)).astype(jnp.float32)
    expected = batch_norm_batch_fast(params, state, X, momentum=0.9, eps=1e-5)
    for momentum, eps in ((jnp.float32(0.9), jnp.float32(1e-5)), (np.float64(0.9), np.float32(1e-5)),
                          (jnp.full(3, 0.9), 1e-5)):
        got = batch_norm_batch_fast(params, state, X, momentum=momentum, eps=eps)
        chex.assert_trees_all_close(got, expected, rtol=1e-6)
    per_example = jax.vmap(lambda x, m: batch_norm(params, state, x, train=True, momentum=m), in_axes=(0, None),
                           axis_name="batch", out_axes=(0, None))
    traced = jax.jit(lambda m: per_example(X, m))(0.9)
    chex.assert_trees_all_close(traced, expected, rtol=1e-6)


def test_batch_norm_batch_fast_treats_the_new_running_statistics_as_constants(x64):
    """Documented: a loss that reads new_state gets what autodiff gives with the statistics
    behind stop_gradient (zero), while Y's gradient is the plain layer's."""
    params, _ = batch_norm_init(3)
    state = {"mean": jnp.ones(3), "var": 2 * jnp.ones(3)}
    X = _normal(7, (4, 3))

    def plain(X):
        Y, new = jax.vmap(lambda x: batch_norm(params, state, x, train=True), axis_name="batch", out_axes=(0, None))(X)
        return jnp.sum(Y ** 3) + jax.lax.stop_gradient(new["mean"].sum() + new["var"].sum())

    def fast(X):
        Y, new = batch_norm_batch_fast(params, state, X)
        return jnp.sum(Y ** 3) + new["mean"].sum() + new["var"].sum()

    np.testing.assert_allclose(jax.grad(fast)(X), jax.grad(plain)(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(jax.grad(lambda s: batch_norm_batch_fast(params, s, X)[1]["mean"].sum())(state)["mean"], 0)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: layer_norm(layer_norm_init(4), jnp.ones(5)), AssertionError, r"layer_norm.*gamma.*\(4,\)"),
    (lambda: layer_norm(layer_norm_init(4), jnp.ones(4), eps=-1.0), ValueError, "eps"),
    (lambda: layer_norm_init((2, 0)), ValueError, r"shape\[1\]"),
    (lambda: layer_norm_backward(layer_norm_init(4), jnp.ones(4), jnp.ones(3)), AssertionError, "delta"),
    (lambda: instance_norm(instance_norm_init(3), jnp.ones((4, 2, 2))), AssertionError, r"instance_norm.*gamma"),
    (lambda: instance_norm(instance_norm_init(3), jnp.ones((3, 2))), AssertionError, r"rank 3.*\(C, H, W\)"),
    (lambda: instance_norm_backward(instance_norm_init(3), jnp.ones((3, 2, 2)), jnp.ones((3, 2, 3))),
     AssertionError, "delta"),
    (lambda: group_norm(group_norm_init(6), jnp.ones((6, 2, 2)), 4), ValueError, "num_groups=4 does not divide"),
    (lambda: group_norm(group_norm_init(6), jnp.ones((6, 2, 2)), 0), ValueError, "num_groups"),
    (lambda: group_norm(group_norm_init(6), jnp.ones((6, 2, 2)), 2.0), TypeError, "num_groups"),
    (lambda: group_norm(group_norm_init(6), jnp.ones(6), 2), AssertionError, "rank 3"),
    (lambda: group_norm_backward(group_norm_init(6), jnp.ones((6, 2, 2)), jnp.ones((6, 2, 2)), 5),
     ValueError, "does not divide"),
    (lambda: group_norm_init(-1), ValueError, "num_channels"),
])
def test_layer_instance_group_norm_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_numpy_scalars_are_accepted_where_python_numbers_are():
    """eps as np.float32 (what a config read from an .npz gives) and sizes as np.int64."""
    x = jnp.arange(6.0).reshape(2, 3)
    params = layer_norm_init(np.int64(2))
    assert params["gamma"].shape == (2,)
    np.testing.assert_array_equal(layer_norm(layer_norm_init((np.int64(2), 3)), x, eps=np.float32(1e-5)),
                                  layer_norm(layer_norm_init((2, 3)), x, eps=1e-5))
