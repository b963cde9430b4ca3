"""Fixtures shared by the e2e modules (each module defines its own `server`)."""
import httpx
import pytest


@pytest.fixture
def admin(server):
    """An HTTP client for the module's server's /admin (writes need the JSON content type, a body or not)."""
    with httpx.Client(base_url=server.base_url + "/admin", timeout=60,
                      headers={"content-type": "application/json"}) as client:
        yield client
