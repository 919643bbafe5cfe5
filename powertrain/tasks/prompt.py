"""Rendering a task into the exact messages an engine sees, within its context window.

The order is fixed: the system message (the task's template, then the output
instructions), the few-shot examples as user/assistant turns, then the
caller's input. When the prompt is over the window the task's policy decides:
a clear error naming the sizes, or the oldest few-shot examples go first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from powertrain.errors import ContextWindowExceeded
from powertrain.tasks.definition import Example, PromptVersion
from powertrain.tasks.template import render
from powertrain.tasks.variables import bind_variables

Message = dict[str, str]


@dataclass(frozen=True)
class RenderedPrompt:
    messages: list[Message]
    examples_used: int
    examples_dropped: int
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class Grounding:
    """Retrieved sources: ``documents`` for templates that place them, else an appendix."""

    documents: list[dict[str, Any]]
    appendix: str  # added to the system message when no template reads ``documents``


def _system_message(
    version: PromptVersion, values: dict[str, Any], where: str, grounding: Grounding | None
) -> Message | None:
    parts = []
    if version.system is not None:
        parts.append(render(version.system, values, where=f"{where}.system"))
    if grounding is not None and not version.reads("documents"):
        parts.append(grounding.appendix)
    instructions = version.contract().instructions() if version.output_instructions else ""
    if not instructions and version.reasoning:
        instructions = version.contract().instructions()  # the reply shape must be told
    if instructions:
        parts.append(instructions)
    text = "\n\n".join(p for p in parts if p.strip())
    return {"role": "system", "content": text} if text else None


def _example_messages(version: PromptVersion, example: Example, where: str) -> list[Message]:
    values = bind_variables(version.variables, example.variables, where=where)
    values["output_schema"] = version.output_schema
    values["documents"] = []  # examples are shown without sources
    return [
        {"role": "user", "content": render(version.user, values, where=f"{where}.user")},
        {
            "role": "assistant",
            "content": version.contract().example_reply(example.output, example.reasoning),
        },
    ]


def build_messages(
    version: PromptVersion,
    variables: dict[str, Any],
    examples: list[Example],
    *,
    where: str,
    grounding: Grounding | None = None,
) -> list[Message]:
    """The messages for already-bound ``variables`` with the given examples."""
    documents = grounding.documents if grounding is not None else []
    values = {**variables, "output_schema": version.output_schema, "documents": documents}
    messages: list[Message] = []
    system = _system_message(version, values, where, grounding)
    if system is not None:
        messages.append(system)
    for i, example in enumerate(examples, 1):
        messages += _example_messages(version, example, f"{where}.examples[{i}]")
    messages.append(
        {"role": "user", "content": render(version.user, values, where=f"{where}.user")}
    )
    return messages


def fit_to_window(
    version: PromptVersion,
    variables: dict[str, Any],
    *,
    max_examples: int | None,
    count_tokens: Callable[[list[Message]], int],
    window: int | None,
    reserve: int,
    drop_examples: bool,
    describe: str,
    grounding: Grounding | None = None,
) -> RenderedPrompt:
    """Render, and make it fit ``window`` (less ``reserve`` for the answer).

    Examples are kept newest first: a variant's ``examples`` limit keeps the last
    ones listed, and overflow drops the oldest (first listed) ones.
    """
    examples = list(version.examples)
    if max_examples is not None:
        examples = examples[len(examples) - max_examples :] if max_examples else []
    offered = len(examples)
    messages = build_messages(version, variables, examples, where=describe, grounding=grounding)
    if not window:
        return RenderedPrompt(messages, len(examples), len(version.examples) - offered)
    tokens = count_tokens(messages)
    while tokens + reserve > window and drop_examples and examples:
        examples = examples[1:]
        messages = build_messages(version, variables, examples, where=describe, grounding=grounding)
        tokens = count_tokens(messages)
    if tokens + reserve > window:
        budget = f"{window} tokens" + (f", less {reserve} kept for max_tokens" if reserve else "")
        shots = f" with {len(examples)} few-shot examples" if examples else ""
        hint = (
            "even with every few-shot example dropped; shorten the input"
            if drop_examples and offered
            else 'shorten the input or set context.on_overflow = "drop_examples"'
            if offered
            else "shorten the input"
        )
        raise ContextWindowExceeded(
            f"{describe}: the rendered prompt is {tokens} tokens{shots} but the context "
            f"window is {budget}; {hint}",
            param="variables",
        )
    return RenderedPrompt(
        messages,
        examples_used=len(examples),
        examples_dropped=len(version.examples) - len(examples),
        prompt_tokens=tokens,
    )
