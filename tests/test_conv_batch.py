"""Tests for the batch-level convolution: `conv2d_batch` (im2col products, whole batch or chunked),
`conv2d_batch_fast` (its hand-derived gradient through `jax.custom_vjp`), the chunking helpers
and the chunked `conv2d_weight_grad`.

Each is checked against the per-example layer under `jax.vmap` (forward) and `jax.vjp` of
it (gradients, float64), with batch sizes that leave a remainder after the chunks.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax.backprop.conv import conv2d_input_grad, conv2d_weight_grad
from nnjax.backprop.custom_vjp import conv2d_batch_fast, conv2d_fast
from nnjax.layers.conv import (
    batch_patches, conv2d, conv2d_batch, conv_padding,
    UNROLLED_CHUNKS, kernel_matrix, map_chunks, patch_rows, sum_chunks,
)

CASES = [(1, "valid"), (2, "same"), ((1, 2), (2, 1))]
"""(stride, padding): with stride 2 on 7 rows some rows are reached by no window."""


def make_batch(m, layout, dtype=jnp.float32, c_in=2, c_out=3, hw=(7, 10), seed=0):
    rng = np.random.default_rng(seed)
    shape = (m, c_in) + hw if layout == "CHW" else (m,) + hw + (c_in,)
    params = {"W": jnp.asarray(rng.normal(size=(c_out, c_in, 3, 3)), dtype),
              "b": jnp.asarray(rng.normal(size=(c_out,)), dtype)}
    return params, jnp.asarray(rng.normal(size=shape), dtype)


def vmapped_conv(params, X, stride, padding, layout):
    return jax.vmap(lambda x: conv2d(params, x, stride, padding, layout))(X)


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
@pytest.mark.parametrize("stride,padding", CASES)
@pytest.mark.parametrize("m,chunk", [(10, 4), (8, 4), (3, 4), (1, 64), (10, None)])
def test_conv2d_batch_equals_vmapped_conv2d(layout, stride, padding, m, chunk):
    params, X = make_batch(m, layout)
    expected = vmapped_conv(params, X, stride, padding, layout)
    got = jax.jit(lambda p, X: conv2d_batch(p, X, stride, padding, layout, chunk))(params, X)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_batch_patches_rows_are_receptive_fields():
    _, X = make_batch(2, "HWC")
    pads = ((1, 0), (0, 2))
    patches = batch_patches(X, (3, 3), (2, 1), pads)
    Xp = np.pad(np.asarray(X), ((0, 0),) + pads + ((0, 0),))
    n, i, j = 1, 2, 4
    window = Xp[n, 2 * i:2 * i + 3, j:j + 3, :]  # (m, k, c), the order of kernel_matrix's rows
    np.testing.assert_array_equal(patches[n, i, j], window.reshape(-1))
    W = jnp.arange(2 * 2 * 3 * 3, dtype=jnp.float32).reshape(2, 2, 3, 3)
    np.testing.assert_array_equal(kernel_matrix(W)[:, 1], W[1].transpose(1, 2, 0).reshape(-1))


def test_patch_rows_are_patches_and_a_one_and_give_the_biased_convolution():
    rng = np.random.default_rng(4)
    X = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
    params = {"W": jnp.asarray(rng.normal(size=(4, 3, 3, 3)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    pads = ((1, 1), (0, 0))
    rows = patch_rows(X, (3, 3), (1, 1), pads)
    patches = batch_patches(X, (3, 3), (1, 1), pads)
    assert rows.shape == (2 * 7 * 4, 3 * 3 * 3 + 1)
    np.testing.assert_array_equal(rows[:, :-1], patches.reshape(-1, 27))
    np.testing.assert_array_equal(rows[:, -1], 1.0)
    Z = rows @ jnp.concatenate([kernel_matrix(params["W"]), params["b"][None]])
    expected = jax.vmap(lambda x: conv2d(params, x, 1, pads, "HWC"))(X)
    np.testing.assert_allclose(Z.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [12, 10, 3, 22, 24])
def test_map_and_sum_chunks_equal_one_call(m):
    """Chunks of 4: side by side (m = 10, 12: 2-3 chunks), looped (m = 22, 24: 5-6 chunks), with
    and without a remainder, and one call (m = 3)."""
    rng = np.random.default_rng(1)
    A, B = jnp.asarray(rng.normal(size=(m, 5))), jnp.asarray(rng.normal(size=(m, 5)))
    mapped = jax.jit(lambda A, B: map_chunks(lambda a, b: a * b + 1.0, [A, B], 4))(A, B)
    np.testing.assert_allclose(mapped, A * B + 1.0, rtol=1e-5, atol=1e-6)

    def stats(a, b):
        return {"dot": a.T @ b, "count": jnp.float32(a.shape[0])}

    summed = jax.jit(lambda A, B: sum_chunks(stats, [A, B], 4))(A, B)
    np.testing.assert_allclose(summed["dot"], A.T @ B, rtol=1e-5, atol=1e-5)
    assert float(summed["count"]) == m


def test_up_to_unrolled_chunks_run_side_by_side_more_loop():
    """UNROLLED_CHUNKS chunks are independent calls (no loop in the program); one more loops."""
    def primitives(m):
        A = jnp.ones((m, 3))
        jaxprs = [jax.make_jaxpr(lambda A: map_chunks(lambda a: a * 2.0, [A], 2))(A),
                  jax.make_jaxpr(lambda A: sum_chunks(lambda a: a.sum(0), [A], 2))(A)]
        return [{eqn.primitive.name for eqn in jaxpr.jaxpr.eqns} for jaxpr in jaxprs]

    for names in primitives(2 * UNROLLED_CHUNKS):
        assert not names & {"scan", "while"}, names
    for names in primitives(2 * UNROLLED_CHUNKS + 2):
        assert names & {"scan", "while"}, names


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
@pytest.mark.parametrize("stride,padding", CASES)
def test_chunked_weight_grad_and_fast_vjp_match_autodiff(x64, layout, stride, padding):
    params, X = make_batch(10, layout, jnp.float64, seed=2)
    out, vjp = jax.vjp(lambda p, X: vmapped_conv(p, X, stride, padding, layout), params, X)
    delta = jnp.asarray(np.random.default_rng(3).normal(size=out.shape))
    expected_params, expected_X = vjp(delta)

    in_hw = X.shape[2:] if layout == "CHW" else X.shape[1:3]
    s = (stride, stride) if isinstance(stride, int) else stride
    pads = conv_padding(in_hw, (3, 3), s, padding)
    for chunk in (4, 64):
        dW = conv2d_weight_grad(X, delta, (3, 3), s, pads, layout, chunk)
        np.testing.assert_allclose(dW, expected_params["W"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv2d_input_grad(params["W"], delta, in_hw, s, pads, layout), expected_X,
                               rtol=1e-10, atol=1e-10)

    fast_out, fast_vjp = jax.vjp(lambda p, X: conv2d_batch_fast(p, X, stride, padding, layout, 4), params, X)
    np.testing.assert_allclose(fast_out, out, rtol=1e-10, atol=1e-10)
    fast_params, fast_X = fast_vjp(delta)
    for name in ("W", "b"):
        np.testing.assert_allclose(fast_params[name], expected_params[name], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast_X, expected_X, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", [conv2d_batch, conv2d_batch_fast])
def test_batch_errors_name_the_function_and_argument(fn):
    params, X = make_batch(4, "CHW")
    name = fn.__name__
    with pytest.raises(AssertionError, match=rf"{name}: X has shape \(2, 7, 10\) \(rank 3\), expected rank 4"):
        fn(params, X[0])
    with pytest.raises(AssertionError, match=rf"{name}: X has shape \(4, 5, 7, 10\), expected \(\?, 2, \?, \?\) "
                                             rf"= \(m, C, H, W\): its C = 5 channels must equal C_in = 2"):
        fn(params, jnp.ones((4, 5, 7, 10)))
    with pytest.raises(ValueError, match=rf"{name}: X has shape \(0, 2, 7, 10\), an empty batch"):
        fn(params, jnp.ones((0, 2, 7, 10)))
    for chunk, error in ((-1, ValueError), (0, ValueError), (1.5, TypeError), ("2", TypeError)):
        with pytest.raises(error, match=rf"{name}: chunk"):
            fn(params, X, chunk=chunk)
    np.testing.assert_allclose(fn(params, X, chunk=jnp.int32(2)), fn(params, X, chunk=2), rtol=1e-6)
    with pytest.raises(ValueError, match=rf"{name}: layout='NCHW'"):
        fn(params, X, layout="NCHW")
    with pytest.raises(TypeError, match=rf"{name}: .*floating-point"):
        fn(params, X.astype(jnp.int32))


def test_by_default_the_whole_batch_is_one_product():
    """chunk=None: one patch matrix and one product for the batch, forward and for dW."""
    params, X = make_batch(10, "HWC", jnp.float32, seed=5)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: conv2d_batch_fast(p, X, layout="HWC").sum()))(params)
    names = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    assert not {"scan", "while"} & set(names), names
    products = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "dot_general"]
    rows = 10 * 5 * 8  # examples x output pixels (7x10 maps, 3x3 kernel, valid)
    assert len(products) == 2, products
    assert all(any(rows in v.aval.shape for v in eqn.invars) for eqn in products), products


def _compiled_convolutions(fn, *args) -> list[str]:
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return [line.strip() for line in hlo.splitlines() if " convolution(" in line]


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_convolutions_keep_the_fast_form_inside_a_scan(layout):
    """The XLA convolutions of the hand-derived paths (`conv2d_fast`'s forward, the batch input
    gradient) and `conv2d` on channels-last images are written in `FAST_CONV_DIMENSIONS`:
    inside a `lax.scan` body XLA's CPU backend does not transpose other forms into it and
    emits a naive loop nest instead. On a CPU the compiled scan keeps ``b01f_01io->b01f``."""
    params, X = make_batch(4, layout, seed=6)
    delta = vmapped_conv(params, X, 1, "valid", layout)
    in_hw = X.shape[2:] if layout == "CHW" else X.shape[1:3]
    pads = conv_padding(in_hw, (3, 3), (1, 1), "valid")
    layers = [conv2d_fast] + ([conv2d] if layout == "HWC" else [])

    def forward_epoch(layer):
        def epoch(W):
            def body(W, _):
                Z = jax.vmap(lambda x: layer({"W": W, "b": params["b"]}, x, layout=layout))(X)
                return W * 0.5 + Z.sum(), None
            return jax.lax.scan(body, W, None, length=3)[0]
        return epoch

    def input_grad_epoch(W):
        def body(W, _):
            return W * 0.5 + conv2d_input_grad(W, delta, in_hw, (1, 1), pads, layout).sum(), None
        return jax.lax.scan(body, W, None, length=3)[0]

    for fn in [forward_epoch(layer) for layer in layers] + [input_grad_epoch]:
        assert "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]" in jax.jit(fn).lower(params["W"]).as_text()
        if jax.default_backend() == "cpu":
            convolutions = _compiled_convolutions(fn, params["W"])
            assert convolutions and all("b01f_01io->b01f" in line for line in convolutions), convolutions


def test_conv2d_channels_last_equals_conv2d():
    """`conv2d_fast`'s forward, in the fast form for either layout, gives `conv2d`'s values."""
    for layout in ("CHW", "HWC"):
        params, X = make_batch(3, layout, seed=7)
        for stride, padding in CASES:
            expected = vmapped_conv(params, X, stride, padding, layout)
            got = jax.vmap(lambda x: conv2d_fast(params, x, stride, padding, layout))(X)
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
