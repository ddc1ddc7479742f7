"""Figures of the chapter's eight diagrams, drawn with matplotlib (the optional extra ``viz``).

The library never imports this package. Every figure function returns a
`matplotlib.figure.Figure` and saves it as a PNG when given ``path=``; `FIGURES` names them
all and `save_figures(folder)` renders them (what ``scripts/figures.py`` runs).

1. Perceptron: `plot_perceptron`, `plot_perceptron_learning`.
2. Activation functions: `plot_activations`.
3. Network architecture: `plot_architecture` (and `nnjax.network.summary` for the table).
4. Forward propagation: `plot_forward_propagation` (values from `nnjax.network.trace_forward`).
5. Backpropagation: `plot_backpropagation` (values from `nnjax.network.trace_backward`).
6. Convolution: `plot_convolution_steps`, `plot_convolution_settings`, `plot_conv_kernels`.
7. Batch vs layer normalization: `plot_normalization`.
8. Tensor shapes: `plot_tensor_shapes`.
"""
try:
    import matplotlib  # noqa: F401
except ImportError as error:
    raise ImportError("nnjax.viz needs matplotlib; install it with: pip install 'nnjax[viz]'") from error

from nnjax.viz.activations import *  # noqa: F401,F403,E402
from nnjax.viz.architecture import *  # noqa: F401,F403,E402
from nnjax.viz.convolution import *  # noqa: F401,F403,E402
from nnjax.viz.gallery import *  # noqa: F401,F403,E402
from nnjax.viz.normalization import *  # noqa: F401,F403,E402
from nnjax.viz.perceptron import *  # noqa: F401,F403,E402
from nnjax.viz.propagation import *  # noqa: F401,F403,E402
from nnjax.viz.tensor_shapes import *  # noqa: F401,F403,E402
import importlib  # noqa: E402

_PARTS = ("activations", "architecture", "convolution", "gallery", "normalization", "perceptron", "propagation",
          "tensor_shapes")
__all__ = [name for part in _PARTS for name in importlib.import_module(f"{__name__}.{part}").__all__]
