"""RELIABILITY.md scenarios 10, 11 and 14 against real servers on 127.0.0.1.

10: an upstream that dies mid-stream gives the client an error event and a
clean close, and a trace with the failure and the partial output. 11: a client
that leaves (before the first token, mid-stream, while waiting) cancels the
upstream request, stops local generation and frees its slot. 14: a hung
upstream times out at the configured deadline and leaks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from powertrain.config import Config, load_config
from powertrain.engines.llamacpp import LlamaCppEngine
from powertrain.schemas import ChatCompletionRequest
from powertrain.server.app import PowertrainApp
from tests.conftest import eventually, openai_model_toml, running_app, serving, write_config
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.upstreams import FakeUpstream, split_reply

REPLY = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
CHAT = "/v1/chat/completions"


async def traces_of(base: str, model: str, n: int) -> list[dict[str, Any]]:
    """The traces of ``model`` through ``GET /api/traces`` (which writes pending ones first)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + "/api/traces", params={"model": model, "limit": 100}) as resp,
    ):
        assert resp.status == 200
        traces: list[dict[str, Any]] = (await resp.json())["data"]
    assert len(traces) == n, [t["status"] for t in traces]
    return traces


def request_path_tasks() -> list[asyncio.Task[Any]]:
    """Tasks awaiting anything in powertrain's request path (handlers, watchers, engines).

    The app's entry point (``server/app.py``) is left out: the lifespan task sits in it
    for the server's whole life. So is the trace writer's own task.
    """
    found = []
    for task in asyncio.all_tasks():
        if task.done() or task.get_name() == "powertrain-trace-writer":
            continue
        obj: Any = task.get_coro()
        while obj is not None:
            code = getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)
            where = code.co_filename.replace("\\", "/") if code is not None else ""
            if "/powertrain/" in where and not where.endswith("/powertrain/server/app.py"):
                found.append(task)
                break
            obj = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None)
    return found


async def sse_data(resp: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """Each ``data:`` payload of an SSE response, parsed (``"[DONE]"`` as is)."""
    async for line in resp.content:
        if line.startswith(b"data: "):
            payload = line[6:].strip()
            yield "[DONE]" if payload == b"[DONE]" else orjson.loads(payload)


def chat_body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say the words."}], **fields}


def upstream_config(
    tmp_path: Path, fake: FakeUpstream, *, extra: str = "", settings: str = ""
) -> Config:
    anthropic = isinstance(fake, FakeAnthropic)
    model = (
        (
            f'[models.up]\nengine = "anthropic"\nmodel = "claude-x"\nbase_url = "{fake.url}"\n'
            f'api_key = "sk-ant-test"\n{extra}\n'
        )
        if anthropic
        else openai_model_toml("up", fake.url, extra=extra)
    )
    return load_config(write_config(tmp_path, f"[settings]\n{settings}\n{model}"))


# ------------------------------------------------------------ 10. upstream dies mid-stream


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("openai", "die"),
        ("openai", "error_event"),
        ("anthropic", "die"),
        ("anthropic", "error_event"),
    ],
)
async def test_upstream_dying_mid_stream_ends_the_stream_with_an_error(
    tmp_path: Path, kind: str, fault: str
) -> None:
    fake: FakeUpstream = FakeOpenAI(reply=REPLY) if kind == "openai" else FakeAnthropic(reply=REPLY)
    async with fake, aiohttp.ClientSession() as session:
        for _ in range(2):
            if fault == "die":
                fake.die_mid_stream(3)
            else:
                fake.error_mid_stream(3, message="the upstream fell over")
        partial = "".join(split_reply(REPLY)[:3])
        async with running_app(upstream_config(tmp_path, fake)) as base:
            # The official SDK: three chunks, then APIError, within a second of the failure.
            sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            async with sdk:
                stream = await sdk.chat.completions.create(**chat_body("up", stream=True))
                received: list[str] = []
                last_chunk_at = time.monotonic()
                with pytest.raises(openai.APIError) as failed:
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            received.append(chunk.choices[0].delta.content)
                        last_chunk_at = time.monotonic()
                assert time.monotonic() - last_chunk_at < 1.0
            assert "".join(received) == partial
            body = failed.value.body
            assert isinstance(body, dict) and body["code"] == "stream_interrupted"
            assert body["type"] == "upstream_error"
            assert "broke after 3 chunk(s)" in failed.value.message

            # The raw stream: the error is the last event, the body ends cleanly (no [DONE]).
            async with session.post(base + CHAT, json=chat_body("up", stream=True)) as resp:
                assert resp.status == 200
                events = [event async for event in sse_data(resp)]
                assert resp.content.at_eof()
            assert "[DONE]" not in events and set(events[-1]) == {"error"}
            assert (
                "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
                == partial
            )

            for trace in await traces_of(base, "up", 2):
                assert trace["status"] == "error" and trace["stream"] is True
                assert trace["error_type"] == "upstream_error" and trace["http_status"] == 502
                assert "broke after 3 chunk(s)" in trace["error_message"]
                assert trace["output"] == partial
                assert trace["prompt_tokens"] > 0 and trace["completion_tokens"] > 0
                assert trace["metadata"]["usage_estimated"] is True
        assert len(fake.requests) == 2  # nothing is retried after the first streamed byte


# ---------------------------------------------------------------- 11. client disconnects


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "waiting"])
async def test_leaving_before_the_first_token_cancels_the_upstream(
    tmp_path: Path, stream: bool
) -> None:
    async with FakeOpenAI(reply=REPLY) as fake:
        fake.latency = 30  # the answer would come long after the test is over
        async with running_app(upstream_config(tmp_path, fake)) as base:
            if stream:
                session = aiohttp.ClientSession()
                client = asyncio.create_task(
                    session.post(base + CHAT, json=chat_body("up", stream=True))
                )
            else:
                sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
                client = asyncio.create_task(sdk.chat.completions.create(**chat_body("up")))
            await fake.wait_for_requests(1)
            client.cancel()  # the caller gives up: its connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await client
            await (session.close() if stream else sdk.close())

            await fake.wait_for_disconnects(1)  # the upstream request was cancelled
            await fake.wait_idle()
            await eventually(lambda: not request_path_tasks(), "request tasks finish")
            (trace,) = await traces_of(base, "up", 1)
        assert trace["status"] == "cancelled" and trace["http_status"] == 499
        assert trace["error_type"] == "client_disconnected"


async def test_leaving_mid_stream_cancels_the_upstream(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=REPLY) as fake:
        fake.chunk_delay = 0.2  # the whole answer would take ~2.4 s
        async with (
            running_app(upstream_config(tmp_path, fake)) as base,
            aiohttp.ClientSession() as session,
        ):
            received = ""
            async with session.post(base + CHAT, json=chat_body("up", stream=True)) as resp:
                async for event in sse_data(resp):
                    received += event["choices"][0]["delta"].get("content") or ""
                    if len(split_reply(received)) == 2:
                        break
                resp.close()  # leave mid-stream
            await fake.wait_for_disconnects(1)
            await fake.wait_idle()
            await eventually(lambda: not request_path_tasks(), "request tasks finish")
            (trace,) = await traces_of(base, "up", 1)
        assert trace["status"] == "cancelled" and trace["http_status"] == 499
        assert trace["output"].startswith(received) and len(trace["output"]) < len(REPLY)


LOCAL = (
    '[models.smollm2]\nengine = "llamacpp"\ncontext_window = 2048\n'
    "[models.smollm2.options]\nn_threads = 1\nqueue_size = 1\n"
)
# SmolLM2's end-of-turn token is banned, so an answer runs to max_tokens unless stopped.
LONG_MAX_TOKENS = 400
LONG_LOCAL: dict[str, Any] = {
    "model": "smollm2",
    "max_tokens": LONG_MAX_TOKENS,
    "temperature": 0,
    "logit_bias": {"2": -100},
    "messages": [{"role": "user", "content": "Count from 1 to 1000."}],
}


async def local_engine(app: PowertrainApp) -> LlamaCppEngine:
    engine = await app.gateway.engines.get("smollm2")
    assert isinstance(engine, LlamaCppEngine)
    return engine


@pytest.mark.model
async def test_leaving_stops_local_generation_and_frees_the_slot(tmp_path: Path) -> None:
    async with (
        serving(load_config(write_config(tmp_path, LOCAL))) as (base, app),
        aiohttp.ClientSession() as session,
    ):
        engine = await local_engine(app)
        worker = engine.loaded.worker
        prompt_tokens = engine.count_tokens(ChatCompletionRequest.model_validate(LONG_LOCAL))
        async with session.post(base + CHAT, json={**LONG_LOCAL, "stream": True}) as resp:
            async for event in sse_data(resp):
                if event["choices"][0]["delta"].get("content"):
                    break
            assert worker.admitted == 1
            resp.close()
        await eventually(lambda: worker.admitted == 0, "the local slot is freed")
        # Tokens evaluated into the context (the last sampled one is not): it stopped
        # early, possibly right after the first token the client saw.
        generated = engine.loaded.llm.n_tokens - prompt_tokens
        assert 0 <= generated < LONG_MAX_TOKENS // 2
        (trace,) = await traces_of(base, "smollm2", 1)
        assert trace["status"] == "cancelled" and trace["error_type"] == "client_disconnected"
        assert trace["output"]  # the partial answer the client received is kept


@pytest.mark.model
async def test_local_queue_is_bounded_and_drains_when_callers_leave(tmp_path: Path) -> None:
    async with (
        serving(load_config(write_config(tmp_path, LOCAL))) as (base, app),
        aiohttp.ClientSession() as session,
    ):
        worker = (await local_engine(app)).loaded.worker
        running = await session.post(base + CHAT, json={**LONG_LOCAL, "stream": True})
        async for event in sse_data(running):
            if event["choices"][0]["delta"].get("content"):
                break
        queued = asyncio.create_task(session.post(base + CHAT, json=LONG_LOCAL))
        await eventually(lambda: worker.admitted == 2, "the second call is queued")

        async with session.post(base + CHAT, json=LONG_LOCAL) as refused:
            assert refused.status == 503
            assert int(refused.headers["Retry-After"]) >= 1
            error = (await refused.json())["error"]
        assert error["type"] == "overloaded_error" and error["code"] == "engine_overloaded"
        assert "queue_size=1" in error["message"]

        queued.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await queued
        running.close()
        await eventually(lambda: worker.admitted == 0, "every slot is freed")
        statuses = sorted(t["status"] for t in await traces_of(base, "smollm2", 3))
        assert statuses == ["cancelled", "cancelled", "error"]

        # The freed worker serves the next caller.
        async with session.post(base + CHAT, json={**LONG_LOCAL, "max_tokens": 2}) as resp:
            assert resp.status == 200


# ----------------------------------------------------------------------------- 14. timeouts


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("deadline", ["model_timeout", "request_timeout"])
async def test_a_hung_upstream_times_out_at_the_deadline(
    tmp_path: Path, stream: bool, deadline: str
) -> None:
    if deadline == "model_timeout":
        config_args = {"extra": "timeout = 1.0"}
    else:
        config_args = {"settings": "request_timeout = 1.0", "extra": "timeout = 30.0"}
    async with FakeOpenAI(reply=REPLY) as fake:
        fake.hang(1)
        async with (
            running_app(upstream_config(tmp_path, fake, **config_args)) as base,
            aiohttp.ClientSession() as session,
        ):
            started = time.monotonic()
            async with session.post(base + CHAT, json=chat_body("up", stream=stream)) as resp:
                body = await resp.json()
                elapsed = time.monotonic() - started
            assert resp.status == 504
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["type"] == "timeout_error"
            assert body["error"]["code"] == "upstream_timeout"
            assert ("timeout" if deadline == "model_timeout" else "request_timeout") in (
                body["error"]["message"]
            )
            assert 0.95 <= elapsed < 3.0, elapsed

            # Nothing is left behind: the upstream saw the connection close, no task lingers.
            await fake.wait_for_disconnects(1)
            await fake.wait_idle()
            await eventually(lambda: not request_path_tasks(), "request tasks finish")
            (trace,) = await traces_of(base, "up", 1)
            assert trace["status"] == "error" and trace["http_status"] == 504
            assert trace["error_type"] == "timeout_error"

            # And the next call is served normally.
            async with session.post(base + CHAT, json=chat_body("up")) as resp:
                assert resp.status == 200
                assert (await resp.json())["choices"][0]["message"]["content"] == REPLY
        assert len(fake.requests) == 2
