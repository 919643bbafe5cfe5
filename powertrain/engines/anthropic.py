"""Anthropic's native Messages API, reached from OpenAI-shaped requests.

The mapping: system and developer messages become the top-level ``system``;
consecutive messages of one role are merged (the API wants user and assistant
to alternate); ``max_tokens`` is always sent (the API requires it); ``stop``
becomes ``stop_sequences``. OpenAI-only sampling knobs (seed, penalties,
logit_bias) have no Anthropic counterpart and are not sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson

from powertrain.catalog import ModelConfig
from powertrain.engines._http import HTTPProvider
from powertrain.engines._retry import ERROR_TYPE_STATUS
from powertrain.engines._sse import SSEEvent, StreamErrorEvent, StreamTruncated
from powertrain.engines.base import Capabilities, Engine, estimate_tokens, prompt_text
from powertrain.errors import EngineError, InvalidRequest
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatMessage, ChatResult, Usage
from powertrain.schemas.chat import FinishReason

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Catalog params that are translated, or that only OpenAI understands.
_PARAMS_NOT_COPIED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "n",
        "response_format",
        "user",
    }
)


def _api_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def _stop_reason(value: Any) -> FinishReason:
    return _STOP_REASONS.get(value, "stop") if isinstance(value, str) else "stop"


def _prompt_tokens(usage: dict[str, Any]) -> int:
    # input_tokens excludes what was read from or written to the prompt cache.
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
    )


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest("an image_url content part needs a url", param="messages")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[len("data:") :].split(";")[0]
        if ";base64" not in header or not media_type:
            raise InvalidRequest("image data URLs must be base64-encoded", param="messages")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.type == "text":
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            blocks.append(_image_block(part.model_dump()))
        else:
            raise InvalidRequest(
                f"content parts of type {part.type!r} cannot be sent to Anthropic",
                param="messages",
            )
    return blocks


def map_messages(messages: list[ChatMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages → Anthropic ``(system, messages)``."""
    system: list[str] = []
    mapped: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role in ("system", "developer"):
            text = message.text()
            if text:
                system.append(text)
            continue
        if role not in ("user", "assistant") or message.tool_calls:
            raise InvalidRequest(
                "tool calls and tool results cannot be sent to the anthropic engine yet",
                param="messages",
            )
        blocks = _blocks(message)
        if not blocks:
            continue  # the API refuses empty content; merging keeps the turns alternating
        if mapped and mapped[-1]["role"] == role:
            mapped[-1]["content"].extend(blocks)
        else:
            mapped.append({"role": role, "content": blocks})
    if not mapped:
        raise InvalidRequest(
            "an Anthropic model needs at least one non-empty user message", param="messages"
        )
    last = mapped[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        # An assistant prefill may not end in whitespace.
        last["content"][-1]["text"] = last["content"][-1]["text"].rstrip()
    for entry in mapped:
        content = entry["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            entry["content"] = content[0]["text"]
    return ("\n\n".join(system) if system else None), mapped


class _MessageStream:
    """Messages API events → :class:`ChatChunk`s."""

    __slots__ = ("_input", "_output", "_stop", "done", "usage")

    def __init__(self) -> None:
        self.done = False
        self.usage: Usage | None = None
        self._stop: FinishReason | None = None
        self._input = 0
        self._output = 0

    def feed(self, event: SSEEvent) -> ChatChunk | None:
        obj = orjson.loads(event.data)
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "content_block_delta":
            delta = obj["delta"]
            if delta.get("type") == "text_delta":
                text = delta.get("text") or ""
                return ChatChunk(delta=text) if text else None
            return None  # thinking / tool-input deltas are not text
        if kind == "message_start":
            self._count(obj["message"].get("usage"))
        elif kind == "message_delta":
            self._stop = _stop_reason((obj.get("delta") or {}).get("stop_reason"))
            self._count(obj.get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error" or event.event == "error":
            error = obj.get("error") if isinstance(obj, dict) else None
            error = error if isinstance(error, dict) else {}
            error_type = str(error.get("type") or "api_error")
            raise StreamErrorEvent(
                str(error.get("message") or error_type),
                upstream_status=ERROR_TYPE_STATUS.get(error_type, 500),
                code=error_type,
            )
        return None  # ping, content_block_start/stop, and event types added later

    def _count(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if "input_tokens" in usage:
            self._input = _prompt_tokens(usage)
        if "output_tokens" in usage:  # cumulative, not a delta
            self._output = int(usage.get("output_tokens") or 0)
        self.usage = Usage(prompt_tokens=self._input, completion_tokens=self._output)

    def finish(self) -> ChatChunk:
        if self._stop is None:
            raise StreamTruncated
        return ChatChunk(finish_reason=self._stop, usage=self.usage)


class AnthropicEngine(Engine):
    """A Claude model through Anthropic's Messages API."""

    name: ClassVar[str] = "anthropic"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True,
        json_schema=False,
        embeddings=False,
        tools=False,
        chat_honours_deadline=True,
    )

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        if model.base_url and model.base_url.rstrip("/").endswith("/v1"):
            # Accept the base URL with or without the version segment.
            model = model.model_copy(update={"base_url": model.base_url.rstrip("/")[: -len("/v1")]})
        self.provider = HTTPProvider(
            model,
            engine=self.name,
            default_base_url=DEFAULT_BASE_URL,
            default_key_env=DEFAULT_KEY_ENV,
            auth_headers=_api_key,
            headers={"anthropic-version": str(model.options.get("anthropic_version", API_VERSION))},
        )
        self.upstream_model = model.model or model.alias

    async def start(self) -> None:
        await self.provider.start()

    async def aclose(self) -> None:
        await self.provider.aclose()

    def request_body(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """The Messages API body for an OpenAI-shaped request."""
        params = self.model.params
        system, messages = map_messages(request.messages)
        body = {k: v for k, v in params.items() if k not in _PARAMS_NOT_COPIED}
        body["model"] = self.upstream_model
        body["max_tokens"] = request.max_output_tokens or int(
            params.get("max_tokens", DEFAULT_MAX_TOKENS)
        )
        body["messages"] = messages
        if system is not None:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        stop = request.stop_list or params.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if request.user:
            body["metadata"] = {"user_id": request.user}
        return body

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        data = await self.provider.post_json(
            "/v1/messages", self.request_body(request), deadline=deadline
        )
        try:
            content = "".join(
                block.get("text") or "" for block in data["content"] if block.get("type") == "text"
            )
            reason = _stop_reason(data.get("stop_reason"))
        except (KeyError, TypeError, AttributeError):
            raise EngineError(
                f"the anthropic upstream for model {self.model.alias!r} answered without content"
            ) from None
        usage = data.get("usage")
        upstream_id = data.get("id")
        return ChatResult(
            content=content,
            finish_reason=reason,
            usage=Usage(
                prompt_tokens=_prompt_tokens(usage),
                completion_tokens=int(usage.get("output_tokens") or 0),
            )
            if isinstance(usage, dict)
            else Usage(
                prompt_tokens=self.count_tokens(request),
                completion_tokens=estimate_tokens(content),
            ),
            upstream_id=upstream_id if isinstance(upstream_id, str) else None,
        )

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        body = self.request_body(request)
        body["stream"] = True
        async for chunk in self.provider.stream(
            "/v1/messages", body, _MessageStream, deadline=deadline
        ):
            yield chunk

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        return estimate_tokens(prompt_text(request))


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(AnthropicEngine)
