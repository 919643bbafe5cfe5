"""Tasks as people read them: the shapes the API returns and the CLI prints.

One place builds them, so ``GET /api/tasks/{name}`` and ``powertrain task show
--json`` cannot drift apart.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from powertrain.store.tasks import LATEST, TaskVersionRecord
from powertrain.tasks.registry import LoadedTask
from powertrain.tasks.runner import TaskResult


class VariantInfo(BaseModel):
    name: str
    model: str
    version: int | str
    resolved_version: int | None = Field(description="The number a label points at now.")
    weight: float
    share: float = Field(description="Fraction of unpinned traffic this variant serves.")
    params: dict[str, Any]
    examples: int | None
    added: bool = Field(
        default=False,
        description="Added by a fine-tuning job, not the task's definition.",
    )


class VersionInfo(BaseModel):
    version: int
    created_at: datetime
    source: str
    content_hash: str
    labels: list[str]


class TaskSummary(BaseModel):
    name: str
    source: str
    description: str | None
    latest_version: int | None
    labels: dict[str, int]
    variants: list[VariantInfo]


class TaskDetail(TaskSummary):
    settings: dict[str, Any]
    versions: list[VersionInfo]


class TaskRunResponse(BaseModel):
    output: Any
    reasoning: str | None = None
    trace_id: str
    task: str
    variant: str
    version: int
    model: str
    usage: dict[str, int]
    cost: float = Field(description="USD, from the model's prices.")
    attempts: int

    @classmethod
    def of(cls, result: TaskResult, *, include_reasoning: bool) -> TaskRunResponse:
        return cls(
            output=result.output,
            reasoning=result.reasoning if include_reasoning else None,
            trace_id=result.trace_id,
            task=result.task,
            variant=result.variant,
            version=result.version,
            model=result.model,
            usage=result.usage.to_openai(),
            cost=result.cost,
            attempts=result.attempts,
        )


def label_order(labels: dict[str, int]) -> list[tuple[str, int]]:
    """The labels people move first, alphabetically; ``latest`` last."""
    return sorted(labels.items(), key=lambda item: (item[0] == LATEST, item[0]))


def summarize(task: LoadedTask, default_model: str) -> TaskSummary:
    variants = task.settings.effective_variants()
    total = sum(v.weight for v in variants.values()) or 1.0
    infos = []
    for name, spec in sorted(variants.items()):
        selector = spec.version
        resolved = selector if isinstance(selector, int) else task.labels.get(selector)
        infos.append(
            VariantInfo(
                name=name,
                model=spec.model or task.settings.model or default_model,
                version=selector,
                resolved_version=resolved if resolved in task.versions else None,
                weight=spec.weight,
                share=spec.weight / total,
                params={**task.settings.params, **spec.params},
                examples=spec.examples,
                added=name in task.added_variants,
            )
        )
    return TaskSummary(
        name=task.name,
        source=task.source,
        description=task.settings.description,
        latest_version=max(task.versions, default=None),
        labels=dict(sorted(task.labels.items())),
        variants=infos,
    )


def describe(task: LoadedTask, records: list[TaskVersionRecord], default_model: str) -> TaskDetail:
    by_version: dict[int, list[str]] = {}
    for label, number in label_order(task.labels):
        by_version.setdefault(number, []).append(label)
    return TaskDetail(
        **summarize(task, default_model).model_dump(),
        settings=task.settings.model_dump(mode="json"),
        versions=[
            VersionInfo(
                version=r.version,
                created_at=r.created_at,
                source=r.source,
                content_hash=r.content_hash,
                labels=by_version.get(r.version, []),
            )
            for r in records
        ],
    )


def schema_summary(schema: dict[str, Any] | None) -> str:
    """A one-line reading of an output schema: ``object {sentiment: "positive" | …}``."""
    if schema is None:
        return "text (no schema)"
    return _read(schema, schema.get("$defs", {}), depth=0)


def _read(node: Any, defs: dict[str, Any], depth: int) -> str:
    if not isinstance(node, dict):
        return "any"
    if "$ref" in node:
        ref = str(node["$ref"]).rsplit("/", 1)[-1]
        target = defs.get(ref)
        return _read(target, defs, depth) if target is not None and depth < 2 else ref
    if "enum" in node:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            return " | ".join(_read(n, defs, depth) for n in node[key])
    kind = node.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array":
        return f"array of {_read(node.get('items'), defs, depth + 1)}"
    if isinstance(node.get("properties"), dict):
        if depth >= 2:
            return "object"
        required = set(node.get("required", []))
        fields = ", ".join(
            f"{name}{'' if name in required else '?'}: {_read(sub, defs, depth + 1)}"
            for name, sub in node["properties"].items()
        )
        return f"object {{{fields}}}"
    return str(kind) if kind else "any"
