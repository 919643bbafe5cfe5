"""Where a collection's vectors are searched: an index file, or the database itself.

The store always holds every vector (as bytes beside its chunk), so either
backend can be rebuilt from it. ``FileVectors`` keeps one index file per
collection under ``home/indexes`` (the embedded default, and Postgres without
pgvector); ``DatabaseVectors`` searches Postgres with pgvector, where the store
writes each vector in the same transaction as its chunk and there is nothing to
save or rebuild.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from powertrain.rag.index import (
    ExactIndex,
    Hit,
    IndexFileError,
    TieredIndex,
    open_index,
)
from powertrain.store.collections import CollectionRecord, CollectionStore
from powertrain.store.pgvector import PgVectors

log = logging.getLogger("powertrain.rag")


class VectorBackend(Protocol):
    kind: str

    def search(
        self, record: CollectionRecord, query: np.ndarray, k: int, allowed: set[int] | None
    ) -> list[Hit]:
        """Up to ``k`` (chunk id, cosine similarity), best first."""

    def prepare(self, record: CollectionRecord) -> None:
        """Called before the store changes the collection (so what is loaded is checked)."""

    def apply(
        self,
        record: CollectionRecord,
        dim: int,
        removed: Sequence[int],
        added: Sequence[int],
        vectors: np.ndarray,
    ) -> None:
        """Follow a write the store has committed: ``removed`` ids gone, ``added`` new."""

    def persist(self, record: CollectionRecord) -> None:
        """Make what ``apply`` did durable (a no-op where the store already is)."""

    def forget(self, record: CollectionRecord) -> None:
        """The collection is deleted: drop whatever this backend kept for it."""

    def count(self, record: CollectionRecord) -> int:
        """How many vectors the backend would search."""


class DatabaseVectors:
    """pgvector: the store's transaction already wrote and indexed every vector."""

    kind = "pgvector"

    def __init__(self, pgvector: PgVectors):
        self.pgvector = pgvector

    def search(
        self, record: CollectionRecord, query: np.ndarray, k: int, allowed: set[int] | None
    ) -> list[Hit]:
        if record.dim is None:
            return []
        ids = sorted(allowed) if allowed is not None else None
        return self.pgvector.search(record.id, record.dim, query, k, ids)

    def prepare(self, record: CollectionRecord) -> None:
        return None

    def apply(
        self,
        record: CollectionRecord,
        dim: int,
        removed: Sequence[int],
        added: Sequence[int],
        vectors: np.ndarray,
    ) -> None:
        return None

    def persist(self, record: CollectionRecord) -> None:
        return None

    def forget(self, record: CollectionRecord) -> None:
        return None  # the store dropped the collection's HNSW index with its rows

    def count(self, record: CollectionRecord) -> int:
        return self.pgvector.count(record.id)


class FileVectors:
    """One index file per collection, cached in memory, checked against the store on load.

    The file's header carries the store's fingerprint of the collection as of
    its save. A file whose fingerprint no longer matches (a process died after
    committing chunks and before saving, or another worker wrote since) is not
    trusted: the index is rebuilt from the stored vectors instead.
    """

    kind = "file"

    def __init__(self, store: CollectionStore, index_dir: Path):
        self.store = store
        self.index_dir = index_dir
        self._indexes: dict[str, tuple[float, TieredIndex]] = {}
        self._lock = threading.Lock()

    def path(self, record: CollectionRecord) -> Path:
        return self.index_dir / f"{record.id}.index"

    def index(self, record: CollectionRecord, dim: int) -> TieredIndex:
        """The collection's index, reloaded when another worker saved a newer file."""
        path = self.path(record)
        stamp = path.stat().st_mtime if path.exists() else 0.0
        with self._lock:
            cached = self._indexes.get(record.id)
            if cached is not None and cached[0] >= stamp:
                return cached[1]
            index = self._load(record, path, dim) if stamp else self._rebuilt(record, dim)
            self._indexes[record.id] = (stamp, index)
            return index

    def _load(self, record: CollectionRecord, path: Path, dim: int) -> TieredIndex:
        try:
            index = open_index(path, dim)
        except IndexFileError as exc:
            # The store holds every vector: a damaged index file is rebuilt, not fatal.
            log.warning("%s; rebuilding it from the store", exc.message)
            return self._rebuilt(record, dim)
        if index.stamp != self.store.fingerprint(record.id).as_dict():
            log.warning(
                "the index file of collection %r is older than its chunks (a write was not "
                "saved to it); rebuilding it from the store",
                record.name,
            )
            return self._rebuilt(record, dim)
        return index

    def _rebuilt(self, record: CollectionRecord, dim: int) -> TieredIndex:
        index = TieredIndex(ExactIndex(dim))
        rows = self.store.vectors(record.id)
        if rows:
            ids = [row_id for row_id, _ in rows]
            vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32)
            index.add(ids, vectors.reshape(len(rows), dim))
        return index

    def search(
        self, record: CollectionRecord, query: np.ndarray, k: int, allowed: set[int] | None
    ) -> list[Hit]:
        if record.dim is None:
            return []
        check = allowed.__contains__ if allowed is not None else None
        return self.index(record, record.dim).search(query, k, allowed=check)

    def prepare(self, record: CollectionRecord) -> None:
        # Load (and check) the saved file while it still matches the store; after
        # the write it would look stale and be rebuilt from scratch.
        if record.id in self._indexes:
            return  # already loaded: no store read per document of an ingest
        fresh = self.store.get(record.owner, record.name)
        if fresh is not None and fresh.dim is not None:
            self.index(fresh, fresh.dim)

    def apply(
        self,
        record: CollectionRecord,
        dim: int,
        removed: Sequence[int],
        added: Sequence[int],
        vectors: np.ndarray,
    ) -> None:
        index = self.index(record, dim)
        if removed:
            index.remove(list(removed))
        if added:
            index.add(list(added), vectors)

    def persist(self, record: CollectionRecord) -> None:
        fresh = self.store.get(record.owner, record.name)  # knows its dim by now
        if fresh is None or fresh.dim is None:
            return
        index = self.index(fresh, fresh.dim)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(fresh)
        index.save(path, stamp=self.store.fingerprint(fresh.id).as_dict())
        with self._lock:
            self._indexes[fresh.id] = (path.stat().st_mtime, index)

    def forget(self, record: CollectionRecord) -> None:
        with self._lock:
            self._indexes.pop(record.id, None)
        self.path(record).unlink(missing_ok=True)

    def count(self, record: CollectionRecord) -> int:
        return len(self.index(record, record.dim)) if record.dim is not None else 0


def vector_backend(store: CollectionStore, index_dir: Path) -> VectorBackend:
    """pgvector when the store has it, else index files beside the store."""
    if store.pgvector is not None:
        return DatabaseVectors(store.pgvector)
    return FileVectors(store, index_dir)
