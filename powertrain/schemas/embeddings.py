"""The OpenAI embeddings shapes."""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from powertrain.schemas.chat import Usage, refuse_upstream_steering


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_upstream_steering(cls, data: Any) -> Any:
        return refuse_upstream_steering(data)

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingResult(BaseModel):
    vectors: list[list[float]]
    usage: Usage = Field(default_factory=Usage)

    def to_openai(self, *, model: str, encoding_format: str = "float") -> dict[str, Any]:
        encode = _base64_floats if encoding_format == "base64" else list
        return {
            "object": "list",
            "model": model,
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(vec)}
                for i, vec in enumerate(self.vectors)
            ],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "total_tokens": self.usage.prompt_tokens,
            },
        }


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 format: little-endian float32s (the openai SDK asks for it by default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
