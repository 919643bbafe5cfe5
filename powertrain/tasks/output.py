"""The output contract of a task: what the engine is asked for, and what is accepted.

A task with a schema asks the engine for JSON under that schema (a grammar on
local engines, ``response_format`` on APIs) and then validates what came back,
because neither is a guarantee on its own. Chain-of-thought wraps the answer in
``{"reasoning": …, "answer": …}``, reasoning first, so the model reasons before
it commits and the answer is parsed from a known place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from powertrain.errors import InvalidRequest

_MAX_ERROR_CHARS = 300


class OutputRejected(Exception):
    """The model's text is not an acceptable answer; ``reason`` says why, for a repair."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_schema(schema: dict[str, Any], *, where: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"{where}: not a valid JSON Schema: {exc.message}") from None


def schema_errors(schema: dict[str, Any], value: Any) -> str | None:
    """The most relevant validation error, or None when ``value`` is valid."""
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path)
    message = f"{path}: {error.message}" if path else error.message
    return message[:_MAX_ERROR_CHARS]


@dataclass(frozen=True)
class ParsedOutput:
    output: Any  # JSON value when the task has a schema, else text
    reasoning: str | None
    text: str  # the answer as the caller receives it in a chat completion


class OutputContract:
    def __init__(self, schema: dict[str, Any] | None, *, reasoning: bool):
        self.schema = schema
        self.reasoning = reasoning
        self.engine_schema = _wrap_for_reasoning(schema) if reasoning else schema

    @property
    def streamable(self) -> bool:
        """Plain text with nothing to extract can go to the caller as it is generated."""
        return self.engine_schema is None

    def response_format(self) -> dict[str, Any] | None:
        if self.engine_schema is None:
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": "task_output", "schema": self.engine_schema},
        }

    def instructions(self) -> str:
        """Lines for the system prompt that tell the model the expected shape."""
        if self.engine_schema is None:
            return ""
        lines = []
        if self.reasoning:
            lines.append(
                'Think step by step first: put your reasoning in "reasoning", '
                'then your final answer in "answer".'
            )
        lines.append(
            "Reply with one JSON object that matches this JSON Schema, and nothing else:\n"
            + json.dumps(self.engine_schema, ensure_ascii=False, separators=(",", ":"))
        )
        return "\n".join(lines)

    def example_reply(self, output: Any, reasoning: str | None) -> str:
        """A few-shot example's answer, written exactly as the model should write one."""
        if self.reasoning:
            return _dumps({"reasoning": reasoning or "", "answer": output})
        if self.schema is None:
            return str(output)
        return _dumps(output)

    def parse(self, text: str) -> ParsedOutput:
        if self.engine_schema is None:
            return ParsedOutput(output=text, reasoning=None, text=text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OutputRejected(f"the reply is not valid JSON: {exc}") from None
        problem = schema_errors(self.engine_schema, value)
        if problem is not None:
            raise OutputRejected(f"the reply does not match the schema: {problem}")
        if not self.reasoning:
            return ParsedOutput(output=value, reasoning=None, text=_dumps(value))
        answer = value["answer"]
        shown = _dumps(answer) if self.schema is not None else str(answer)
        return ParsedOutput(output=answer, reasoning=value["reasoning"], text=shown)

    def repair_message(self, reason: str) -> str:
        shape = "one JSON object matching the schema" if self.engine_schema else "the answer"
        return f"Your reply was rejected: {reason}. Reply again with only {shape}."


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _wrap_for_reasoning(schema: dict[str, Any] | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"type": "string"} if schema is None else dict(schema)
    defs = answer.pop("$defs", None)
    answer.pop("$schema", None)
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "answer": answer},
        "required": ["reasoning", "answer"],
        "additionalProperties": False,
    }
    if defs:
        # References are written as #/$defs/<name>, so the definitions move to the new root.
        wrapped["$defs"] = defs
    return wrapped
