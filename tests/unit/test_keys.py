"""API keys: stored as hashes only, revoked for good, reloaded by generation; the YAML's keys (plain or hashed);
the safe default for non-loopback hosts; check-config never prints a key."""
import argparse
import asyncio
import json
import sqlite3
import time

import pytest

from serving.cli import exposure_problem, main
from serving.config import ServerConfig
from serving.errors import NotFoundError
from serving.keys.records import KeyLimits, config_records, hash_key
from serving.keys.ring import KeyRing
from serving.keys.store import KeyStore
from serving.registry.store import RegistryStore
from tests.fixtures.clock import until


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "registry.db"
    store = RegistryStore.open(f"sqlite:///{path}")
    yield path, KeyStore(store.engine)
    store.close()


def test_a_key_is_stored_as_its_hash_only(db):
    path, keys = db
    record, secret = keys.create("ci", ("inference",), ("m",), KeyLimits(requests_per_minute=5), actor="alice")
    assert secret.startswith("sk-os-") and len(secret) > 40
    assert record.key_hash == hash_key(secret) and record.models == ("m",) and record.created_by == "alice"
    with sqlite3.connect(path) as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump and secret[6:] not in dump
    assert keys.get(record.id) == record


def test_revoking_keeps_the_record_and_bumps_the_generation(db):
    _, keys = db
    record, _ = keys.create("x", ("inference",), None, KeyLimits(), actor="a")
    before = keys.generation()
    revoked = keys.revoke(record.id)
    assert revoked.revoked_at is not None and keys.generation() == before + 1
    assert keys.revoke(record.id).revoked_at == revoked.revoked_at  # the first time stays
    assert [r.id for r in keys.list()] == [record.id] and keys.list(include_revoked=False) == []
    with pytest.raises(NotFoundError):
        keys.revoke("key_nope")


async def test_the_ring_follows_the_registry_and_keeps_the_yaml_keys(db):
    _, keys = db
    ring = KeyRing(config_records(["plain-key-1", hash_key("hashed-key-2")], ["admin-key-3"]), keys)
    assert ring.authenticate("plain-key-1").id == "config:api_keys[0]"
    assert ring.authenticate("hashed-key-2").id == "config:api_keys[1]"
    assert ring.authenticate("admin-key-3").scopes == ("admin",)
    assert ring.authenticate(hash_key("plain-key-1")) is None  # a hash is not a key
    record, secret = keys.create("bot", ("inference",), None, KeyLimits(), actor="a")
    assert ring.authenticate(secret) is None
    await ring.refresh()
    assert ring.authenticate(secret) == record
    keys.revoke(record.id)
    await ring.refresh()
    assert ring.authenticate(secret) is None and ring.authenticate("plain-key-1") is not None


async def test_a_key_revoked_elsewhere_is_refused_here_within_a_second(db):
    """Another ingress (or another process) revokes through the registry: this ring's poll drops the key."""
    _, keys = db
    ring = KeyRing([], keys, refresh_s=0.5)
    record, secret = keys.create("bot", ("inference",), None, KeyLimits(), actor="a")
    polling = asyncio.create_task(ring.run())
    try:
        await until(lambda: ring.authenticate(secret) is not None, timeout_s=5)
        keys.revoke(record.id)
        revoked_at = time.monotonic()
        await until(lambda: ring.authenticate(secret) is None, timeout_s=5)
        assert time.monotonic() - revoked_at < 1.0
    finally:
        polling.cancel()


def test_the_ring_says_when_keys_are_required():
    assert not KeyRing([]).inference_required and not KeyRing([]).admin_required
    admin_only = KeyRing(config_records([], ["admin-key"]))
    assert admin_only.admin_required and not admin_only.inference_required


@pytest.mark.parametrize("host, keys, registry_key, allowed, refused", [
    ("127.0.0.1", [], False, False, False),
    ("localhost", [], False, False, False),
    ("::1", [], False, False, False),
    ("0.0.0.0", [], False, False, True),
    ("192.168.1.5", [], False, False, True),
    ("my-host", [], False, False, True),
    ("0.0.0.0", ["k"], False, False, False),
    ("0.0.0.0", [], True, False, False),
    ("0.0.0.0", [], False, True, False),
])
def test_a_non_loopback_host_needs_a_key_or_the_explicit_flag(host, keys, registry_key, allowed, refused):
    problem = exposure_problem(ServerConfig(host=host, api_keys=keys), registry_key, allowed)
    assert (problem is not None) == refused
    if refused:
        assert "--allow-unauthenticated" in problem


def test_up_refuses_an_open_non_loopback_server_before_starting_anything(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("server: {host: 0.0.0.0}\n")
    assert main(["up", "--config", str(config), "--data-dir", str(tmp_path / "d")]) == 2
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err


def test_check_config_prints_keys_as_hashes(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("server: {api_keys: [sk-very-secret-1], admin_api_keys: [adm-very-secret-2]}\n")
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "very-secret" not in out
    assert json.loads(out)["server"]["api_keys"] == [hash_key("sk-very-secret-1")]


def test_keys_cli_parses_limits_into_the_request_body():
    from serving.admin.keys_cli import _create_body

    args = argparse.Namespace(name="bot", scopes=None, models=["m"], rpm=5, tpm=None, concurrent=2)
    assert _create_body(args) == {"name": "bot", "scopes": ["inference"], "models": ["m"],
                                  "limits": {"requests_per_minute": 5, "max_concurrent": 2}}
