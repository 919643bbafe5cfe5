"""Collections as the rest of powertrain sees them: owned, named, with an embedder and an index.

The store holds collections, documents, chunks and their vectors; ``vectors``
searches them (an index file per collection under ``home/indexes``, or pgvector
on Postgres) and can always be rebuilt from the store. A caller only ever reaches the collections
its own key made: any other name is "not found", never "forbidden", so names
say nothing across tenants.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from powertrain.catalog import Catalog
from powertrain.engines.base import Engine
from powertrain.engines.registry import EnginePool
from powertrain.errors import Conflict, InvalidRequest, NotFound
from powertrain.rag.vectors import VectorBackend, vector_backend
from powertrain.store.collections import (
    CollectionExists,
    CollectionRecord,
    CollectionStore,
)

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
DEFAULT_EMBEDDING_MODEL = "minilm"
DEFAULT_CHUNK_TOKENS = 256
DEFAULT_OVERLAP_TOKENS = 32


class CollectionNotFound(NotFound):
    code = "collection_not_found"


class Collections:
    """Create, find and delete collections; hand out their embedder and vector index."""

    def __init__(self, store: CollectionStore, engines: EnginePool, catalog: Catalog, home: Path):
        self.store = store
        self.engines = engines
        self.catalog = catalog
        self.vectors: VectorBackend = vector_backend(store, home / "indexes")

    # -- lifecycle ----------------------------------------------------------------------
    def create(
        self,
        owner: str,
        name: str,
        *,
        embedding_model: str | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    ) -> CollectionRecord:
        if not COLLECTION_NAME.match(name) or ".." in name:
            raise InvalidRequest(
                f"collection name {name!r} must be letters, digits, _ . - (at most 128)",
                param="name",
            )
        model = embedding_model or DEFAULT_EMBEDDING_MODEL
        self.catalog.get(model)  # a clear 404 naming the catalog
        if not 16 <= chunk_tokens <= 8192 or not 0 <= overlap_tokens < chunk_tokens:
            raise InvalidRequest(
                "chunk_tokens must be 16-8192 and overlap_tokens smaller than chunk_tokens",
                param="chunk_tokens",
            )
        settings = {"chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens}
        try:
            return self.store.create(owner, name, embedding_model=model, settings=settings)
        except CollectionExists:
            raise Conflict(f"collection {name!r} already exists") from None

    def get(self, owner: str, name: str) -> CollectionRecord:
        record = self.store.get(owner, name)
        if record is None:
            raise CollectionNotFound(
                f"no collection named {name!r}; create it with `powertrain ingest PATH "
                f"--collection {name}` or POST /api/collections",
                param="collection",
            )
        return record

    def get_or_create(self, owner: str, name: str, **options: Any) -> CollectionRecord:
        record = self.store.get(owner, name)
        return record if record is not None else self.create(owner, name, **options)

    def delete(self, owner: str, name: str) -> None:
        record = self.get(owner, name)
        self.store.delete(record.id)
        self.vectors.forget(record)

    # -- embedding ----------------------------------------------------------------------
    async def embedder(self, record: CollectionRecord) -> Engine:
        engine = self.engines.started(record.embedding_model) or await self.engines.get(
            record.embedding_model
        )
        if not engine.capabilities.embeddings:
            raise InvalidRequest(
                f"model {record.embedding_model!r} does not produce embeddings; "
                "choose an embedding model for the collection",
                param="embedding_model",
            )
        return engine

    async def embed(self, record: CollectionRecord, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        engine = await self.embedder(record)
        result = await engine.embed(texts)
        vectors = np.asarray(result.vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)
