"""Search a collection: vectors, keywords, or both fused by rank, with filters and a threshold.

Every candidate is scored by the cosine similarity of its stored vector to the
query, whichever list found it, so ``threshold`` means the same thing in every
mode and MMR can compare candidates with each other.
"""

from __future__ import annotations

import asyncio
import fnmatch
from dataclasses import dataclass
from typing import Literal

import numpy as np

from powertrain.errors import InvalidRequest
from powertrain.rag.fusion import maximal_marginal_relevance, reciprocal_rank_fusion
from powertrain.rag.library import Collections
from powertrain.store.collections import CollectionRecord, StoredChunk

SearchMode = Literal["hybrid", "vector", "keyword"]
_CANDIDATES = 4  # each list fetches k times this many before fusion, filters and MMR


@dataclass(frozen=True)
class SearchHit:
    chunk: StoredChunk
    score: float  # cosine similarity to the query, in [-1, 1]
    rank: int  # 1-based, after fusion (and MMR)
    vector_rank: int | None  # where each list put it, when it did
    keyword_rank: int | None

    def as_dict(self) -> dict[str, object]:
        c = self.chunk
        return {
            "chunk_id": c.id,
            "score": round(self.score, 6),
            "rank": self.rank,
            "vector_rank": self.vector_rank,
            "keyword_rank": self.keyword_rank,
            "path": c.path,
            "title": c.title,
            "heading_path": c.heading_path,
            "page": c.page,
            "text": c.text,
        }


class Searcher:
    def __init__(self, collections: Collections):
        self.collections = collections

    async def search(
        self,
        record: CollectionRecord,
        query: str,
        *,
        k: int = 5,
        mode: SearchMode = "hybrid",
        threshold: float | None = None,
        mmr: float | None = None,
        paths: list[str] | None = None,
    ) -> list[SearchHit]:
        """The ``k`` best chunks for ``query``; ``paths`` are globs over document paths."""
        if not query.strip():
            raise InvalidRequest("the query is empty", param="query")
        if not 1 <= k <= 100:
            raise InvalidRequest("k must be between 1 and 100", param="k")
        store = self.collections.store
        if record.dim is None:
            return []  # nothing ingested yet
        allowed = await asyncio.to_thread(_allowed_chunks, self.collections, record, paths)
        query_vector = (await self.collections.embed(record, [query]))[0]
        fetch = k * _CANDIDATES
        vector_ids: list[int] = []
        keyword_ids: list[int] = []
        if mode in ("hybrid", "vector"):
            found = await asyncio.to_thread(
                self.collections.vectors.search, record, query_vector, fetch, allowed
            )
            vector_ids = [chunk_id for chunk_id, _ in found]
        if mode in ("hybrid", "keyword"):
            found = await asyncio.to_thread(store.keyword_search, record.id, query, fetch * 2)
            keyword_ids = [i for i, _ in found if allowed is None or i in allowed][:fetch]
        fused = reciprocal_rank_fusion([ids for ids in (vector_ids, keyword_ids) if ids])
        ids = [chunk_id for chunk_id, _ in fused]
        vectors = await asyncio.to_thread(_vectors, self.collections, record, ids)
        scored = [(i, float(vectors[i] @ query_vector)) for i in ids if i in vectors]
        if threshold is not None:
            scored = [(i, s) for i, s in scored if s >= threshold]
        order = {i: n for n, (i, _) in enumerate(fused)}
        scored.sort(key=lambda pair: order[pair[0]])  # fusion decides the order
        if mmr is not None and scored:
            relevance = [(i, 1.0 / (1 + order[i])) for i, _ in scored]
            picked = maximal_marginal_relevance(
                relevance,
                lambda a, b: float(vectors[a] @ vectors[b]),
                k=k,
                diversity=mmr,
            )
            cosine = dict(scored)
            scored = [(i, cosine[i]) for i, _ in picked]
        scored = scored[:k]
        chunks = await asyncio.to_thread(store.chunks, record.id, [i for i, _ in scored])
        by_id = {c.id: c for c in chunks}
        v_rank = {i: n + 1 for n, i in enumerate(vector_ids)}
        k_rank = {i: n + 1 for n, i in enumerate(keyword_ids)}
        return [
            SearchHit(by_id[i], score, n + 1, v_rank.get(i), k_rank.get(i))
            for n, (i, score) in enumerate(scored)
            if i in by_id
        ]


def _allowed_chunks(
    collections: Collections, record: CollectionRecord, paths: list[str] | None
) -> set[int] | None:
    if not paths:
        return None
    documents = collections.store.list_documents(record.id, limit=1_000_000)
    keep = [d.id for d in documents if any(fnmatch.fnmatch(d.path, p) for p in paths)]
    return set(collections.store.chunk_ids_of(keep))


def _vectors(
    collections: Collections, record: CollectionRecord, ids: list[int]
) -> dict[int, np.ndarray]:
    rows = collections.store.vectors(record.id, ids)
    return {i: np.frombuffer(blob, dtype=np.float32) for i, blob in rows}
