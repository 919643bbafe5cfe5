"""What the hosted-engine tests share: building engines against a fake, and reading errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

from powertrain.catalog import ModelConfig
from powertrain.engines.base import Engine
from powertrain.schemas import ChatChunk

# Retries in milliseconds, so retry tests stay fast.
FAST_RETRIES = {"retry_backoff_base": 0.01, "retry_backoff_max": 0.05}

E = TypeVar("E", bound=Engine)


class EngineMaker(Generic[E]):
    """``await maker(**overrides)`` builds and starts an engine; ``aclose`` stops them all."""

    def __init__(self, cls: type[E], **defaults: Any):
        self.cls = cls
        self.defaults = {"options": dict(FAST_RETRIES), **defaults}
        self.engines: list[E] = []

    async def __call__(self, **overrides: Any) -> E:
        engine = self.cls(ModelConfig(**{**self.defaults, **overrides}))
        self.engines.append(engine)
        await engine.start()
        return engine

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()


async def collect(chunks: AsyncIterator[ChatChunk], into: list[ChatChunk]) -> None:
    async for chunk in chunks:
        into.append(chunk)


def error_chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything chained to it (causes and contexts)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
