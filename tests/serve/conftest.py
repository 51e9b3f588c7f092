import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every module here runs tiny torch matmuls: one thread (tests/conftest.py says why)."""
