"""Equinox peer: the benchmark models as `eqx.Module`s (per example, batched with `jax.vmap`
like nnjax), batch norm in `mode="batch"`, optax SGD. The step jits a pure function of the
model's arrays (`eqx.partition` once), Equinox's fast path, so no filtering is timed."""
from __future__ import annotations

from functools import partial

from bench_peers import common
from bench_peers.jax_common import in_compute_dtype, loop_trainer, scan_trainer

try:
    import equinox as eqx
    import jax
    import optax
except ImportError as error:  # pragma: no cover - depends on the optional extra
    raise common.PeerUnavailable(f"skipped (not installed: {error.name})") from error


class MLP(eqx.Module):
    layers: list

    def __init__(self, key):
        sizes = common.MLP_SIZES
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [eqx.nn.Linear(a, b, key=k) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def __call__(self, x, state):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x), state


class CNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    pool: eqx.nn.MaxPool2d
    dense1: eqx.nn.Linear
    dense2: eqx.nn.Linear

    def __init__(self, key):
        c0, c1, c2 = common.CNN_CHANNELS
        k = jax.random.split(key, 4)
        bn = dict(axis_name="batch", momentum=common.BN_MOMENTUM, eps=common.BN_EPS, mode="batch")
        self.conv1 = eqx.nn.Conv2d(c0, c1, 3, key=k[0])
        self.bn1 = eqx.nn.BatchNorm(c1, **bn)
        self.conv2 = eqx.nn.Conv2d(c1, c2, 3, key=k[1])
        self.bn2 = eqx.nn.BatchNorm(c2, **bn)
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.dense1 = eqx.nn.Linear(c2 * 25, common.CNN_HIDDEN, key=k[2])
        self.dense2 = eqx.nn.Linear(common.CNN_HIDDEN, common.NUM_CLASSES, key=k[3])

    def __call__(self, x, state):
        x, state = self.bn1(self.conv1(x), state)
        x = self.pool(jax.nn.relu(x))
        x, state = self.bn2(self.conv2(x), state)
        x = self.pool(jax.nn.relu(x)).reshape(-1)
        return self.dense2(jax.nn.relu(self.dense1(x))), state


def make_trainers(model: str, data: common.EpochData, lr: float,
                  compute_dtype: str = "float32") -> list[common.Trainer]:
    """Equinox in a Python loop of jitted steps, and as a `lax.scan` epoch; in bfloat16 the
    model runs as a bfloat16 copy of its float32 arrays (Equinox has no mixed-precision layer
    option)."""
    optimizer = optax.sgd(lr)
    low = partial(in_compute_dtype, compute_dtype=compute_dtype)

    def fresh():
        net, state = eqx.nn.make_with_state(MLP if model == "mlp" else CNN)(jax.random.PRNGKey(0))
        params, static = eqx.partition(net, eqx.is_array)
        return (params, state, optimizer.init(params)), static

    _, static = fresh()

    def step(carry, x, y):
        params, state, opt_state = carry

        def loss(p):
            net = eqx.combine(low(p), static)
            batched = jax.vmap(net, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
            logits, new_state = batched(low(x), state)
            return optax.softmax_cross_entropy(logits.astype("float32"), y).mean(), new_state

        grads, new_state = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), new_state, opt_state

    return [
        loop_trainer("Equinox loop", "peer", step, fresh()[0], data, model),
        scan_trainer("Equinox scan", "peer", step, fresh()[0], data, model),
    ]
