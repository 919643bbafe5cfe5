"""From a dataset's rows to training examples, rendered exactly as the task serves them.

A row's variables fill the prompt of one variant of the task (its pinned version,
its few-shot examples) through the task package's own renderer, and its reference
output becomes the reply in the form the task's output contract writes it — so a
model is tuned on the very prompts it will be called with. Rows that cannot be
rendered or whose output breaks the task's schema are left out and counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from powertrain.datasets.export import TaskPrompts
from powertrain.errors import InvalidRequest, PowertrainError
from powertrain.flywheel.base import TrainingExample
from powertrain.store.datasets import StoredRow
from powertrain.tasks.output import schema_errors
from powertrain.tasks.registry import LoadedTask, TaskRegistry

# The most skipped rows a job lists by number; the rest are only counted.
_LISTED_SKIPS = 20


@dataclass
class RenderedRows:
    train: list[TrainingExample] = field(default_factory=list)
    test: list[TrainingExample] = field(default_factory=list)
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)  # the first few, naming their rows

    def skip(self, row: StoredRow, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < _LISTED_SKIPS:
            self.reasons.append(f"row {row.idx}: {reason}")


def training_variant(task: LoadedTask, variant: str | None) -> str:
    """The variant whose prompt a fine-tune learns: the one named, else the one serving
    the most traffic (its definition's weights; ties go to the first listed)."""
    variants = task.settings.effective_variants()
    if variant is not None:
        if variant not in variants:
            known = ", ".join(sorted(variants))
            raise InvalidRequest(
                f"task {task.name!r} has no variant {variant!r} (variants: {known})",
                param="variant",
            )
        return variant
    weights = task.defined_weights or {name: spec.weight for name, spec in variants.items()}
    return max(weights, key=lambda name: (weights[name], -list(weights).index(name)))


def render_rows(
    rows: Iterable[StoredRow], registry: TaskRegistry, task: str, variant: str
) -> RenderedRows:
    """Every usable row as a ``TrainingExample`` in its stored split."""
    prompts = TaskPrompts(registry, variant=variant)
    _number, version, _limit = prompts.version(task)
    schema = version.output_schema
    out = RenderedRows()
    for row in rows:
        variables = row.input.get("variables")
        if not isinstance(variables, dict):
            out.skip(row, "has no variables for the task's prompt (a chat row)")
            continue
        if row.output is None:
            out.skip(row, "has no reference output")
            continue
        output: Any = row.output
        if schema is not None:
            problem = schema_errors(schema, output)
            if problem is not None:
                out.skip(row, f"its output does not match the task's schema: {problem}")
                continue
        try:
            messages = prompts.messages(task, variables, output, where=f"row {row.idx}")
        except PowertrainError as exc:
            out.skip(row, exc.message)
            continue
        example = TrainingExample(
            messages=messages[:-1],
            target=messages[-1]["content"],
            reference=output,
            split="test" if row.split == "test" else "train",
            row=row.idx,
        )
        (out.test if example.split == "test" else out.train).append(example)
    return out
