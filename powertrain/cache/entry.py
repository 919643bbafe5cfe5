"""One stored answer: the complete response body and what the original call cost.

The body is stored whole, as the client received it (for a streamed call: the
assembled ``chat.completion``, never the chunks), so a hit can be replayed
either way: as the same JSON with a fresh id, or as a stream built from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from powertrain.schemas import ChatResult, Usage

# Bump when the stored shape changes; entries of another format read as misses.
ENTRY_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A response as stored, plus the cost and time of the call that produced it."""

    body: dict[str, Any]
    model: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    created_at: float  # Unix seconds: workers on different machines compare it
    trace_id: str | None = None  # the original call's trace, for a hit's trace to point at

    @classmethod
    def of(
        cls,
        body: dict[str, Any],
        *,
        cost_usd: float,
        latency_ms: float,
        model: str | None = None,
        usage: Usage | None = None,
        trace_id: str | None = None,
        created_at: float | None = None,
    ) -> CachedResponse:
        """An entry for ``body``; model and usage default to what the body says."""
        if usage is None:
            raw = body.get("usage") or {}
            usage = Usage(
                prompt_tokens=int(raw.get("prompt_tokens", 0)),
                completion_tokens=int(raw.get("completion_tokens", 0)),
            )
        return cls(
            body=body,
            model=model or str(body.get("model", "")),
            usage=usage,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            created_at=time.time() if created_at is None else created_at,
            trace_id=trace_id,
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "format": ENTRY_FORMAT,
                "body": self.body,
                "model": self.model,
                "usage": [self.usage.prompt_tokens, self.usage.completion_tokens],
                "cost_usd": self.cost_usd,
                "latency_ms": self.latency_ms,
                "created_at": self.created_at,
                "trace_id": self.trace_id,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedResponse | None:
        """The entry, or ``None`` for bytes of another format or none at all (a miss)."""
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != ENTRY_FORMAT:
                return None
            prompt, completion = doc["usage"]
            body = doc["body"]
            if not isinstance(body, dict):
                return None
            return cls(
                body=body,
                model=str(doc["model"]),
                usage=Usage(prompt_tokens=int(prompt), completion_tokens=int(completion)),
                cost_usd=float(doc["cost_usd"]),
                latency_ms=float(doc["latency_ms"]),
                created_at=float(doc["created_at"]),
                trace_id=doc.get("trace_id"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def replay_body(self, *, completion_id: str, created: int | None = None) -> dict[str, Any]:
        """A copy of the stored body under this call's id and time (the usage is the
        original's: what the answer cost when it was made)."""
        body: dict[str, Any] = orjson.loads(orjson.dumps(self.body))
        body["id"] = completion_id
        body["created"] = int(time.time()) if created is None else created
        return body

    def to_result(self) -> ChatResult:
        """The body as an engine result, for a gateway that dresses or streams results."""
        choice = (self.body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        try:
            return ChatResult(
                content=message.get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                usage=self.usage,
                tool_calls=message.get("tool_calls") or None,
                reasoning=message.get("reasoning_content"),
                extra=self.body.get("powertrain"),
            )
        except ValidationError as exc:  # a body no engine could have produced
            raise ValueError(f"cached body is not a chat completion: {exc}") from None
