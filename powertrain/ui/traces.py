"""Traces: the filtered list, one trace in full, feedback on it, and the annotation queue.

Reads go through the same store calls and scope as ``/api/traces`` (a virtual
key sees only its own calls; another key's trace is "not found"); feedback goes
through ``FeedbackService`` exactly as ``POST /api/feedback`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from powertrain.errors import InvalidRequest
from powertrain.feedback import FeedbackRecord, FeedbackService, feedback_request
from powertrain.schemas.trace import Trace
from powertrain.server import api
from powertrain.server.auth import Principal
from powertrain.store import TraceFilter
from powertrain.store.feedback import FeedbackStore
from powertrain.store.traces import FeedbackState
from powertrain.ui.render import UIRoute, page, query_string
from powertrain.ui.session import Viewer, author_of, gateway_of, read_fields

router = APIRouter(route_class=UIRoute, include_in_schema=False)

PAGE_SIZE = 50
QUEUE_SIZE = 25
RANGES = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
STATUSES = ("ok", "error", "cancelled")
FEEDBACK_STATES: tuple[str, ...] = get_args(FeedbackState)
TraceId = Annotated[str, Path(max_length=64)]


@dataclass(frozen=True)
class FeedbackSummary:
    """What the list shows of a trace's feedback: the latest of each signal."""

    count: int
    thumb: str | None
    label: str | None
    corrected: bool

    @classmethod
    def of(cls, items: list[FeedbackRecord]) -> FeedbackSummary:
        def latest(name: str) -> Any:
            return next(
                (getattr(i, name) for i in reversed(items) if getattr(i, name) is not None), None
            )

        return cls(len(items), latest("thumb"), latest("label"), latest("correction") is not None)


def _choice(value: str | None, allowed: tuple[str, ...] | dict[str, Any], what: str) -> str | None:
    if value in (None, ""):
        return None
    if value not in allowed:
        raise InvalidRequest(f"{what} must be one of {', '.join(allowed)}", param=what)
    return value


def _text(value: str | None, limit: int = 256) -> str | None:
    value = (value or "").strip()
    return value[:limit] or None


async def _flushed(request: Request) -> None:
    """A trace answered a moment ago is listed (as ``/api/traces`` does)."""
    with contextlib.suppress(Exception):  # a store outage shows as an error from the read
        await gateway_of(request).traces.flush()


def _filters(principal: Principal, params: dict[str, str | None]) -> TraceFilter:
    window = _choice(params.get("range"), RANGES, "range")
    key = _text(params.get("key"), 64)
    return TraceFilter(
        model=_text(params.get("model")),
        task=_text(params.get("task")),
        variant=_text(params.get("variant")),
        status=_choice(params.get("status"), STATUSES, "status"),
        feedback=_choice(params.get("feedback"), FEEDBACK_STATES, "feedback"),  # type: ignore[arg-type]
        search=_text(params.get("q"), 200),
        since=datetime.now(UTC) - RANGES[window] if window else None,
        # Exactly the API's rule: a virtual key's own scope cannot be widened.
        api_key_id=principal.scope or key,
    )


def request_view(trace: Trace) -> dict[str, Any]:
    """The request as a person reads it: messages (role, text) and task variables."""
    request = trace.request
    messages = []
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        messages.append({"role": str(message.get("role", "?")), "text": text})
    variables = request.get("variables")
    params = {k: v for k, v in request.items() if k not in ("messages", "variables", "model")}
    return {
        "messages": messages,
        "variables": variables if isinstance(variables, dict) else None,
        "params": params,
    }


def input_preview(trace: Trace) -> str:
    view = request_view(trace)
    if view["variables"]:
        return "; ".join(f"{k}={v}" for k, v in view["variables"].items())
    users = [m["text"] for m in view["messages"] if m["role"] == "user"]
    return users[-1] if users else ""


async def _listed(
    request: Request, filters: TraceFilter, limit: int, cursor: str | None
) -> tuple[list[Trace], str | None, dict[str, FeedbackSummary]]:
    gateway = gateway_of(request)
    await _flushed(request)
    found = await asyncio.to_thread(gateway.trace_store.list, filters, limit=limit, cursor=cursor)
    given = await asyncio.to_thread(
        FeedbackStore(gateway.database).for_traces, [t.id for t in found.data]
    )
    summaries = {t: FeedbackSummary.of(items) for t, items in given.items()}
    return found.data, found.next_cursor, summaries


@router.get("/ui/traces")
async def traces_page(
    request: Request,
    principal: Viewer,
    model: str | None = None,
    task: str | None = None,
    variant: str | None = None,
    key: str | None = None,
    status: str | None = None,
    feedback: str | None = None,
    q: str | None = None,
    window: Annotated[str | None, Query(alias="range")] = None,
    cursor: str | None = None,
) -> Response:
    params = {
        "model": model,
        "task": task,
        "variant": variant,
        "key": key if principal.admin else None,
        "status": status,
        "feedback": feedback,
        "q": q,
        "range": window,
    }
    filters = _filters(principal, params)
    rows, next_cursor, summaries = await _listed(request, filters, PAGE_SIZE, _text(cursor, 64))
    gateway = gateway_of(request)
    registry = gateway.tasks.registry
    task_names = [t.name for t in await asyncio.to_thread(registry.store.list_tasks)]
    keep = {k: v for k, v in params.items() if v}
    return page(
        request,
        "traces.html",
        principal,
        title="Traces",
        rows=rows,
        feedback=summaries,
        params=params,
        models=[m.alias for m in gateway.config.catalog] + [r.name for r in gateway.config.routes],
        tasks=task_names,
        ranges=list(RANGES),
        statuses=STATUSES,
        feedback_states=FEEDBACK_STATES,
        filtered=bool(keep),
        next_link=query_string(**keep, cursor=next_cursor) if next_cursor else None,
        first_link=query_string(**keep) if cursor else None,
        input_preview=input_preview,
    )


@router.get("/ui/traces/{trace_id}")
async def trace_page(
    trace_id: TraceId, request: Request, principal: Viewer, saved: str | None = None
) -> Response:
    trace = await api.get_trace(trace_id, request, principal)  # the API's lookup and scope
    service = FeedbackService(gateway_of(request).database)
    given = await asyncio.to_thread(service.list_for, trace.id, scope=principal.scope)
    metadata = dict(trace.metadata)
    return page(
        request,
        "trace.html",
        principal,
        title=f"Trace {trace.id}",
        trace=trace,
        view=request_view(trace),
        prompt=metadata.get("prompt") if isinstance(metadata.get("prompt"), list) else None,
        retrieval=metadata.get("retrieval")
        if isinstance(metadata.get("retrieval"), dict)
        else None,
        guardrails=[g for g in metadata.get("guardrails") or [] if isinstance(g, dict)],
        cache=metadata.get("cache") if isinstance(metadata.get("cache"), dict) else None,
        route=metadata.get("route") if isinstance(metadata.get("route"), dict) else None,
        feedback=given,
        saved=saved == "1",
    )


def _correction(value: Any) -> Any:
    """A corrected output as typed: JSON when it reads as an object or a list, else text."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if text[0] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return value


def _score(fields: dict[str, Any]) -> tuple[float | None, float | None]:
    def number(name: str) -> float | None:
        value = fields.get(name)
        if value in (None, ""):
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidRequest(f"{name} must be a number", param=name) from None

    return number("score"), number("scale")


@router.post("/ui/traces/{trace_id}/feedback")
async def give_feedback(trace_id: TraceId, request: Request, principal: Viewer) -> Response:
    """Feedback from the trace page's form or the annotation queue's script."""
    fields = await read_fields(request)
    score, scale = _score(fields)
    body = feedback_request(
        trace_id,
        thumb=_text(fields.get("thumb") if isinstance(fields.get("thumb"), str) else None),
        label=_text(fields.get("label") if isinstance(fields.get("label"), str) else None, 128),
        comment=(str(fields.get("comment") or "").strip() or None),
        correction=_correction(fields.get("correction")),
        score=score,
        scale=scale,
        source="human",
        author=author_of(principal),
    )
    await _flushed(request)
    service = FeedbackService(gateway_of(request).database)
    record = await asyncio.to_thread(
        service.give, body, scope=principal.scope, api_key_id=principal.key_id
    )
    if request.headers.get("content-type", "").startswith("application/json"):
        return JSONResponse(record.to_json(), status_code=201)
    return RedirectResponse(f"/ui/traces/{trace_id}?saved=1#feedback", status_code=303)


@router.get("/ui/annotate")
async def annotate_page(
    request: Request,
    principal: Viewer,
    task: str | None = None,
    model: str | None = None,
) -> Response:
    """Traces no one has given feedback yet, oldest of the newest batch first."""
    filters = TraceFilter(
        task=_text(task),
        model=_text(model),
        status="ok",
        feedback="none",
        api_key_id=principal.scope,
    )
    rows, _next, _given = await _listed(request, filters, QUEUE_SIZE, None)
    waiting = await asyncio.to_thread(gateway_of(request).trace_store.count, filters)
    gateway = gateway_of(request)
    task_names = [t.name for t in await asyncio.to_thread(gateway.tasks.registry.store.list_tasks)]
    return page(
        request,
        "annotate.html",
        principal,
        title="Annotation queue",
        rows=rows,
        waiting=waiting,
        task=task or "",
        model=model or "",
        tasks=task_names,
        models=[m.alias for m in gateway.config.catalog],
        view_of=request_view,
    )
