"""The OpenAI engine against a local server speaking OpenAI's wire protocol."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import pluggy
import pytest

from powertrain.catalog import ModelConfig
from powertrain.engines import openai as openai_module
from powertrain.engines._retry import RetryPolicy, parse_retry_after
from powertrain.engines._sse import SSEDecoder, SSEEvent
from powertrain.engines.openai import OpenAIEngine
from powertrain.errors import (
    ConfigError,
    ContextWindowExceeded,
    EngineError,
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
)
from powertrain.plugins import Specs
from powertrain.schemas import ChatChunk, ChatCompletionRequest
from tests.engine_helpers import FAST_RETRIES, EngineMaker, collect, error_chain
from tests.fakes import FakeOpenAI
from tests.fakes.upstreams import fake_embedding

KEY = "sk-test-5ecret-do-not-leak"

MakeEngine = EngineMaker[OpenAIEngine]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def make_engine(upstream: FakeOpenAI) -> AsyncIterator[MakeEngine]:
    maker = EngineMaker(
        OpenAIEngine,
        alias="gpt",
        engine="openai",
        model="gpt-4o-mini",
        base_url=upstream.url,
        api_key=KEY,
    )
    yield maker
    await maker.aclose()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> OpenAIEngine:
    return await make_engine()


def chat_request(
    text: str = "What is the capital of France?", **fields: Any
) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "gpt", "messages": [{"role": "user", "content": text}], **fields}
    )


# --------------------------------------------------------------------------- chat


async def test_chat_returns_content_finish_reason_and_usage(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.reply = "The capital of France is Paris."

    result = await engine.chat(chat_request())

    assert result.content == "The capital of France is Paris."
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens == 6  # the fake counts words
    assert result.usage.completion_tokens == 6
    assert result.upstream_id is not None and result.upstream_id.startswith("chatcmpl-")
    assert len(upstream.requests) == 1


async def test_chat_sends_the_catalog_model_params_and_bearer_key(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(params={"temperature": 0.2, "top_p": 0.9})
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}

    await engine.chat(
        chat_request(
            temperature=0.7,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        )
    )

    sent = upstream.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["temperature"] == 0.7  # the request overrides the catalog default
    assert sent.json["top_p"] == 0.9
    assert sent.json["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert sent.json["response_format"]["json_schema"]["schema"] == schema
    assert "stream" not in sent.json and "stream_options" not in sent.json


async def test_request_max_tokens_replaces_the_catalog_default(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(params={"max_tokens": 50})
    await engine.chat(chat_request(max_completion_tokens=10))
    assert "max_tokens" not in upstream.last_request.json
    assert upstream.last_request.json["max_completion_tokens"] == 10


async def test_chat_maps_length_and_tool_calls(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.finish_reason = "length"
    assert (await engine.chat(chat_request())).finish_reason == "length"

    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    upstream.tool_calls = [call]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    result = await engine.chat(chat_request(tools=tools))
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == [call]
    assert result.content == ""
    assert upstream.last_request.json["tools"] == tools


async def test_a_local_server_gets_no_authorization_header(
    make_engine: MakeEngine, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-travel")
    engine = await make_engine(api_key=None)
    await engine.chat(chat_request())
    assert "authorization" not in upstream.last_request.headers


async def test_key_from_the_named_environment_variable(
    make_engine: MakeEngine, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_KEY_FOR_TEST", "gsk-from-env")
    engine = await make_engine(api_key=None, api_key_env="GROQ_KEY_FOR_TEST")
    await engine.chat(chat_request())
    assert upstream.last_request.headers["authorization"] == "Bearer gsk-from-env"


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MISSING_KEY_FOR_TEST", raising=False)
    default_host = OpenAIEngine(ModelConfig(alias="gpt", engine="openai"))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await default_host.start()  # fails before any connection is made
    named = OpenAIEngine(
        ModelConfig(alias="gpt", engine="openai", api_key_env="MISSING_KEY_FOR_TEST")
    )
    with pytest.raises(ConfigError, match="MISSING_KEY_FOR_TEST"):
        await named.chat(chat_request())


# ---------------------------------------------------------------------- streaming


async def test_stream_yields_text_then_a_final_chunk_with_usage(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.reply = "Paris is the capital."
    chunks: list[ChatChunk] = []

    await collect(engine.stream(chat_request()), chunks)

    assert "".join(c.delta for c in chunks) == "Paris is the capital."
    assert len(chunks) == 5  # four words, then the final chunk
    assert [c.finish_reason for c in chunks[:-1]] == [None] * 4
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (6, 4)
    sent = upstream.last_request.json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_streams_reuse_the_pooled_connection(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    for _ in range(3):
        await collect(engine.stream(chat_request()), [])
    await engine.chat(chat_request())
    ports = {r.client_port for r in upstream.requests}
    assert len(ports) == 1


async def test_stream_without_usage_still_finishes(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(options={**FAST_RETRIES, "include_usage": False})
    upstream.finish_reason = "length"
    chunks: list[ChatChunk] = []
    await collect(engine.stream(chat_request()), chunks)
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is None
    assert "stream_options" not in upstream.last_request.json


async def test_streaming_tool_calls_is_refused_before_any_call(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(InvalidRequest, match="stream"):
        await collect(engine.stream(chat_request(tools=tools)), [])
    assert upstream.requests == []


async def test_mid_stream_death_keeps_the_chunks_and_is_not_retried(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.reply = "one two three four five"
    upstream.die_mid_stream(after_chunks=2)
    chunks: list[ChatChunk] = []

    with pytest.raises(StreamInterrupted) as caught:
        await collect(engine.stream(chat_request()), chunks)

    assert "".join(c.delta for c in chunks) == "one two "
    assert getattr(caught.value, "chunks", None) == 2
    assert getattr(caught.value, "chars", None) == len("one two ")
    assert len(upstream.requests) == 1


async def test_error_event_mid_stream_is_an_interruption(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.error_mid_stream(after_chunks=1, message="upstream exploded")
    chunks: list[ChatChunk] = []
    with pytest.raises(StreamInterrupted, match="upstream exploded"):
        await collect(engine.stream(chat_request()), chunks)
    assert len(chunks) == 1
    assert len(upstream.requests) == 1


async def test_a_stream_that_dies_before_any_chunk_is_retried(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.reply = "fine now"
    upstream.die_mid_stream(after_chunks=0)
    chunks: list[ChatChunk] = []
    await collect(engine.stream(chat_request()), chunks)
    assert "".join(c.delta for c in chunks) == "fine now"
    assert len(upstream.requests) == 2


async def test_stream_status_errors_are_retried_before_the_first_chunk(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.fail(1, status=429, retry_after="0")
    upstream.fail(1, status=502)
    chunks: list[ChatChunk] = []
    await collect(engine.stream(chat_request()), chunks)
    assert chunks[-1].finish_reason == "stop"
    assert len(upstream.requests) == 3


# ------------------------------------------------------------------------ retries


async def test_429_waits_for_retry_after_then_succeeds(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.fail(1, status=429, retry_after="1")
    result = await engine.chat(chat_request())
    assert result.content == upstream.default_reply
    first, second = upstream.requests
    assert second.at - first.at >= 0.9


async def test_5xx_is_retried_then_succeeds(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.fail(2, status=503)
    result = await engine.chat(chat_request())
    assert result.finish_reason == "stop"
    assert len(upstream.requests) == 3


async def test_a_dropped_connection_is_retried(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.drop_connection(1)
    assert (await engine.chat(chat_request())).content == upstream.default_reply
    assert len(upstream.requests) == 2


async def test_400_is_never_retried_and_carries_the_upstream_message(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.fail(1, status=400, message="Invalid value for 'temperature'.")
    with pytest.raises(UpstreamError, match="Invalid value for 'temperature'") as caught:
        await engine.chat(chat_request())
    assert caught.value.upstream_status == 400
    assert caught.value.status_code == 400
    assert len(upstream.requests) == 1


async def test_exhausted_429_retries_raise_rate_limited(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(max_retries=1)
    upstream.fail(5, status=429, retry_after="0")
    with pytest.raises(RateLimited, match="Rate limit reached") as caught:
        await engine.chat(chat_request())
    assert caught.value.retry_after == 0
    assert len(upstream.requests) == 2


async def test_exhausted_5xx_retries_raise_upstream_error(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(max_retries=2)
    upstream.fail(5, status=500)
    with pytest.raises(UpstreamError, match="The server had an error") as caught:
        await engine.chat(chat_request())
    assert caught.value.upstream_status == 500
    assert caught.value.status_code == 502
    assert len(upstream.requests) == 3


async def test_a_retry_after_beyond_the_cap_is_not_waited_for(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    upstream.fail(1, status=429, retry_after="120")
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await engine.chat(chat_request())
    assert time.monotonic() - started < 5
    assert caught.value.retry_after == 120
    assert caught.value.headers == {"Retry-After": "120"}
    assert len(upstream.requests) == 1


async def test_no_wait_runs_past_the_deadline(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.fail(3, status=429, retry_after="5")
    started = time.monotonic()
    with pytest.raises(RateLimited):
        await engine.chat(chat_request(), deadline=started + 1.0)
    assert time.monotonic() - started < 1.0
    assert len(upstream.requests) == 1


async def test_context_length_error_is_mapped(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.context_window = 3
    with pytest.raises(ContextWindowExceeded, match="maximum context length is 3"):
        await engine.chat(chat_request())
    assert len(upstream.requests) == 1


# ----------------------------------------------------------------------- timeouts


async def test_a_hung_upstream_times_out_at_the_configured_timeout(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(timeout=0.5)
    upstream.hang()
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"0\.5 s"):
        await engine.chat(chat_request())
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 5
    assert len(upstream.requests) == 1  # a timed-out attempt is not repeated


async def test_a_hung_stream_times_out(make_engine: MakeEngine, upstream: FakeOpenAI) -> None:
    engine = await make_engine(timeout=0.5)
    upstream.hang()
    with pytest.raises(UpstreamTimeout):
        await collect(engine.stream(chat_request()), [])
    assert len(upstream.requests) == 1


async def test_a_stream_that_goes_silent_is_interrupted(
    make_engine: MakeEngine, upstream: FakeOpenAI
) -> None:
    engine = await make_engine(timeout=0.3)
    upstream.reply = "slow words here"
    upstream.chunk_delay = 1.0
    chunks: list[ChatChunk] = []
    with pytest.raises(StreamInterrupted, match="silent"):
        await collect(engine.stream(chat_request()), chunks)
    assert [c.delta for c in chunks] == ["slow "]


# ----------------------------------------------------------------------- secrecy


async def test_the_key_never_appears_in_errors(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.fail(1, status=401)
    with pytest.raises(UpstreamError) as caught:
        await engine.chat(chat_request())
    assert "Incorrect API key" in str(caught.value)
    for exc in error_chain(caught.value):
        assert KEY not in repr(exc)
        assert KEY not in str(exc)


async def test_the_key_never_appears_in_connection_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens here
    engine = OpenAIEngine(
        ModelConfig(
            alias="gpt",
            engine="openai",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
            max_retries=1,
            options=FAST_RETRIES,
        )
    )
    try:
        with pytest.raises(EngineError, match="could not reach") as caught:
            await engine.chat(chat_request())
    finally:
        await engine.aclose()
    assert caught.value.code == "upstream_unreachable"
    for exc in error_chain(caught.value):
        assert KEY not in repr(exc)
        assert KEY not in str(exc)


# --------------------------------------------------------------------- embeddings


async def test_embeddings(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    result = await engine.embed(["first text", "the second text"])
    assert result.vectors == [
        fake_embedding("first text", upstream.embedding_dim),
        fake_embedding("the second text", upstream.embedding_dim),
    ]
    assert result.usage.prompt_tokens == 5
    sent = upstream.last_request
    assert sent.path == "/v1/embeddings"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "input": ["first text", "the second text"],
        "encoding_format": "float",
    }


async def test_dimensions_are_passed_to_the_upstream(
    engine: OpenAIEngine, upstream: FakeOpenAI
) -> None:
    await engine.embed(["one"], dimensions=4)
    assert upstream.requests[-1].json["dimensions"] == 4
    await engine.embed(["one"])
    assert "dimensions" not in upstream.requests[-1].json


async def test_embeddings_are_retried_like_chat(engine: OpenAIEngine, upstream: FakeOpenAI) -> None:
    upstream.fail(1, status=500)
    assert len((await engine.embed(["x"])).vectors) == 1
    assert len(upstream.requests) == 2


# ------------------------------------------------------------------------ plumbing


def test_registered_through_the_plugin_hook() -> None:
    pm = pluggy.PluginManager("powertrain")
    pm.add_hookspecs(Specs)
    pm.register(openai_module)
    found: list[type] = []
    pm.hook.register_engines(register=found.append)
    assert found == [OpenAIEngine]
    assert OpenAIEngine.capabilities.json_schema and OpenAIEngine.capabilities.embeddings


def test_count_tokens_estimates_the_prompt(engine: OpenAIEngine) -> None:
    assert engine.count_tokens(chat_request("x" * 400)) > 100


def test_sse_decoder_follows_the_event_stream_rules() -> None:
    decoder = SSEDecoder()
    stream = (
        b": a comment\n"
        b'data: {"a": 1}\n\n'
        b"event: message_start\r\ndata: line one\r\ndata:line two\r\n\r\n"
        b"data: [DONE]\r\rdata: partial"
    )
    events: list[SSEEvent] = []
    for i in range(len(stream)):  # byte by byte: every split point is exercised
        events.extend(decoder.feed(stream[i : i + 1]))
    assert events == [
        SSEEvent('{"a": 1}'),
        SSEEvent("line one\nline two", event="message_start"),
        SSEEvent("[DONE]"),
    ]


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "7"}) == 7
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now=now) == 30
    assert parse_retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now=now) == 0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_full_jitter_below_the_cap() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base=0.5, backoff_max=4.0)
    for retry in range(6):
        for _ in range(50):
            assert 0 <= policy.backoff(retry) <= min(4.0, 0.5 * 2**retry)
    assert policy.wait(5, None, None) is None  # out of retries
    assert policy.wait(0, 3.0, None) == 3.0
    assert policy.wait(0, 3.0, time.monotonic() + 1.0) is None
