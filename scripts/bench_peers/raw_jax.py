"""The same models written by hand in raw JAX, as a JAX user would without a library:
batched NCHW arrays, `lax.conv_general_dilated`, `lax.reduce_window` max pooling, batch norm
over (N, H, W), `jax.value_and_grad` and a `tree_map` SGD update."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bench_peers import common
from bench_peers.jax_common import in_compute_dtype, loop_trainer, scan_trainer


def _he(key, shape, fan_in):
    return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)


def init_mlp(key):
    """[{"W": (n_out, n_in), "b": (n_out,)}] for 784-128-64-10."""
    sizes = common.MLP_SIZES
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"W": _he(k, (b, a), a), "b": jnp.zeros((b,))} for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_logits(params, x):
    """x: (B, 784) -> (B, 10)."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["W"].T + layer["b"])
    return x @ params[-1]["W"].T + params[-1]["b"]


def init_cnn(key):
    """(params, state) of the benchmark CNN; conv W (C_out, C_in, 3, 3), dense W (n_out, n_in)."""
    c0, c1, c2 = common.CNN_CHANNELS
    k = jax.random.split(key, 4)
    params = {
        "conv1": {"W": _he(k[0], (c1, c0, 3, 3), c0 * 9), "b": jnp.zeros((c1,))},
        "bn1": {"gamma": jnp.ones((c1,)), "beta": jnp.zeros((c1,))},
        "conv2": {"W": _he(k[1], (c2, c1, 3, 3), c1 * 9), "b": jnp.zeros((c2,))},
        "bn2": {"gamma": jnp.ones((c2,)), "beta": jnp.zeros((c2,))},
        "dense1": {"W": _he(k[2], (common.CNN_HIDDEN, c2 * 25), c2 * 25), "b": jnp.zeros((common.CNN_HIDDEN,))},
        "dense2": {"W": _he(k[3], (common.NUM_CLASSES, common.CNN_HIDDEN), common.CNN_HIDDEN),
                   "b": jnp.zeros((common.NUM_CLASSES,))},
    }
    state = {name: {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))} for name, c in (("bn1", c1), ("bn2", c2))}
    return params, state


def _conv(p, x):
    y = jax.lax.conv_general_dilated(x, p["W"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["b"][None, :, None, None]


def _batch_norm(p, s, x):
    mean = jnp.mean(x, axis=(0, 2, 3))
    var = jnp.var(x, axis=(0, 2, 3))
    y = (x - mean[None, :, None, None]) * jax.lax.rsqrt(var + common.BN_EPS)[None, :, None, None]
    y = y * p["gamma"][None, :, None, None] + p["beta"][None, :, None, None]
    n = x.shape[0] * x.shape[2] * x.shape[3]
    m = common.BN_MOMENTUM
    new = {"mean": m * s["mean"] + (1 - m) * mean, "var": m * s["var"] + (1 - m) * var * n / (n - 1)}
    return y, new


def _max_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def cnn_logits(params, state, x):
    """x: (B, 1, 28, 28) -> (logits (B, 10), new batch-norm state)."""
    h, s1 = _batch_norm(params["bn1"], state["bn1"], _conv(params["conv1"], x))
    h = _max_pool(jax.nn.relu(h))
    h, s2 = _batch_norm(params["bn2"], state["bn2"], _conv(params["conv2"], h))
    h = _max_pool(jax.nn.relu(h)).reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ params["dense1"]["W"].T + params["dense1"]["b"])
    return h @ params["dense2"]["W"].T + params["dense2"]["b"], {"bn1": s1, "bn2": s2}


def _cross_entropy(logits, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))


def make_step(model: str, lr: float, compute_dtype: str = "float32"):
    """Pure `(carry, x, y_one_hot) -> carry`: one SGD step; carry is params (MLP) or (params, state).
    The forward and backward pass run in `compute_dtype`, the loss and the update in float32."""
    low = partial(in_compute_dtype, compute_dtype=compute_dtype)
    if model == "mlp":
        def step(params, x, y):
            grads = jax.grad(lambda p: _cross_entropy(mlp_logits(low(p), low(x)).astype(jnp.float32), y))(params)
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return step

    def step(carry, x, y):
        params, state = carry

        def loss(p):
            logits, new_state = cnn_logits(low(p), low(state), low(x))
            return _cross_entropy(logits.astype(jnp.float32), y), jax.tree_util.tree_map(
                lambda new, old: new.astype(old.dtype), new_state, state)

        grads, new_state = jax.grad(loss, has_aux=True)(params)
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), new_state
    return step


def initial_carry(model: str, seed: int = 0):
    key = jax.random.PRNGKey(seed)
    return init_mlp(key) if model == "mlp" else init_cnn(key)


def make_trainers(model: str, data: common.EpochData, lr: float,
                  compute_dtype: str = "float32") -> list[common.Trainer]:
    """The raw-JAX rows: a jitted step in a Python loop, and a `lax.scan` epoch."""
    step = make_step(model, lr, compute_dtype)
    return [
        loop_trainer("raw JAX loop", "raw_jax", step, initial_carry(model), data, model),
        scan_trainer("raw JAX scan", "raw_jax", step, initial_carry(model), data, model),
    ]
