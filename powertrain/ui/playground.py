"""The playground: any model, route or task (and variant), alone or two side by side.

Each run is an ordinary gateway call (``Gateway.chat`` or ``TaskRunner.run``) made
with the signed-in key and ``source = "ui"``: it is limited, budgeted, guarded,
cached and traced exactly like a call to ``/v1/chat/completions``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from powertrain.access import KeyService
from powertrain.calls import CallContext
from powertrain.engines.registry import engine_classes
from powertrain.errors import InvalidRequest, PowertrainError
from powertrain.gateway import Gateway
from powertrain.schemas import ChatCompletionRequest
from powertrain.server.auth import Principal
from powertrain.tasks.definition import PromptVersion
from powertrain.tasks.registry import LoadedTask
from powertrain.ui.render import UIRoute, page
from powertrain.ui.session import Viewer, gateway_of, read_fields

router = APIRouter(route_class=UIRoute, include_in_schema=False)

MAX_MESSAGE_CHARS = 100_000


class PlaygroundTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=300)  # a model, a route, or task:<name>
    variant: str | None = Field(default=None, max_length=256)


class PlaygroundRequest(BaseModel):
    """One input, run on one target or two (compare)."""

    model_config = ConfigDict(extra="forbid")
    runs: list[PlaygroundTarget] = Field(min_length=1, max_length=2)
    system: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)
    user: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)
    variables: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    seed: int | None = None


def _chat_models(gateway: Gateway, principal: Principal) -> list[str]:
    classes = engine_classes()
    names = []
    for model in gateway.config.catalog:
        cls = classes.get(model.engine)
        if (
            cls is not None
            and cls.capabilities.chat
            and KeyService.may_use(principal.key, model.alias)
        ):
            names.append(model.alias)
    names += [r.name for r in gateway.config.routes if KeyService.may_use(principal.key, r.name)]
    return names


def _task_info(task: LoadedTask) -> dict[str, Any]:
    """What the form needs of a task: its variants and the production version's variables."""
    version: PromptVersion | None
    try:
        _number, version = task.resolve("production")
    except InvalidRequest:
        version = task.versions[max(task.versions)] if task.versions else None
    variables = (
        {
            name: {"type": spec.type, "required": spec.required, "description": spec.description}
            for name, spec in version.variables.items()
        }
        if version is not None
        else {}
    )
    return {"variants": list(task.settings.effective_variants()), "variables": variables}


def _tasks(gateway: Gateway, principal: Principal) -> dict[str, dict[str, Any]]:
    allowed = principal.key.allowed_tasks if principal.key is not None else None
    return {
        t.name: _task_info(t)
        for t in gateway.tasks.registry.all()
        if allowed is None or t.name in allowed
    }


@router.get("/ui/playground")
async def playground_page(request: Request, principal: Viewer) -> Response:
    gateway = gateway_of(request)
    tasks = await asyncio.to_thread(_tasks, gateway, principal)
    return page(
        request,
        "playground.html",
        principal,
        title="Playground",
        models=_chat_models(gateway, principal),
        tasks=tasks,
        default_model=gateway.config.settings.default_model,
    )


def _parsed(fields: dict[str, Any]) -> PlaygroundRequest:
    try:
        return PlaygroundRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}", param=where or None) from None


async def _run_one(
    gateway: Gateway, principal: Principal, run: PlaygroundTarget, body: PlaygroundRequest
) -> dict[str, Any]:
    ctx = CallContext(api_key_id=principal.key_id, source="ui", key=principal.key)
    outcome: dict[str, Any] = {"target": run.target, "variant": run.variant}
    started = time.perf_counter()
    try:
        if run.target.startswith("task:"):
            result = await gateway.tasks.run(
                run.target.removeprefix("task:"), body.variables or {}, ctx, variant=run.variant
            )
            trace_id, output = result.trace_id, result.text
            outcome.update(variant=result.variant, version=result.version, model=result.model)
        else:
            messages = [{"role": "user", "content": body.user or ""}]
            if body.system:
                messages.insert(0, {"role": "system", "content": body.system})
            params = body.model_dump(
                include={"temperature", "max_tokens", "seed"}, exclude_none=True
            )
            try:
                request = ChatCompletionRequest.model_validate(
                    {"model": run.target, "messages": messages, **params}
                )
            except ValidationError as exc:
                raise InvalidRequest(str(exc.errors(include_url=False)[0]["msg"])) from None
            call, chat = await gateway.chat(request, ctx)
            trace_id, output = call.trace_id, chat.content
            outcome["model"] = run.target
    except PowertrainError as exc:
        outcome.update(error=exc.message, error_type=exc.error_type, trace_id=exc.trace_id)
        return outcome
    outcome.update(output=output, trace_id=trace_id)
    trace = gateway.traces.find_pending(trace_id) or await asyncio.to_thread(
        gateway.trace_store.get, trace_id
    )
    if trace is not None:
        outcome.update(
            prompt_tokens=trace.prompt_tokens,
            completion_tokens=trace.completion_tokens,
            cost_usd=trace.cost_usd,
            latency_ms=trace.latency_ms,
            ttft_ms=trace.ttft_ms,
            status=trace.status,
        )
    else:  # not written yet and no longer pending: what this request measured
        outcome["latency_ms"] = (time.perf_counter() - started) * 1000
    return outcome


@router.post("/ui/playground/run")
async def playground_run(request: Request, principal: Viewer) -> JSONResponse:
    """Run the input on each target at once; every run is a trace like any other."""
    body = _parsed(await read_fields(request))
    kinds = {r.target.startswith("task:") for r in body.runs}
    if len(kinds) > 1:
        raise InvalidRequest("compare two models, or two variants of tasks, not one of each")
    if True in kinds and body.variables is None:
        raise InvalidRequest("a task needs its variables", param="variables")
    if False in kinds and not (body.user or "").strip():
        raise InvalidRequest("write a user message", param="user")
    gateway = gateway_of(request)
    results = await asyncio.gather(*(_run_one(gateway, principal, r, body) for r in body.runs))
    return JSONResponse({"results": list(results)})
