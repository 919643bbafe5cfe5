"""OpenAI's chat-completions and embeddings wire format, for any server that speaks it.

OpenAI itself, vLLM, Ollama, llama-server, Groq, Together, OpenRouter …: point
``base_url`` at the server. A key is sent only when one is configured (or, for
OpenAI's own host, read from ``OPENAI_API_KEY``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson
from pydantic import ValidationError

from powertrain.catalog import ModelConfig
from powertrain.engines._http import HTTPProvider
from powertrain.engines._sse import SSEEvent, StreamErrorEvent, StreamTruncated
from powertrain.engines.base import Capabilities, Engine, estimate_tokens, prompt_text
from powertrain.errors import EngineError, InvalidRequest
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, EmbeddingResult, Usage
from powertrain.schemas.chat import FinishReason

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
# The model id sent is the catalog's; streaming is chosen by the method called.
_NOT_FORWARDED = {"model", "stream", "stream_options", "cache"}  # cache: powertrain's own
_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
    )


def _finish_reason(value: Any) -> FinishReason:
    return _FINISH.get(value, "stop") if isinstance(value, str) else "stop"


def _json_object(data: str | bytes) -> dict[str, Any]:
    obj = orjson.loads(data)
    if not isinstance(obj, dict):
        raise TypeError("expected a JSON object")
    return obj


class _ChatStream:
    """Chat-completion chunks → :class:`ChatChunk`.

    The chunk with the finish reason is held back and merged with the usage
    chunk that ``include_usage`` sends after it, so the last chunk carries both.
    """

    __slots__ = ("_finish", "_tail", "done", "usage")

    def __init__(self) -> None:
        self.done = False
        self.usage: Usage | None = None
        self._finish: FinishReason | None = None
        self._tail = ""

    def feed(self, event: SSEEvent) -> ChatChunk | None:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return None
        obj = _json_object(data)
        error = obj.get("error")
        if error:
            # OpenAI (and vLLM) report a failure inside a started stream this way.
            if isinstance(error, dict):
                code = error.get("code")
                raise StreamErrorEvent(
                    str(error.get("message") or "error event"),
                    code=code if isinstance(code, str) else None,
                )
            raise StreamErrorEvent(str(error))
        usage = obj.get("usage")
        if usage:
            self.usage = _usage(usage)
        choices = obj.get("choices")
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        reason = choice.get("finish_reason")
        if reason is not None or self._finish is not None:
            if reason is not None:
                self._finish = _finish_reason(reason)
            self._tail += text
            return None
        return ChatChunk(delta=text) if text else None

    def finish(self) -> ChatChunk:
        # A finish reason means the answer is whole even if the tail (usage,
        # [DONE]) was lost; without one and without [DONE] it was cut short.
        if self._finish is None and not self.done:
            raise StreamTruncated
        return ChatChunk(delta=self._tail, finish_reason=self._finish or "stop", usage=self.usage)


class OpenAIEngine(Engine):
    """A model behind an OpenAI-compatible HTTP API."""

    name: ClassVar[str] = "openai"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, json_schema=True, embeddings=True, tools=True, chat_honours_deadline=True
    )

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        self.provider = HTTPProvider(
            model,
            engine=self.name,
            default_base_url=DEFAULT_BASE_URL,
            default_key_env=DEFAULT_KEY_ENV,
            auth_headers=_bearer,
        )
        self.upstream_model = model.model or model.alias
        self._include_usage = bool(model.options.get("include_usage", True))

    async def start(self) -> None:
        await self.provider.start()

    async def aclose(self) -> None:
        await self.provider.aclose()

    def request_body(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """The upstream body: the model's default params, overridden by the request's."""
        sent = request.model_dump(exclude_none=True, by_alias=True, exclude=_NOT_FORWARDED)
        body = dict(self.model.params)
        if any(key in sent for key in _MAX_TOKENS_KEYS):
            for key in _MAX_TOKENS_KEYS:
                body.pop(key, None)
        body.update(sent)
        body["model"] = self.upstream_model
        return body

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        body = self.request_body(request)
        data = await self.provider.post_json("/chat/completions", body, deadline=deadline)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content") or ""
            tool_calls = message.get("tool_calls") or None
            reason = _finish_reason(choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise EngineError(
                f"the openai upstream for model {self.model.alias!r} answered without a choice"
            ) from None
        usage = _usage(data.get("usage")) or Usage(
            prompt_tokens=self.count_tokens(request), completion_tokens=estimate_tokens(content)
        )
        upstream_id = data.get("id")
        return ChatResult(
            content=content,
            finish_reason=reason,
            usage=usage,
            tool_calls=tool_calls,
            upstream_id=upstream_id if isinstance(upstream_id, str) else None,
        )

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        if request.tools:
            # ChatChunk has no place for tool-call deltas yet; refusing beats dropping them.
            raise InvalidRequest(
                f"model {self.model.alias!r} cannot stream tool calls yet; "
                "send this request with stream=false",
                param="stream",
            )
        body = self.request_body(request)
        body["stream"] = True
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        async for chunk in self.provider.stream(
            "/chat/completions", body, _ChatStream, deadline=deadline
        ):
            yield chunk

    async def embed(
        self, inputs: list[str], *, deadline: float | None = None, dimensions: int | None = None
    ) -> EmbeddingResult:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "input": inputs,
            "encoding_format": "float",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions  # the upstream says whether its model can
        data = await self.provider.post_json("/embeddings", body, deadline=deadline)
        usage = _usage(data.get("usage")) or Usage(
            prompt_tokens=sum(estimate_tokens(text) for text in inputs)
        )
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            result = EmbeddingResult(
                vectors=[row["embedding"] for row in rows],
                usage=Usage(prompt_tokens=usage.prompt_tokens),
            )
        except (KeyError, TypeError, AttributeError, ValidationError):
            raise EngineError(
                f"the openai upstream for model {self.model.alias!r} answered without embeddings"
            ) from None
        if len(result.vectors) != len(inputs):
            raise EngineError(
                f"the openai upstream for model {self.model.alias!r} returned "
                f"{len(result.vectors)} embeddings for {len(inputs)} inputs"
            )
        return result

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        return estimate_tokens(prompt_text(request))


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(OpenAIEngine)
