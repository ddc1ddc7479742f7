"""Mixed precision in the MLP's layers and backprop: every matrix product on bfloat16 operands
summed in the parameters' dtype, everything else in that dtype.

The reference is the same computation written plainly, with each product's operands rounded
to bfloat16 first (`rounded`): a product of bfloat16 values summed in float64 is what the
mixed-precision code must compute, so in float64 the two agree to rounding of the sums."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.activations import get_activation, softmax
from nnjax.backprop import dense_batch_backward, dense_batch_fast, mlp_grads, mlp_grads_mse, mlp_logits_and_grads
from nnjax.layers.dense import dense_batch_mixed, mixed_matmul, written_transpose
from nnjax.losses import softmax_cross_entropy
from nnjax.network import mlp_init, mlp_logits_batch
from nnjax.training import mlp_model

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
    dots = [line for line in compiled.as_text().splitlines() if " dot(" in line]
    assert len(dots) == 8, dots
    computations = compiled.as_text().split("\n\n")
    for dot in dots:
        holder = next(c for c in computations if dot in c)
        header = holder.strip().splitlines()[0]
        assert header.count("bf16[") == 2, header


def test_training_runs_the_models_own_mixed_precision():
    """The MLP's training step in bfloat16 runs `mlp_logits_and_grads(compute_dtype=...)` with
    float32 parameters (hand-derived) and the same mixed forward under autodiff."""
    import optax

    from nnjax import training

    model = mlp_model()
    assert model.mixed_precision
    params, state = model.init(jax.random.key(0))
    rng = np.random.default_rng(8)
    data = training._Data(jnp.asarray(rng.integers(0, 256, (32, 28, 28), dtype=np.uint8)),
                          jnp.asarray(rng.integers(0, 10, 32), dtype=jnp.int32))
    batches = jnp.arange(32).reshape(1, 32)
    optimizer = optax.sgd(1.0)
    inputs = model.prepare(data.images)
    targets = jax.nn.one_hot(data.labels, 10)
    want = mlp_grads(params, inputs, targets, compute_dtype="bfloat16")
    for grads in ("manual", "autodiff"):
        step = jax.jit(training.make_train_step(model, optimizer, grads, compute_dtype="bfloat16"))
        (new_params, _, _, _), _ = step((params, optimizer.init(params), state, jnp.int32(0)), data, batches)
        got = jax.tree.map(jnp.subtract, params, new_params)
        assert_trees_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_model_without_its_own_mixed_precision_trains_on_bfloat16_copies():
    """`Model.mixed_precision=False` (a user's model whose functions take no compute_dtype):
    the step calls the model on bfloat16 copies of the parameters and inputs and applies the
    gradients, cast to float32, to the float32 parameters."""
    import dataclasses

    import optax

    from nnjax import training

    base = mlp_model()
    seen = []

    def apply(params, state, inputs, train, device_axis=None):
        seen.append((params[0]["W"].dtype, inputs.dtype))
        return base.apply(params, state, inputs, train, device_axis)

    def manual_grads(params, state, inputs, targets, device_axis=None):
        seen.append((params[0]["W"].dtype, inputs.dtype))
        return base.manual_grads(params, state, inputs, targets, device_axis)

    model = dataclasses.replace(base, apply=apply, manual_grads=manual_grads, mixed_precision=False)
    params, state = model.init(jax.random.key(1))
    rng = np.random.default_rng(9)
    data = training._Data(jnp.asarray(rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)),
                          jnp.asarray(rng.integers(0, 10, 16), dtype=jnp.int32))
    optimizer = optax.sgd(1.0)
    want = mlp_grads(params, model.prepare(data.images), jax.nn.one_hot(data.labels, 10))
    for grads in ("manual", "autodiff"):
        seen.clear()
        step = jax.jit(training.make_train_step(model, optimizer, grads, compute_dtype="bfloat16"))
        (new_params, _, _, _), _ = step((params, optimizer.init(params), state, jnp.int32(0)), data,
                                        jnp.arange(16).reshape(1, 16))
        assert seen and set(seen) == {(jnp.dtype(BF16), jnp.dtype(BF16))}, seen
        got = jax.tree.map(jnp.subtract, params, new_params)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.dtype == jnp.float32
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
