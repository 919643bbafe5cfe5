"""Virtual keys as a service: verify a presented secret, and say what a key may call.

Verified keys are remembered for ``cache_seconds`` (5 s by default) so the
store is not read on every request. The price is a window: a key revoked (or
changed) through another worker keeps working here until its entry expires.
Revoking through this worker takes effect at once, and a budgeted key is
refused as soon as it is revoked, because every paid call re-checks the key in
the store when it reserves its budget.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from powertrain.errors import ModelNotAllowed, TaskNotAllowed
from powertrain.store.keys import ApiKeyRecord, KeyStore, hash_secret

CACHE_SECONDS = 5.0
CACHE_ENTRIES = 10_000
_TOUCH_EVERY = timedelta(seconds=60)  # last_used_at is written at most this often
# What ``KeyStore.create`` makes ("pt-" and token_urlsafe(32)), with room to grow.
# Anything else is refused without a store lookup.
_KEY_SHAPE = re.compile(rb"pt-[A-Za-z0-9_-]{20,128}")


class KeyService:
    def __init__(
        self,
        store: KeyStore,
        *,
        cache_seconds: float = CACHE_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache_entries = cache_entries
        self._clock = clock
        # hash -> (live key or None, expiry). Misses are kept too: a secret nobody has
        # been given cannot start working later, so "unknown" is safe to remember.
        self._cache: dict[str, tuple[ApiKeyRecord | None, float]] = {}
        self._lock = threading.Lock()  # lookups fill the cache from worker threads

    # -- verification --------------------------------------------------------------------
    def cached(self, secret: bytes) -> tuple[bool, ApiKeyRecord | None]:
        """(known, key) from memory alone; known is False when the store must be asked."""
        if not _KEY_SHAPE.fullmatch(secret):
            return True, None
        entry = self._cache.get(hash_secret(secret))
        if entry is not None and entry[1] > self._clock():
            return True, entry[0]
        return False, None

    def verify(self, secret: bytes) -> ApiKeyRecord | None:
        """The live (not revoked) key with this secret, or None. May read the store."""
        known, key = self.cached(secret)
        if known:
            return key
        key_hash = hash_secret(secret)
        record = self.store.get_by_hash(key_hash)
        live = record if record is not None and not record.revoked else None
        if live is not None:
            self.store.touch(live.id, older_than=datetime.now(UTC) - _TOUCH_EVERY)
        self._remember(key_hash, live)
        return live

    async def averify(self, secret: bytes) -> ApiKeyRecord | None:
        """``verify`` that reads the store (on a cache miss) off the event loop."""
        known, key = self.cached(secret)
        if known:
            return key
        return await asyncio.to_thread(self.verify, secret)

    def _remember(self, key_hash: str, record: ApiKeyRecord | None) -> None:
        with self._lock:
            if len(self._cache) >= self._cache_entries:
                now = self._clock()
                self._cache = {h: e for h, e in self._cache.items() if e[1] > now}
                while len(self._cache) >= self._cache_entries:  # all fresh: drop the oldest
                    del self._cache[next(iter(self._cache))]
            self._cache[key_hash] = (record, self._clock() + self.cache_seconds)

    def forget(self, key_id: str) -> None:
        """Drop a key from this worker's cache (after it was revoked or changed here)."""
        with self._lock:
            self._cache = {
                h: e for h, e in self._cache.items() if e[0] is None or e[0].id != key_id
            }

    # -- management (the store, keeping this worker's cache right) -------------------------
    def create(self, name: str, **limits: Any) -> tuple[ApiKeyRecord, str]:
        return self.store.create(name, **limits)

    def update(self, key_id: str, **changes: Any) -> ApiKeyRecord | None:
        record = self.store.update(key_id, **changes)
        self.forget(key_id)
        return record

    def revoke(self, key_id: str) -> ApiKeyRecord | None:
        record = self.store.revoke(key_id)
        self.forget(key_id)
        return record

    # -- what a key may call ---------------------------------------------------------------
    @staticmethod
    def check_model(key: ApiKeyRecord, alias: str) -> None:
        if key.allowed_models is not None and alias not in key.allowed_models:
            raise ModelNotAllowed(
                f"API key {key.name!r} may not use model {alias!r} (allowed: "
                f"{', '.join(key.allowed_models) or 'none'}); ask an admin to allow it",
                param="model",
            )

    @staticmethod
    def check_task(key: ApiKeyRecord, name: str) -> None:
        if key.allowed_tasks is not None and name not in key.allowed_tasks:
            raise TaskNotAllowed(
                f"API key {key.name!r} may not run task {name!r} (allowed: "
                f"{', '.join(key.allowed_tasks) or 'none'}); ask an admin to allow it",
                param="model",
            )

    @staticmethod
    def may_use(key: ApiKeyRecord | None, alias: str) -> bool:
        return key is None or key.allowed_models is None or alias in key.allowed_models
