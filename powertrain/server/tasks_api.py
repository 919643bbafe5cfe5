"""``/api/tasks``: define, version, label, render and run tasks over HTTP.

Reading and running need a key; defining, versioning and moving labels need
the admin key. Tasks defined in ``powertrain.toml`` can be versioned and
labelled here, but their settings belong to the file.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from powertrain.access import KeyService
from powertrain.calls import CallContext
from powertrain.errors import InvalidRequest
from powertrain.gateway import Gateway
from powertrain.server.auth import Access, Principal, policy
from powertrain.tasks.definition import (
    LABEL_NAME,
    TaskDefinition,
    check_models,
    parse_settings,
    parse_version,
)
from powertrain.tasks.views import (
    TaskDetail,
    TaskRunResponse,
    TaskSummary,
    VersionInfo,
    describe,
    summarize,
)

router = APIRouter(prefix="/api/tasks", tags=["tasks"])
# DESIGN's short form of the run route, beside the OpenAI surface.
v1_router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

TaskName = Annotated[str, Path(max_length=128)]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


class TaskRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any] = Field(default_factory=dict)
    variant: str | None = Field(default=None, max_length=64, description="Pin a variant.")
    version: int | str | None = Field(
        default=None, description="Pin a version number or label (overrides the variant's)."
    )
    include_reasoning: bool = False
    user: str | None = Field(
        default=None, max_length=256, description="Sticky variant assignment key."
    )


class RenderResponse(BaseModel):
    task: str
    variant: str
    version: int
    model: str
    messages: list[dict[str, str]]
    prompt_tokens: int | None
    examples_used: int
    examples_dropped: int


class LabelMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class VersionCreated(BaseModel):
    version: int
    created: bool = Field(description="False when identical content already had this number.")


async def _detail(gateway: Gateway, name: str) -> TaskDetail:
    registry = gateway.tasks.registry
    task = await asyncio.to_thread(registry.get, name)
    records = await asyncio.to_thread(registry.version_records, name)
    return describe(task, records, gateway.config.settings.default_model)


@router.get("", dependencies=[policy(Access.KEY)], response_model=list[TaskSummary])
async def list_tasks(request: Request) -> list[TaskSummary]:
    gateway = _gateway(request)
    tasks = await asyncio.to_thread(gateway.tasks.registry.all)
    return [summarize(t, gateway.config.settings.default_model) for t in tasks]


@router.post("", dependencies=[policy(Access.ADMIN)], status_code=201, response_model=TaskDetail)
async def create_task(request: Request, body: Annotated[dict[str, Any], Body()]) -> TaskDetail:
    """Define a task: the same keys as ``[tasks.<name>]`` in powertrain.toml, plus ``name``."""
    gateway = _gateway(request)
    table = dict(body)
    name = str(table.pop("name", ""))
    definition = TaskDefinition.parse(name, table, base_dir=None, where="task")
    check_models(definition.settings, gateway.config.catalog, "task", gateway.config.routes.routes)
    gateway.guard.pipeline_for(definition.settings.guardrails)  # unknown names: a 400
    await asyncio.to_thread(gateway.tasks.registry.create, definition, definition.settings.labels)
    return await _detail(gateway, name)


@router.get("/{name}", dependencies=[policy(Access.KEY)], response_model=TaskDetail)
async def get_task(name: TaskName, request: Request) -> TaskDetail:
    return await _detail(_gateway(request), name)


@router.put("/{name}", dependencies=[policy(Access.ADMIN)], response_model=TaskDetail)
async def update_task_settings(
    name: TaskName, request: Request, body: Annotated[dict[str, Any], Body()]
) -> TaskDetail:
    """Replace an API task's settings (variants, split, repairs…); makes no new version."""
    gateway = _gateway(request)
    settings = parse_settings(body, where="settings")
    check_models(settings, gateway.config.catalog, "settings", gateway.config.routes.routes)
    gateway.guard.pipeline_for(settings.guardrails)
    await asyncio.to_thread(gateway.tasks.registry.update_settings, name, settings)
    return await _detail(gateway, name)


@router.delete("/{name}", dependencies=[policy(Access.ADMIN)], status_code=204)
async def delete_task(name: TaskName, request: Request) -> None:
    await asyncio.to_thread(_gateway(request).tasks.registry.delete, name)


@router.get("/{name}/versions", dependencies=[policy(Access.KEY)], response_model=list[VersionInfo])
async def list_versions(name: TaskName, request: Request) -> list[VersionInfo]:
    return (await _detail(_gateway(request), name)).versions


@router.get("/{name}/versions/{version}", dependencies=[policy(Access.KEY)])
async def get_version(name: TaskName, version: int, request: Request) -> dict[str, Any]:
    """One version's full content: templates, variables, examples, schema."""
    task = await asyncio.to_thread(_gateway(request).tasks.registry.get, name)
    number, content = task.resolve(version)
    return {"version": number, **content.model_dump(mode="json")}


@router.post(
    "/{name}/versions",
    dependencies=[policy(Access.ADMIN)],
    status_code=201,
    response_model=VersionCreated,
)
async def create_version(
    name: TaskName, request: Request, body: Annotated[dict[str, Any], Body()]
) -> VersionCreated:
    """A new immutable version (system, user, variables, examples, output, reasoning).

    ``labels`` (e.g. ["staging"]) point at it; "latest" always does.
    """
    table = dict(body)
    labels = table.pop("labels", [])
    if not isinstance(labels, list) or not all(
        isinstance(x, str) and LABEL_NAME.match(x) for x in labels
    ):
        raise InvalidRequest("labels must be a list of lowercase label names", param="labels")
    version = parse_version(table, base_dir=None, where="version")
    number, created = await asyncio.to_thread(
        _gateway(request).tasks.registry.add_version, name, version, labels
    )
    return VersionCreated(version=number, created=created)


@router.put("/{name}/labels/{label}", dependencies=[policy(Access.ADMIN)])
async def move_label(
    name: TaskName,
    label: Annotated[str, Path(pattern=LABEL_NAME.pattern)],
    body: LabelMove,
    request: Request,
) -> dict[str, Any]:
    """Point ``label`` at a version: promote to production, roll back, stage."""
    await asyncio.to_thread(_gateway(request).tasks.registry.set_label, name, label, body.version)
    return {"task": name, "label": label, "version": body.version}


@router.delete("/{name}/labels/{label}", dependencies=[policy(Access.ADMIN)], status_code=204)
async def remove_label(name: TaskName, label: str, request: Request) -> None:
    await asyncio.to_thread(_gateway(request).tasks.registry.remove_label, name, label)


@router.post("/{name}/render", response_model=RenderResponse)
async def render_task(
    name: TaskName,
    body: TaskRunRequest,
    request: Request,
    principal: Annotated[Principal, policy(Access.KEY)],
) -> RenderResponse:
    """The exact messages a run would send, without calling the model."""
    if principal.key is not None:
        KeyService.check_task(principal.key, name)
    plan = await _gateway(request).tasks.render(
        name, body.variables, variant=body.variant, version=body.version
    )
    return RenderResponse(
        task=name,
        variant=plan.variant,
        version=plan.version_number,
        model=plan.model,
        messages=plan.messages,
        prompt_tokens=plan.prompt.prompt_tokens,
        examples_used=plan.prompt.examples_used,
        examples_dropped=plan.prompt.examples_dropped,
    )


@v1_router.post("/{name}", response_model=TaskRunResponse, response_model_exclude_none=True)
@router.post("/{name}/run", response_model=TaskRunResponse, response_model_exclude_none=True)
async def run_task(
    name: TaskName,
    body: TaskRunRequest,
    request: Request,
    principal: Annotated[Principal, policy(Access.KEY)],
) -> TaskRunResponse:
    """Run the task; the output always satisfies its schema, or this is an error."""
    ctx = CallContext(
        api_key_id=principal.key_id,
        raw_request=body.model_dump(exclude_defaults=True),
        key=principal.key,
    )
    result = await _gateway(request).tasks.run(
        name,
        body.variables,
        ctx,
        variant=body.variant,
        version=body.version,
        sticky_key=body.user,
    )
    return TaskRunResponse.of(result, include_reasoning=body.include_reasoning)
