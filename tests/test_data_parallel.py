"""Data parallelism in nnjax.training: a batch split across devices trains exactly like the
whole batch on one device (up to float rounding), for both gradient sources. Also the host
set-up the experiments run first (`use_host_cores`, `reuse_freed_memory`)."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnjax import training

TWO_DEVICES = len(jax.devices()) >= 2


def test_the_test_process_has_two_cpu_devices():
    """conftest's use_host_cores(2) took effect, so the tests below run on two devices."""
    assert TWO_DEVICES, jax.devices()


def test_resolve_devices_follows_the_measured_table_and_the_batch():
    smallest_split = training.DATA_PARALLEL_DEFAULTS[("cnn", "cpu")]
    assert training.resolve_devices("auto", "cnn", smallest_split, 1000, "cpu") == 2
    assert training.resolve_devices("auto", "cnn", smallest_split - 2, 1000, "cpu") == 1
    assert training.resolve_devices("auto", "cnn", 1024, 1000, "cpu") == 2
    assert training.resolve_devices("auto", "mlp", 1024, 1000, "cpu") == 1
    assert training.resolve_devices("auto", "cnn", 1025, 1000, "cpu") == 1  # 2 does not divide 1025
    assert training.resolve_devices(2, "mlp", 128, 1000, "cpu") == 2
    with pytest.raises(ValueError, match=r"devices=3 but the cpu backend has 2 usable \(on a CPU at most one device per core"):
        training.resolve_devices(3, "cnn", 128, 1000, "cpu")
    with pytest.raises(ValueError, match=r"devices=2 must divide batch_size=33"):
        training.resolve_devices(2, "cnn", 33, 1000, "cpu")


def test_no_more_cpu_devices_than_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert training.resolve_devices("auto", "cnn", 1024, 1000, "cpu") == 1
    with pytest.raises(ValueError, match=r"devices=2 but the cpu backend has 1 usable \(on a CPU at most one device per core"):
        training.resolve_devices(2, "cnn", 128, 1000, "cpu")


def test_fewer_cpu_devices_than_cores_point_to_use_host_cores(monkeypatch):
    """JAX started without `use_host_cores`: one CPU device on a machine with more cores."""
    one_device = jax.devices("cpu")[:1]
    monkeypatch.setattr(jax, "devices", lambda backend=None: one_device)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ValueError, match=r"devices=2 but the cpu backend has 1 usable; call "
                                         r"nnjax.training.use_host_cores\(\) before JAX starts to get one per core \(2\)"):
        training.resolve_devices(2, "cnn", 128, 1000, "cpu")


@pytest.mark.parametrize("devices", [0, -1, "two", 1.5, True])
def test_bad_device_count_is_refused(devices):
    config = training.TrainConfig(epochs=1, batch_size=8, lr=0.1, warmup_epochs=0.0, devices=devices,
                                  n_train=64)
    with pytest.raises(ValueError, match=r"devices=.* must be 'auto' or an int >= 1"):
        config.validate()


def test_use_host_cores_keeps_a_count_already_in_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    training.use_host_cores(5)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    training.use_host_cores(5)
    assert os.environ["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=5")


_MAPPED_BYTES_AFTER_ALLOC = """
import ctypes, sys, threading
import numpy as np
from nnjax import training

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
took = training.reuse_freed_memory() if sys.argv[1] == "reuse" else None
seen = {}

def worker():
    block = np.ones(48 << 20, np.uint8)  # 48 MB, in a thread other than the main one (as XLA's)
    seen["mapped"] = libc.mallinfo2().hblkhd
    del block

thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(took, seen["mapped"] >= 48 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings exist on Linux only")
@pytest.mark.parametrize("mode, expected", [("default", "None True"), ("reuse", "True False")])
def test_reuse_freed_memory_keeps_large_blocks_out_of_mmap(mode, expected):
    """With glibc's defaults a 48 MB block of a worker thread is mmap'd (counted in mallinfo2's
    hblkhd, returned to the OS on free); after reuse_freed_memory it comes from the heap."""
    done = subprocess.run([sys.executable, "-c", _MAPPED_BYTES_AFTER_ALLOC, mode], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == expected


def _one_step(model, grads, devices, params, state, data, batches):
    optimizer = optax.sgd(0.1)
    carry = training.replicate((params, optimizer.init(params), state, jnp.int32(0)), devices)
    data = training.TrainingSet(*training.replicate(tuple(data), devices))
    step = jax.jit(training.make_train_step(model, optimizer, grads, 0.1, devices))
    return jax.device_get(step(carry, data, training.replicate(batches, devices)))


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("grads", ["autodiff", "manual"])
def test_a_step_split_across_two_devices_equals_the_step_on_one(x64, kind, grads):
    """Parameters, batch-norm running statistics, loss and correct count after one step:
    batch norm's statistics span both devices and the gradients are averaged across them
    (the CNN's conv1 runs as `conv2d_batch_norm`, its conv2 as a conv then batch norm)."""
    model = training.cnn_model(channels=(12, 8), hidden=16) if kind == "cnn" else training.mlp_model()
    params, state = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    data = training.TrainingSet(jnp.asarray(rng.integers(0, 256, (96, 28, 28), dtype=np.uint8)),
                          jnp.asarray(rng.integers(0, 10, 96).astype(np.int32)))
    batches = jnp.asarray(rng.permutation(96)[:64].reshape(2, 32).astype(np.int32))
    one = _one_step(model, grads, 1, params, state, data, batches)
    two = _one_step(model, grads, 2, params, state, data, batches)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    assert one[0][0] is not params  # the step moved the parameters
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one[0][0]), jax.tree.leaves(params)))
    assert moved > 1e-3


def test_replicate_puts_a_copy_on_each_device():
    tree = {"a": np.arange(6.0), "b": np.int32(3)}
    on_two = training.replicate(tree, 2)
    assert on_two["a"].sharding.device_set == set(jax.devices()[:2])
    assert on_two["a"].sharding.is_fully_replicated
    assert training.replicate(tree, 1)["a"].sharding.device_set == {jax.devices()[0]}


def test_scan_steps_split_across_two_devices_equal_the_steps_on_one(x64):
    """The scan epoch (`scan_steps`) with each batch split across two devices: the same
    parameters, batch-norm statistics and summed metrics after 2 steps as on one device."""
    model = training.cnn_model(channels=(12, 8), hidden=16)
    params, state = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(1)
    data = (jnp.asarray(rng.integers(0, 256, (96, 28, 28), dtype=np.uint8)),
            jnp.asarray(rng.integers(0, 10, 96).astype(np.int32)))
    batches = jnp.asarray(rng.permutation(96)[:64].reshape(2, 32).astype(np.int32))
    optimizer = optax.sgd(0.1)
    results = []
    for devices in (1, 2):
        carry = training.replicate((params, optimizer.init(params), state, jnp.int32(0)), devices)
        scanned = jax.jit(training.scan_steps(training.make_batch_step(model, optimizer, "manual", 0.1, devices), 2))
        results.append(jax.device_get(scanned(carry, training.TrainingSet(*training.replicate(data, devices)),
                                              training.replicate(batches, devices))))
    one, two = results
    assert int(one[0][3]) == int(two[0][3]) == 2
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
