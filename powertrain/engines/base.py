"""The engine seam: what every backend implements, and nothing about tasks or HTTP."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from powertrain.catalog import ModelConfig
from powertrain.errors import InvalidRequest
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, EmbeddingResult


@dataclass(frozen=True)
class Capabilities:
    chat: bool = True
    streaming: bool = True
    json_schema: bool = False
    embeddings: bool = False
    tools: bool = False
    exact_token_count: bool = False  # counts with the model's own tokenizer
    # ``chat`` never runs past its ``deadline`` argument (every wait, retry and
    # backoff is bounded by it), so the gateway needs no timer of its own around it.
    chat_honours_deadline: bool = False


class Engine(ABC):
    """One backend bound to one catalog model.

    An engine instance is created once per model alias and reused; ``start``
    loads weights or opens connection pools, ``aclose`` releases them.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, model: ModelConfig):
        self.model = model

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load or connect; called once before the first request."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release threads, sockets and memory."""

    # ``deadline`` is a ``time.monotonic()`` instant the whole call must finish by;
    # engines that retry use it to never wait past it. The gateway enforces it too.

    @abstractmethod
    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        """Answer one request in full."""

    @abstractmethod
    def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Answer one request piece by piece; the last chunk has a finish reason."""

    async def embed(
        self, inputs: list[str], *, deadline: float | None = None, dimensions: int | None = None
    ) -> EmbeddingResult:
        """One vector per input. ``dimensions`` asks for shorter vectors where the model
        can give them (OpenAI's text-embedding-3); an engine that cannot refuses it."""
        raise InvalidRequest(
            f"model {self.model.alias!r} (engine {self.name}) does not produce embeddings",
            param="model",
        )

    @abstractmethod
    def count_tokens(self, request: ChatCompletionRequest) -> int:
        """Prompt tokens this request costs (exact where ``exact_token_count``)."""

    def count_text(self, text: str) -> int:
        """Tokens in one piece of text (exact where the engine has its tokenizer)."""
        return estimate_tokens(text)

    @property
    def context_window(self) -> int | None:
        return self.model.context_window

    def check_supported(self, request: ChatCompletionRequest) -> None:
        """Refuse what this engine cannot do, before any work is spent on it."""
        caps = self.capabilities
        if request.tools and not caps.tools:
            raise InvalidRequest(
                f"model {self.model.alias!r} (engine {self.name}) does not support tools",
                param="tools",
            )
        if request.json_schema is not None and not caps.json_schema:
            raise InvalidRequest(
                f"model {self.model.alias!r} (engine {self.name}) cannot constrain output "
                "to a JSON schema",
                param="response_format",
            )


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate for engines whose tokenizer is not available offline.

    About four bytes of UTF-8 per token is the usual average for BPE vocabularies
    on English text; the upstream's own usage numbers replace it in traces.
    """
    return (len(text.encode("utf-8")) + 3) // 4


def prompt_text(request: ChatCompletionRequest) -> str:
    return "\n".join(f"{m.role}: {m.text()}" for m in request.messages)
