"""Collections, documents and chunks: pure storage, with keyword search per backend.

Every read and write is scoped by the collection's owner (an API key id), so one
key cannot reach another's collection by guessing its name. Replacing a
document's chunks is one transaction: a failed ingest leaves the old chunks.
Vectors are kept as float32 bytes beside their text so an index can always be
rebuilt from the store.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from powertrain.store.db import Database
from powertrain.store.pgvector import PgVectors
from powertrain.store.schema import chunks, collections, documents
from powertrain.store.times import as_utc, utc_now

ADMIN_OWNER = ""  # the admin key, or authentication off
_WORD = re.compile(r"\w+", re.UNICODE)
_MAX_QUERY_TERMS = 32
# Words that match nearly every chunk: BM25 gives them little weight anyway, but
# SQLite must still score every row they match (Postgres's english config drops them).
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him himself his how
    i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


class CollectionExists(Exception):
    """This owner already has a collection of that name."""


@dataclass(frozen=True)
class CollectionRecord:
    id: str
    owner: str
    name: str
    embedding_model: str
    dim: int | None
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DocumentRecord:
    id: int
    collection_id: str
    path: str
    title: str
    media_type: str
    content_hash: str
    size: int
    chunk_count: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NewChunk:
    """A chunk to store: its text, where it sits in the document, and its vector."""

    text: str
    idx: int
    token_count: int
    heading_path: list[str] = field(default_factory=list)
    page: int | None = None
    vector: bytes | None = None


@dataclass(frozen=True)
class StoredChunk:
    id: int
    document_id: int
    path: str
    title: str
    idx: int
    text: str
    heading_path: list[str]
    page: int | None
    token_count: int


@dataclass(frozen=True)
class ReplaceOutcome:
    document: DocumentRecord
    removed: list[int]  # chunk ids that are gone (drop them from the vector index)
    added: list[int]  # new chunk ids, in chunk order


def _collection(row: Any) -> CollectionRecord:
    return CollectionRecord(
        id=row.id,
        owner=row.owner,
        name=row.name,
        embedding_model=row.embedding_model,
        dim=row.dim,
        settings=dict(row.settings),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _document(row: Any) -> DocumentRecord:
    return DocumentRecord(
        id=row.id,
        collection_id=row.collection_id,
        path=row.path,
        title=row.title,
        media_type=row.media_type,
        content_hash=row.content_hash,
        size=row.size,
        chunk_count=row.chunk_count,
        metadata=dict(row.metadata),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def keyword_terms(query: str) -> list[str]:
    """Words of a query, as data: no FTS operator a caller types is ever interpreted.

    Stopwords are dropped unless the query has nothing else ("to be or not to be").
    """
    words = list(dict.fromkeys(_WORD.findall(query.lower())))
    content = [w for w in words if w not in _STOPWORDS]
    return (content or words)[:_MAX_QUERY_TERMS]


@dataclass(frozen=True)
class VectorFingerprint:
    """What an index file must match to be trusted: any write to a collection changes it.

    A replace or an insert moves the newest document time forward; a delete
    lowers the chunk count. (Chunk ids alone would not do: SQLite may hand a
    deleted largest id out again.)
    """

    chunks: int
    max_chunk_id: int
    newest_document: str

    def as_dict(self) -> dict[str, object]:
        return {
            "chunks": self.chunks,
            "max_chunk_id": self.max_chunk_id,
            "newest_document": self.newest_document,
        }


class CollectionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # On Postgres with pgvector, vectors are searched in the database itself.
        self.pgvector = PgVectors.enable(db) if db.dialect == "postgresql" else None

    # -- collections -------------------------------------------------------------------
    def create(
        self, owner: str, name: str, *, embedding_model: str, settings: dict[str, Any]
    ) -> CollectionRecord:
        now = utc_now()
        values = {
            "id": "col_" + secrets.token_hex(8),
            "owner": owner,
            "name": name,
            "embedding_model": embedding_model,
            "dim": None,
            "settings": settings,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.db.engine.begin() as conn:
                conn.execute(collections.insert().values(**values))
        except IntegrityError:
            raise CollectionExists(name) from None
        found = self.get(owner, name)
        assert found is not None
        return found

    def get(self, owner: str, name: str) -> CollectionRecord | None:
        query = select(collections).where(collections.c.owner == owner, collections.c.name == name)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).first()
        return _collection(row) if row is not None else None

    def list_collections(self, owner: str) -> list[CollectionRecord]:
        query = select(collections).where(collections.c.owner == owner).order_by(collections.c.name)
        with self.db.engine.connect() as conn:
            return [_collection(r) for r in conn.execute(query)]

    def delete(self, collection_id: str) -> None:
        """Remove a collection with every document and chunk (and their keyword index rows)."""
        with self.db.engine.begin() as conn:
            if self.pgvector is not None:
                self.pgvector.drop_index(conn, collection_id)
            # Chunks first: their rows carry the keyword index, and they reference
            # documents, not the collection.
            conn.execute(delete(chunks).where(chunks.c.collection_id == collection_id))
            conn.execute(delete(documents).where(documents.c.collection_id == collection_id))
            conn.execute(delete(collections).where(collections.c.id == collection_id))

    def set_dim(self, collection_id: str, dim: int) -> None:
        with self.db.engine.begin() as conn:
            changed = conn.execute(
                update(collections)
                .where(collections.c.id == collection_id, collections.c.dim.is_(None))
                .values(dim=dim, updated_at=utc_now())
            ).rowcount
            if changed and self.pgvector is not None:
                self.pgvector.ensure_index(conn, collection_id, dim)

    def stats(self, collection_id: str) -> tuple[int, int]:
        """(documents, chunks)."""
        with self.db.engine.connect() as conn:
            docs = conn.execute(
                select(func.count()).where(documents.c.collection_id == collection_id)
            ).scalar_one()
            count = conn.execute(
                select(func.count()).where(chunks.c.collection_id == collection_id)
            ).scalar_one()
        return int(docs), int(count)

    # -- documents -------------------------------------------------------------------
    def document_hashes(self, collection_id: str) -> dict[str, str]:
        query = select(documents.c.path, documents.c.content_hash).where(
            documents.c.collection_id == collection_id
        )
        with self.db.engine.connect() as conn:
            return {row.path: row.content_hash for row in conn.execute(query)}

    def list_documents(
        self, collection_id: str, *, limit: int = 100, offset: int = 0
    ) -> list[DocumentRecord]:
        query = (
            select(documents)
            .where(documents.c.collection_id == collection_id)
            .order_by(documents.c.path)
            .limit(limit)
            .offset(offset)
        )
        with self.db.engine.connect() as conn:
            return [_document(r) for r in conn.execute(query)]

    def replace_document(
        self,
        collection_id: str,
        *,
        path: str,
        title: str,
        media_type: str,
        content_hash: str,
        size: int,
        metadata: dict[str, Any],
        new_chunks: Sequence[NewChunk],
    ) -> ReplaceOutcome:
        """Insert or replace one document and all its chunks, atomically."""
        now = utc_now()
        with self.db.engine.begin() as conn:
            existing = conn.execute(
                select(documents.c.id, documents.c.created_at).where(
                    documents.c.collection_id == collection_id, documents.c.path == path
                )
            ).first()
            removed: list[int] = []
            values = {
                "title": title,
                "media_type": media_type,
                "content_hash": content_hash,
                "size": size,
                "chunk_count": len(new_chunks),
                "metadata": metadata,
                "updated_at": now,
            }
            if existing is None:
                document_id = conn.execute(
                    documents.insert()
                    .values(collection_id=collection_id, path=path, created_at=now, **values)
                    .returning(documents.c.id)
                ).scalar_one()
            else:
                document_id = existing.id
                removed = _chunk_ids(conn, document_id)
                conn.execute(delete(chunks).where(chunks.c.document_id == document_id))
                conn.execute(
                    update(documents).where(documents.c.id == document_id).values(**values)
                )
            added = [
                conn.execute(
                    chunks.insert()
                    .values(
                        collection_id=collection_id,
                        document_id=document_id,
                        idx=chunk.idx,
                        text=chunk.text,
                        heading_path=chunk.heading_path,
                        page=chunk.page,
                        token_count=chunk.token_count,
                        vector=chunk.vector,
                    )
                    .returning(chunks.c.id)
                ).scalar_one()
                for chunk in new_chunks
            ]
            if self.pgvector is not None:
                with_vectors = [(i, c.vector) for i, c in zip(added, new_chunks, strict=True)]
                self.pgvector.write(
                    conn,
                    [i for i, v in with_vectors if v is not None],
                    [np.frombuffer(v, dtype=np.float32) for _, v in with_vectors if v is not None],
                )
            row = conn.execute(select(documents).where(documents.c.id == document_id)).one()
        return ReplaceOutcome(document=_document(row), removed=removed, added=added)

    def delete_document(self, collection_id: str, path: str) -> list[int] | None:
        """The removed chunk ids, or None when there was no such document."""
        with self.db.engine.begin() as conn:
            row = conn.execute(
                select(documents.c.id).where(
                    documents.c.collection_id == collection_id, documents.c.path == path
                )
            ).first()
            if row is None:
                return None
            removed = _chunk_ids(conn, row.id)
            conn.execute(delete(chunks).where(chunks.c.document_id == row.id))
            conn.execute(delete(documents).where(documents.c.id == row.id))
        return removed

    # -- chunks ----------------------------------------------------------------------
    def chunks(self, collection_id: str, ids: Sequence[int]) -> list[StoredChunk]:
        """Chunks by id, in the order asked, with their document's path and title."""
        if not ids:
            return []
        query = (
            select(chunks, documents.c.path, documents.c.title)
            .join(documents, documents.c.id == chunks.c.document_id)
            .where(chunks.c.collection_id == collection_id, chunks.c.id.in_(list(ids)))
        )
        with self.db.engine.connect() as conn:
            found = {
                row.id: StoredChunk(
                    id=row.id,
                    document_id=row.document_id,
                    path=row.path,
                    title=row.title,
                    idx=row.idx,
                    text=row.text,
                    heading_path=list(row.heading_path),
                    page=row.page,
                    token_count=row.token_count,
                )
                for row in conn.execute(query)
            }
        return [found[i] for i in ids if i in found]

    def vectors(
        self, collection_id: str, ids: Sequence[int] | None = None
    ) -> list[tuple[int, bytes]]:
        """(chunk id, float32 bytes) for every chunk, or for ``ids``."""
        query = select(chunks.c.id, chunks.c.vector).where(
            chunks.c.collection_id == collection_id, chunks.c.vector.is_not(None)
        )
        if ids is not None:
            if not ids:
                return []
            query = query.where(chunks.c.id.in_(list(ids)))
        with self.db.engine.connect() as conn:
            return [
                (row.id, bytes(row.vector)) for row in conn.execute(query.order_by(chunks.c.id))
            ]

    def fingerprint(self, collection_id: str) -> VectorFingerprint:
        with self.db.engine.connect() as conn:
            count, max_id = conn.execute(
                select(func.count(), func.coalesce(func.max(chunks.c.id), 0)).where(
                    chunks.c.collection_id == collection_id, chunks.c.vector.is_not(None)
                )
            ).one()
            newest = conn.execute(
                select(func.max(documents.c.updated_at)).where(
                    documents.c.collection_id == collection_id
                )
            ).scalar_one()
        stamp = as_utc(newest).isoformat() if newest is not None else ""
        return VectorFingerprint(int(count), int(max_id), stamp)

    def chunk_ids_of(self, document_ids: Sequence[int]) -> list[int]:
        if not document_ids:
            return []
        query = select(chunks.c.id).where(chunks.c.document_id.in_(list(document_ids)))
        with self.db.engine.connect() as conn:
            return [int(i) for i in conn.execute(query).scalars()]

    def keyword_search(self, collection_id: str, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, score) best first: BM25 on SQLite, ts_rank on Postgres (higher is better)."""
        terms = keyword_terms(query)
        if not terms or k <= 0:
            return []
        with self.db.engine.connect() as conn:
            if self.db.dialect == "postgresql":
                # ts_rank with length normalisation (1: divide by 1 + log length), not
                # cover density: ts_rank_cd rewards query words standing close together,
                # which an OR of a question's words rarely has (bench/rag/README.md).
                sql = text(
                    "SELECT id, ts_rank(tsv, q, 1) AS score FROM chunks, "
                    "to_tsquery('english', :q) AS q "
                    "WHERE collection_id = :c AND tsv @@ q ORDER BY score DESC, id LIMIT :k"
                )
                # Each term is quoted as a lexeme and OR-ed: recall first, rank decides.
                match = " | ".join("'" + t.replace("'", "") + "'" for t in terms)
            else:
                sql = text(
                    "SELECT chunks_fts.rowid AS id, -bm25(chunks_fts) AS score FROM chunks_fts "
                    "JOIN chunks ON chunks.id = chunks_fts.rowid "
                    "WHERE chunks_fts MATCH :q AND chunks.collection_id = :c "
                    "ORDER BY score DESC, id LIMIT :k"
                )
                match = " OR ".join('"' + t + '"' for t in terms)
            rows = conn.execute(sql, {"q": match, "c": collection_id, "k": k}).all()
        return [(int(row.id), float(row.score)) for row in rows]


def _chunk_ids(conn: Connection, document_id: int) -> list[int]:
    query = select(chunks.c.id).where(chunks.c.document_id == document_id).order_by(chunks.c.idx)
    return [int(i) for i in conn.execute(query).scalars()]
