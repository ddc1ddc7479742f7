"""Mixed precision in the convolution layer and the CNN: the im2col products (forward, weight
gradient, input gradient) and the dense layers on bfloat16 operands summed in the parameters'
dtype, everything else in that dtype.

As in `test_mixed_precision`, the reference is the plain formula on operands rounded to
bfloat16 first (`rounded`), in float64: the plain layer (`jax.vmap` of `conv2d`, `jax.vjp` of
it) on rounded inputs is what the mixed-precision code must compute, to rounding of the sums."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.cnn import cnn_grads, cnn_logits_and_grads
from nnjax.backprop.conv import conv2d_input_grad, conv2d_param_grads, conv2d_weight_grad
from nnjax.backprop.custom_vjp import conv2d_batch_fast
from nnjax.layers.conv import conv2d, conv2d_batch, conv_padding
from nnjax.losses import softmax_cross_entropy
from nnjax.network.cnn import cnn_apply_batch, cnn_init
from nnjax.training import cnn_model, compiler_options

BF16 = jnp.bfloat16
CASES = [(1, "valid"), (2, "same"), ((1, 2), (2, 1))]
"""(stride, padding): with stride 2 on 7 rows the last row is reached by no window."""


def rounded(a):
    """a's values rounded to bfloat16, kept in a's dtype."""
    return a.astype(BF16).astype(a.dtype)


def make_batch(m, layout, seed, c_in=2, c_out=3, hw=(7, 10)):
    rng = np.random.default_rng(seed)
    shape = (m, c_in) + hw if layout == "CHW" else (m,) + hw + (c_in,)
    params = {"W": jnp.asarray(rng.normal(size=(c_out, c_in, 3, 3))), "b": jnp.asarray(rng.normal(size=(c_out,)))}
    return params, jnp.asarray(rng.normal(size=shape))


def plain_conv(params, X, stride, padding, layout):
    return jax.vmap(lambda x: conv2d(params, x, stride, padding, layout))(X)


def resolved(X, stride, padding, layout):
    in_hw = X.shape[2:] if layout == "CHW" else X.shape[1:3]
    stride = (stride, stride) if isinstance(stride, int) else stride
    return in_hw, stride, conv_padding(in_hw, (3, 3), stride, padding)


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
@pytest.mark.parametrize("stride,padding", CASES)
def test_mixed_convolution_and_its_gradients_are_the_formulas_on_rounded_operands(x64, layout, stride, padding):
    """Forward: the convolution of rounded X with rounded W and b (the bias is the weight of
    the patches' constant input, an operand of the product too). dW, db: the plain gradients
    of rounded X against rounded delta. dX: of rounded W against rounded delta."""
    params, X = make_batch(5, layout, seed=1)
    in_hw, s, pads = resolved(X, stride, padding, layout)
    params_r = {k: rounded(v) for k, v in params.items()}
    out = conv2d_batch(params, X, stride, padding, layout, compute_dtype="bfloat16")
    want = plain_conv(params_r, rounded(X), stride, padding, layout)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(out - plain_conv(params, X, stride, padding, layout))) > 1e-4, "nothing was rounded"

    delta = jnp.asarray(np.random.default_rng(2).normal(size=out.shape))
    _, vjp_of_rounded_X = jax.vjp(lambda p: plain_conv(p, rounded(X), stride, padding, layout), params)
    want_params = vjp_of_rounded_X(rounded(delta))[0]
    _, vjp_of_rounded_W = jax.vjp(lambda x: plain_conv(params_r, x, stride, padding, layout), X)
    want_dX = vjp_of_rounded_W(rounded(delta))[0]
    for chunk in (2, None):
        grads = conv2d_param_grads(X, delta, (3, 3), s, pads, layout, chunk, compute_dtype="bfloat16")
        np.testing.assert_allclose(grads["W"], want_params["W"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads["b"], want_params["b"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(conv2d_weight_grad(X, delta, (3, 3), s, pads, layout, chunk, BF16),
                                   want_params["W"], rtol=1e-12, atol=1e-12)
    dX = conv2d_input_grad(params["W"], delta, in_hw, s, pads, layout, compute_dtype=BF16)
    assert dX.shape == X.shape and dX.dtype == jnp.float64
    np.testing.assert_allclose(dX, want_dX, rtol=1e-12, atol=1e-12)

    fast_out, fast_vjp = jax.vjp(
        lambda p, X: conv2d_batch_fast(p, X, stride, padding, layout, compute_dtype="bfloat16"), params, X)
    np.testing.assert_allclose(fast_out, want, rtol=1e-12, atol=1e-12)
    fast_params, fast_X = fast_vjp(delta)
    for name in ("W", "b"):
        np.testing.assert_allclose(fast_params[name], want_params[name], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast_X, want_dX, rtol=1e-12, atol=1e-12)


def test_compute_dtype_equal_to_the_params_dtype_is_the_plain_path():
    params, X = make_batch(3, "HWC", seed=3)
    params, X = jax.tree.map(lambda a: a.astype(jnp.float32), (params, X))
    _, s, pads = resolved(X, 1, "valid", "HWC")
    delta = jnp.ones((3, 5, 8, 3), jnp.float32)
    for plain, same in [
        (conv2d_batch(params, X, layout="HWC"), conv2d_batch(params, X, layout="HWC", compute_dtype="float32")),
        (conv2d_param_grads(X, delta, (3, 3), s, pads, "HWC"),
         conv2d_param_grads(X, delta, (3, 3), s, pads, "HWC", compute_dtype=jnp.float32)),
        (conv2d_input_grad(params["W"], delta, (7, 10), s, pads, "HWC"),
         conv2d_input_grad(params["W"], delta, (7, 10), s, pads, "HWC", compute_dtype="float32")),
    ]:
        for p, q in zip(jax.tree.leaves(plain), jax.tree.leaves(same), strict=True):
            np.testing.assert_array_equal(p, q)


SMALL = dict(in_shape=(1, 14, 12), channels=(12, 4), hidden=6, classes=5)
"""conv1 fused with its batch norm (float32 in mixed precision), conv2 an im2col convolution."""


def small_cnn(seed, m=6):
    params, state = cnn_init(jax.random.key(seed), **SMALL)
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(m, *SMALL["in_shape"])), jnp.float32)
    Y = jax.nn.one_hot(rng.integers(0, SMALL["classes"], m), SMALL["classes"])
    return params, state, X, Y


def test_mixed_cnn_grads_are_autodiff_of_the_mixed_forward(x64):
    """The hand-derived chain in mixed precision computes the gradient of the mixed forward
    (`cnn_apply_batch(..., compute_dtype=...)`) that autodiff takes: same rounding points."""
    params, state, X, Y = jax.tree.map(lambda a: a.astype(jnp.float64), small_cnn(4))

    def loss(params):
        logits, new_state = cnn_apply_batch(params, state, X, train=True, compute_dtype="bfloat16")
        return jnp.mean(softmax_cross_entropy(logits, Y)), (logits, new_state)

    @partial(jax.jit, compiler_options=compiler_options(model_kind="cnn"))
    def both(params):
        return jax.grad(loss, has_aux=True)(params), cnn_logits_and_grads(params, state, X, Y, compute_dtype=BF16)

    (auto, (auto_logits, auto_state)), (logits, new_state, grads) = both(params)
    np.testing.assert_allclose(logits, auto_logits, rtol=1e-12)
    for (path, g), a in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(auto), strict=True):
        np.testing.assert_allclose(g, a, rtol=1e-9, atol=1e-12, err_msg=jax.tree_util.keystr(path))
    for n, a in zip(jax.tree.leaves(new_state), jax.tree.leaves(auto_state), strict=True):
        np.testing.assert_allclose(n, a, rtol=1e-12)


def test_mixed_cnn_grads_stay_close_to_float32_ones():
    params, state, X, Y = small_cnn(5, m=16)
    exact, _ = cnn_grads(params, state, X, Y)
    mixed, _ = cnn_grads(params, state, X, Y, compute_dtype="bfloat16")
    largest = max(float(jnp.linalg.norm(e)) for e in jax.tree.leaves(exact))
    moved = 0.0
    for e, g in zip(jax.tree.leaves(exact), jax.tree.leaves(mixed), strict=True):
        assert g.dtype == jnp.float32
        error, size = float(jnp.linalg.norm(g - e)), float(jnp.linalg.norm(e))
        assert error < max(0.1 * size, 1e-3 * largest), (error, size)
        moved = max(moved, error)
    assert moved > 0, "the mixed-precision gradients equal float32's: nothing ran in bfloat16"


def _products(compiled_text: str) -> list[str]:
    """The header of the computation holding each matrix product of a compiled program."""
    computations = compiled_text.split("\n\n")
    dots = [line for line in compiled_text.splitlines() if " dot(" in line]
    return [next(c for c in computations if dot in c).strip().splitlines()[0] for dot in dots]


def test_the_cnn_step_keeps_its_im2col_and_dense_products_bfloat16_on_a_cpu():
    """XLA's CPU backend keeps a bfloat16 product on its bfloat16 kernels only with row-major
    operands; with a transposed one it either upcasts it to float32 or, for a product whose
    transpose it folded in itself, fails at run time ("Unsupported element type for
    DotThunk"). conv2's forward, weight gradient and input gradient and the two dense layers'
    forward, weight gradient and input gradient: 9 products on bfloat16 operands; the fused
    first block's products stay float32."""
    params, state, X, Y = jax.device_put(small_cnn(6, m=8), jax.devices("cpu")[0])
    step = jax.jit(lambda p, s, X, Y: cnn_logits_and_grads(p, s, X, Y, compute_dtype="bfloat16"),
                   compiler_options=compiler_options(model_kind="cnn"))
    compiled = step.lower(params, state, X, Y).compile()
    headers = _products(compiled.as_text())
    assert sum(h.count("bf16[") == 2 for h in headers) == 9, headers
    assert all(h.count("bf16[") in (0, 2) for h in headers), headers
    jax.block_until_ready(compiled(params, state, X, Y))


def test_the_cnn_model_trains_in_its_own_mixed_precision():
    """`make_train_step(..., compute_dtype="bfloat16")` runs `cnn_logits_and_grads` with that
    compute_dtype on the float32 parameters, for both gradient sources."""
    import optax

    from nnjax import training

    model = cnn_model(channels=(12, 4), hidden=6)
    assert model.mixed_precision
    params, state = model.init(jax.random.key(0))
    rng = np.random.default_rng(8)
    data = training._Data(jnp.asarray(rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)),
                          jnp.asarray(rng.integers(0, 10, 16), dtype=jnp.int32))
    batches = jnp.arange(16).reshape(1, 16)
    optimizer = optax.sgd(1.0)
    want, want_state = cnn_grads(params, state, model.prepare(data.images), jax.nn.one_hot(data.labels, 10),
                                 compute_dtype="bfloat16")
    for grads in ("manual", "autodiff"):
        step = jax.jit(training.make_train_step(model, optimizer, grads, compute_dtype="bfloat16"),
                       compiler_options=compiler_options(model_kind="cnn"))
        (new_params, _, new_state, _), _ = step((params, optimizer.init(params), state, jnp.int32(0)), data, batches)
        for g, w in zip(jax.tree.leaves(jax.tree.map(jnp.subtract, params, new_params)), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-6)
        for n, w in zip(jax.tree.leaves(new_state), jax.tree.leaves(want_state)):
            np.testing.assert_allclose(n, w, rtol=1e-5)


@pytest.mark.parametrize("call,name", [
    (lambda p, X: conv2d_batch(p, X, compute_dtype="int8"), "conv2d_batch"),
    (lambda p, X: conv2d_batch_fast(p, X, compute_dtype="half-ish"), "conv2d_batch_fast"),
    (lambda p, X: conv2d_param_grads(X, X[:, :, :5, :8], (3, 3), (1, 1), ((0, 0), (0, 0)), compute_dtype=3),
     "conv2d_param_grads"),
    (lambda p, X: conv2d_input_grad(p["W"], X[:, :3, :5, :8], (7, 10), (1, 1), ((0, 0), (0, 0)),
                                    compute_dtype="int32"), "conv2d_input_grad"),
])
def test_a_bad_compute_dtype_is_named(call, name):
    params, X = make_batch(2, "CHW", seed=9)
    with pytest.raises(TypeError, match=rf"{name}: compute_dtype must be a floating dtype such as 'bfloat16'"):
        call(params, X)


@pytest.mark.parametrize("call,name", [
    (lambda p, s, X, Y: cnn_grads(p, s, X, Y, compute_dtype="int8"), "cnn_grads"),
    (lambda p, s, X, Y: cnn_apply_batch(p, s, X, train=True, compute_dtype="int8"), "cnn_apply_batch"),
])
def test_a_bad_compute_dtype_is_named_by_the_cnn(call, name):
    with pytest.raises(TypeError, match=rf"{name}: compute_dtype must be a floating dtype such as 'bfloat16'"):
        call(*small_cnn(10, m=2))
