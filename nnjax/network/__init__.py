"""Networks built from layers: the MLP and the CNN, their summaries and step-by-step traces."""
from nnjax.network.mlp import *  # noqa: F401,F403
from nnjax.network.cnn import *  # noqa: F401,F403
from nnjax.network.summary import *  # noqa: F401,F403
from nnjax.network.trace import *  # noqa: F401,F403
import importlib

_PARTS = ("mlp", "cnn", "summary", "trace")
__all__ = [name for part in _PARTS for name in importlib.import_module(f"{__name__}.{part}").__all__]
