"""Vectors inside Postgres with pgvector: one column, one HNSW index per collection.

Each collection may use a different embedding model, so ``chunks.embedding`` is
an unsized ``vector`` and every collection gets a *partial* HNSW index over
``embedding::vector(dim)`` restricted to its own rows. A query uses the same
expression and names the collection as a literal, so the planner can prove the
partial index applies (a bound parameter would defeat that under a generic
plan). Collection ids are generated (``col_`` + hex) and checked before they are
written into SQL.

pgvector is an extension of the database server, not of powertrain. When the
server has it, the store enables it and keeps the column filled; when it does
not, collections keep working on the embedded index file and the store says so
once in the log (``docs/collections.md``: "Postgres").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
from sqlalchemy import Connection, text

from powertrain.store.db import Database

log = logging.getLogger("powertrain.store")

_COLLECTION_ID = re.compile(r"^col_[0-9a-f]{16}$")
_ADVISORY_LOCK = 0x70677663  # any constant: two workers must not enable it at once
_BACKFILL_BATCH = 500
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 96  # as the embedded index (bench/rag/README.md)
MAX_DIM = 2000  # pgvector's limit for an HNSW index on `vector`


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def _index_name(collection_id: str) -> str:
    return f"ix_chunks_embedding_{collection_id}"


def _checked(collection_id: str) -> str:
    if not _COLLECTION_ID.match(collection_id):
        raise ValueError(f"not a collection id: {collection_id!r}")
    return collection_id


class PgVectors:
    """pgvector storage and search for every collection of one Postgres store."""

    def __init__(self, db: Database):
        self.db = db

    # -- setup ---------------------------------------------------------------------------
    @staticmethod
    def enable(db: Database) -> PgVectors | None:
        """Turn pgvector on when the server has it (idempotent); None when it does not."""
        with db.engine.begin() as conn:
            if _has_column(conn):
                return PgVectors(db)
            available = conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).first()
            if available is None:
                log.warning(
                    "Postgres has no pgvector extension: collections use the embedded index "
                    "file on this worker. Install it (Debian: postgresql-<version>-pgvector) "
                    "and restart to search in the database."
                )
                return None
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            conn.execute(text("ALTER TABLE chunks ADD COLUMN IF NOT EXISTS embedding vector"))
        vectors = PgVectors(db)
        vectors._backfill()
        return vectors

    def _backfill(self) -> None:
        """Fill ``embedding`` for chunks stored before pgvector was enabled."""
        select_missing = text(
            "SELECT id, vector FROM chunks WHERE embedding IS NULL AND vector IS NOT NULL "
            "ORDER BY id LIMIT :n"
        )
        while True:
            with self.db.engine.begin() as conn:
                rows = conn.execute(select_missing, {"n": _BACKFILL_BATCH}).all()
                if not rows:
                    break
                ids = [int(row.id) for row in rows]
                vectors = [np.frombuffer(bytes(row.vector), dtype=np.float32) for row in rows]
                self.write(conn, ids, vectors)
        with self.db.engine.begin() as conn:
            dims = conn.execute(text("SELECT id, dim FROM collections WHERE dim IS NOT NULL")).all()
            for row in dims:
                self._ensure_index(conn, row.id, int(row.dim))

    # -- writes (inside the store's own transactions) -------------------------------------
    def write(self, conn: Connection, ids: Sequence[int], vectors: Sequence[np.ndarray]) -> None:
        """Set ``embedding`` for ``ids`` in one statement."""
        if not ids:
            return
        conn.execute(
            text(
                "UPDATE chunks SET embedding = CAST(v.e AS vector) "
                "FROM unnest(CAST(:ids AS integer[]), CAST(:vs AS text[])) AS v(id, e) "
                "WHERE chunks.id = v.id"
            ),
            {"ids": list(ids), "vs": [_literal(v) for v in vectors]},
        )

    def ensure_index(self, conn: Connection, collection_id: str, dim: int) -> None:
        self._ensure_index(conn, collection_id, dim)

    @staticmethod
    def _ensure_index(conn: Connection, collection_id: str, dim: int) -> None:
        if not 1 <= dim <= MAX_DIM:
            log.warning(
                "collection %s has %d-dimensional vectors; pgvector indexes at most %d, "
                "so its searches scan every vector",
                collection_id,
                dim,
                MAX_DIM,
            )
            return
        cid = _checked(collection_id)
        conn.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS {_index_name(cid)} ON chunks USING hnsw "
                f"((embedding::vector({int(dim)})) vector_cosine_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                f"WHERE collection_id = '{cid}'"
            )
        )

    def drop_index(self, conn: Connection, collection_id: str) -> None:
        conn.execute(text(f"DROP INDEX IF EXISTS {_index_name(_checked(collection_id))}"))

    # -- reads ---------------------------------------------------------------------------
    def search(
        self,
        collection_id: str,
        dim: int,
        query: np.ndarray,
        k: int,
        allowed: Sequence[int] | None = None,
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) best first; ``allowed`` limits the ids."""
        cid = _checked(collection_id)
        expression = f"embedding::vector({int(dim)})"
        where = f"collection_id = '{cid}' AND embedding IS NOT NULL"
        params: dict[str, object] = {"q": _literal(query), "k": k}
        if allowed is not None:
            if not allowed:
                return []
            where += " AND id = ANY(CAST(:allowed AS integer[]))"
            params["allowed"] = list(allowed)
        distance = f"{expression} <=> CAST(:q AS vector({int(dim)}))"
        sql = text(
            f"SELECT id, 1 - ({distance}) AS score FROM chunks WHERE {where} "
            f"ORDER BY {distance} LIMIT :k"
        )
        with self.db.engine.begin() as conn:
            # SET LOCAL lasts for this transaction only; the pool's connections stay clean.
            conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(HNSW_EF_SEARCH, int(k))}"))
            if allowed is not None:
                # A filter can hide most of the graph's nearest nodes: keep walking
                # (pgvector >= 0.8) until k allowed rows are found.
                conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            rows = conn.execute(sql, params).all()
        return [(int(row.id), float(row.score)) for row in rows]

    def count(self, collection_id: str) -> int:
        with self.db.engine.connect() as conn:
            value = conn.execute(
                text(
                    "SELECT count(*) FROM chunks WHERE collection_id = :c AND embedding IS NOT NULL"
                ),
                {"c": collection_id},
            ).scalar_one()
        return int(value)

    def uses_index(self, collection_id: str, dim: int) -> bool:
        """Whether this collection's HNSW index can answer its searches.

        Sorting and sequential scans are switched off for the check, because on a
        small table the planner rightly prefers them; what is checked is that the
        partial index matches the query's shape.
        """
        cid = _checked(collection_id)
        zero = "[" + ",".join(["0"] * dim) + "]"
        with self.db.engine.begin() as conn:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            conn.execute(text("SET LOCAL enable_sort = off"))
            plan = conn.execute(
                text(
                    f"EXPLAIN SELECT id FROM chunks WHERE collection_id = '{cid}' "
                    f"AND embedding IS NOT NULL ORDER BY embedding::vector({int(dim)}) "
                    f"<=> CAST(:q AS vector({int(dim)})) LIMIT 5"
                ),
                {"q": zero},
            ).all()
        return any(_index_name(cid) in str(row[0]) for row in plan)


def _has_column(conn: Connection) -> bool:
    found = conn.execute(
        text(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'chunks' AND column_name = 'embedding' "
            "AND table_schema = current_schema()"
        )
    ).first()
    return found is not None
