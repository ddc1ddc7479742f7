"""Flax NNX peer: the benchmark models as `nnx.Module`s in Flax's own NHWC layout, trained with
`nnx.Optimizer(optax.sgd)`. The step is the split/merge form Flax recommends for speed
(`nnx.split` once, `jax.jit` a pure function of the state), so no graph traversal is timed."""
from __future__ import annotations

from bench_peers import common
from bench_peers.jax_common import loop_trainer, scan_trainer

try:
    import optax
    from flax import nnx
except ImportError as error:  # pragma: no cover - depends on the optional extra
    raise common.PeerUnavailable(f"skipped (not installed: {error.name})") from error


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype=None):
        sizes = common.MLP_SIZES
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype=None):
        c0, c1, c2 = common.CNN_CHANNELS
        bn = dict(momentum=common.BN_MOMENTUM, epsilon=common.BN_EPS, use_running_average=False, dtype=dtype,
                  rngs=rngs)
        self.conv1 = nnx.Conv(c0, c1, (3, 3), padding="VALID", dtype=dtype, rngs=rngs)
        self.bn1 = nnx.BatchNorm(c1, **bn)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="VALID", dtype=dtype, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c2, **bn)
        self.dense1 = nnx.Linear(c2 * 25, common.CNN_HIDDEN, dtype=dtype, rngs=rngs)
        self.dense2 = nnx.Linear(common.CNN_HIDDEN, common.NUM_CLASSES, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), (2, 2))
        x = nnx.relu(self.dense1(x.reshape(x.shape[0], -1)))
        return self.dense2(x)


def make_trainers(model: str, data: common.EpochData, lr: float,
                  compute_dtype: str = "float32") -> list[common.Trainer]:
    """Flax NNX in a Python loop of jitted steps, and as a `lax.scan` epoch; in bfloat16 the
    layers compute in it (their ``dtype``) on float32 parameters, Flax's mixed precision."""
    nhwc = data if model == "mlp" else common.EpochData(data.images.transpose(0, 1, 3, 4, 2), data.labels, data.pixels)
    dtype = None if compute_dtype == "float32" else compute_dtype

    def fresh():
        net = (MLP if model == "mlp" else CNN)(nnx.Rngs(0), dtype)
        return nnx.split((net, nnx.Optimizer(net, optax.sgd(lr), wrt=nnx.Param)))

    graphdef, _ = fresh()

    def step(state, x, y):
        net, optimizer = nnx.merge(graphdef, state)
        grads = nnx.grad(lambda m: optax.softmax_cross_entropy(m(x).astype("float32"), y).mean())(net)
        optimizer.update(net, grads)
        return nnx.state((net, optimizer))

    note = "NHWC (Flax's layout)" if model == "cnn" else ""
    return [
        loop_trainer("Flax NNX loop", "peer", step, fresh()[1], nhwc, model, note=note),
        scan_trainer("Flax NNX scan", "peer", step, fresh()[1], nhwc, model, note=note),
    ]
