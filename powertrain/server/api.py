"""powertrain's own API and the framework-served routes (health, models, traces, docs)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import text

from powertrain.errors import NotFound
from powertrain.gateway import Gateway
from powertrain.schemas.trace import Trace
from powertrain.server.auth import Access, Principal, policy
from powertrain.store import TraceFilter, TracePage

router = APIRouter()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


@router.get("/healthz", dependencies=[policy(Access.PUBLIC)], tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    dependencies=[policy(Access.PUBLIC)],
    tags=["health"],
    responses={503: {"description": "the store is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the store answers and the trace writer runs."""
    gateway = _gateway(request)

    def ping() -> None:
        with gateway.database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        async with asyncio.timeout(5):
            await asyncio.to_thread(ping)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "store": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ready", "pending_traces": gateway.traces.pending})


def _model_entry(model: Any) -> dict[str, Any]:
    return {
        "id": model.alias,
        "object": "model",
        "created": 0,
        "owned_by": f"powertrain:{model.engine}",
        "context_window": model.context_window,
        "pricing": {"input_per_1m": model.price_input, "output_per_1m": model.price_output},
    }


@router.get("/v1/models", dependencies=[policy(Access.KEY)], tags=["openai"])
async def list_models(request: Request) -> dict[str, Any]:
    """The catalog, in OpenAI's list shape."""
    return {"object": "list", "data": [_model_entry(m) for m in _gateway(request).config.catalog]}


@router.get("/v1/models/{model_id:path}", dependencies=[policy(Access.KEY)], tags=["openai"])
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _model_entry(_gateway(request).config.catalog.get(model_id))


@router.get("/api/traces", tags=["traces"], response_model=TracePage)
async def list_traces(
    request: Request,
    principal: Annotated[Principal, policy(Access.ADMIN)],
    model: str | None = None,
    status: Annotated[str | None, Query(pattern="^(ok|error|cancelled)$")] = None,
    task: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> TracePage:
    """Traces, newest first; pass ``next_cursor`` back as ``cursor`` for older ones."""
    gateway = _gateway(request)
    with contextlib.suppress(Exception):  # a store outage shows as an error from list below
        await gateway.traces.flush()
    store = gateway.trace_store
    filters = TraceFilter(model=model, status=status, task=task, since=since, until=until)
    return await asyncio.to_thread(store.list, filters, limit=limit, cursor=cursor)


@router.get("/api/traces/{trace_id}", tags=["traces"], response_model=Trace)
async def get_trace(
    trace_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: Annotated[Principal, policy(Access.ADMIN)],
) -> Trace:
    gateway = _gateway(request)
    trace = gateway.traces.find_pending(trace_id) or await asyncio.to_thread(
        gateway.trace_store.get, trace_id
    )
    if trace is None:
        raise NotFound(f"no trace with id {trace_id!r}")
    return trace


DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>powertrain API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""


@router.get("/docs", dependencies=[policy(Access.PUBLIC)], include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI, served from the installed swagger-ui-bundle (no CDN)."""
    return HTMLResponse(DOCS_HTML)


@router.get("/openapi.json", dependencies=[policy(Access.PUBLIC)], include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi_schema())
