"""conv2d_batch_norm (a convolution then batch norm, the statistics from the patches' Gram
matrix) against the plain composition conv2d_batch -> vmapped batch_norm, and its hand-derived
backward against autodiff of that composition and finite differences, in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop import conv2d_batch_norm_backward, conv2d_batch_norm_fast
from nnjax.layers import batch_norm, conv2d_batch, conv2d_batch_norm, conv2d_batch_norm_pays

CASES = [  # (X shape (m, C_in, H, W), C_out, kernel, stride, padding, layout)
    ((3, 1, 9, 8), 12, (3, 3), 1, "valid", "CHW"),
    ((2, 2, 7, 9), 5, (2, 3), 2, "same", "HWC"),
    ((4, 3, 6, 6), 4, (3, 3), (1, 2), "valid", "CHW"),
]


def _setup(seed, x_shape, c_out, kernel, layout, offset=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=x_shape) + offset
    if layout == "HWC":
        X = X.transpose(0, 2, 3, 1)
    conv = {"W": jnp.asarray(rng.normal(size=(c_out, x_shape[1], *kernel)) * 0.5),
            "b": jnp.asarray(rng.normal(size=c_out))}
    bn = {"gamma": jnp.asarray(rng.normal(size=c_out)), "beta": jnp.asarray(rng.normal(size=c_out))}
    state = {"mean": jnp.asarray(rng.normal(size=c_out)), "var": jnp.asarray(rng.uniform(0.5, 2, size=c_out))}
    return conv, bn, state, jnp.asarray(X)


def _plain(conv, bn, state, X, stride, padding, layout):
    Z = conv2d_batch(conv, X, stride, padding, layout)
    return jax.vmap(lambda z: batch_norm(bn, state, z, train=True, layout=layout),
                    axis_name="batch", out_axes=(0, None))(Z)


@pytest.mark.parametrize("x_shape, c_out, kernel, stride, padding, layout", CASES)
def test_forward_equals_conv_then_batch_norm(x64, x_shape, c_out, kernel, stride, padding, layout):
    conv, bn, state, X = _setup(0, x_shape, c_out, kernel, layout, offset=3.0)
    fused = jax.jit(lambda *a: conv2d_batch_norm(*a, stride=stride, padding=padding, layout=layout))
    U, new_state = fused(conv, bn, state, X)
    expected, expected_state = _plain(conv, bn, state, X, stride, padding, layout)
    np.testing.assert_allclose(U, expected, rtol=1e-10, atol=1e-10)
    for k in ("mean", "var"):
        np.testing.assert_allclose(new_state[k], expected_state[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x_shape, c_out, kernel, stride, padding, layout", CASES)
def test_backward_equals_autodiff_of_the_plain_composition(x64, x_shape, c_out, kernel, stride, padding, layout):
    conv, bn, state, X = _setup(1, x_shape, c_out, kernel, layout)
    delta = jnp.asarray(np.random.default_rng(2).normal(size=_plain(conv, bn, state, X, stride, padding, layout)[0].shape))

    def plain_loss(conv, bn, X):
        return jnp.sum(delta * _plain(conv, bn, state, X, stride, padding, layout)[0])

    def fast_loss(conv, bn, X):
        return jnp.sum(delta * conv2d_batch_norm_fast(conv, bn, state, X, stride=stride, padding=padding,
                                                      layout=layout)[0])

    expected = jax.jit(jax.grad(plain_loss, argnums=(0, 1, 2)))(conv, bn, X)
    manual = jax.jit(lambda *a: conv2d_batch_norm_backward(*a, stride=stride, padding=padding, layout=layout))(
        conv, bn, X, delta)
    through_vjp = jax.jit(jax.grad(fast_loss, argnums=(0, 1, 2)))(conv, bn, X)
    assert float(jnp.abs(expected[0]["W"]).max()) > 1e-3
    for grads in (manual, through_vjp):
        for actual, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
            np.testing.assert_allclose(actual, want, rtol=1e-8, atol=1e-10)


def test_device_split_statistics_equal_the_whole_batch(x64):
    """With the batch split over a named device axis, the centring and the statistics span it:
    the same output, running statistics and gradients as on the whole batch."""
    conv, bn, state, X = _setup(3, (4, 1, 8, 7), 12, (3, 3), "CHW", offset=2.0)
    delta = jnp.asarray(np.random.default_rng(4).normal(size=(4, 12, 6, 5)))

    def forward_and_grads(X, delta, device_axis=None):
        U, new_state = conv2d_batch_norm(conv, bn, state, X, device_axis=device_axis)
        grads = conv2d_batch_norm_backward(conv, bn, X, delta, device_axis=device_axis)
        return U, new_state, grads

    whole = forward_and_grads(X, delta)
    split = jax.vmap(lambda x, d: forward_and_grads(x, d, "devices"), axis_name="devices")(
        X.reshape(2, 2, *X.shape[1:]), delta.reshape(2, 2, *delta.shape[1:]))
    np.testing.assert_allclose(split[0].reshape(whole[0].shape), whole[0], rtol=1e-10, atol=1e-12)
    for k in ("mean", "var"):
        np.testing.assert_allclose(split[1][k][0], whole[1][k], rtol=1e-10)
    conv_grads, bn_grads, dX = split[2]
    for got, want in zip(jax.tree.leaves((conv_grads, bn_grads)), jax.tree.leaves(whole[2][:2])):
        np.testing.assert_allclose(jnp.sum(got, axis=0), want, rtol=1e-9, atol=1e-12)  # per-device sums
    np.testing.assert_allclose(dX.reshape(whole[2][2].shape), whole[2][2], rtol=1e-9, atol=1e-12)


def test_the_rule_and_the_errors():
    assert conv2d_batch_norm_pays(jnp.zeros((32, 1, 3, 3))) and not conv2d_batch_norm_pays(jnp.zeros((64, 32, 3, 3)))
    conv, bn, state, X = _setup(5, (2, 1, 6, 6), 4, (3, 3), "CHW")
    with pytest.raises(AssertionError, match=r'conv2d_batch_norm: bn_params\["gamma"\] has shape \(3,\), expected \(4,\)'):
        conv2d_batch_norm(conv, {**bn, "gamma": bn["gamma"][:3]}, state, X)
    with pytest.raises(AssertionError, match=r"conv2d_batch_norm: state\[\"var\"\] has shape \(5,\), expected \(4,\)"):
        conv2d_batch_norm(conv, bn, {**state, "var": jnp.ones(5)}, X)
    with pytest.raises(ValueError, match="momentum must be in"):
        conv2d_batch_norm(conv, bn, state, X, momentum=1.5)
    with pytest.raises(ValueError, match="more than one value per channel"):
        conv2d_batch_norm(conv, bn, state, X[:1, :, :3, :3])
    with pytest.raises(AssertionError, match=r"conv2d_batch_norm_backward: delta has shape \(2, 4, 3, 3\)"):
        conv2d_batch_norm_backward(conv, bn, X, jnp.zeros((2, 4, 3, 3)))


def test_gradients_keep_their_inputs_dtypes_when_the_dtypes_differ(x64):
    """float32 parameters with a float64 batch: the forward computes in float64 (as conv2d_batch
    does), and each gradient comes back in its own input's dtype, as `jax.grad` requires."""
    conv, bn, state, X = _setup(6, (2, 1, 6, 6), 12, (3, 3), "CHW")
    conv32 = jax.tree.map(lambda a: a.astype(jnp.float32), conv)
    grads = jax.grad(lambda c, X: jnp.sum(conv2d_batch_norm_fast(c, bn, state, X)[0] ** 2), argnums=(0, 1))(conv32, X)
    assert grads[0]["W"].dtype == grads[0]["b"].dtype == jnp.float32 and grads[1].dtype == jnp.float64
