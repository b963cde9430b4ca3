"""Fixtures shared by the registry's unit tests."""
import pytest

from serving.registry.store import RegistryStore


@pytest.fixture
def store(tmp_path):
    """A registry in a fresh SQLite file."""
    s = RegistryStore.open(f"sqlite:///{tmp_path}/r.db")
    yield s
    s.close()
