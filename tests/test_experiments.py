"""Tests of the experiments' command lines: short runs with accuracy floors, a killed run that
resumes exactly, outputs, --help and bad flags. MNIST runs need `python -m nnjax.data prepare`."""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nnjax import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
sys.path.insert(0, EXPERIMENTS)

mnist_mlp = importlib.import_module("mnist_mlp")
mnist_cnn = importlib.import_module("mnist_cnn")
xor = importlib.import_module("xor")
gradient_flow = importlib.import_module("gradient_flow")
_common = importlib.import_module("_common")

METRICS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


def history_metrics(results):
    return [{k: r[k] for k in METRICS} for r in results["history"]]


@pytest.mark.parametrize("module, flags", [
    (mnist_mlp, ["--epochs", "--batch-size", "--lr", "--seed", "--out", "--grads", "--resume",
                 "--limit-train", "--epoch-mode", "--val", "--hidden"]),
    (mnist_cnn, ["--epochs", "--batch-size", "--lr", "--seed", "--out", "--grads", "--resume",
                 "--limit-train", "--epoch-mode", "--val", "--channels"]),
    (xor, ["--epochs", "--steps", "--lr", "--seed", "--grads", "--out"]),
    (gradient_flow, ["--min-depth", "--max-depth", "--width", "--seed", "--grads", "--out"]),
])
def test_help_lists_the_flags(module, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    for flag in flags:
        assert flag in text, flag


def test_mlp_one_epoch_with_the_default_recipe_reaches_95_percent(tmp_path, capsys):
    results = mnist_mlp.main(["--epochs", "1", "--warmup-epochs", "0.2", "--out", str(tmp_path),
                              "--no-progress"])
    assert results["test_accuracy"] >= 0.95
    assert results["config"]["n_train"] == 60000 and results["epoch_mode"] == "scan"
    assert f"test accuracy: {100 * results['test_accuracy']:.2f}%" in capsys.readouterr().out
    for name in ("results.json", "metrics.jsonl", "curves.png", "checkpoint.npz"):
        assert (tmp_path / name).exists(), name


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, capsys):
    flags = ["--limit-train", "1024", "--epochs", "12", "--seed", "3", "--no-progress"]
    whole = mnist_mlp.main(flags + ["--out", str(tmp_path / "whole")])

    out = tmp_path / "killed"
    checkpoint, results = out / "checkpoint.npz", out / "results.json"
    command = [sys.executable, os.path.join(EXPERIMENTS, "mnist_mlp.py"), *flags, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # the resumed process loads what the killed one compiled
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, output
    assert checkpoint.exists() and not results.exists(), output

    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint of epoch" in resumed.stdout
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "curves.png", "metrics.jsonl", "results.json"]
    with open(results) as f:
        final = json.load(f)
    assert history_metrics(final) == history_metrics(whole)
    assert final["test_accuracy"] == whole["test_accuracy"]
    assert f"test accuracy: {100 * whole['test_accuracy']:.2f}%" in resumed.stdout


def test_stop_after_epoch_then_resume_through_the_command_line(tmp_path, capsys):
    flags = ["--limit-train", "1024", "--epochs", "3", "--no-progress", "--out", str(tmp_path)]
    stopped = mnist_mlp.main(flags + ["--stop-after-epoch", "1"])
    assert stopped["stopped_after_epoch"] == 1 and not (tmp_path / "results.json").exists()
    assert "continue with --resume" in capsys.readouterr().out
    resumed = mnist_mlp.main(flags + ["--resume"])
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    with pytest.raises(SystemExit) as exit_info:
        mnist_mlp.main(flags + ["--resume", "--lr", "0.01"])
    assert exit_info.value.code == 1
    assert "differs in ['lr']" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["--lr", "-1"], "--lr: expected a number > 0, got -1.0"),
    (["--grads", "numeric"], "--grads: invalid choice: 'numeric'"),
    (["--epoch-mode", "fast"], "--epoch-mode: invalid choice: 'fast'"),
    (["--hidden", "128,x"], "--hidden: expected comma-separated widths"),
    (["--limit-train", "100"], "batch_size=128 is larger than the 100 training examples"),
    (["--epochs", "1", "--warmup-epochs", "1"], "warmup_epochs=1.0 must be in [0, epochs=1)"),
    (["--val", "60000"], "val=60000 must be an int in [0, 60000)"),
    (["--devices", "999"], "train: devices=999 but the cpu backend has"),
    (["--compile-cache", __file__], "--compile-cache: use_compile_cache: " + __file__ + " exists and is not a folder"),
    (["--devices", "2", "--batch-size", "65"], "train: devices=2 must divide batch_size=65"),
])
def test_bad_flags_end_with_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist_mlp.main(argv + ["--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_default_warm_up_fits_a_short_run():
    """The MLP's default warm-up (1 epoch) is capped at half the run, so --epochs 1 works."""
    parser = _common.build_parser("mnist_mlp", "", mnist_mlp.DEFAULTS)
    short = _common.config_from_args(parser.parse_args(["--epochs", "1"]), training.mlp_model(), 60000)
    default = _common.config_from_args(parser.parse_args([]), training.mlp_model(), 60000)
    assert (short.warmup_epochs, default.warmup_epochs) == (0.5, mnist_mlp.DEFAULTS["warmup_epochs"])


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist_cnn.main(["--resume", "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_cnn_flags_are_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist_cnn.main(["--channels", "32,0"])
    assert exit_info.value.code == 2
    assert "--channels: expected one or more positive channel counts" in capsys.readouterr().err


@pytest.mark.parametrize("grads", ["autodiff", "manual"])
def test_xor_perceptron_never_fits_and_the_mlp_does(grads, tmp_path, capsys):
    results = xor.main(["--out", str(tmp_path), "--grads", grads, "--epochs", "50"])
    assert min(results["perceptron_mistakes_per_epoch"]) > 0
    assert results["perceptron_correct"] < 4
    assert results["mlp_correct"] == 4
    outputs = np.array(results["mlp_outputs"])
    np.testing.assert_allclose(outputs, xor.XOR_TARGETS, atol=0.2)
    text = capsys.readouterr().out
    assert "never 0" in text and "classifies 4/4" in text
    with open(tmp_path / "xor_boundary.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_xor_final_loss_is_that_of_the_returned_mlp():
    """One step: the loss before it and the loss of the parameters returned (not before the
    last update)."""
    params, losses = xor.fit_mlp(jax.random.key(0), 4, 1, 0.05, "autodiff")
    assert losses.shape == (2,) and losses[1] < losses[0]
    outputs = xor.mlp_outputs(params, xor.XOR_INPUTS)
    np.testing.assert_allclose(losses[-1], np.mean((outputs - xor.XOR_TARGETS) ** 2), rtol=1e-5)


def test_gradient_flow_shows_vanishing_and_exploding_gradients(tmp_path, capsys):
    argv = ["--max-depth", "4", "--width", "32", "--out", str(tmp_path)]
    results = gradient_flow.main(argv)
    norms = {key: {int(d): np.array(n) for d, n in by_depth.items()}
             for key, by_depth in results["norms"].items()}
    assert set(norms) == {f"{a}|{i}" for a in gradient_flow.ACTIVATIONS for i in gradient_flow.INITS}
    assert all(len(norms[key][d]) == d for key in norms for d in range(2, 5))
    first_layer = lambda key: np.array([norms[key][d][0] for d in range(2, 5)])
    # sigmoid: sigma' <= 1/4 shrinks the gradient at every layer, even with Xavier
    assert np.all(np.diff(np.log10(first_layer("sigmoid|Xavier/He"))) < -0.3)
    # tiny weights make every gradient vanish; large ones make ReLU's explode
    assert np.all(np.diff(np.log10(first_layer("relu|N(0,0.01^2)"))) < -1)
    assert np.all(np.diff(np.log10(first_layer("relu|N(0,1)"))) > 0.5)
    # He keeps ReLU's gradient the same order of magnitude at every depth
    assert np.ptp(np.log10(first_layer("relu|Xavier/He"))) < 1
    text = capsys.readouterr().out
    assert "sigmoid    Xavier/He" in text and "L=4" in text
    assert (tmp_path / "gradient_flow.png").exists()

    manual = gradient_flow.main(argv[:1] + ["3"] + argv[2:] + ["--grads", "manual"])
    for key, by_depth in manual["norms"].items():
        assert list(by_depth) == ["2", "3"]
        for d, n in by_depth.items():
            np.testing.assert_allclose(n, results["norms"][key][d], rtol=1e-8)


def test_compile_cache_is_written_then_read_with_the_same_result(tmp_path):
    """The CNN experiment with --compile-cache: the first run writes its compiled programs
    there, a second run (loading them) reproduces the first's numbers exactly."""
    cache = tmp_path / "xla"
    command = [sys.executable, os.path.join(EXPERIMENTS, "mnist_cnn.py"), "--limit-train", "256",
               "--epochs", "1", "--batch-size", "64", "--eval-batch-size", "500", "--no-progress",
               "--compile-cache", str(cache)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for run in ("first", "second"):
        done = subprocess.run(command + ["--out", str(tmp_path / run)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        if run == "first":
            assert any(cache.iterdir()), "nothing was written to the compile cache"
        with open(tmp_path / run / "results.json") as f:
            results.append(json.load(f))
    assert history_metrics(results[0]) == history_metrics(results[1])
