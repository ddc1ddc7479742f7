"""Training on MNIST: optax on nnjax params, a compiled epoch, evaluation, checkpoints, results.

The pieces, in the order a run uses them, one module each:

1. `models`: a `Model` says how to initialize a network, apply it to a batch and (optionally)
   take its hand-derived gradients; `mlp_model` and `cnn_model` build the chapter's two
   networks. `load_splits` reads MNIST (`nnjax.data.load_mnist`).
2. `config`: a `TrainConfig` holds every setting that determines a run's numbers;
   `make_optimizer` builds its optax optimizer and schedule.
3. `machine`: the host before JAX starts (`use_host_cores`, `reuse_freed_memory`,
   `use_compile_cache`) and the XLA options every program compiles with (`compile_ahead`,
   `compiler_options`), so the reported training time excludes compilation.
4. `parallel`: data parallelism over the host's cores. Where it measured faster
   (`DATA_PARALLEL_DEFAULTS`), each batch is split across the backend's devices with
   `jax.shard_map`. Every device runs the same per-example network under `jax.vmap` on its
   share; batch norm averages across both the vmapped axis and the device axis, so the
   statistics are the whole batch's, and the gradients are averaged across devices
   (`jax.lax.pmean`): the same step as on one device, up to the order of float additions. On
   a CPU, XLA presents the cores as devices only when asked before JAX starts:
   `use_host_cores()` does that, and the experiments call it first thing.
5. `steps`: `train` puts the whole training set on the device as uint8; each epoch draws its
   batches from a permutation of example indices (`epoch_batches`), so no step moves images
   from the host. A training step is one jitted function of `(params, opt_state,
   model_state, step)` that donates those buffers. An epoch runs either as one compiled
   `lax.scan` over the step or as a Python loop calling the jitted step; which one is faster
   depends on the model and the backend, so `EPOCH_MODE_DEFAULTS` records what was measured
   (``--epoch-mode auto``).
6. `evaluation`: after each epoch, the network scored in jitted calls over large batches.
7. `files`: a checkpoint written atomically after each epoch, a line of JSON metrics; at the
   end, `results.json` and a PNG of the curves.
8. `run`: `train`, which puts the pieces together and resumes from a checkpoint.

Randomness: the seed gives one key; its first half initializes the network and the second
is the shuffle key, from which epoch `e`'s permutation uses `fold_in(shuffle_key, e)`. So a
run resumed from the checkpoint of epoch `e` draws exactly the batches an uninterrupted run
draws, and on the same device reaches exactly the same metrics.

Every public name is here (``from nnjax.training import train``); the modules hold them.
"""
from nnjax.training.models import *  # noqa: F401,F403
from nnjax.training.config import *  # noqa: F401,F403
from nnjax.training.machine import *  # noqa: F401,F403
from nnjax.training.parallel import *  # noqa: F401,F403
from nnjax.training.steps import *  # noqa: F401,F403
from nnjax.training.evaluation import *  # noqa: F401,F403
from nnjax.training.files import *  # noqa: F401,F403
from nnjax.training.run import *  # noqa: F401,F403
import importlib

_PARTS = ("models", "config", "machine", "parallel", "steps", "evaluation", "files", "run")
__all__ = [name for part in _PARTS for name in importlib.import_module(f"{__name__}.{part}").__all__]
