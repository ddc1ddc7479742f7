"""Shared fixtures. x64 is process-wide in JAX, so float64 checks scope it with a fixture.

The CPU is presented to XLA as two devices (before JAX starts), so data-parallel training
(`nnjax.training`, ``devices=2``) runs in the tests as it does in the experiments; code that
does not ask for several devices runs on the first, as before. The experiments run here (in
this process and in child processes) keep no compile cache unless a test gives them one.
"""
import os

from nnjax.training import COMPILE_CACHE_ENV, reuse_freed_memory, use_host_cores

use_host_cores(2)
reuse_freed_memory()
os.environ[COMPILE_CACHE_ENV] = "off"

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs the test with float64 enabled, restoring float32 afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def killed_write():
    """``killed_write(path, data)`` leaves what a program killed inside `nnjax.atomic.write_atomically`
    leaves: a child process writes `data` to the temporary file and dies before the rename.
    Returns the temporary files it left beside `path`."""
    import subprocess
    import sys
    from pathlib import Path

    def kill_while_writing(path, data: bytes = b"partial"):
        path = Path(path)
        before = set(path.parent.iterdir()) if path.parent.exists() else set()
        code = ("import os, sys; from nnjax.atomic import write_atomically; "
                "write_atomically(sys.argv[1], lambda f: (f.write(sys.argv[2].encode()), f.flush(), os._exit(9)))")
        result = subprocess.run([sys.executable, "-c", code, str(path), data.decode()], timeout=120)
        assert result.returncode == 9
        return sorted(set(path.parent.iterdir()) - before)
    return kill_while_writing
