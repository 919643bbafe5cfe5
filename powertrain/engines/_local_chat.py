"""What the local chat engines (llamacpp, transformers) share.

Both load a model once per key and share it among the aliases that name it;
both generate in a ``LocalWorker`` thread that hands ``(text, finish_reason)``
pairs to the event loop; both read the same sampling parameters with the same
defaults and stop at the same strings. Only how a model is loaded and how it
produces tokens differs.
"""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from powertrain.engines._local_worker import Job
from powertrain.engines.base import Engine
from powertrain.errors import EngineUnavailable, InvalidRequest
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, Usage

# Sampling defaults for small local models when neither the request nor the
# catalog sets them; OpenAI's own defaults (temperature 1, no top-k / min-p)
# make a 135M model ramble.
LOCAL_SAMPLING_DEFAULTS: dict[str, float] = {"temperature": 0.8, "top_p": 0.95}


@dataclass(frozen=True)
class Sampling:
    """How a request asks the next token to be chosen (temperature 0: greedy)."""

    temperature: float
    top_p: float
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, request: ChatCompletionRequest) -> Sampling:
        try:
            bias = {int(k): v for k, v in (request.logit_bias or {}).items()}
        except ValueError:
            raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias") from None
        return cls(
            temperature=request.temperature
            if request.temperature is not None
            else LOCAL_SAMPLING_DEFAULTS["temperature"],
            top_p=request.top_p if request.top_p is not None else LOCAL_SAMPLING_DEFAULTS["top_p"],
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias=bias,
        )


def stop_strings(request: ChatCompletionRequest, end_of_turn: str) -> list[str]:
    """The request's stop strings, and the end-of-turn marker should the model spell it out."""
    return [*request.stop_list, end_of_turn]


class LocalModel(Protocol):
    """A model loaded in this process: it tokenizes prompts exactly and can be freed."""

    def prompt_tokens(self, request: ChatCompletionRequest) -> list[int]: ...

    def close(self) -> None: ...


K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=LocalModel)


class SharedModels(Generic[K, M]):
    """Loaded models by key: one copy per key, shared by every alias, closed with the last."""

    def __init__(self, load: Callable[[K], M]):
        self._load = load
        self._models: dict[K, tuple[M, int]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: K) -> M:
        with self._lock:  # held while loading: two aliases of one file load it once
            model, users = self._models.get(key) or (self._load(key), 0)
            self._models[key] = (model, users + 1)
            return model

    def release(self, key: K) -> None:
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                return
            model, users = entry
            if users > 1:
                self._models[key] = (model, users - 1)
                return
            del self._models[key]
            model.close()


class LocalChatEngine(Engine, Generic[K, M]):
    """A model from ``SharedModels``, answering from a worker job of ``(text, finish_reason)``
    items. A subclass's ``__init__`` calls ``_share`` with the registry and its model's key."""

    _models: SharedModels[K, M]
    _key: K
    _loaded: M | None = None

    def _share(self, models: SharedModels[K, M], key: K) -> None:
        self._models, self._key = models, key

    async def start(self) -> None:
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(self._models.acquire, self._key)

    async def aclose(self) -> None:
        if self._loaded is not None:
            self._loaded = None
            await asyncio.to_thread(self._models.release, self._key)

    @property
    def loaded(self) -> M:
        if self._loaded is None:
            raise EngineUnavailable(f"model {self.model.alias!r} is not loaded; call start()")
        return self._loaded

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        return len(self.loaded.prompt_tokens(request))

    @abstractmethod
    def _submit(self, request: ChatCompletionRequest) -> tuple[Job, int, dict[str, int]]:
        """Queue one generation: its job, its prompt tokens, and a counter whose
        ``completion`` the worker sets to the tokens it generated."""

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        job, prompt_tokens, counter = self._submit(request)
        finish: str = "stop"
        try:
            async for text, finish_reason in job.items():
                if finish_reason:
                    finish = finish_reason
                if text:
                    yield ChatChunk(delta=text)
        finally:
            job.cancel()  # no-op when finished; stops generation if our caller left
        yield ChatChunk(
            finish_reason="length" if finish == "length" else "stop",
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=counter["completion"]),
            compute_seconds=job.compute_seconds,
        )

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        parts: list[str] = []
        last = ChatChunk()
        async for chunk in self.stream(request, deadline=deadline):
            parts.append(chunk.delta)
            last = chunk
        return ChatResult(
            content="".join(parts),
            finish_reason=last.finish_reason or "stop",
            usage=last.usage or Usage(),
            compute_seconds=last.compute_seconds,
        )
