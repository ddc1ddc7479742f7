"""nnjax.viz: every figure renders headless to a PNG of the documented size, with the right numbers."""
import importlib.util
import os
import struct
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nnjax import data  # noqa: E402
from nnjax.layers import perceptron_fit  # noqa: E402
from nnjax.network import trace_backward, trace_forward  # noqa: E402
from nnjax import viz  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGIT = np.zeros((28, 28), np.float32)
DIGIT[6:22, 12:16] = 1.0  # a synthetic "1", so the kernel figure needs no MNIST files


def _forward_texts():
    trace = trace_forward(viz.example_params([2, 3, 2]), jnp.array([1.0, 0.5]))
    return [str(trace)] + [f"ŷ = {a:.2f}" for a in np.asarray(trace.y_hat)]


def _backward_texts():
    trace = trace_backward(viz.example_params([2, 3, 1]), jnp.array([1.0, 0.5]), jnp.array([1.0]), loss="mse")
    dW1 = np.asarray(trace.layer(1).dW)
    return [str(trace), f"$∂L/∂W^{{[1]}}_{{12}}$ = {dW1[0, 1]:.2f}",
            *(f"δ = {d:.2f}".replace("-0.00", "0.00") for d in np.asarray(trace.layer(1).delta))]


# name: (figure function, keyword arguments, documented (width, height) in pixels, texts it must show)
CASES = {
    "perceptron": (viz.plot_perceptron, {"epochs": 5}, (1200, 620), lambda: ["XOR (not linearly separable)"]),
    "perceptron_learning": (viz.plot_perceptron_learning, {"preset": "xor", "frames": 4, "epochs": 3},
                            (1200, 400), lambda: ["start: w = 0, b = 0"]),
    "activations": (viz.plot_activations, {}, (1200, 700), lambda: ["0.66", "0.24", "0.10"]),
    "architecture": (viz.plot_architecture, {}, (1200, 700), lambda: ["40 + 72 + 18 = 130"]),
    "forward_propagation": (viz.plot_forward_propagation, {}, (1200, 750), _forward_texts),
    "backpropagation": (viz.plot_backpropagation, {}, (1200, 750), _backward_texts),
    "convolution_steps": (viz.plot_convolution_steps, {"positions": ((0, 0), (4, 4))}, (1200, 770),
                          lambda: ["out[0, 0] = 4", "out[4, 4] = 4"]),
    "convolution_settings": (viz.plot_convolution_settings, {}, (1400, 750),
                             lambda: ["(7 - 3 + 0) // 2 + 1 = 3", "(7 - 3 + 2) // 2 + 1 = 4"]),
    "conv_kernels": (viz.plot_conv_kernels, {"image": DIGIT}, (1400, 650), lambda: ["sharpen kernel"]),
    "normalization": (viz.plot_normalization, {"batch": 16}, (1400, 800), lambda: ["mean +0.00, std 1.00"]),
    "tensor_shapes": (viz.plot_tensor_shapes, {}, (1400, 1500),
                      lambda: ["24 elements cannot fill 25", "explain(...) = (2, 3, 4, 4)"]),
}


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def texts(fig) -> str:
    """Every text drawn in a figure (titles, labels, annotations), joined by newlines."""
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


@pytest.mark.parametrize("name", list(CASES))
def test_figure_writes_png_of_expected_size(name, tmp_path):
    function, kwargs, (width, height), expected_texts = CASES[name]
    path = tmp_path / "sub" / f"{name}.png"
    fig = function(path=path, **kwargs)
    assert isinstance(fig, Figure)
    assert png_size(path) == (width, height)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05, "the image is blank"
    shown = texts(fig)
    for text in expected_texts():
        assert text in shown


def test_every_figure_has_a_case():
    covered = {CASES[name][0] for name in CASES}
    assert {getattr(f, "func", f) for f in viz.FIGURES.values()} <= covered


def test_forward_example_has_a_relu_off():
    trace = trace_forward(viz.example_params([2, 3, 2]), jnp.array([1.0, 0.5]))
    assert np.sum(np.asarray(trace.layer(1).a) == 0) == 1


def test_example_params_are_rounded():
    params = viz.example_params([2, 3, 2])
    for layer in params:
        for value in layer.values():
            np.testing.assert_allclose(value, np.round(np.asarray(value), 1), atol=1e-6)


def test_convolve_matches_loops():
    image, kernel = viz.EXAMPLE_INPUT, viz.KERNELS["edge"]
    expected = np.array([[np.sum(image[i:i + 3, j:j + 3] * kernel) for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(viz.convolve(image, "edge"), expected, atol=1e-5)
    assert viz.convolve(image, "edge", stride=2).shape == (3, 3)
    assert viz.convolve(image, "edge", padding="same").shape == (7, 7)
    assert viz.convolve(image, "blur", stride=2, padding="same").shape == (4, 4)


def test_conv_kernels_uses_mnist(monkeypatch):
    images = np.zeros((3, 28, 28), np.uint8)
    monkeypatch.setattr(data, "load_mnist", lambda split: (images, np.array([7, 2, 1])))
    fig = viz.plot_conv_kernels(index=1)
    assert "MNIST test digit 1 (label 2)" in texts(fig)


def test_conv_kernels_without_mnist_says_what_to_run(monkeypatch):
    def missing(split):
        raise FileNotFoundError("no file t10k-images-idx3-ubyte")

    monkeypatch.setattr(data, "load_mnist", missing)
    with pytest.raises(FileNotFoundError, match=r"python -m nnjax.data prepare.*image="):
        viz.plot_conv_kernels()


def test_perceptron_presets():
    X, y = viz.perceptron_dataset("separable")
    assert perceptron_fit(X, y, epochs=20)[1][-1] == 0
    X, y = viz.perceptron_dataset("xor")
    assert perceptron_fit(X, y, epochs=20)[1][-1] > 0
    with pytest.raises(ValueError, match="separable"):
        viz.perceptron_dataset("moons")


def test_convolution_steps_title_states_the_output_size_of_its_own_input():
    square = viz.plot_convolution_steps(image=np.arange(81.0).reshape(9, 9), positions=((0, 0),))
    assert "output size (9 - 3)/1 + 1 = 7" in square._suptitle.get_text()
    oblong = viz.plot_convolution_steps(image=np.ones((6, 8)), kernel=np.ones((2, 3)), positions=((0, 0),))
    assert "output size (6 - 2)/1 + 1 = 5 by (8 - 3)/1 + 1 = 6" in oblong._suptitle.get_text()


def test_tensor_shapes_broadcast_row_draws_what_its_arrow_says():
    from nnjax.viz import tensor_shapes

    (title, [(x, _), (y, _)], op, out, _), = [r for r in tensor_shapes._operations() if r[0].startswith("broadcast")]
    assert op == "x + y" and out.shape == (2, 3)
    np.testing.assert_array_equal(out, x + y)


@pytest.mark.parametrize("loss, outputs, box", [
    ("mse", 1, "δ = 2(ŷ - y)"),
    ("softmax_cross_entropy", 2, "ŷ = softmax(z)"),
    ("sigmoid_binary_cross_entropy", 1, "ŷ = σ(z)"),
])
def test_backpropagation_figure_has_the_chapters_loss_selector(loss, outputs, box):
    fig = viz.plot_backpropagation(loss=loss)
    y = jnp.eye(outputs)[0] if loss == "softmax_cross_entropy" else jnp.ones(outputs)
    trace = trace_backward(viz.example_params([2, 3, outputs]), jnp.array([1.0, 0.5]), y, loss=loss)
    drawn = texts(fig)
    assert box in drawn and str(trace) in drawn
    assert "L = " in drawn and f"= {trace.loss_value:.2f}" in drawn
    with pytest.raises(ValueError, match="plot_backpropagation: loss='hinge' is not allowed"):
        viz.plot_backpropagation(loss="hinge")


def test_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        viz.plot_architecture((4,))
    with pytest.raises(ValueError, match="activations"):
        viz.plot_architecture((4, 3, 2), activations=["relu"])
    with pytest.raises(ValueError, match="preset"):
        viz.plot_convolution_steps(kernel="emboss")
    with pytest.raises(ValueError, match="outside"):
        viz.plot_convolution_steps(positions=((5, 0),))
    with pytest.raises(ValueError, match="at most 10"):
        viz.plot_forward_propagation(viz.example_params([2, 11, 2]))
    with pytest.raises(ValueError, match="unknown figure"):
        viz.save_figures("/tmp", ["nope"])


def test_save_figures_and_script(tmp_path, capsys):
    paths = viz.save_figures(tmp_path / "a", ["architecture"])
    assert paths == [str(tmp_path / "a" / "architecture.png")] and png_size(paths[0]) == (1200, 700)
    spec = importlib.util.spec_from_file_location("figures_script", os.path.join(ROOT, "scripts", "figures.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path / "b"), "--only", "architecture"]) == 0
    assert png_size(tmp_path / "b" / "architecture.png") == (1200, 700)
    assert script.main(["--list"]) == 0
    assert capsys.readouterr().out.split()[-len(viz.FIGURES):] == list(viz.FIGURES)


def test_library_does_not_import_viz():
    code = ("import sys, nnjax.layers, nnjax.network, nnjax.backprop, nnjax.tensor; "
            "sys.exit(1 if any(m.startswith(('nnjax.viz', 'matplotlib')) for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
