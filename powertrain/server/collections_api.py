"""``/api/collections``: knowledge bases, their documents, and search.

A collection belongs to the key that made it; every route looks it up under the
caller's own key, so another key's collection is simply "not found". Documents
are uploaded with ``PUT …/documents/{path}`` (the raw file as the body): the
same path replaces the document, identical bytes change nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from powertrain.access import KeyService
from powertrain.gateway import Gateway
from powertrain.rag.library import DEFAULT_EMBEDDING_MODEL, CollectionNotFound
from powertrain.rag.loaders import load_file, safe_relative_path
from powertrain.server.auth import Access, Principal, policy
from powertrain.store.collections import ADMIN_OWNER, CollectionRecord

router = APIRouter(prefix="/api/collections", tags=["collections"])

Caller = Annotated[Principal, policy(Access.KEY)]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def owner_of(principal: Principal) -> str:
    """The admin key and an unauthenticated local server share one namespace."""
    return ADMIN_OWNER if principal.admin or principal.key_id is None else principal.key_id


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=128)
    embedding_model: str | None = None
    chunk_tokens: int = 256
    overlap_tokens: int = 32


class CollectionInfo(BaseModel):
    name: str
    embedding_model: str
    dim: int | None
    chunk_tokens: int
    overlap_tokens: int
    documents: int
    chunks: int
    created_at: Any


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(default=5, ge=1, le=100)
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"
    threshold: float | None = Field(default=None, ge=-1, le=1)
    mmr: float | None = Field(default=None, ge=0, le=1, description="Diversity, 0 to 1.")
    paths: list[str] | None = Field(default=None, description="Globs over document paths.")


async def _info(gateway: Gateway, record: CollectionRecord) -> CollectionInfo:
    documents, chunks = await asyncio.to_thread(gateway.collections.store.stats, record.id)
    return CollectionInfo(
        name=record.name,
        embedding_model=record.embedding_model,
        dim=record.dim,
        chunk_tokens=int(record.settings.get("chunk_tokens", 256)),
        overlap_tokens=int(record.settings.get("overlap_tokens", 32)),
        documents=documents,
        chunks=chunks,
        created_at=record.created_at,
    )


async def _record(request: Request, principal: Principal, name: str) -> CollectionRecord:
    collections = _gateway(request).collections
    return await asyncio.to_thread(collections.get, owner_of(principal), name)


@router.get("", response_model=list[CollectionInfo])
async def list_collections(request: Request, principal: Caller) -> list[CollectionInfo]:
    gateway = _gateway(request)
    records = await asyncio.to_thread(
        gateway.collections.store.list_collections, owner_of(principal)
    )
    return [await _info(gateway, r) for r in records]


@router.post("", status_code=201, response_model=CollectionInfo)
async def create_collection(
    body: CollectionCreate, request: Request, principal: Caller
) -> CollectionInfo:
    gateway = _gateway(request)
    if principal.key is not None:  # embedding the documents calls this model
        KeyService.check_model(principal.key, body.embedding_model or DEFAULT_EMBEDDING_MODEL)
    record = await asyncio.to_thread(
        gateway.collections.create,
        owner_of(principal),
        body.name,
        embedding_model=body.embedding_model,
        chunk_tokens=body.chunk_tokens,
        overlap_tokens=body.overlap_tokens,
    )
    return await _info(gateway, record)


@router.get("/{name}", response_model=CollectionInfo)
async def get_collection(name: str, request: Request, principal: Caller) -> CollectionInfo:
    return await _info(_gateway(request), await _record(request, principal, name))


@router.delete("/{name}", status_code=204)
async def delete_collection(name: str, request: Request, principal: Caller) -> Response:
    await asyncio.to_thread(_gateway(request).collections.delete, owner_of(principal), name)
    return Response(status_code=204)


@router.get("/{name}/documents")
async def list_documents(
    name: str,
    request: Request,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    record = await _record(request, principal, name)
    docs = await asyncio.to_thread(
        _gateway(request).collections.store.list_documents, record.id, limit=limit, offset=offset
    )
    return {
        "data": [
            {
                "path": d.path,
                "title": d.title,
                "media_type": d.media_type,
                "content_hash": d.content_hash,
                "size": d.size,
                "chunks": d.chunk_count,
                "updated_at": d.updated_at.isoformat(),
            }
            for d in docs
        ]
    }


@router.put("/{name}/documents/{path:path}")
async def upload_document(
    name: str, path: str, request: Request, principal: Caller
) -> dict[str, Any]:
    """Add or replace the document at ``path`` with the request body (the file's bytes)."""
    gateway = _gateway(request)
    relative = safe_relative_path(path)
    record = await _record(request, principal, name)
    data = await request.body()
    digest = hashlib.sha256(data).hexdigest()
    known = await asyncio.to_thread(gateway.collections.store.document_hashes, record.id)
    if known.get(relative.as_posix()) == digest:
        return {"path": relative.as_posix(), "status": "unchanged", "chunks": None}
    with tempfile.TemporaryDirectory(prefix="pt-upload-") as tmp:
        root = Path(tmp)
        file = root / relative
        await asyncio.to_thread(_write, file, data)
        doc = await asyncio.to_thread(load_file, root, file)
        chunks = await gateway.ingester.store_document(record, doc)
    status = "updated" if relative.as_posix() in known else "added"
    return {"path": relative.as_posix(), "status": status, "chunks": chunks}


def _write(file: Path, data: bytes) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)


@router.delete("/{name}/documents/{path:path}", status_code=204)
async def delete_document(name: str, path: str, request: Request, principal: Caller) -> Response:
    relative = safe_relative_path(path).as_posix()
    record = await _record(request, principal, name)
    if not await _gateway(request).ingester.remove(record, relative):
        raise CollectionNotFound(f"collection {name!r} has no document {relative!r}")
    return Response(status_code=204)


@router.post("/{name}/search")
async def search_collection(
    name: str, body: SearchRequest, request: Request, principal: Caller
) -> dict[str, Any]:
    """Hybrid (vector + keyword, fused by rank), vector-only or keyword-only search."""
    record = await _record(request, principal, name)
    hits = await _gateway(request).searcher.search(
        record,
        body.query,
        k=body.k,
        mode=body.mode,
        threshold=body.threshold,
        mmr=body.mmr,
        paths=body.paths,
    )
    return {"data": [hit.as_dict() for hit in hits]}
