"""The package as a learner meets it: `import nnjax` reaches every submodule, and `help()` on
a package lists its functions."""
import pydoc
import subprocess
import sys

import pytest

import nnjax


def test_import_nnjax_reaches_each_submodule_on_first_use():
    code = "import nnjax; print(nnjax.layers.dense.__module__, nnjax.training.TrainConfig.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["nnjax.layers.dense", "TrainConfig"]
    with pytest.raises(AttributeError, match="module 'nnjax' has no attribute 'layer'"):
        nnjax.layer


@pytest.mark.parametrize("package, function", [("layers", "conv2d"), ("backprop", "cnn_grads"),
                                               ("network", "trace_backward"), ("viz", "plot_activations"),
                                               ("training", "train")])
def test_help_on_a_package_lists_its_functions(package, function):
    module = getattr(nnjax, package)
    text = pydoc.render_doc(module, renderer=pydoc.plaintext)
    assert "FUNCTIONS" in text and f"    {function}(" in text, package
    assert all(hasattr(module, name) for name in module.__all__)
