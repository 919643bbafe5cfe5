"""Typed data at the seams: the wire shapes powertrain accepts and returns."""

from powertrain.schemas.chat import (
    ChatChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChatResult,
    ResponseFormat,
    Usage,
)
from powertrain.schemas.embeddings import EmbeddingRequest, EmbeddingResult

__all__ = [
    "ChatChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatResult",
    "EmbeddingRequest",
    "EmbeddingResult",
    "ResponseFormat",
    "Usage",
]
