"""KeyRing: the ingress' in-memory view of every usable key (the YAML's and the registry's), by hash.

A presented key costs one SHA-256 and one dict lookup: no registry query per request. The ring reloads when the
registry's key generation moves (polled every `refresh_s`, one tiny query); a key created or revoked through this
ingress' admin API applies at once, before the registry write is even polled.
"""
from __future__ import annotations

import asyncio
import logging
import time

from serving.keys.limits import Clock, KeyLimiter
from serving.keys.records import KeyRecord, hash_key
from serving.keys.store import KeyStore

log = logging.getLogger("serving.keys")


class KeyRing:
    def __init__(self, config_keys: list[KeyRecord], store: KeyStore | None = None, refresh_s: float = 0.5,
                 clock: Clock = time.monotonic):
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self._config = list(config_keys)
        self._generation: int | None = None
        self._limiters: dict[str, KeyLimiter] = {}
        self._install(self._config)

    def _install(self, records: list[KeyRecord]) -> None:
        """Use `records` (revoked ones included). /v1 needs a key once any inference key exists, even revoked:
        revoking the last key must not open the server. /admin falls back to loopback-only when no admin key is
        usable any more (never more open than the default)."""
        self._records = {r.id: r for r in records}
        by_hash = {r.key_hash: r for r in records if r.revoked_at is None}
        self._by_hash = by_hash  # one assignment: a lookup sees the old ring or the new one
        self.inference_required = any(r.allows("inference") for r in records)
        self.admin_required = any(r.allows("admin") for r in by_hash.values())
        live = {r.id: r for r in by_hash.values()}
        self._limiters = {i: lim for i, lim in self._limiters.items() if i in live and lim.limits == live[i].limits}

    def authenticate(self, secret: str) -> KeyRecord | None:
        """The record of a usable key, or None. Comparing hashes leaks nothing useful: finding a key from the
        timing of a dict lookup would need SHA-256 preimages."""
        return self._by_hash.get(hash_key(secret))

    def limiter(self, record: KeyRecord) -> KeyLimiter | None:
        """The key's limiter (kept across reloads while its limits stay the same); None when it has no limits."""
        if not record.limits.any():
            return None
        limiter = self._limiters.get(record.id)
        if limiter is None:
            limiter = self._limiters[record.id] = KeyLimiter(record.limits, self.clock)
        return limiter

    def add(self, record: KeyRecord) -> None:
        """A key created through this ingress: usable at once."""
        self._install([*self._records.values(), record])

    def remove(self, revoked: KeyRecord) -> None:
        """A key revoked through this ingress: refused from now on."""
        self._install([revoked if r.id == revoked.id else r for r in self._records.values()])

    async def refresh(self) -> None:
        """Reload from the registry if its keys changed since the last load."""
        if self.store is None:
            return
        generation = await asyncio.to_thread(self.store.generation)
        if generation == self._generation:
            return
        stored = await asyncio.to_thread(self.store.list)
        self._install(self._config + stored)
        self._generation = generation

    async def run(self) -> None:
        """Poll forever (a task of the ingress); a failed poll keeps the current ring."""
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a database hiccup: keep the keys we have, try again
                log.exception("reloading API keys from the registry failed")
            await asyncio.sleep(self.refresh_s)
