"""Shared fixtures. x64 is process-wide in JAX, so float64 checks scope it with a fixture."""
import jax
import pytest


@pytest.fixture
def x64():
    """Runs the test with float64 enabled, restoring float32 afterwards."""
    with jax.enable_x64(True):
        yield
