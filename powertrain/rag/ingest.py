"""Ingest: files → documents → chunks → vectors → store and index, idempotent by content hash.

A file whose bytes hash as before is skipped without reading further; a
changed file replaces its chunks in one transaction; with ``remove_missing``,
documents whose file is gone are deleted. One malformed file is reported and
leaves nothing half-written; the others go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from powertrain.errors import InvalidRequest, PowertrainError
from powertrain.rag.chunking import chunk_document
from powertrain.rag.library import Collections
from powertrain.rag.loaders import LoadedDocument, discover, load_file
from powertrain.store.collections import CollectionRecord, NewChunk

EMBED_BATCH = 64

Progress = Callable[[str, int, int], None]  # (path, done, total)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    chunks: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "chunks": self.chunks,
        }


class Ingester:
    def __init__(self, collections: Collections):
        self.collections = collections

    async def ingest_path(
        self,
        record: CollectionRecord,
        path: Path,
        *,
        include: Sequence[str] = ("**/*",),
        exclude: Sequence[str] = (),
        remove_missing: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        """A file, or every supported file under a directory (``include``/``exclude`` globs)."""
        is_dir = await asyncio.to_thread(path.is_dir)
        root, files = await asyncio.to_thread(_files, path, is_dir, include, exclude)
        report = IngestReport()
        known = await asyncio.to_thread(self.collections.store.document_hashes, record.id)
        seen: set[str] = set()
        for done, file in enumerate(files, 1):
            relative = file.relative_to(root).as_posix()
            seen.add(relative)
            try:
                # Loading goes through the loader's path checks (symlinks, FIFOs, size)
                # before anything is read; it costs little next to embedding.
                doc = await asyncio.to_thread(load_file, root, file)
                if known.get(relative) == doc.content_hash:
                    report.unchanged.append(relative)
                else:
                    report.chunks += await self.store_document(record, doc, persist=False)
                    (report.updated if relative in known else report.added).append(relative)
            except PowertrainError as exc:
                report.failed.append((relative, exc.message))
            if progress is not None:
                progress(relative, done, len(files))
        if remove_missing and is_dir:
            for gone in sorted(set(known) - seen):
                await self.remove(record, gone, persist=False)
                report.removed.append(gone)
        if report.added or report.updated or report.removed:
            # Once per run, not once per file: saving an index file costs ~0.5 s at 100k.
            await asyncio.to_thread(self.collections.vectors.persist, record)
        return report

    async def store_document(
        self, record: CollectionRecord, doc: LoadedDocument, *, persist: bool = True
    ) -> int:
        """Chunk, embed and store one document, replacing its previous chunks; the chunk count."""
        settings = record.settings
        embedder = await self.collections.embedder(record)
        pieces = chunk_document(
            doc,
            count_tokens=embedder.count_text,
            max_tokens=int(settings.get("chunk_tokens", 256)),
            overlap_tokens=int(settings.get("overlap_tokens", 32)),
        )
        texts = [_embedding_text(doc, piece.heading_path, piece.text) for piece in pieces]
        vectors = np.zeros((0, 0), dtype=np.float32)
        for start in range(0, len(texts), EMBED_BATCH):
            batch = await self.collections.embed(record, texts[start : start + EMBED_BATCH])
            vectors = batch if start == 0 else np.vstack([vectors, batch])
        new_chunks = [
            NewChunk(
                text=piece.text,
                idx=piece.index,
                token_count=piece.token_count,
                heading_path=list(piece.heading_path),
                page=piece.page,
                vector=vectors[i].tobytes(),
            )
            for i, piece in enumerate(pieces)
        ]
        vectors_of = self.collections.vectors
        await asyncio.to_thread(vectors_of.prepare, record)
        outcome = await asyncio.to_thread(
            self.collections.store.replace_document,
            record.id,
            path=doc.path,
            title=doc.title,
            media_type=doc.media_type,
            content_hash=doc.content_hash,
            size=doc.size,
            metadata={},
            new_chunks=new_chunks,
        )
        if len(pieces):
            dim = int(vectors.shape[1])
            await asyncio.to_thread(self.collections.store.set_dim, record.id, dim)
            await asyncio.to_thread(
                vectors_of.apply, record, dim, outcome.removed, outcome.added, vectors
            )
        elif outcome.removed and record.dim:
            await asyncio.to_thread(
                vectors_of.apply, record, record.dim, outcome.removed, [], vectors
            )
        if persist:
            await asyncio.to_thread(vectors_of.persist, record)
        return len(pieces)

    async def remove(self, record: CollectionRecord, path: str, *, persist: bool = True) -> bool:
        """Delete one document, its chunks and their vectors (RELIABILITY 20)."""
        vectors_of = self.collections.vectors
        await asyncio.to_thread(vectors_of.prepare, record)
        removed = await asyncio.to_thread(self.collections.store.delete_document, record.id, path)
        if removed is None:
            return False
        if removed and record.dim:
            empty = np.zeros((0, record.dim), dtype=np.float32)
            await asyncio.to_thread(vectors_of.apply, record, record.dim, removed, [], empty)
            if persist:
                await asyncio.to_thread(vectors_of.persist, record)
        return True


def _files(
    path: Path, is_dir: bool, include: Sequence[str], exclude: Sequence[str]
) -> tuple[Path, list[Path]]:
    if not is_dir:
        if not path.is_file():
            raise InvalidRequest(f"{str(path)!r} is neither a file nor a directory")
        return path.parent, [path]
    if exclude:
        return path, discover(path, include=list(include), exclude=list(exclude))
    return path, discover(path, include=list(include))


def _embedding_text(doc: LoadedDocument, heading_path: Sequence[str], text: str) -> str:
    # The title and headings say what a chunk is about even when its text does not.
    context = " > ".join([doc.title, *heading_path])
    return f"{context}\n{text}" if context else text
