"""Models registered in the store (by fine-tuning jobs) joining the configured catalog.

A job registers its model in the store, from whichever process ran it; every
gateway worker reads the registrations on start and again when a call names a
model it does not know yet, so a new model is callable everywhere without a
restart. Reads are throttled, so unknown names cannot hammer the store.
"""

from __future__ import annotations

import asyncio
import logging
import time

from powertrain.catalog import Catalog, ModelConfig
from powertrain.store.finetune import FineTuneStore

logger = logging.getLogger(__name__)


class RegisteredModels:
    def __init__(self, catalog: Catalog, store: FineTuneStore, *, min_interval: float = 1.0):
        self.catalog = catalog
        self.store = store
        self.min_interval = min_interval
        self._last = float("-inf")
        self._lock = asyncio.Lock()

    def load(self) -> int:
        """Add every registered model the catalog lacks (blocking); how many were added."""
        self._last = time.monotonic()
        added = 0
        for record in self.store.registered_models():
            if record.alias in self.catalog:
                continue
            try:
                model = ModelConfig.model_validate({**record.config, "alias": record.alias})
            except ValueError as exc:
                logger.warning("registered model %r is unreadable: %s", record.alias, exc)
                continue
            added += self.catalog.register(model)
        return added

    async def refresh(self, *, force: bool = False) -> int:
        """``load`` off the event loop: at most once per ``min_interval`` seconds (a flood
        of calls naming unknown models costs one query a second), or now with ``force``."""
        async with self._lock:
            if not force and time.monotonic() - self._last < self.min_interval:
                return 0
            return await asyncio.to_thread(self.load)
