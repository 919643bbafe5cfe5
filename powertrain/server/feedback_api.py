"""``/api/feedback``: thumbs, scores, labels, comments and corrected outputs on traces.

A key gives and reads feedback only on its own calls' traces (the admin key on
all); another key's trace id is "not found", exactly like an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from powertrain.feedback import FeedbackCreate, FeedbackService
from powertrain.gateway import Gateway
from powertrain.server.auth import Access, Principal, policy

router = APIRouter(tags=["feedback"])

Caller = Annotated[Principal, policy(Access.KEY)]
TraceId = Annotated[str, Path(max_length=64)]


async def _service(request: Request) -> FeedbackService:
    gateway: Gateway = request.app.state.gateway
    with contextlib.suppress(Exception):  # a store outage shows as an error just after
        await gateway.traces.flush()  # a trace answered a moment ago is findable
    return FeedbackService(gateway.database)


@router.post("/api/feedback", status_code=201)
async def give_feedback(body: FeedbackCreate, request: Request, principal: Caller) -> Any:
    """Feedback on one trace: at least one of thumb, score, label, comment or correction."""
    service = await _service(request)
    record = await asyncio.to_thread(
        service.give, body, scope=principal.scope, api_key_id=principal.key_id
    )
    return record.to_json()


@router.get("/api/feedback")
async def list_feedback(
    request: Request,
    principal: Caller,
    trace_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> dict[str, Any]:
    """A trace's feedback, oldest first."""
    service = await _service(request)
    records = await asyncio.to_thread(service.list_for, trace_id, scope=principal.scope)
    return {"data": [r.to_json() for r in records]}


@router.get("/api/traces/{trace_id}/feedback")
async def trace_feedback(trace_id: TraceId, request: Request, principal: Caller) -> dict[str, Any]:
    """The same as ``GET /api/feedback?trace_id=…``."""
    service = await _service(request)
    records = await asyncio.to_thread(service.list_for, trace_id, scope=principal.scope)
    return {"data": [r.to_json() for r in records]}
