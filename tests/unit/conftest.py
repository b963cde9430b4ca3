"""Fixtures shared by the registry's unit tests."""
import pytest

from serving.registry.controller import ModelController
from serving.registry.store import RegistryStore
from tests.registry_fakes import FAST, FakeServeOps


@pytest.fixture
def store(tmp_path):
    """A registry in a fresh SQLite file."""
    s = RegistryStore.open(f"sqlite:///{tmp_path}/r.db")
    yield s
    s.close()


@pytest.fixture
def ops():
    """An in-memory Ray Serve."""
    return FakeServeOps()


@pytest.fixture
def controller(store, ops):
    """The registry controller over `ops`, with short timeouts."""
    return ModelController(store, ops, FAST)
