"""The machine a run uses: the CPU's cores as devices, malloc that keeps freed memory, the
compile cache, the XLA options nnjax compiles with, and the device's name for the results.

`use_host_cores`, `reuse_freed_memory` and `use_compile_cache` act once per process: call them
first thing, before JAX starts (the experiments and benchmarks do)."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nnjax._checks import check_positive_int

__all__ = [
    "use_host_cores", "reuse_freed_memory", "REUSE_MEMORY_ENV", "use_compile_cache",
    "COMPILE_CACHE_ENV", "compiler_options", "CPU_COMPILER_OPTIONS",
    "CPU_COMPILER_OPTIONS_BY_MODEL", "compile_ahead",
]


def use_host_cores(count: int | None = None) -> None:
    """Asks XLA to present the CPU as `count` devices (default: one per core).

    Data-parallel training (`resolve_devices`) needs several devices; on a CPU, XLA makes
    them from the host's cores only when ``--xla_force_host_platform_device_count`` is in
    ``XLA_FLAGS`` before JAX starts its backends, i.e. before the first computation. Call
    this first thing in a program (the experiments and benchmarks do). A count already in
    ``XLA_FLAGS`` wins; called too late, it changes nothing and training uses one device.
    Other backends (GPU) are not affected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        count = (os.cpu_count() or 1) if count is None else check_positive_int("use_host_cores", "count", count)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


_MALLOC_SETTINGS = (("M_ARENA_MAX", -8, "MALLOC_ARENA_MAX", 1),
                    ("M_MMAP_THRESHOLD", -3, "MALLOC_MMAP_THRESHOLD_", 1 << 30),
                    ("M_TRIM_THRESHOLD", -1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1))
"""What `reuse_freed_memory` sets: (glibc `mallopt` parameter, its number in malloc.h, the
environment variable glibc reads at start, value)."""

REUSE_MEMORY_ENV = {variable: str(value) for _, _, variable, value in _MALLOC_SETTINGS}
"""The same settings as environment variables, for a child process (glibc reads them at start)."""


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    XLA's CPU runtime allocates each step's buffers afresh. With glibc's defaults, blocks over
    32 MB, and the large blocks of every thread but the main one (their arenas are capped at
    64 MB), are mapped from the OS and unmapped when freed, so every step first-touches new
    pages: a page fault per 4 KB. Measured on a 2-core CPU (jax 0.10.2): an element-wise op
    writing a fresh 44 MB buffer took 24 ms, 4 ms with this; the CNN's training step at batch
    128 split across two devices took 77-85 ms, 51-58 ms with this (alternating runs). Sets
    one arena for all threads (`M_ARENA_MAX`), maps nothing under 1 GB (`M_MMAP_THRESHOLD`)
    and trims nothing under 2 GB (`M_TRIM_THRESHOLD`); the process keeps its peak memory.

    Call it first thing in a program, before JAX starts its threads (the experiments and
    benchmarks do); `REUSE_MEMORY_ENV` does the same for a child process.

    Returns:
      True if glibc took the settings; False where there is no glibc (macOS, Windows, musl),
      and nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(number, value) == 1 for _, number, _, value in _MALLOC_SETTINGS)


COMPILE_CACHE_ENV = "NNJAX_COMPILE_CACHE"
"""The environment variable naming the compile cache's folder (or "off"), `use_compile_cache`."""
COMPILE_CACHE_MIN_SECONDS = 0.5
"""Programs that compile faster than this are not worth a file."""


def use_compile_cache(folder: str | None = None) -> str | None:
    """Keeps compiled XLA programs on disk, so a later run of the same program loads it.

    JAX's persistent compilation cache: every program that took over
    `COMPILE_CACHE_MIN_SECONDS` to compile is written to `folder`, keyed by the program, the
    JAX and XLA versions and flags, and the device; a later process compiling the same one
    reads it back (the CNN's train step: seconds to compile, a fraction of one to load). Call
    it first thing, like `use_host_cores`: JAX decides once per process, at its first
    compilation, whether to use the cache.

    Args:
      folder: where; None means ``$NNJAX_COMPILE_CACHE``, else JAX's own setting
        (``$JAX_COMPILATION_CACHE_DIR``), else ``~/.cache/nnjax/xla``; "off" (as the argument
        or the variable) leaves the cache as JAX has it (off unless JAX's variable is set).

    Returns:
      The folder in use, or None when off.

    Raises:
      ValueError: `folder` exists and is not a directory.
    """
    folder = (folder or os.environ.get(COMPILE_CACHE_ENV) or jax.config.jax_compilation_cache_dir
              or str(Path.home() / ".cache" / "nnjax" / "xla"))
    if folder == "off":
        return None
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"use_compile_cache: {folder} exists and is not a folder; give a folder for "
                         f"the compiled programs (or 'off')")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILE_CACHE_MIN_SECONDS)
    return folder


CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
"""The XLA options nnjax compiles its programs with on a CPU (`compiler_options`).

- ``xla_cpu_use_fusion_emitters: False``: XLA's CPU backend has two code generators for fused
  element-wise work; the older one (the "elemental" emitters) compiled the CNN's train step in
  1.7-2.1 s instead of 3.0-3.7 s at batch 128 (3.0 against 3.4-4.0 s at batch 1024), with
  steps as fast or faster (at batch 128, 48-62 against 60-75 ms per step in the same runs;
  the MLP's the same within noise).
- ``xla_backend_optimization_level: 1`` (LLVM's -O1 instead of -O2 for the code XLA generates;
  the matrix products are precompiled library kernels either way): the CNN's step at batch
  1024 on 2 devices compiled in 0.98-1.24 s against 1.33-1.59 s, with steps the same within
  noise (A/B in one process, 12 rounds: CNN batch 128 median 46.0 against 45.1 ms, MLP scan
  epoch 0.86 against 0.91 ms per step). Results differ from -O2's in the last bits of float32
  (1.2e-7 after 3 CNN steps), a run repeats exactly. At level 0 the compile took 0.4 s but the
  step ran 3 times slower.

Measured with jax 0.10.2 on the 2-core CPU of docs/benchmarks.md. The MLP compiles with
`CPU_COMPILER_OPTIONS_BY_MODEL` instead.

The elemental emitters also keep the CNN's gradients right: with XLA's default (MLIR) fusion
emitters, jaxlib 0.10.2 miscompiles the gradient of a 2x2 max pool (the maximum of strided
slices) over ReLU(gamma * z + beta) with 12 or more channels (float32 and float64; correct
op by op, with these options, or at LLVM -O0). docs/benchmarks.md has the reproducer, and
`compare_gradient_sources` compiles with these options too."""

CPU_COMPILER_OPTIONS_BY_MODEL = {"mlp": {"xla_backend_optimization_level": 1}}
"""Model kinds whose CPU programs compile with other options than `CPU_COMPILER_OPTIONS`.

The MLP keeps XLA's default (MLIR) emitters: on the second CPU (a Xeon with AVX-512, jax
0.10.2) the elemental emitters made its step 6-7% slower at batch 128 (scan epoch, median of
20 interleaved rounds, two processes: 0.580 and 0.584 against 0.544 and 0.546 ms per step;
the profile puts it in the 128x784 weight update, 0.08 against 0.05 ms) and saved only
0.13 s of its 0.5 s compile; level at batch 1024 (3.19 against 3.11 ms). The CNN keeps both
options: there they halve the compile (0.83 against 1.61 s at batch 128, same machine) with
the step level (32.6 against 33.3 ms)."""


def compiler_options(backend: str | None = None, model_kind: str | None = None) -> dict:
    """The options nnjax passes to ``.compile()`` for its programs on `backend`.

    On a CPU whose XLA knows them: `CPU_COMPILER_OPTIONS_BY_MODEL[model_kind]` where there is
    one, else `CPU_COMPILER_OPTIONS`; nothing elsewhere. `compile_ahead` passes them; so does
    ``jax.jit(step).lower(...).compile(compiler_options(model_kind="cnn"))``.

    Args:
      backend: "cpu", "gpu", ...; None means JAX's default backend.
      model_kind: the `Model.kind` the program trains or evaluates, or None.

    Returns:
      A new dict of XLA option names to values (empty where there are none to set).
    """
    backend = backend or jax.default_backend()
    options = CPU_COMPILER_OPTIONS_BY_MODEL.get(model_kind, CPU_COMPILER_OPTIONS)
    return dict(options) if backend == "cpu" and _cpu_options_known(tuple(sorted(options.items()))) else {}


@functools.cache
def _cpu_options_known(options: tuple) -> bool:
    """Whether this jaxlib's XLA accepts the (name, value) `options` (it rejects unknown names)."""
    probe = jax.device_put(np.float32(0), jax.devices("cpu")[0])
    try:
        jax.jit(jnp.negative).lower(probe).compile(dict(options))
    except jax.errors.JaxRuntimeError:
        return False
    return True


def compile_ahead(fn: Callable, *args, donate: bool = False, model_kind: str | None = None):
    """`fn` jitted and compiled ahead of time for `args`, with nnjax's `compiler_options()`.

    Args:
      fn: a pure function of `args`.
      args: example arguments (arrays or pytrees of them) fixing shapes, dtypes and shardings.
      donate: donate the first argument's buffers (a train step's carry).
      model_kind: the `Model.kind` of the program, for `compiler_options`.

    Returns:
      The compiled function, called with arguments like `args`.
    """
    jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
    return jitted.lower(*args).compile(compiler_options(model_kind=model_kind))


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def _device_name() -> str:
    """E.g. ``cpu: AMD EPYC (2 cores)`` or ``gpu: NVIDIA H100 80GB HBM3 (16 CPU cores)``."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu: {_cpu_model()} ({os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind} ({os.cpu_count()} CPU cores)"
