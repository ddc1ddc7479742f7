"""Mixed precision in the layers and backprop of the MLP and the CNN: every matrix product
on bfloat16 operands summed in the parameters' dtype, everything else in that dtype (the
CNN's fused first block, batch norm and pooling included).

The reference is the same computation written plainly, with each product's operands rounded
to bfloat16 first (`rounded`): a product of bfloat16 values summed in float64 is what the
mixed-precision code must compute, so in float64 the two agree to rounding of the sums. For
the convolutions the plain layer (`jax.vmap` of `conv2d`, `jax.vjp` of it) on rounded inputs
is the reference."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.activations import get_activation, softmax
from nnjax.backprop import dense_batch_backward, dense_batch_fast, mlp_grads, mlp_grads_mse, mlp_logits_and_grads
from nnjax.backprop.cnn import cnn_grads, cnn_logits_and_grads
from nnjax.backprop.conv import conv2d_input_grad, conv2d_param_grads, conv2d_weight_grad
from nnjax.backprop.custom_vjp import conv2d_batch_fast
from nnjax.layers.conv import conv2d, conv2d_batch, conv_padding
from nnjax.layers.dense import dense_batch_mixed, mixed_matmul, written_transpose
from nnjax.losses import softmax_cross_entropy
from nnjax.network import mlp_logits_batch
from nnjax.network.cnn import cnn_apply_batch, cnn_init
from nnjax.training import cnn_model, compiler_options, mlp_model

BF16 = jnp.bfloat16
SIZES = [12, 9, 7, 4]


def rounded(a):
    """a's values rounded to bfloat16, kept in a's dtype."""
    return a.astype(BF16).astype(a.dtype)


def random_mlp(seed, m=6, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = [{"W": jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), dtype),
               "b": jnp.asarray(0.3 * rng.normal(size=n_out), dtype)} for n_in, n_out in zip(SIZES[:-1], SIZES[1:])]
    X = jnp.asarray(rng.normal(size=(m, SIZES[0])), dtype)
    Y = jnp.asarray(np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], m)], dtype)
    return params, X, Y


def random_images(m, seed):
    """`training.TrainingSet` of m random uint8 images and labels."""
    from nnjax import training

    rng = np.random.default_rng(seed)
    return training.TrainingSet(jnp.asarray(rng.integers(0, 256, (m, 28, 28), dtype=np.uint8)),
                          jnp.asarray(rng.integers(0, 10, m), dtype=jnp.int32))


def sgd_step_gradients(model, grads, data, **jit_options):
    """One bfloat16 training step (`make_train_step`, SGD at learning rate 1) on all of `data`
    from the model's initial parameters: (params - new params, which is the gradient the step
    applied, and the new model state)."""
    import optax

    from nnjax import training

    params, state = model.init(jax.random.key(0))
    optimizer = optax.sgd(1.0)
    step = jax.jit(training.make_train_step(model, optimizer, grads, compute_dtype="bfloat16"), **jit_options)
    (new_params, _, new_state, _), _ = step((params, optimizer.init(params), state, jnp.int32(0)), data,
                                            jnp.arange(data.labels.shape[0]).reshape(1, -1))
    for leaf in jax.tree.leaves((new_params, new_state)):
        assert leaf.dtype == jnp.float32
    return jax.tree.map(jnp.subtract, params, new_params), new_state


def product_headers(compiled_text: str) -> list[str]:
    """The header of the computation holding each matrix product of a compiled program."""
    computations = compiled_text.split("\n\n")
    dots = [line for line in compiled_text.splitlines() if " dot(" in line]
    return [next(c for c in computations if dot in c).strip().splitlines()[0] for dot in dots]


def reference_mixed_grads(params, X, Y, activation, loss):
    """The delta recursion with examples as rows and each product's operands rounded."""
    sigma, sigma_prime = get_activation(activation)
    As, Zs = [rounded(X)], []
    for l, layer in enumerate(params, start=1):
        Zs.append(As[-1] @ rounded(layer["W"]).T + layer["b"])
        if l < len(params):
            As.append(rounded(sigma(Zs[-1])))
    m = X.shape[0]
    Delta = (softmax(Zs[-1]) - Y) / m if loss == "softmax_cross_entropy" else 2 * (Zs[-1] - Y) / m
    grads = []
    for l in reversed(range(len(params))):
        grads.insert(0, {"W": rounded(Delta).T @ As[l], "b": jnp.sum(Delta, axis=0)})
        if l > 0:
            Delta = (rounded(Delta) @ rounded(params[l]["W"])) * sigma_prime(Zs[l - 1])
    return Zs[-1], grads


def assert_trees_close(got, want, rtol, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (128, 784)])
@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
def test_written_transpose_is_the_transpose(shape, dtype):
    M = jnp.asarray(np.random.default_rng(0).normal(size=shape), dtype)
    for fn in (written_transpose, jax.jit(written_transpose)):
        T = fn(M)
        assert T.shape == shape[::-1] and T.dtype == M.dtype
        np.testing.assert_array_equal(np.asarray(T.astype(jnp.float32)), np.asarray(M.astype(jnp.float32)).T)


def test_mixed_matmul_sums_rounded_operands_in_the_accumulate_dtype(x64):
    rng = np.random.default_rng(1)
    a, b = jnp.asarray(rng.normal(size=(5, 8))), jnp.asarray(rng.normal(size=(8, 3)))
    product = mixed_matmul(a, b, BF16, jnp.float64)
    assert product.dtype == jnp.float64
    np.testing.assert_allclose(product, rounded(a) @ rounded(b), rtol=1e-13)
    assert np.max(np.abs(product - a @ b)) > 1e-4, "the operands were not rounded"
    assert mixed_matmul(a, b, BF16, jnp.float32).dtype == jnp.float32


def test_dense_batch_mixed_and_its_backward_are_the_formulas_on_rounded_operands(x64):
    rng = np.random.default_rng(2)
    params = {"W": jnp.asarray(rng.normal(size=(3, 5))), "b": jnp.asarray(rng.normal(size=3))}
    A, Delta = jnp.asarray(rng.normal(size=(6, 5))), jnp.asarray(rng.normal(size=(6, 3)))
    np.testing.assert_allclose(dense_batch_mixed(params, A, BF16), rounded(A) @ rounded(params["W"]).T + params["b"],
                               rtol=1e-13)
    grads, dA = dense_batch_backward(params, A, Delta, "bfloat16")
    np.testing.assert_allclose(grads["W"], rounded(Delta).T @ rounded(A), rtol=1e-13)
    np.testing.assert_allclose(grads["b"], Delta.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(dA, rounded(Delta) @ rounded(params["W"]), rtol=1e-13)
    assert_trees_close(dense_batch_backward(params, A, Delta, "float64"), dense_batch_backward(params, A, Delta),
                       rtol=0, atol=0)


def test_dense_batch_fast_mixed_gradient_is_the_mixed_backward(x64):
    rng = np.random.default_rng(3)
    params = {"W": jnp.asarray(rng.normal(size=(3, 5))), "b": jnp.asarray(rng.normal(size=3))}
    A, Delta = jnp.asarray(rng.normal(size=(6, 5))), jnp.asarray(rng.normal(size=(6, 3)))
    Z, vjp = jax.vjp(jax.jit(lambda p, A: dense_batch_fast(p, A, "bfloat16")), params, A)
    np.testing.assert_allclose(Z, dense_batch_mixed(params, A, BF16), rtol=1e-13)
    grads, dA = vjp(Delta)
    want_grads, want_dA = dense_batch_backward(params, A, Delta, "bfloat16")
    assert_trees_close((grads, dA), (want_grads, want_dA), rtol=1e-13, atol=0)


@pytest.mark.parametrize("input_dtype", [jnp.float32, BF16])
def test_dense_batch_fast_mixed_cotangents_keep_their_inputs_dtypes(input_dtype):
    params = {"W": jnp.ones((3, 5)), "b": jnp.ones(3)}
    grads, dA = jax.grad(lambda p, A: jnp.sum(dense_batch_fast(p, A, "bfloat16")), argnums=(0, 1))(
        params, jnp.ones((4, 5), input_dtype))
    assert grads["W"].dtype == grads["b"].dtype == jnp.float32 and dA.dtype == input_dtype
    np.testing.assert_array_equal(grads["W"], 4 * np.ones((3, 5)))


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_mixed_mlp_grads_equal_the_recursion_on_rounded_operands(x64, activation):
    params, X, Y = random_mlp(4)
    want_logits, want = reference_mixed_grads(params, X, Y, activation, "softmax_cross_entropy")
    logits, grads = jax.jit(lambda p, X, Y: mlp_logits_and_grads(p, X, Y, activation, "bfloat16"))(params, X, Y)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-12)
    assert_trees_close(grads, want, rtol=1e-10, atol=1e-14)
    assert_trees_close(mlp_grads(params, X, Y, activation, compute_dtype=BF16), want, rtol=1e-10, atol=1e-14)
    _, want_mse = reference_mixed_grads(params, X, Y, activation, "mse")
    assert_trees_close(mlp_grads_mse(params, X, Y, activation, "bfloat16"), want_mse, rtol=1e-10, atol=1e-14)


def test_autodiff_of_the_mixed_forward_is_the_mixed_hand_derived_gradient(x64):
    params, X, Y = random_mlp(5)

    def loss(params):
        return jnp.mean(softmax_cross_entropy(mlp_logits_batch(params, X, "tanh", "bfloat16"), Y))

    assert_trees_close(jax.jit(jax.grad(loss))(params), mlp_grads(params, X, Y, "tanh", "bfloat16"),
                       rtol=1e-10, atol=1e-14)


def test_mixed_gradients_stay_close_to_float32_ones_and_float32_is_the_plain_path():
    """bfloat16 keeps 8 bits of mantissa: the gradients move by a few percent, where a wrong
    formula would move them by their own size. compute_dtype equal to the params' dtype is the
    plain computation, bit for bit."""
    params, X, Y = random_mlp(6, m=64, dtype=np.float32)
    exact = mlp_grads(params, X, Y)
    mixed = mlp_grads(params, X, Y, compute_dtype="bfloat16")
    for e, g in zip(jax.tree.leaves(exact), jax.tree.leaves(mixed)):
        assert g.dtype == jnp.float32
        assert float(jnp.linalg.norm(g - e)) < 0.1 * float(jnp.linalg.norm(e))
    assert_trees_close(mlp_grads(params, X, Y, compute_dtype="float32"), exact, rtol=0, atol=0)


def test_bfloat16_products_stay_bfloat16_on_a_cpu():
    """XLA's CPU backend runs a bfloat16 product as bfloat16 (AMX, AVX512-BF16) only when both
    operands are row-major arrays; a transposed operand folded into the product makes it a
    float32 product, and the speed is gone. Every product of the MLP's mixed step, its
    forward (3), weight gradients (3) and delta recursion (2), must keep bfloat16 operands."""
    params, X, Y = jax.device_put(random_mlp(7, m=32, dtype=np.float32), jax.devices("cpu")[0])
    compiled = jax.jit(lambda p, X, Y: mlp_logits_and_grads(p, X, Y, compute_dtype="bfloat16")).lower(
        params, X, Y).compile()
    headers = product_headers(compiled.as_text())
    assert len(headers) == 8 and all(h.count("bf16[") == 2 for h in headers), headers


def test_training_runs_the_models_own_mixed_precision():
    """The MLP's training step in bfloat16 runs `mlp_logits_and_grads(compute_dtype=...)` with
    float32 parameters (hand-derived) and the same mixed forward under autodiff."""
    model = mlp_model()
    assert model.mixed_precision
    params, _ = model.init(jax.random.key(0))
    data = random_images(32, seed=8)
    want = mlp_grads(params, model.prepare(data.images), jax.nn.one_hot(data.labels, 10), compute_dtype="bfloat16")
    for grads in ("manual", "autodiff"):
        got, _ = sgd_step_gradients(model, grads, data)
        assert_trees_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_model_without_its_own_mixed_precision_trains_on_bfloat16_copies():
    """`Model.mixed_precision=False` (a user's model whose functions take no compute_dtype):
    the step calls the model on bfloat16 copies of the parameters and inputs and applies the
    gradients, cast to float32, to the float32 parameters."""
    import dataclasses

    base = mlp_model()
    seen = []

    def apply(params, state, inputs, train, device_axis=None):
        seen.append((params[0]["W"].dtype, inputs.dtype))
        return base.apply(params, state, inputs, train, device_axis)

    def manual_grads(params, state, inputs, targets, device_axis=None):
        seen.append((params[0]["W"].dtype, inputs.dtype))
        return base.manual_grads(params, state, inputs, targets, device_axis)

    model = dataclasses.replace(base, apply=apply, manual_grads=manual_grads, mixed_precision=False)
    params, _ = model.init(jax.random.key(0))
    data = random_images(16, seed=9)
    want = mlp_grads(params, model.prepare(data.images), jax.nn.one_hot(data.labels, 10))
    for grads in ("manual", "autodiff"):
        seen.clear()
        got, _ = sgd_step_gradients(model, grads, data)
        assert seen and set(seen) == {(jnp.dtype(BF16), jnp.dtype(BF16))}, seen
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert float(jnp.linalg.norm(g - w)) < 0.1 * float(jnp.linalg.norm(w))


@pytest.mark.parametrize("call,name", [
    (lambda p, X, Y: mlp_grads(p, X, Y, compute_dtype="int8"), "mlp_grads"),
    (lambda p, X, Y: mlp_logits_batch(p, X, compute_dtype="half-ish"), "mlp_logits_batch"),
    (lambda p, X, Y: dense_batch_fast(p[0], X, compute_dtype=3), "dense_batch_fast"),
    (lambda p, X, Y: dense_batch_backward(p[-1], X[:, :7], Y, compute_dtype="int32"), "dense_batch_backward"),
])
def test_a_bad_compute_dtype_is_named(call, name):
    params, X, Y = random_mlp(9, dtype=np.float32)
    with pytest.raises(TypeError, match=rf"{name}: compute_dtype must be a floating dtype such as 'bfloat16'"):
        call(params, X, Y)


# The convolution layer and the CNN.

CASES = [(1, "valid"), (2, "same"), ((1, 2), (2, 1))]
"""(stride, padding): with stride 2 on 7 rows the last row is reached by no window."""


def conv_batch(m, layout, seed, c_in=2, c_out=3, hw=(7, 10)):
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
    """Forward: the convolution of rounded X with rounded W, plus b in float64 (added after
    the product, as the dense layer's). dW: the plain gradient of rounded X against rounded
    delta; db: the sum of delta itself (no product). dX: of rounded W against rounded delta."""
    params, X = conv_batch(5, layout, seed=1)
    in_hw, s, pads = resolved(X, stride, padding, layout)
    params_r = {"W": rounded(params["W"]), "b": params["b"]}
    out = conv2d_batch(params, X, stride, padding, layout, compute_dtype="bfloat16")
    want = plain_conv(params_r, rounded(X), stride, padding, layout)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(out - plain_conv(params, X, stride, padding, layout))) > 1e-4, "nothing was rounded"

    delta = jnp.asarray(np.random.default_rng(2).normal(size=out.shape))
    _, vjp_of_rounded_X = jax.vjp(lambda p: plain_conv(p, rounded(X), stride, padding, layout), params)
    want_params = {"W": vjp_of_rounded_X(rounded(delta))[0]["W"],
                   "b": delta.sum(axis=(0, 2, 3) if layout == "CHW" else (0, 1, 2))}
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
    params, X = conv_batch(3, "HWC", seed=3)
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
    headers = product_headers(compiled.as_text())
    assert sum(h.count("bf16[") == 2 for h in headers) == 9, headers
    assert all(h.count("bf16[") in (0, 2) for h in headers), headers
    jax.block_until_ready(compiled(params, state, X, Y))


def test_the_cnn_model_trains_in_its_own_mixed_precision():
    """`make_train_step(..., compute_dtype="bfloat16")` runs `cnn_logits_and_grads` with that
    compute_dtype on the float32 parameters, for both gradient sources."""
    model = cnn_model(channels=(12, 4), hidden=6)
    assert model.mixed_precision
    params, state = model.init(jax.random.key(0))
    data = random_images(16, seed=8)
    want, want_state = cnn_grads(params, state, model.prepare(data.images), jax.nn.one_hot(data.labels, 10),
                                 compute_dtype="bfloat16")
    for grads in ("manual", "autodiff"):
        got, new_state = sgd_step_gradients(model, grads, data, compiler_options=compiler_options(model_kind="cnn"))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-3, atol=1e-6)
        for n, w in zip(jax.tree.leaves(new_state), jax.tree.leaves(want_state), strict=True):
            np.testing.assert_allclose(n, w, rtol=1e-5)


@pytest.mark.parametrize("call,name", [
    (lambda p, X: conv2d_batch(p, X, compute_dtype="int8"), "conv2d_batch"),
    (lambda p, X: conv2d_batch_fast(p, X, compute_dtype="half-ish"), "conv2d_batch_fast"),
    (lambda p, X: conv2d_param_grads(X, X[:, :, :5, :8], (3, 3), (1, 1), ((0, 0), (0, 0)), compute_dtype=3),
     "conv2d_param_grads"),
    (lambda p, X: conv2d_input_grad(p["W"], X[:, :3, :5, :8], (7, 10), (1, 1), ((0, 0), (0, 0)),
                                    compute_dtype="int32"), "conv2d_input_grad"),
])
def test_a_bad_compute_dtype_is_named_by_the_convolutions(call, name):
    params, X = conv_batch(2, "CHW", seed=9)
    with pytest.raises(TypeError, match=rf"{name}: compute_dtype must be a floating dtype such as 'bfloat16'"):
        call(params, X)


@pytest.mark.parametrize("call,name", [
    (lambda p, s, X, Y: cnn_grads(p, s, X, Y, compute_dtype="int8"), "cnn_grads"),
    (lambda p, s, X, Y: cnn_apply_batch(p, s, X, train=True, compute_dtype="int8"), "cnn_apply_batch"),
])
def test_a_bad_compute_dtype_is_named_by_the_cnn(call, name):
    with pytest.raises(TypeError, match=rf"{name}: compute_dtype must be a floating dtype such as 'bfloat16'"):
        call(*small_cnn(10, m=2))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_gradient_check_compares_the_sources_in_mixed_precision(kind):
    """`compare_gradient_sources(..., compute_dtype="bfloat16")`, which `train(check_grads=True)`
    runs in the run's precision: the hand-derived and autodiff mixed gradients agree to the
    float32 tolerances; a hand-derived gradient off by bfloat16 rounding of its own (here the
    plain float32 gradient against the mixed autodiff one) fails them."""
    import dataclasses

    from nnjax import training

    model = mlp_model() if kind == "mlp" else cnn_model(channels=(12, 4), hidden=6)
    params, state = model.init(jax.random.key(2))
    data = random_images(16, seed=3)
    inputs, targets = model.prepare(data.images), jax.nn.one_hot(data.labels, 10)
    check = training.compare_gradient_sources(model, params, state, inputs, targets, repeats=1,
                                              compute_dtype="bfloat16")
    assert check["passed"], check["report"]

    def float32_manual(params, state, inputs, targets, device_axis=None, *, compute_dtype=None):
        return model.manual_grads(params, state, inputs, targets, device_axis)

    unmixed = dataclasses.replace(model, manual_grads=float32_manual)
    check = training.compare_gradient_sources(unmixed, params, state, inputs, targets, repeats=1,
                                              compute_dtype="bfloat16")
    assert not check["passed"], check["report"]
    with pytest.raises(ValueError, match="compare_gradient_sources: compute_dtype='int8' is not allowed"):
        training.compare_gradient_sources(model, params, state, inputs, targets, compute_dtype="int8")
