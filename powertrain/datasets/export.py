"""Writing a version's rows out: OpenAI chat fine-tuning JSONL, or eval cases.

A task row's prompt is rendered by the task package itself (its current
version, the default variant's few-shot examples), never by a template engine
of our own, and the reference output becomes the assistant turn exactly as the
task's contract writes a reply. Row values are data: they fill variables and are
never rendered as templates themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

import orjson

from powertrain.errors import InvalidRequest
from powertrain.store.datasets import StoredRow
from powertrain.tasks.definition import PromptVersion
from powertrain.tasks.prompt import build_messages
from powertrain.tasks.registry import TaskRegistry
from powertrain.tasks.variables import bind_variables

ExportFormat = Literal["openai", "eval"]


class TaskPrompts:
    """Renders task rows with each task's variant: ``variant``, or else its default one.

    A variant renders with the version it pins (or its label's version) and at most
    the few-shot examples it allows, exactly as a call to it would be rendered.
    """

    def __init__(self, registry: TaskRegistry | None, *, variant: str | None = None) -> None:
        self.registry = registry
        self.variant = variant
        self._versions: dict[str, tuple[int, PromptVersion, int | None]] = {}

    def version(self, task: str) -> tuple[int, PromptVersion, int | None]:
        """(version number, version, few-shot limit) that rows of ``task`` render with."""
        if task not in self._versions:
            if self.registry is None:
                raise InvalidRequest(f"rendering task {task!r} needs the task store")
            loaded = self.registry.get(task)
            variants = loaded.settings.effective_variants()
            if self.variant is not None and self.variant not in variants:
                known = ", ".join(sorted(variants))
                raise InvalidRequest(
                    f"task {task!r} has no variant {self.variant!r} (variants: {known})",
                    param="variant",
                )
            spec = variants[self.variant] if self.variant else next(iter(variants.values()))
            selector = spec.version
            if isinstance(selector, str) and selector not in loaded.labels:
                selector = "latest"  # no production label yet: the newest version
            number, version = loaded.resolve(selector)
            self._versions[task] = (number, version, spec.examples)
        return self._versions[task]

    def messages(self, task: str, variables: dict[str, Any], output: Any, where: str) -> list[Any]:
        _number, version, limit = self.version(task)
        bound = bind_variables(version.variables, variables, where=where)
        examples = list(version.examples)
        if limit is not None:
            examples = examples[len(examples) - limit :] if limit else []
        messages: list[Any] = build_messages(version, bound, examples, where=where)
        reply = version.contract().example_reply(output, None)
        return [*messages, {"role": "assistant", "content": reply}]


def _text(output: Any) -> str:
    return output if isinstance(output, str) else orjson.dumps(output).decode()


def openai_record(
    row: StoredRow, prompts: TaskPrompts, *, task: str | None = None
) -> dict[str, Any] | None:
    """``{"messages": [system?, user, assistant]}``, or None for a row with no output."""
    if row.output is None:
        return None
    where = f"row {row.idx}"
    messages = row.input.get("messages")
    if messages:
        kept = [m for m in messages if m.get("role") in ("system", "user", "assistant")]
        return {"messages": [*kept, {"role": "assistant", "content": _text(row.output)}]}
    name = task or row.source.get("task")
    if not name:
        raise InvalidRequest(
            f"{where} has variables but no task to render them with; name the task "
            "(--task / task=)",
            param="task",
        )
    variables = row.input.get("variables") or {}
    return {"messages": prompts.messages(name, variables, row.output, f"{where} (task {name!r})")}


def eval_record(row: StoredRow) -> dict[str, Any]:
    """``{"vars": ..., "expected": ...}`` (and ``messages`` for a chat row, ``labels`` if any)."""
    record: dict[str, Any] = {"vars": row.input.get("variables") or {}, "expected": row.output}
    if row.input.get("messages"):
        record["messages"] = row.input["messages"]
    if row.labels:
        record["labels"] = row.labels
    return record


def export_lines(
    rows: Iterable[StoredRow],
    fmt: ExportFormat,
    prompts: TaskPrompts | None = None,
    *,
    task: str | None = None,
    skipped: list[int] | None = None,
) -> Iterator[bytes]:
    """One JSON line per row (rows without an output are left out of ``openai``)."""
    prompts = prompts or TaskPrompts(None)
    for row in rows:
        record = eval_record(row) if fmt == "eval" else openai_record(row, prompts, task=task)
        if record is None:
            if skipped is not None:
                skipped.append(row.idx)
            continue
        yield orjson.dumps(record) + b"\n"
