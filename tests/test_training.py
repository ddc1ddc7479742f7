"""Tests of nnjax.training on real MNIST (prepared by `python -m nnjax.data prepare`).

Small runs: a few thousand training images, short epochs, so compilation dominates; the full
targets (98% MLP, 99.3% CNN) are measured by running the experiments.
"""
import dataclasses
import importlib.util
import json
import os
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnjax import training
from nnjax.data import load_mnist
from nnjax.training import ResumeError, TrainConfig

METRICS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


@pytest.fixture(scope="module")
def full_splits():
    return training.load_splits()


@pytest.fixture(scope="module")
def small_splits(full_splits):
    """4,096 training images, 2,000 test images: enough to learn, quick to score."""
    s = full_splits
    return s._replace(train_images=s.train_images[:4096], train_labels=s.train_labels[:4096],
                      eval_images=s.test_images[:2000], eval_labels=s.test_labels[:2000],
                      test_images=s.test_images[:2000], test_labels=s.test_labels[:2000])


def small_config(splits, model, **overrides):
    settings = dict(epochs=3, batch_size=128, lr=3e-3, seed=0, warmup_epochs=0.5,
                    weight_decay=0.01, eval_batch_size=1000, model=model.describe,
                    n_train=len(splits.train_labels))
    settings.update(overrides)
    return TrainConfig(**settings)


def metrics(results):
    """The per-epoch numbers that must reproduce exactly (no wall-clock times)."""
    return [{k: r[k] for k in METRICS} for r in results["history"]]


def run(model, splits, config, **kwargs):
    return training.train(model, splits, config, progress=False, log=lambda line: None, **kwargs)


@pytest.fixture(scope="module")
def reference(small_splits, tmp_path_factory):
    """An uninterrupted 3-epoch MLP run (loop epochs), its files in ``out``."""
    model = training.mlp_model()
    out = str(tmp_path_factory.mktemp("reference"))
    config = small_config(small_splits, model, epoch_mode="loop")
    return {"model": model, "config": config, "out": out,
            "results": run(model, small_splits, config, out_dir=out)}


def test_cnn_short_run_on_manual_gradients_learns(full_splits, small_splits):
    """100 steps of 32 images on the hand-derived backprop (batch norm's running statistics
    included): the test accuracy is far above chance."""
    model = training.cnn_model()
    splits = small_splits._replace(train_images=full_splits.train_images[:3200],
                                   train_labels=full_splits.train_labels[:3200])
    config = small_config(splits, model, epochs=1, batch_size=32, lr=2e-3, warmup_epochs=0.1,
                          eval_batch_size=250, grads="manual")
    results = run(model, splits, config)
    assert results["epoch_mode"] == training.resolve_epoch_mode("auto", "cnn")
    assert results["test_accuracy"] >= 0.9, results["test_accuracy"]


def test_resume_after_interruption_reproduces_the_uninterrupted_run(small_splits, reference, tmp_path):
    model, config, whole = reference["model"], reference["config"], reference["results"]
    out = str(tmp_path)
    partial = run(model, small_splits, config, out_dir=out, stop_after_epoch=1)
    assert partial["stopped_after_epoch"] == 1
    assert metrics(partial) == metrics(whole)[:1]  # determinism: same seed, same device
    assert not os.path.exists(os.path.join(out, training.RESULTS_FILE))
    resumed = run(model, small_splits, config, out_dir=out, resume=True)
    assert metrics(resumed) == metrics(whole)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    # times cover every epoch, the killed process's too: each epoch records its evaluation
    assert all(r["eval_time_s"] > 0 for r in resumed["history"])
    assert resumed["eval_time_s"] >= sum(r["eval_time_s"] for r in resumed["history"])
    with open(os.path.join(out, training.RESULTS_FILE)) as f:
        assert json.load(f)["test_accuracy"] == whole["test_accuracy"]


def test_another_seed_gives_other_numbers(small_splits, reference):
    config = dataclasses.replace(reference["config"], seed=1)
    other = run(reference["model"], small_splits, config)
    assert metrics(other) != metrics(reference["results"])
    assert other["test_accuracy"] > 0.85


def test_scan_epochs_compute_the_same_training_as_loop_epochs(small_splits, reference):
    config = dataclasses.replace(reference["config"], epoch_mode="scan")
    scan = run(reference["model"], small_splits, config)
    assert scan["epoch_mode"] == "scan"
    for a, b in zip(metrics(scan), metrics(reference["results"])):
        np.testing.assert_allclose([a[k] for k in METRICS], [b[k] for k in METRICS], rtol=1e-4)


def test_scan_epochs_with_a_shorter_last_call_match_loop_epochs(small_splits):
    """41 steps per epoch (batch 99; 41 is prime) run as 8 calls of 5 steps and one of 1
    (`_counted_chunk`): the same training and per-epoch metrics as 41 single steps."""
    model = training.mlp_model()
    config = small_config(small_splits, model, epochs=2, batch_size=99, epoch_mode="loop")
    assert config.steps_per_epoch == 41 and training.steps._scan_chunk_length(41) == 5
    loop = run(model, small_splits, config)
    scan = run(model, small_splits, dataclasses.replace(config, epoch_mode="scan"))
    for a, b in zip(metrics(scan), metrics(loop)):
        np.testing.assert_allclose([a[k] for k in METRICS], [b[k] for k in METRICS], rtol=1e-4)


def test_manual_gradients_train_like_autodiff_and_the_check_passes(small_splits, reference, tmp_path):
    config = dataclasses.replace(reference["config"], grads="manual")
    manual = run(reference["model"], small_splits, config, check_grads=True, out_dir=str(tmp_path))
    check = manual["gradient_check"]
    assert check["passed"] and "layer 1 / W" in check["report"]
    assert check["autodiff_ms"] > 0 and check["manual_ms"] > 0
    for a, b in zip(metrics(manual), metrics(reference["results"])):
        np.testing.assert_allclose([a[k] for k in METRICS], [b[k] for k in METRICS], rtol=1e-3)


def test_run_writes_results_metrics_curves_and_checkpoint(reference):
    out = reference["out"]
    with open(os.path.join(out, training.RESULTS_FILE)) as f:
        saved = json.load(f)
    for key in ("test_accuracy", "test_loss", "train_time_s", "compile_time_s", "eval_time_s",
                "samples_per_s", "device", "backend", "jax_version", "config", "epoch_mode"):
        assert key in saved, key
    assert saved["config"] == json.loads(json.dumps(dataclasses.asdict(reference["config"])))
    assert saved["test_accuracy"] == reference["results"]["test_accuracy"] > 0.85
    with open(os.path.join(out, training.METRICS_FILE)) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3]
    with open(os.path.join(out, training.CURVES_FILE), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out)) == sorted([training.CHECKPOINT_FILE, training.METRICS_FILE,
                                              training.RESULTS_FILE, training.CURVES_FILE])


def test_checkpoint_round_trip_keeps_params_optimizer_batch_norm_state_and_key(tmp_path):
    params = {"conv1": {"W": jnp.arange(8.0).reshape(2, 1, 2, 2), "b": jnp.ones(2)}}
    state = {"bn1": {"mean": jnp.full(2, 0.5), "var": jnp.full(2, 2.0)}}
    optimizer = training.make_optimizer(TrainConfig(epochs=2, batch_size=4, lr=1e-3, n_train=8))
    opt_state = jax.tree.map(lambda v: v + 1, optimizer.init(params))
    tree = (params, opt_state, state, jax.random.key_data(jax.random.key(7)))
    path = str(tmp_path / "ckpt.npz")
    training.save_checkpoint(path, tree, {"epoch": 1, "history": [{"epoch": 1}]})
    template = jax.tree.map(jnp.zeros_like, tree)
    restored, meta = training.load_checkpoint(path, template)
    assert meta == {"epoch": 1, "history": [{"epoch": 1}]}
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_checkpoint_write_that_crashes_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.npz")
    tree = {"W": jnp.arange(6.0).reshape(2, 3)}
    training.save_checkpoint(path, tree, {"epoch": 1})
    before = open(path, "rb").read()

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(path, {"W": jnp.ones((2, 3))}, {"epoch": 2})
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    monkeypatch.undo()
    restored, meta = training.load_checkpoint(path, tree)
    assert meta == {"epoch": 1}
    np.testing.assert_array_equal(restored["W"], tree["W"])


def test_checkpoint_of_another_structure_is_refused(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    training.save_checkpoint(path, {"W": jnp.zeros((2, 3))}, {})
    with pytest.raises(ValueError, match="different structure"):
        training.load_checkpoint(path, {"W": jnp.zeros((2, 3)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*expected \(3, 2\)"):
        training.load_checkpoint(path, {"W": jnp.zeros((3, 2))})
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not an nnjax checkpoint: not an .npz"):
        training.load_checkpoint(str(tmp_path / "junk.npz"), {"W": jnp.zeros((2, 3))})


def _flip_a_byte_of_the_first_leaf(path):
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("leaf_00000.npy")
    data = bytearray(open(path, "rb").read())
    local_header = 30 + len(member.filename) + int.from_bytes(data[member.header_offset + 28:member.header_offset + 30],
                                                              "little")
    data[member.header_offset + local_header + member.file_size - 1] ^= 0xFF  # the last byte of W
    return bytes(data)


@pytest.mark.parametrize("damage, message", [
    (lambda data, path: data[:len(data) // 2], "not an .npz"),
    (lambda data, path: b"", "not an .npz"),
    (lambda data, path: _flip_a_byte_of_the_first_leaf(path), "BadZipFile: Bad CRC-32"),
])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage, message):
    path = str(tmp_path / "ckpt.npz")
    template = {"W": jnp.arange(6.0).reshape(2, 3)}
    training.save_checkpoint(path, template, {"epoch": 1})
    with open(path, "rb") as f:
        damaged = damage(f.read(), path)
    with open(path, "wb") as f:
        f.write(damaged)
    with pytest.raises(ValueError, match=f"{path}.*{message}.*damaged or is another kind of file"):
        training.load_checkpoint(path, template)


def test_checkpoint_header_without_its_structure_is_a_clear_error(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    header = json.dumps({"meta": {}, "leaves": 0}).encode()
    np.savez(path, header=np.frombuffer(header, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"not a readable nnjax checkpoint \(KeyError: 'treedef'\)"):
        training.load_checkpoint(path, {"W": jnp.zeros((2, 3))})


def test_resume_from_a_damaged_checkpoint_is_refused(small_splits, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    checkpoint = out / training.CHECKPOINT_FILE
    with np.load(checkpoint) as saved:
        arrays = dict(saved)
    header = json.loads(arrays["header"].tobytes())
    header["meta"] = {"epoch": 3}
    np.savez(checkpoint, **{**arrays, "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)})
    with pytest.raises(ResumeError, match="cannot resume: .* was not written by train"):
        run(reference["model"], small_splits, reference["config"], out_dir=str(out), resume=True)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ResumeError, match="cannot resume: load_checkpoint: .* not an .npz"):
        run(reference["model"], small_splits, reference["config"], out_dir=str(out), resume=True)


def test_without_matplotlib_a_run_finishes_and_says_why_there_is_no_curves_png(small_splits, reference, tmp_path,
                                                                               monkeypatch):
    """matplotlib is the optional `viz` extra: training must not need it."""
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    (out / training.CURVES_FILE).unlink()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib" else real_find_spec(name, *args))
    lines = []
    training.train(reference["model"], small_splits, reference["config"], out_dir=str(out), resume=True,
                   progress=False, log=lines.append)
    assert f"no {training.CURVES_FILE}: matplotlib is not installed (pip install 'nnjax[viz]')" in lines
    assert not (out / training.CURVES_FILE).exists() and (out / training.RESULTS_FILE).exists()


def test_resume_rewrites_the_metrics_a_kill_left_behind_the_checkpoint(small_splits, reference, tmp_path,
                                                                      killed_write):
    """Killed between the last epoch's checkpoint and its metrics.jsonl (and while writing the
    metrics): resuming runs no epoch but writes every epoch's metrics from the checkpoint's
    history, and deletes the half-written temporary file."""
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    metrics_file = out / training.METRICS_FILE
    metrics_file.write_text("".join(metrics_file.read_text().splitlines(keepends=True)[:1]))
    assert killed_write(metrics_file, b'{"epoch": 1}\n{"ep')
    (out / training.RESULTS_FILE).unlink()
    resumed = run(reference["model"], small_splits, reference["config"], out_dir=str(out), resume=True)
    assert metrics(resumed) == metrics(reference["results"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "a killed write's temporary file survived"
    assert [json.loads(line)["epoch"] for line in metrics_file.read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / training.RESULTS_FILE).read_text())["epochs"] == 3


def test_resume_without_checkpoint_or_with_other_settings_is_refused(small_splits, reference, tmp_path):
    model, config = reference["model"], reference["config"]
    with pytest.raises(ResumeError, match="no checkpoint"):
        run(model, small_splits, config, out_dir=str(tmp_path), resume=True)
    with pytest.raises(ResumeError, match=r"differs in \['lr'\]"):
        run(model, small_splits, dataclasses.replace(config, lr=1e-2), out_dir=reference["out"],
            resume=True)
    with pytest.raises(ResumeError, match="needs out_dir"):
        run(model, small_splits, config, resume=True)


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 5000}, "batch_size=5000 is larger than the 4096"),
    ({"grads": "numeric"}, r"grads='numeric' is not allowed; expected one of \['autodiff', 'manual'\]"),
    ({"epoch_mode": "fast"}, r"expected one of \['scan', 'loop', 'auto'\]"),
    ({"optimizer": "lbfgs"}, r"expected one of \['adamw', 'adam', 'sgd'\]"),
    ({"schedule": "step"}, r"expected one of \['cosine', 'onecycle', 'constant'\]"),
    ({"lr": 0.0}, "lr=0.0 must be > 0"),
    ({"lr": float("inf")}, "lr=inf must be finite"),
    ({"weight_decay": float("nan")}, "weight_decay=nan must be finite"),
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"warmup_epochs": 3}, r"warmup_epochs=3 must be in \[0, epochs=3\)"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0 must be in \[0, 1\)"),
    ({"seed": -1}, "seed=-1 must be an int >= 0"),
    ({"compute_dtype": "float16"}, r"compute_dtype='float16' is not allowed; expected one of \['float32', 'bfloat16'\]"),
])
def test_bad_settings_raise_naming_the_setting(small_splits, overrides, message):
    model = training.mlp_model()
    with pytest.raises(ValueError, match=message):
        small_config(small_splits, model, **overrides).validate()


def test_a_setting_of_the_wrong_type_names_itself(small_splits):
    with pytest.raises(TypeError, match="TrainConfig: lr='0.1' must be a number"):
        small_config(small_splits, training.mlp_model(), lr="0.1").validate()
    for name, value in (("lr", np.float32(0.1)), ("lr", jnp.float32(0.1)), ("epochs", np.int64(3))):
        with pytest.raises(TypeError, match=rf"TrainConfig: {name}=.* must be a Python int or float \(the run's "
                                            rf"config is saved as JSON"):
            small_config(small_splits, training.mlp_model(), **{name: value}).validate()
    small_config(small_splits, training.mlp_model(), lr=np.float64(0.1)).validate()


def test_config_must_match_the_training_set(small_splits):
    model = training.mlp_model()
    with pytest.raises(ValueError, match="n_train=1000 but the training set has 4096"):
        run(model, small_splits, small_config(small_splits, model, n_train=1000))


def test_manual_gradients_need_a_model_that_has_them(small_splits):
    model = dataclasses.replace(training.mlp_model(), manual_grads=None)
    with pytest.raises(ValueError, match="no hand-derived gradients"):
        run(model, small_splits, small_config(small_splits, model, grads="manual"))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("grads", training.GRAD_SOURCES)
def test_bfloat16_step_keeps_float32_state_and_close_gradients(full_splits, kind, grads):
    """One SGD step (lr 1, so the update is minus the gradient) in bfloat16 against float32:
    parameters, optimizer and batch-norm state stay float32, and each gradient agrees to within
    15% (bfloat16 keeps 8 bits of mantissa; through the batch-norm backward's cancellations the
    CNN's conv gradients come out 7-9% off), where a wrong one would be off by 100%. The conv
    biases under batch norm have a zero gradient in exact arithmetic; in bfloat16 it stays
    negligible next to the largest gradient."""
    import optax

    model = training.mlp_model() if kind == "mlp" else training.cnn_model()
    params, state = model.init(jax.random.key(0))
    data = training.TrainingSet(jnp.asarray(full_splits.train_images[:64]), jnp.asarray(full_splits.train_labels[:64]))
    batches = jnp.arange(64).reshape(1, 64)
    optimizer = optax.sgd(1.0)
    after = {}
    for dtype in training.COMPUTE_DTYPES:
        step = jax.jit(training.make_train_step(model, optimizer, grads, compute_dtype=dtype))
        carry = (params, optimizer.init(params), state, jnp.int32(0))
        (new_params, _, new_state, _), (loss, _) = step(carry, data, batches)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((new_params, new_state, loss)))
        after[dtype] = jax.tree.map(jnp.subtract, params, new_params), new_state
    exact, mixed = jax.tree.leaves(after["float32"]), jax.tree.leaves(after["bfloat16"])
    largest = max(float(jnp.linalg.norm(e)) for e in exact)
    for e, m in zip(exact, mixed):
        size, error = float(jnp.linalg.norm(e)), float(jnp.linalg.norm(m - e))
        if size > 1e-3 * largest:
            assert error < 0.15 * size, (error, size)
        else:
            assert error < 1e-3 * largest, (error, largest)


def test_bfloat16_run_learns(small_splits):
    model = training.mlp_model()
    results = run(model, small_splits, small_config(small_splits, model, compute_dtype="bfloat16"))
    assert results["test_accuracy"] >= 0.85, results["test_accuracy"]


def test_checkpoint_from_before_a_setting_existed_resumes(small_splits, reference, tmp_path):
    """A checkpoint whose config lacks a setting added since (here compute_dtype) resumes
    when the run uses that setting's default."""
    model, config = reference["model"], reference["config"]
    out = str(tmp_path)
    run(model, small_splits, config, out_dir=out, stop_after_epoch=1)
    path = os.path.join(out, training.CHECKPOINT_FILE)
    with np.load(path) as saved:
        arrays = dict(saved)
    header = json.loads(arrays["header"].tobytes())
    del header["meta"]["config"]["compute_dtype"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    resumed = run(model, small_splits, config, out_dir=out, resume=True)
    assert metrics(resumed) == metrics(reference["results"])


def test_compiler_options_on_a_cpu_and_elsewhere(monkeypatch):
    options = training.compiler_options("cpu")
    assert options == training.CPU_COMPILER_OPTIONS == training.compiler_options("cpu", "cnn")
    options["xla_backend_optimization_level"] = 3
    assert training.compiler_options("cpu") == training.CPU_COMPILER_OPTIONS, "callers got a shared dict"
    assert training.compiler_options("cpu", "mlp") == training.CPU_COMPILER_OPTIONS_BY_MODEL["mlp"]
    assert training.compiler_options("cpu", "mlp") != training.CPU_COMPILER_OPTIONS
    assert training.compiler_options("gpu") == training.compiler_options("gpu", "mlp") == {}
    monkeypatch.setattr(training.machine, "CPU_COMPILER_OPTIONS", {"xla_no_such_option_for_the_test": True})
    assert training.compiler_options("cpu") == {}, "an option this XLA lacks must not be passed"


def test_train_compiles_each_model_with_its_options(small_splits, monkeypatch):
    """`train` passes its model's kind to every compile: the MLP's programs get the MLP's options."""
    asked = []
    real = training.compiler_options
    monkeypatch.setattr(training.machine, "compiler_options",
                        lambda backend=None, model_kind=None: asked.append(model_kind) or real(backend, model_kind))
    model = training.mlp_model()
    run(model, small_splits, small_config(small_splits, model, epochs=1))
    assert asked and set(asked) == {"mlp"}


@pytest.mark.parametrize("grads", training.GRAD_SOURCES)
def test_cnn_step_compiled_with_the_options_matches_the_default_compile(full_splits, grads):
    """Another code generator, the same step: outputs equal to float32 rounding."""
    import optax

    model = training.cnn_model()
    params, state = model.init(jax.random.key(1))
    data = training.TrainingSet(jnp.asarray(full_splits.train_images[:32]), jnp.asarray(full_splits.train_labels[:32]))
    batches = jnp.arange(32).reshape(1, 32)
    optimizer = optax.sgd(0.1)
    carry = (params, optimizer.init(params), state, jnp.int32(0))
    lowered = jax.jit(training.make_train_step(model, optimizer, grads)).lower(carry, data, batches)
    default = lowered.compile()(carry, data, batches)
    tuned = lowered.compile(training.compiler_options(model_kind="cnn"))(carry, data, batches)
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_cnn_options_compile_a_pooled_relu_gradient_as_evaluated_op_by_op():
    """The pattern XLA's default CPU fusion emitters miscompiled in jaxlib 0.10.2 (the
    gradient of a 2x2 max pool of ReLU(gamma * z + beta), 12 channels): with the CNN's options
    the compiled gradient equals the one evaluated op by op."""
    rng = np.random.default_rng(0)
    Z, D = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in [(4, 12, 12, 10), (4, 12, 6, 5)])
    gamma, beta = (jnp.asarray(rng.normal(size=12), jnp.float32) for _ in range(2))

    def loss(gamma, beta):
        a = jnp.maximum(gamma[None, :, None, None] * Z + beta[None, :, None, None], 0)
        pooled = jnp.maximum(jnp.maximum(a[:, :, 0::2, 0::2], a[:, :, 0::2, 1::2]),
                             jnp.maximum(a[:, :, 1::2, 0::2], a[:, :, 1::2, 1::2]))
        return jnp.sum(D * pooled)

    grad = jax.grad(loss, argnums=(0, 1))
    compiled = jax.jit(grad, compiler_options=training.compiler_options(model_kind="cnn"))(gamma, beta)
    for a, b in zip(compiled, grad(gamma, beta)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_epoch_batches_draw_each_example_at_most_once_the_same_way_for_a_key():
    key = jax.random.key(3)
    batches = training.epoch_batches(key, 100, 7, 13)
    assert batches.shape == (7, 13) and batches.dtype == np.int32
    assert len(set(batches.ravel().tolist())) == 91 and 0 <= batches.min() and batches.max() < 100
    np.testing.assert_array_equal(batches, training.epoch_batches(key, 100, 7, 13))
    assert not np.array_equal(batches, training.epoch_batches(jax.random.fold_in(key, 1), 100, 7, 13))
    with pytest.raises(ValueError, match=r"steps \* batch_size = 8 \* 13 = 104 exceeds n_train = 100"):
        training.epoch_batches(key, 100, 8, 13)


def test_standardized_pixels_are_the_mnist_standardization():
    pixels = np.arange(256, dtype=np.uint8)
    expected = (pixels / 255.0 - training.MNIST_MEAN) / training.MNIST_STD
    np.testing.assert_allclose(np.asarray(training.models._standardize(jnp.asarray(pixels))), expected, rtol=0, atol=1e-6)


def test_epoch_mode_auto_uses_the_measured_table():
    assert training.resolve_epoch_mode("auto", "mlp", "cpu") == "scan"
    assert training.resolve_epoch_mode("auto", "cnn", "cpu") == "scan"
    assert training.resolve_epoch_mode("auto", "cnn", "unknown-backend") == "loop"
    assert training.resolve_epoch_mode("loop", "mlp", "cpu") == "loop"
    with pytest.raises(ValueError, match="mode='both'"):
        training.resolve_epoch_mode("both", "mlp")


@pytest.mark.parametrize("steps", [1, 7, 16, 97, 468, 469, 937])
def test_scan_chunks_cover_the_epoch_in_about_the_promised_calls(steps):
    """A divisor of the step count where one is near, else (on the CPU) a shorter last call:
    937 steps (batch 64) is prime and still runs in 10 calls; on a GPU in one."""
    chunk = training.steps._scan_chunk_length(steps, "cpu")
    calls = -(-steps // chunk)
    assert (calls - 1) * chunk < steps <= calls * chunk
    assert 1 <= calls <= 2 * training.SCAN_UPDATES_PER_EPOCH
    if steps >= training.SCAN_UPDATES_PER_EPOCH ** 2:
        assert calls >= training.SCAN_UPDATES_PER_EPOCH // 2, calls
    off_cpu = training.steps._scan_chunk_length(steps, "gpu")
    assert steps % off_cpu == 0 and off_cpu == (chunk if steps % chunk == 0 else steps)
    assert training.steps._scan_chunk_length(937, "cpu") == 94 and training.steps._scan_chunk_length(937, "gpu") == 937


def test_scan_steps_run_from_the_carrys_step_like_single_steps():
    """`scan_steps` takes the rows of `batches` from the step the carry is at and sums the
    steps' metrics: 3 scanned steps from step 2 equal steps 2, 3, 4 of `make_train_step`,
    and differ from steps 0, 1, 2."""
    import optax

    model = training.mlp_model()
    params, state = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    data = training.TrainingSet(jnp.asarray(rng.integers(0, 256, (48, 28, 28), dtype=np.uint8)),
                          jnp.asarray(rng.integers(0, 10, 48), jnp.int32))
    batches = jnp.asarray(rng.permutation(48).reshape(6, 8).astype(np.int32))
    optimizer = optax.sgd(0.1)

    def carry_at(step):
        return params, optimizer.init(params), state, jnp.int32(step)

    scanned = jax.jit(training.scan_steps(training.make_batch_step(model, optimizer, "manual"), 3))
    (scan_params, _, _, scan_step), (loss_sum, correct_sum) = scanned(carry_at(2), data, batches)
    single = jax.jit(training.make_train_step(model, optimizer, "manual"))
    expected = []
    for start in (2, 0):
        carry, losses, corrects = carry_at(start), [], []
        for _ in range(3):
            carry, (loss, correct) = single(carry, data, batches)
            losses.append(float(loss))
            corrects.append(int(correct))
        expected.append((carry, sum(losses), sum(corrects)))
    (step_params, _, _, step_count), step_loss_sum, step_correct_sum = expected[0]
    assert int(scan_step) == int(step_count) == 5 and loss_sum.shape == correct_sum.shape == ()
    np.testing.assert_allclose(float(loss_sum), step_loss_sum, rtol=1e-5)
    assert int(correct_sum) == step_correct_sum
    for a, b in zip(jax.tree.leaves(scan_params), jax.tree.leaves(step_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert abs(float(loss_sum) - expected[1][1]) > 1e-3 * step_loss_sum
    with pytest.raises(ValueError, match=r"length=7 steps, but batches has 6 rows"):
        jax.jit(training.scan_steps(training.make_batch_step(model, optimizer, "manual"), 7))(
            carry_at(0), data, batches)
    with pytest.raises(ValueError, match="length=0"):
        training.scan_steps(training.make_batch_step(model, optimizer, "manual"), 0)


def test_load_splits_holds_out_validation_and_limits_training():
    splits = training.load_splits(limit_train=1000, val=5000)
    assert splits.train_images.shape == (1000, 28, 28) and splits.eval_name == "val"
    assert splits.eval_images.shape == (5000, 28, 28) and splits.test_images.shape == (10000, 28, 28)
    full_train = load_mnist("train")[0]
    np.testing.assert_array_equal(splits.eval_images, full_train[-5000:])
    with pytest.raises(ValueError, match=r"val=60000 must be an int in \[0, 60000\)"):
        training.load_splits(val=60000)


def test_mlp_model_checks_its_sizes():
    with pytest.raises(ValueError, match="must start with 784"):
        training.mlp_model((100, 10))
    with pytest.raises(ValueError, match="activation"):
        training.mlp_model(activation="gelu")


def test_validation_hold_out_is_scored_each_epoch_and_the_test_set_at_the_end(tmp_path):
    model = training.mlp_model()
    splits = training.load_splits(limit_train=1024, val=1000)
    config = TrainConfig(epochs=2, batch_size=128, lr=3e-3, warmup_epochs=0.5,
                         model=model.describe, n_train=1024)
    results = run(model, splits, config, out_dir=str(tmp_path))
    assert [sorted(k for k in r if k.startswith("val_")) for r in results["history"]] == \
        [["val_accuracy", "val_loss"]] * 2
    assert all("test_accuracy" not in r for r in results["history"])
    assert 0.7 < results["test_accuracy"] < 1 and results["test_accuracy"] != results["history"][-1]["val_accuracy"]
    assert (tmp_path / training.CURVES_FILE).exists()


def test_data_parallel_cnn_run_resumes_exactly_and_is_deterministic(full_splits, small_splits, tmp_path):
    """The CNN split across two devices: an interrupted, resumed run equals an uninterrupted one."""
    model = training.cnn_model(channels=(8, 16), hidden=32)
    splits = small_splits._replace(train_images=full_splits.train_images[:1024],
                                   train_labels=full_splits.train_labels[:1024])
    config = small_config(splits, model, epochs=2, batch_size=64, warmup_epochs=0.5, devices=2)
    whole = run(model, splits, config)
    assert whole["devices"] == 2
    partial = run(model, splits, config, out_dir=str(tmp_path), stop_after_epoch=1)
    assert metrics(partial) == metrics(whole)[:1]
    resumed = run(model, splits, config, out_dir=str(tmp_path), resume=True)
    assert metrics(resumed) == metrics(whole)
    assert whole["test_accuracy"] > 0.5
