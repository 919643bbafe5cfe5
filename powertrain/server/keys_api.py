"""``/api/keys``: virtual API keys, managed with the admin key.

``POST`` makes a key and returns its secret, once. ``GET`` lists keys with their
limits, spend and what is left of their budget. ``PATCH`` changes a key's
limits or budget; ``DELETE`` revokes it (revoked keys stay listed, with their
spend). A change made here applies on this worker at once and on others within
the key cache window (``docs/access.md``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from powertrain.access import KeyService
from powertrain.access.views import KeyCreate, KeyCreated, KeyInfo, KeyUpdate, check_models_exist
from powertrain.errors import NotFound
from powertrain.gateway import Gateway
from powertrain.server.auth import Access, policy

router = APIRouter(prefix="/api/keys", tags=["keys"], dependencies=[policy(Access.ADMIN)])

KeyId = Annotated[str, Path(max_length=64)]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _keys(request: Request) -> KeyService:
    return _gateway(request).keys


def _missing(key_id: str) -> NotFound:
    return NotFound(f"no API key with id {key_id!r}; GET /api/keys lists them")


@router.post("", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, request: Request) -> KeyCreated:
    """A new key; the response holds its secret, which is never shown again."""
    check_models_exist(_gateway(request).config.catalog, body.models)
    record, secret = await asyncio.to_thread(
        _keys(request).create,
        body.name,
        allowed_models=body.models,
        allowed_tasks=body.tasks,
        rpm=body.rpm,
        tpm=body.tpm,
        budget_usd=body.budget_usd,
    )
    return KeyCreated(**KeyInfo.of(record).model_dump(), key=secret)


@router.get("", response_model=list[KeyInfo])
async def list_keys(request: Request, include_revoked: bool = True) -> list[KeyInfo]:
    records = await asyncio.to_thread(
        _keys(request).store.list_keys, include_revoked=include_revoked
    )
    return [KeyInfo.of(r) for r in records]


@router.get("/{key_id}", response_model=KeyInfo)
async def get_key(key_id: KeyId, request: Request) -> KeyInfo:
    record = await asyncio.to_thread(_keys(request).store.get, key_id)
    if record is None:
        raise _missing(key_id)
    return KeyInfo.of(record)


@router.patch("/{key_id}", response_model=KeyInfo)
async def update_key(key_id: KeyId, body: KeyUpdate, request: Request) -> KeyInfo:
    """Change a key's name, models, tasks, rpm, tpm or budget (null lifts a limit)."""
    changes = body.changes()
    check_models_exist(_gateway(request).config.catalog, changes.get("allowed_models"))
    record = await asyncio.to_thread(_keys(request).update, key_id, **changes)
    if record is None:
        raise _missing(key_id)
    return KeyInfo.of(record)


@router.delete("/{key_id}", status_code=204)
async def revoke_key(key_id: KeyId, request: Request) -> Response:
    """Revoke a key: it stops working (on other workers within the key cache window)."""
    if await asyncio.to_thread(_keys(request).revoke, key_id) is None:
        raise _missing(key_id)
    return Response(status_code=204)
