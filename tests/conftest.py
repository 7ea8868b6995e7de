"""Shared pytest configuration: the `slow` marker and a single-thread fixture."""
import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes more than ~2 s on a 2-core CPU; runs by default, deselect with -m 'not slow'"
    )


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module's tests, restored afterwards.

    Small-batch CPU passes gain little from a second thread, and on a shared 2-core machine
    OpenMP threads spinning against other processes made them up to 15x slower (measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
