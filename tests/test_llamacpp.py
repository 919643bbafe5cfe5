"""The in-process llama.cpp engine on the bundled model: queue bounds, cancellation, counting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from powertrain.catalog import BUNDLED_MODEL, ModelConfig
from powertrain.engines.llamacpp import LlamaCppEngine
from powertrain.errors import ConfigError, EngineOverloaded
from powertrain.schemas import ChatCompletionRequest

pytestmark = pytest.mark.model


def _request(text: str, **params: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "smollm2", "messages": [{"role": "user", "content": text}], **params}
    )


@pytest.fixture
async def engine() -> AsyncIterator[LlamaCppEngine]:
    model = BUNDLED_MODEL.model_copy(update={"alias": "smollm2-q1", "options": {"queue_size": 1}})
    eng = LlamaCppEngine(model)
    await eng.start()
    yield eng
    await eng.aclose()


async def test_prompt_count_is_exact(engine: LlamaCppEngine) -> None:
    request = _request("Count these words please", temperature=0, max_tokens=3)
    result = await engine.chat(request)
    assert result.usage.prompt_tokens == engine.count_tokens(request)
    assert result.usage.completion_tokens == 3 and result.finish_reason == "length"
    assert result.compute_seconds is not None and result.compute_seconds > 0


async def test_queue_is_bounded_and_slots_are_freed(engine: LlamaCppEngine) -> None:
    worker = engine.loaded.worker
    long = _request("Write a long story about the sea.", temperature=0, max_tokens=400)
    running = engine.stream(long)
    queued = engine.stream(long)
    first = await anext(running)  # generating now
    assert first.delta
    waiting = asyncio.ensure_future(anext(queued))  # admitted, waiting for the thread
    await asyncio.sleep(0)
    while worker.admitted < 2:
        await asyncio.sleep(0.01)

    with pytest.raises(EngineOverloaded) as info:
        await anext(engine.stream(long))
    assert info.value.status_code == 503 and "Retry-After" in info.value.headers
    assert "queue_size=1" in info.value.message

    # Abandoning both streams stops generation and frees both slots.
    await running.aclose()  # type: ignore[attr-defined]
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await queued.aclose()  # type: ignore[attr-defined]
    for _ in range(500):
        if worker.admitted == 0:
            break
        await asyncio.sleep(0.01)
    assert worker.admitted == 0
    after = await engine.chat(_request("Hi", temperature=0, max_tokens=2))
    assert after.usage.completion_tokens == 2


async def test_cancelled_generation_stops_early(engine: LlamaCppEngine) -> None:
    stream = engine.stream(_request("Tell me everything about history.", max_tokens=2000))
    pieces = [await anext(stream) for _ in range(3)]
    assert all(p.delta for p in pieces)
    await stream.aclose()  # type: ignore[attr-defined]
    worker = engine.loaded.worker
    for _ in range(200):
        if worker.admitted == 0:
            break
        await asyncio.sleep(0.01)
    assert worker.admitted == 0  # 2000 tokens would take ~20 s; it stopped at once


async def test_aliases_of_one_file_share_the_weights() -> None:
    a = LlamaCppEngine(BUNDLED_MODEL.model_copy(update={"alias": "a"}))
    b = LlamaCppEngine(BUNDLED_MODEL.model_copy(update={"alias": "b"}))
    await a.start()
    await b.start()
    try:
        assert a.loaded is b.loaded
    finally:
        await a.aclose()
        await b.aclose()


def test_bad_configuration_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown llamacpp option"):
        LlamaCppEngine(ModelConfig(alias="x", engine="llamacpp", options={"threads": 2}))
    with pytest.raises(ConfigError, match="does not exist"):
        LlamaCppEngine(ModelConfig(alias="x", engine="llamacpp", model=str(tmp_path / "no.gguf")))


async def test_closing_the_model_mid_generation_is_safe() -> None:
    # Freeing llama.cpp's context under a running generation used to crash the process.
    model = BUNDLED_MODEL.model_copy(
        update={"alias": "smollm2-closing", "options": {"n_ctx": 1024}}
    )
    eng = LlamaCppEngine(model)
    await eng.start()
    worker = eng.loaded.worker
    long = _request("Write a long story about the sea.", temperature=0, max_tokens=400)
    running = eng.stream(long)
    queued = eng.stream(long)
    assert (await anext(running)).delta
    waiting = asyncio.ensure_future(anext(queued))
    while worker.admitted < 2:
        await asyncio.sleep(0.01)
    await eng.aclose()  # returns once the worker thread has stopped; the process lives
    assert worker.admitted == 0  # both jobs ended: the running one stopped at its next token
    rest = [chunk async for chunk in running]
    assert rest and rest[-1].usage is not None
    assert rest[-1].usage.completion_tokens < 400
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await waiting
    await queued.aclose()  # type: ignore[attr-defined]


async def test_models_take_turns_on_one_thread_and_closing_one_spares_the_other() -> None:
    # Two llama.cpp models generating from two threads slow each other down (see
    # _local_worker), so every local model runs on one shared thread, in turn.
    def engine(alias: str, n_ctx: int) -> LlamaCppEngine:
        return LlamaCppEngine(
            BUNDLED_MODEL.model_copy(update={"alias": alias, "options": {"n_ctx": n_ctx}})
        )

    first, second = engine("smollm2-turn-a", 1024), engine("smollm2-turn-b", 1280)
    await first.start()
    await second.start()
    try:
        assert first.loaded is not second.loaded  # two copies of the weights
        events: list[str] = []

        async def run(eng: LlamaCppEngine, name: str, max_tokens: int) -> None:
            request = _request("Tell me about the sea.", temperature=0, max_tokens=max_tokens)
            async for _chunk in eng.stream(request):
                if name + " started" not in events:
                    events.append(name + " started")
            events.append(name + " done")

        long = asyncio.ensure_future(run(first, "a", 60))
        while first.loaded.worker.admitted == 0:
            await asyncio.sleep(0.01)
        await asyncio.gather(long, run(second, "b", 5))
        assert events == ["a started", "a done", "b started", "b done"]

        events.clear()
        stopped = asyncio.ensure_future(run(first, "a", 400))
        while not events:
            await asyncio.sleep(0.01)
        spared = asyncio.ensure_future(run(second, "b", 5))
        while second.loaded.worker.admitted == 0:
            await asyncio.sleep(0.01)
        await first.aclose()  # stops a's generation; b's job, queued behind it, still runs
        await asyncio.gather(stopped, spared)
        assert events == ["a started", "a done", "b started", "b done"]
    finally:
        await first.aclose()
        await second.aclose()
