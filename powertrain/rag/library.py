"""Collections as the rest of powertrain sees them: owned, named, with an embedder and an index.

The store holds collections, documents, chunks and their vectors; each
collection's vector index lives in a file under ``home/indexes`` and can always
be rebuilt from the stored vectors. A caller only ever reaches the collections
its own key made: any other name is "not found", never "forbidden", so names
say nothing across tenants.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from powertrain.catalog import Catalog
from powertrain.engines.base import Engine
from powertrain.engines.registry import EnginePool
from powertrain.errors import Conflict, InvalidRequest, NotFound
from powertrain.rag.index import (
    ExactIndex,
    IndexFileError,
    TieredIndex,
    VectorIndex,
    open_index,
)
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
        self.index_dir = home / "indexes"
        self._indexes: dict[str, tuple[float, VectorIndex]] = {}
        self._lock = threading.Lock()

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
        with self._lock:
            self._indexes.pop(record.id, None)
        self.index_path(record).unlink(missing_ok=True)

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

    # -- the vector index ----------------------------------------------------------------
    def index_path(self, record: CollectionRecord) -> Path:
        return self.index_dir / f"{record.id}.index"

    def index(self, record: CollectionRecord, dim: int) -> VectorIndex:
        """The collection's index, reloaded when another worker saved a newer file."""
        path = self.index_path(record)
        stamp = path.stat().st_mtime if path.exists() else 0.0
        with self._lock:
            cached = self._indexes.get(record.id)
            if cached is not None and cached[0] >= stamp:
                return cached[1]
            try:
                index = self._rebuilt(record, dim) if stamp == 0.0 else open_index(path, dim)
            except IndexFileError:
                # The store holds every vector: a damaged index file is rebuilt, not fatal.
                index = self._rebuilt(record, dim)
            self._indexes[record.id] = (stamp, index)
            return index

    def _rebuilt(self, record: CollectionRecord, dim: int) -> VectorIndex:
        """An index from the stored vectors (first use, or its file was lost)."""
        index: VectorIndex = TieredIndex(ExactIndex(dim))
        rows = self.store.vectors(record.id)
        if rows:
            ids = [row_id for row_id, _ in rows]
            vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32)
            index.add(ids, vectors.reshape(len(rows), dim))
        return index

    def save_index(self, record: CollectionRecord, index: VectorIndex) -> None:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = self.index_path(record)
        index.save(path)
        with self._lock:
            self._indexes[record.id] = (path.stat().st_mtime, index)
