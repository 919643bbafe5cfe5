"""``/api/datasets``: versioned datasets made from uploaded rows or from traces.

A dataset belongs to the key that made it; every route looks it up under the
caller's own key, so another key's dataset is "not found". Versions are
immutable: there is no route that changes one, only ``DELETE`` of the whole
dataset (every version and row with it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from powertrain.datasets import Datasets, TraceQuery, row_from_object, row_json, version_json
from powertrain.gateway import Gateway
from powertrain.server.auth import Access, Principal, policy
from powertrain.store.datasets import ADMIN_OWNER

router = APIRouter(prefix="/api/datasets", tags=["datasets"])

Caller = Annotated[Principal, policy(Access.KEY)]
Name = Annotated[str, Path(max_length=128)]
Version = Annotated[int | None, Query(ge=1, description="Default: the latest.")]
Split = Annotated[Literal["train", "test", "all"], Query()]


class DatasetCreate(BaseModel):
    """Rows (each as one JSONL line of a dataset file would be), or a trace filter."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=128)
    rows: list[Any] | None = Field(default=None, max_length=100_000)
    from_traces: TraceQuery | None = None
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    seed: int = Field(default=0, ge=-(2**31), lt=2**31)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetCreate:
        if (self.rows is None) == (self.from_traces is None):
            raise ValueError("give rows or from_traces (one of them)")
        return self


def owner_of(principal: Principal) -> str:
    return ADMIN_OWNER if principal.admin or principal.key_id is None else principal.key_id


def _datasets(request: Request) -> Datasets:
    gateway: Gateway = request.app.state.gateway
    return Datasets(gateway.database, gateway.tasks.registry)


@router.post("", status_code=201)
async def create_dataset(
    body: DatasetCreate, request: Request, response: Response, principal: Caller
) -> dict[str, Any]:
    """A new version (201), or the existing one holding the same content (200)."""
    datasets = _datasets(request)
    if body.rows is not None:
        rows = [row_from_object(r, f"rows[{n}]") for n, r in enumerate(body.rows)]
        origin: dict[str, Any] = {"kind": "upload"}
    else:
        assert body.from_traces is not None
        gateway: Gateway = request.app.state.gateway
        with contextlib.suppress(Exception):
            await gateway.traces.flush()
        rows = await asyncio.to_thread(
            datasets.rows_from_traces, body.from_traces, scope=principal.scope
        )
        origin = {"kind": "traces", **body.from_traces.model_dump(mode="json", exclude_none=True)}
    outcome = await asyncio.to_thread(
        datasets.create,
        owner_of(principal),
        body.name,
        rows,
        test_fraction=body.test_fraction,
        seed=body.seed,
        origin=origin,
    )
    if not outcome.created:
        response.status_code = 200
    return outcome.to_json()


@router.get("")
async def list_datasets(request: Request, principal: Caller) -> dict[str, Any]:
    found = await asyncio.to_thread(_datasets(request).list_datasets, owner_of(principal))
    return {
        "data": [
            {
                "name": d.name,
                "created_at": d.created_at.isoformat(),
                "latest": version_json(v) if v is not None else None,
            }
            for d, v in found
        ]
    }


@router.get("/{name}")
async def get_dataset(name: Name, request: Request, principal: Caller) -> dict[str, Any]:
    datasets = _datasets(request)
    owner = owner_of(principal)
    record = await asyncio.to_thread(datasets.get, owner, name)
    versions = await asyncio.to_thread(datasets.versions, owner, name)
    return {
        "name": record.name,
        "created_at": record.created_at.isoformat(),
        "versions": [version_json(v) for v in versions],
    }


@router.get("/{name}/rows")
async def dataset_rows(
    name: Name,
    request: Request,
    principal: Caller,
    version: Version = None,
    split: Split = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """A page of a version's rows, in their stored order."""
    found, rows = await asyncio.to_thread(
        _datasets(request).rows,
        owner_of(principal),
        name,
        version,
        split=split,
        limit=limit + 1,
        offset=offset,
    )
    more = len(rows) > limit
    return {
        "name": name,
        "version": found.version,
        "data": [row_json(r) for r in rows[:limit]],
        "next_offset": offset + limit if more else None,
    }


@router.get("/{name}/export")
async def export_dataset(
    name: Name,
    request: Request,
    principal: Caller,
    version: Version = None,
    split: Split = "all",
    format: Annotated[Literal["openai", "eval"], Query()] = "openai",
    task: Annotated[str | None, Query(max_length=128)] = None,
) -> StreamingResponse:
    """JSON lines: OpenAI chat fine-tuning records, or eval cases (``{vars, expected}``)."""
    datasets = _datasets(request)
    found, lines = await asyncio.to_thread(
        datasets.export, owner_of(principal), name, version, fmt=format, split=split, task=task
    )
    # Rendered up front so a row that cannot be rendered is a clean error, not a cut stream.
    body = await asyncio.to_thread(list, lines)

    def chunks() -> Iterator[bytes]:
        yield from body

    return StreamingResponse(
        chunks(),
        media_type="application/x-ndjson",
        headers={"x-powertrain-dataset-version": str(found.version)},
    )


@router.delete("/{name}", status_code=204)
async def delete_dataset(name: Name, request: Request, principal: Caller) -> Response:
    """Delete the dataset with every version and row."""
    await asyncio.to_thread(_datasets(request).delete, owner_of(principal), name)
    return Response(status_code=204)
