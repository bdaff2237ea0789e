"""Shared test setup: one thread (stable numerics and timings on shared 2-core hosts), and the
``eager_backend`` fixture for files whose subject is numerics, not compilation."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def eager_backend():
    """Run every kernel whose transform names no backend on the eager oracle, then restore."""
    import optcompile

    previous = optcompile.default_backend()
    optcompile.set_default_backend("eager")
    yield
    optcompile.set_default_backend(previous)
