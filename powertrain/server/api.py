"""powertrain's own API and the framework-served routes (health, models, traces, docs)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import text

from powertrain.access.keys import KeyService
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


@router.get("/v1/models", tags=["openai"])
async def list_models(
    request: Request, principal: Annotated[Principal, policy(Access.KEY)]
) -> dict[str, Any]:
    """The catalog (the models this key may use), in OpenAI's list shape."""
    gateway = _gateway(request)
    # Models fine-tuned since the last look, even a moment ago: a listing is no hot path.
    await gateway.registered.refresh(force=True)
    config = gateway.config
    models = [_model_entry(m) for m in config.catalog if KeyService.may_use(principal.key, m.alias)]
    routes = [_route_entry(r) for r in config.routes if KeyService.may_use(principal.key, r.name)]
    return {"object": "list", "data": models + routes}


@router.get("/v1/models/{model_id:path}", tags=["openai"])
async def get_model(
    model_id: str, request: Request, principal: Annotated[Principal, policy(Access.KEY)]
) -> dict[str, Any]:
    if principal.key is not None:
        KeyService.check_model(principal.key, model_id)
    gateway = _gateway(request)
    route = gateway.config.routes.get(model_id)
    if route is not None:
        return _route_entry(route)
    return _model_entry(await gateway.model(model_id))


def _route_entry(route: Any) -> dict[str, Any]:
    """A route listed like a model: clients call it by name."""
    return {
        "id": route.name,
        "object": "model",
        "created": 0,
        "owned_by": f"powertrain:route:{route.strategy}",
    }


@router.get("/api/traces", tags=["traces"], response_model=TracePage)
async def list_traces(
    request: Request,
    principal: Annotated[Principal, policy(Access.KEY)],
    model: str | None = None,
    status: Annotated[str | None, Query(pattern="^(ok|error|cancelled)$")] = None,
    task: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    api_key_id: Annotated[
        str | None, Query(max_length=64, description="Only this key's (admin key only).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> TracePage:
    """Traces, newest first; pass ``next_cursor`` back as ``cursor`` for older ones.

    A virtual key sees only its own calls' traces; the admin key sees all.
    """
    gateway = _gateway(request)
    with contextlib.suppress(Exception):  # a store outage shows as an error from list below
        await gateway.traces.flush()
    store = gateway.trace_store
    filters = TraceFilter(
        model=model,
        status=status,
        task=task,
        since=since,
        until=until,
        api_key_id=principal.scope or api_key_id,
    )
    return await asyncio.to_thread(store.list, filters, limit=limit, cursor=cursor)


@router.get("/api/traces/{trace_id}", tags=["traces"], response_model=Trace)
async def get_trace(
    trace_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: Annotated[Principal, policy(Access.KEY)],
) -> Trace:
    """One trace; a virtual key can read only its own (another's is "not found")."""
    gateway = _gateway(request)
    scope = principal.scope
    trace = gateway.traces.find_pending(trace_id)
    if trace is not None and scope is not None and trace.api_key_id != scope:
        trace = None
    if trace is None:
        trace = await asyncio.to_thread(gateway.trace_store.get, trace_id, api_key_id=scope)
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
