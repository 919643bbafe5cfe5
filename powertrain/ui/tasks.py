"""Tasks: every task, and one task's versions (with a diff between any two), labels and
variants with their traffic split."""

from __future__ import annotations

import asyncio
import difflib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from powertrain.errors import InvalidRequest
from powertrain.tasks.definition import PromptVersion
from powertrain.tasks.registry import LoadedTask
from powertrain.ui.render import UIRoute, page
from powertrain.ui.session import Viewer, gateway_of

router = APIRouter(route_class=UIRoute, include_in_schema=False)


@dataclass(frozen=True)
class DiffLine:
    kind: str  # add | del | hunk | ctx | file
    text: str


@dataclass(frozen=True)
class VariantRow:
    name: str
    model: str
    version: str
    params: dict[str, Any]
    weight: float
    share: float  # of the traffic not pinned to a variant


def version_lines(version: PromptVersion) -> list[str]:
    """A version as text for a line diff: each part under its own heading, JSON indented."""

    def block(title: str, value: Any) -> list[str]:
        if value is None:
            return []
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        return [f"## {title}", *text.splitlines(), ""]

    return [
        *block("system", version.system),
        *block("user", version.user),
        *block(
            "variables", {k: v.model_dump(exclude_none=True) for k, v in version.variables.items()}
        ),
        *block("input", version.input),
        *block("output schema", version.output_schema),
        *block("examples", [e.model_dump(exclude_none=True) for e in version.examples]),
        *block(
            "options",
            {"output_instructions": version.output_instructions, "reasoning": version.reasoning},
        ),
    ]


def diff_versions(task: LoadedTask, a: int, b: int) -> list[DiffLine]:
    lines = difflib.unified_diff(
        version_lines(task.versions[a]),
        version_lines(task.versions[b]),
        fromfile=f"version {a}",
        tofile=f"version {b}",
        lineterm="",
        n=3,
    )
    out = []
    for line in lines:
        if line.startswith(("---", "+++")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        out.append(DiffLine(kind, line))
    return out


def traffic_split(task: LoadedTask, default_model: str) -> list[VariantRow]:
    """The variants' weights as shares of traffic (``effective_variants``: what runs today)."""
    variants = task.settings.effective_variants()
    total = sum(v.weight for v in variants.values())
    return [
        VariantRow(
            name=name,
            model=spec.model or task.settings.model or default_model,
            version=str(spec.version),
            params={**task.settings.params, **spec.params},
            weight=spec.weight,
            share=spec.weight / total if total else 0.0,
        )
        for name, spec in variants.items()
    ]


@router.get("/ui/tasks")
async def tasks_page(request: Request, principal: Viewer) -> Response:
    registry = gateway_of(request).tasks.registry
    tasks = await asyncio.to_thread(registry.all)
    return page(request, "tasks.html", principal, title="Tasks", tasks=tasks)


def _version_number(value: str | None, task: LoadedTask, default: int) -> int:
    if value in (None, ""):
        return default
    if not value.isdigit() or int(value) not in task.versions:
        raise InvalidRequest(f"task {task.name!r} has no version {value!r}", param="version")
    return int(value)


@router.get("/ui/tasks/{name}")
async def task_page(
    name: Annotated[str, Path(max_length=128)],
    request: Request,
    principal: Viewer,
    a: Annotated[str | None, Query(max_length=12)] = None,
    b: Annotated[str | None, Query(max_length=12)] = None,
) -> Response:
    gateway = gateway_of(request)
    registry = gateway.tasks.registry
    task = await asyncio.to_thread(registry.get, name)
    records = await asyncio.to_thread(registry.version_records, name)
    numbers = sorted(task.versions)
    latest = numbers[-1] if numbers else 0
    new = _version_number(b, task, latest)
    old = _version_number(a, task, numbers[-2] if len(numbers) > 1 else latest)
    labels_of: dict[int, list[str]] = {}
    for label, number in sorted(task.labels.items()):
        labels_of.setdefault(number, []).append(label)
    return page(
        request,
        "task.html",
        principal,
        title=f"Task {task.name}",
        task=task,
        records=list(reversed(records)),
        labels_of=labels_of,
        numbers=numbers,
        a=old,
        b=new,
        diff=diff_versions(task, old, new) if numbers else [],
        variants=traffic_split(task, gateway.config.settings.default_model),
        shown=task.versions.get(new),
    )
