"""The OpenAI chat-completions shapes, as powertrain reads and writes them.

Requests are parsed strictly, the way OpenAI's own API does: an unknown field
is an error naming it, rather than a setting silently ignored. Fields that
would let a caller choose an upstream (base URL, host, key) are refused with
their own message, because only configuration may choose where a prompt goes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Names a client might use to steer us to another upstream or credential.
UPSTREAM_STEERING_FIELDS = frozenset(
    {
        "api_base",
        "api_key",
        "api_version",
        "base_url",
        "host",
        "organization",
        "proxy",
        "upstream",
        "url",
        "endpoint",
        "aws_access_key_id",
        "aws_secret_access_key",
        "vertex_credentials",
    }
)


def refuse_upstream_steering(data: Any) -> Any:
    """A ``mode="before"`` validator body shared by every request shape."""
    if isinstance(data, dict):
        steering = sorted(UPSTREAM_STEERING_FIELDS.intersection(data))
        if steering:
            raise ValueError(
                f"field {steering[0]!r} is not accepted: upstreams, hosts and keys are "
                "chosen by the server's configuration, never by a request"
            )
    return data


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text, joining text parts; other parts are not text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = "output"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: the fields of OpenAI's API that powertrain honours."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    user: str | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # powertrain's own fields, for ``model="task:<name>"`` only (extra_body in the SDKs).
    variables: dict[str, Any] | None = Field(
        default=None, description="Task variables besides the one the last user message fills."
    )
    variant: str | None = Field(default=None, max_length=64, description="Pin a task variant.")
    include_reasoning: bool | None = Field(
        default=None, description="Return a chain-of-thought task's reasoning."
    )
    # powertrain's cache control for this request (headers work too; docs/cache.md).
    cache: bool | Literal["bypass", "refresh"] | None = Field(
        default=None, description="false or 'bypass': skip the cache; 'refresh': re-ask and store."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_upstream_steering(cls, data: Any) -> Any:
        return refuse_upstream_steering(data)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @property
    def task_fields(self) -> list[str]:
        """powertrain's task-only fields that this request sets."""
        return [f for f in ("variables", "variant", "include_reasoning") if getattr(self, f)]

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The schema output must satisfy: {} for json_object, None for free text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {}
        assert fmt.json_schema is not None
        return fmt.json_schema.schema_


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "cancelled"]


class ChatResult(BaseModel):
    """What an engine returns for a non-streamed call, before the gateway dresses it."""

    content: str
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    tool_calls: list[dict[str, Any]] | None = None
    upstream_id: str | None = None
    compute_seconds: float | None = None  # local engines: time the model spent working
    reasoning: str | None = None  # a task's chain of thought, when the caller asked for it
    extra: dict[str, Any] | None = None  # powertrain's own fields (task, variant, version)
    # A calibrated probability that the answer is right (a classifier's), for a cascade
    # to escalate on; engines that cannot calibrate leave it None.
    confidence: float | None = Field(default=None, ge=0, le=1)

    def to_openai(
        self, *, completion_id: str, model: str, created: int | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning  # the field vLLM and DeepSeek use
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created or int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage.to_openai(),
        }
        if self.extra:
            body["powertrain"] = self.extra
        return body


class ChatChunk(BaseModel):
    """One streamed piece from an engine: text, and on the last one a finish reason and usage."""

    delta: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    compute_seconds: float | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)  # as ChatResult's, last chunk
    extra: dict[str, Any] | None = None  # as ChatResult's; sent on the chunk that carries it

    def to_openai(
        self, *, completion_id: str, model: str, created: int, first: bool = False
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if self.delta or first:
            delta["content"] = self.delta
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": self.finish_reason, "logprobs": None}
            ],
        }
        if self.extra:
            body["powertrain"] = self.extra
        return body
