"""layout="HWC": every image layer and its hand-derived backward give the channels-first
values with the channel axis moved last, and the backward passes equal jax.vjp there too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop import avg_pool2d_backward, batch_norm_backward, conv2d_backward, max_pool2d_backward
from nnjax.backprop.conv import conv2d_input_grad, conv2d_weight_grad
from nnjax.backprop.custom_vjp import avg_pool2d_fast, conv2d_fast, max_pool2d_fast
from nnjax.backprop.pooling import max_pool2d_argmax
from nnjax.layers import avg_pool2d, batch_norm, conv2d, conv2d_init, conv_padding, max_pool2d
from nnjax.layers.layout import LAYOUTS, image_shape, to_channels_first

CONV_CASES = [(1, "valid"), (2, "same"), ((2, 1), 1), (1, (0, 2))]
POOL_CASES = [(2, None), (3, 2), ((2, 3), (1, 2))]


def last(x):
    """(..., C, H, W) -> (..., H, W, C)."""
    return jnp.moveaxis(x, -3, -1)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.fixture
def image(x64):
    key = jax.random.PRNGKey(3)
    return jax.random.normal(key, (3, 9, 8), jnp.float64), jax.random.fold_in(key, 1)


def test_layout_helpers():
    assert LAYOUTS == ("CHW", "HWC")
    assert image_shape(3, 5, 7, "CHW") == (3, 5, 7) and image_shape(3, 5, 7, "HWC") == (5, 7, 3)
    x = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 4, 5, 3)
    close(to_channels_first(x, "HWC"), jnp.moveaxis(x, -1, -3))
    assert to_channels_first(x, "CHW") is x


@pytest.mark.parametrize("stride,padding", CONV_CASES)
def test_conv_channels_last(image, stride, padding):
    x, key = image
    params = jax.tree.map(lambda a: a.astype(jnp.float64), conv2d_init(key, 3, 5, (3, 2)))
    params["b"] = jnp.arange(5.0)
    z = conv2d(params, x, stride, padding)
    close(conv2d(params, last(x), stride, padding, layout="HWC"), last(z))
    close(conv2d_fast(params, last(x), stride, padding, layout="HWC"), last(z))
    delta = jax.random.normal(key, z.shape, jnp.float64)
    grads, dx = conv2d_backward(params, x, delta, stride, padding)
    grads_last, dx_last = conv2d_backward(params, last(x), last(delta), stride, padding, layout="HWC")
    close(grads_last["W"], grads["W"])
    close(grads_last["b"], grads["b"])
    close(dx_last, last(dx))
    _, vjp = jax.vjp(lambda p, v: conv2d(p, v, stride, padding, layout="HWC"), params, last(x))
    auto_grads, auto_dx = vjp(last(delta))
    close(grads_last["W"], auto_grads["W"])
    close(dx_last, auto_dx)
    _, fast_vjp = jax.vjp(lambda p, v: conv2d_fast(p, v, stride, padding, layout="HWC"), params, last(x))
    fast_grads, fast_dx = fast_vjp(last(delta))
    close(fast_grads["W"], auto_grads["W"])
    close(fast_dx, auto_dx)


@pytest.mark.parametrize("stride,padding", CONV_CASES)
def test_batch_conv_grads_channels_last(image, stride, padding):
    x, key = image
    params = jax.tree.map(lambda a: a.astype(jnp.float64), conv2d_init(key, 3, 4, 3))
    X = jnp.stack([x, 2 * x + 1])
    Z = jax.vmap(lambda v: conv2d(params, v, stride, padding))(X)
    delta = jax.random.normal(key, Z.shape, jnp.float64)
    pair = (stride, stride) if isinstance(stride, int) else stride
    pads = conv_padding(x.shape[1:], (3, 3), pair, padding)
    close(conv2d_weight_grad(last(X), last(delta), (3, 3), pair, pads, "HWC"),
          conv2d_weight_grad(X, delta, (3, 3), pair, pads))
    close(conv2d_input_grad(params["W"], last(delta), x.shape[1:], pair, pads, "HWC"),
          last(conv2d_input_grad(params["W"], delta, x.shape[1:], pair, pads)))


@pytest.mark.parametrize("window,stride", POOL_CASES)
def test_pooling_channels_last(image, window, stride):
    x, key = image
    for forward, fast, backward in ((max_pool2d, max_pool2d_fast, max_pool2d_backward),
                                    (avg_pool2d, avg_pool2d_fast, avg_pool2d_backward)):
        y = forward(x, window, stride)
        close(forward(last(x), window, stride, layout="HWC"), last(y))
        close(fast(last(x), window, stride, layout="HWC"), last(y))
        delta = jax.random.normal(key, y.shape, jnp.float64)
        dx_last = backward(last(x), last(delta), window, stride, layout="HWC")
        close(dx_last, last(backward(x, delta, window, stride)))
        _, vjp = jax.vjp(lambda v: fast(v, window, stride, layout="HWC"), last(x))
        close(vjp(last(delta))[0], dx_last)
    close(max_pool2d_argmax(last(x), window, stride, layout="HWC"), last(max_pool2d_argmax(x, window, stride)))


def test_batch_norm_channels_last(image):
    x, key = image
    X = jnp.stack([x, x ** 2, -x])
    params = {"gamma": jnp.array([1.0, 2.0, 0.5]), "beta": jnp.array([0.0, 1.0, -1.0])}
    state = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
    delta = jax.random.normal(key, X.shape, jnp.float64)
    results = {}
    for layout, inputs, deltas in (("CHW", X, delta), ("HWC", last(X), last(delta))):
        forward = jax.vmap(lambda v: batch_norm(params, state, v, train=True, layout=layout),
                           axis_name="batch", out_axes=(0, None))
        backward = jax.vmap(lambda v, d: batch_norm_backward(params, v, d, layout=layout), axis_name="batch")
        results[layout] = forward(inputs), backward(inputs, deltas)
        inference = jax.vmap(lambda v: batch_norm(params, state, v, train=False, layout=layout)[0])(inputs)
        results[layout] += (inference,)
    (y, new_state), (grads, dx), inference = results["CHW"]
    (y_last, state_last), (grads_last, dx_last), inference_last = results["HWC"]
    close(y_last, last(y))
    close(state_last["var"], new_state["var"])
    close(grads_last["gamma"], grads["gamma"])
    close(dx_last, last(dx))
    close(inference_last, last(inference))


@pytest.mark.parametrize("call", [
    lambda x: conv2d({"W": jnp.ones((2, 3, 3, 3)), "b": jnp.zeros(2)}, x, layout="WHC"),
    lambda x: max_pool2d(x, layout="chw"),
    lambda x: batch_norm({"gamma": jnp.ones(3), "beta": jnp.zeros(3)},
                         {"mean": jnp.zeros(3), "var": jnp.ones(3)}, x, train=False, layout=None),
])
def test_unknown_layout_is_refused(call):
    with pytest.raises(ValueError, match=r"layout=.* is not allowed; expected one of \['CHW', 'HWC'\]"):
        call(jnp.ones((3, 8, 8)))


def test_channel_mismatch_names_the_layout():
    params = {"W": jnp.ones((2, 3, 3, 3)), "b": jnp.zeros(2)}
    with pytest.raises(AssertionError, match=r"\(H, W, C\): its C = 8 channels must equal C_in = 3"):
        conv2d(params, jnp.ones((3, 8, 8)), layout="HWC")
