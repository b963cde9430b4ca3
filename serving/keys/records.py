"""What an API key is once stored: an id, a hash of the secret (never the secret), scopes, models and limits.

Keys are 256 random bits, so a plain SHA-256 is enough to store them (a slow password hash buys nothing against a
key that cannot be guessed) and lets the ingress look a presented key up in a dict, in about a microsecond.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

SCOPES = ("inference", "admin")
KEY_PREFIX = "sk-os-"  # recognisable in a leaked-secret scan; says nothing about the key
HASH_PREFIX = "sha256:"
_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def hash_key(secret: str) -> str:
    """The stored form of a key: "sha256:<hex>"."""
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A public handle for a key (logs, lists, revocation); unrelated to the secret."""
    return "key_" + secrets.token_hex(8)


def is_hash(value: str) -> bool:
    return bool(_HASH.fullmatch(value))


def stored_form(value: str) -> str:
    """A configuration key as stored: hashes as given, plain keys hashed."""
    return value if is_hash(value) else hash_key(value)


@dataclass(frozen=True)
class KeyLimits:
    """Per-key limits; None means unlimited. Tokens: LLM prompt + completion, embedding input tokens, images
    generated, speech input characters."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent))


@dataclass(frozen=True)
class KeyRecord:
    """A key as the ingress knows it. `models` None: every model; otherwise names (or aliases) it may use."""

    id: str
    name: str
    key_hash: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)
    created_at: datetime | None = None
    created_by: str = ""
    revoked_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def may_use(self, *names: str) -> bool:
        """True if any of `names` (the requested id, the model's canonical name) is on the allow-list."""
        return self.models is None or any(name in self.models for name in names)


def config_records(api_keys: list[str], admin_api_keys: list[str]) -> list[KeyRecord]:
    """Records for the YAML's keys: `api_keys` get the inference scope, `admin_api_keys` the admin scope; ids name
    their place in the file (config:api_keys[0]), never the key."""
    records = [KeyRecord(f"config:api_keys[{i}]", "from the configuration", stored_form(k), ("inference",))
               for i, k in enumerate(api_keys)]
    records += [KeyRecord(f"config:admin_api_keys[{i}]", "from the configuration", stored_form(k), ("admin",))
                for i, k in enumerate(admin_api_keys)]
    return records
