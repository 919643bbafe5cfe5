"""The Python API: the same request path as the server, in-process, traced the same way."""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from powertrain.config import Config, load_config
from powertrain.feedback import FeedbackRecord, FeedbackService, feedback_request
from powertrain.gateway import CallContext, Gateway
from powertrain.schemas import ChatCompletionRequest, Usage
from powertrain.schemas.trace import Trace
from powertrain.store import TraceFilter
from powertrain.tasks import TaskPlan, TaskResult

Messages = str | list[dict[str, Any]]


@dataclass(frozen=True)
class Reply:
    text: str
    trace_id: str
    model: str
    finish_reason: str
    usage: Usage


def _request(
    prompt: Messages, *, model: str, system: str | None, stream: bool, params: dict[str, Any]
) -> ChatCompletionRequest:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": messages, "stream": stream, **params}
    )


def _config(config: Config | str | Path | None) -> Config:
    return config if isinstance(config, Config) else load_config(config)


class AsyncClient:
    """``async with AsyncClient() as pt: reply = await pt.chat("Hi")``."""

    def __init__(self, config: Config | str | Path | None = None, *, source: str = "python"):
        self.config = _config(config)
        self.gateway = Gateway(self.config)
        self._source = source

    async def __aenter__(self) -> AsyncClient:
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.gateway.aclose()

    def _model(self, model: str | None) -> str:
        return model or self.config.settings.default_model

    async def chat(
        self,
        prompt: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        **params: Any,
    ) -> Reply:
        await self.gateway.start()
        request = _request(
            prompt, model=self._model(model), system=system, stream=False, params=params
        )
        call, result = await self.gateway.chat(request, CallContext(source=self._source))
        return Reply(
            text=result.content,
            trace_id=call.trace_id,
            model=request.model,
            finish_reason=result.finish_reason,
            usage=result.usage,
        )

    async def stream(
        self,
        prompt: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        **params: Any,
    ) -> AsyncGenerator[str, None]:
        """Yield text as it is generated; the trace is written when the stream ends."""
        await self.gateway.start()
        request = _request(
            prompt, model=self._model(model), system=system, stream=True, params=params
        )
        call = await self.gateway.prepare(request, CallContext(source=self._source))
        self.last_trace_id = call.trace_id
        chunks = call.stream()
        try:
            async for chunk in chunks:
                if chunk.delta:
                    yield chunk.delta
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def run_task(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        *,
        variant: str | None = None,
        version: int | str | None = None,
    ) -> TaskResult:
        """Run task ``name``; the output is validated against its schema (or it raises)."""
        await self.gateway.start()
        return await self.gateway.tasks.run(
            name, variables, CallContext(source=self._source), variant=variant, version=version
        )

    async def render_task(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        *,
        variant: str | None = None,
        version: int | str | None = None,
    ) -> TaskPlan:
        """What ``run_task`` would send (messages, model, version), without calling the model."""
        await self.gateway.start()
        return await self.gateway.tasks.render(
            name, variables or {}, variant=variant, version=version
        )

    async def traces(
        self, *, limit: int = 20, model: str | None = None, status: str | None = None
    ) -> list[Trace]:
        await self.gateway.traces.flush()
        page = await asyncio.to_thread(
            self.gateway.trace_store.list, TraceFilter(model=model, status=status), limit=limit
        )
        return page.data

    async def trace(self, trace_id: str) -> Trace | None:
        await self.gateway.traces.flush()
        return await asyncio.to_thread(self.gateway.trace_store.get, trace_id)

    async def feedback(
        self,
        trace_id: str,
        *,
        thumb: Literal["up", "down"] | None = None,
        score: float | None = None,
        scale: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        correction: Any = None,
        source: Literal["human", "program"] = "program",
        author: str | None = None,
    ) -> FeedbackRecord:
        """Record feedback on a trace (a call made here, or any in the store)."""
        body = feedback_request(
            trace_id,
            thumb=thumb,
            score=score,
            scale=scale,
            label=label,
            comment=comment,
            correction=correction,
            source=source,
            author=author,
        )
        await self.gateway.traces.flush()
        service = FeedbackService(self.gateway.database)
        return await asyncio.to_thread(service.give, body, scope=None)


class Client:
    """The synchronous face of ``AsyncClient``, for scripts and notebooks."""

    def __init__(self, config: Config | str | Path | None = None, *, source: str = "python"):
        self._loop = asyncio.new_event_loop()
        self._async = AsyncClient(config, source=source)
        self._closed = False
        atexit.register(self.close)

    @property
    def config(self) -> Config:
        return self._async.config

    @property
    def last_trace_id(self) -> str | None:
        return getattr(self._async, "last_trace_id", None)

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def chat(
        self,
        prompt: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        **params: Any,
    ) -> Reply:
        return self._run(self._async.chat(prompt, model=model, system=system, **params))  # type: ignore[no-any-return]

    def stream(
        self,
        prompt: Messages,
        *,
        model: str | None = None,
        system: str | None = None,
        **params: Any,
    ) -> Iterator[str]:
        agen: AsyncGenerator[str, None] = self._async.stream(
            prompt, model=model, system=system, **params
        )
        try:
            while True:
                try:
                    yield self._run(anext(agen))
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def run_task(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        *,
        variant: str | None = None,
        version: int | str | None = None,
    ) -> TaskResult:
        return self._run(  # type: ignore[no-any-return]
            self._async.run_task(name, variables, variant=variant, version=version)
        )

    def render_task(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        *,
        variant: str | None = None,
        version: int | str | None = None,
    ) -> TaskPlan:
        return self._run(  # type: ignore[no-any-return]
            self._async.render_task(name, variables, variant=variant, version=version)
        )

    def traces(
        self, *, limit: int = 20, model: str | None = None, status: str | None = None
    ) -> list[Trace]:
        return self._run(self._async.traces(limit=limit, model=model, status=status))  # type: ignore[no-any-return]

    def trace(self, trace_id: str) -> Trace | None:
        return self._run(self._async.trace(trace_id))  # type: ignore[no-any-return]

    def feedback(
        self,
        trace_id: str,
        *,
        thumb: Literal["up", "down"] | None = None,
        score: float | None = None,
        scale: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        correction: Any = None,
        source: Literal["human", "program"] = "program",
        author: str | None = None,
    ) -> FeedbackRecord:
        """Record feedback on a trace; see ``AsyncClient.feedback``."""
        return self._run(  # type: ignore[no-any-return]
            self._async.feedback(
                trace_id,
                thumb=thumb,
                score=score,
                scale=scale,
                label=label,
                comment=comment,
                correction=correction,
                source=source,
                author=author,
            )
        )

    def close(self) -> None:
        """Write every pending trace and release the models."""
        if self._closed:
            return
        self._closed = True
        self._run(self._async.aclose())
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
