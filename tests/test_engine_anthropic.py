"""The Anthropic engine against a local server speaking the Messages API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pluggy
import pytest

from powertrain.catalog import ModelConfig
from powertrain.engines import anthropic as anthropic_module
from powertrain.engines.anthropic import AnthropicEngine, map_messages
from powertrain.errors import (
    ConfigError,
    ContextWindowExceeded,
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
)
from powertrain.plugins import Specs
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatMessage
from tests.engine_helpers import EngineMaker, collect, error_chain
from tests.fakes import FakeAnthropic

KEY = "sk-ant-test-5ecret-do-not-leak"

MakeEngine = EngineMaker[AnthropicEngine]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        fake.api_key = KEY  # calls without the right x-api-key get Anthropic's 401
        yield fake


@pytest.fixture
async def make_engine(upstream: FakeAnthropic) -> AsyncIterator[MakeEngine]:
    maker = EngineMaker(
        AnthropicEngine,
        alias="claude",
        engine="anthropic",
        model="claude-sonnet-4-5",
        base_url=upstream.url,
        api_key=KEY,
    )
    yield maker
    await maker.aclose()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> AnthropicEngine:
    return await make_engine()


def chat_request(*messages: tuple[str, str], **fields: Any) -> ChatCompletionRequest:
    if not messages:
        messages = (("user", "What is the capital of France?"),)
    return ChatCompletionRequest.model_validate(
        {
            "model": "claude",
            "messages": [{"role": role, "content": content} for role, content in messages],
            **fields,
        }
    )


# --------------------------------------------------------------------------- chat


async def test_chat_returns_content_finish_reason_and_usage(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.reply = "The capital of France is Paris."

    result = await engine.chat(chat_request())

    assert result.content == "The capital of France is Paris."
    assert result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 6)
    assert result.upstream_id is not None and result.upstream_id.startswith("msg_")


async def test_chat_sends_anthropic_headers_and_body(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    await engine.chat(chat_request())

    sent = upstream.last_request
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }


async def test_system_prompts_and_parameters_are_mapped(
    make_engine: MakeEngine, upstream: FakeAnthropic
) -> None:
    engine = await make_engine(params={"max_tokens": 256, "temperature": 0.1, "top_k": 40})

    await engine.chat(
        chat_request(
            ("system", "You are terse."),
            ("user", "Hi."),
            ("developer", "Answer in French."),
            ("user", "Capital of France?"),
            temperature=0.5,
            top_p=0.9,
            stop=["\n\n", "END"],
            user="user-42",
            seed=7,
        )
    )

    sent = upstream.last_request.json
    assert sent["system"] == "You are terse.\n\nAnswer in French."
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi."},
                {"type": "text", "text": "Capital of France?"},
            ],
        }
    ]
    assert sent["max_tokens"] == 256
    assert sent["temperature"] == 0.5
    assert sent["top_p"] == 0.9
    assert sent["top_k"] == 40
    assert sent["stop_sequences"] == ["\n\n", "END"]
    assert sent["metadata"] == {"user_id": "user-42"}
    assert "seed" not in sent and "stop" not in sent


async def test_request_max_tokens_wins(engine: AnthropicEngine, upstream: FakeAnthropic) -> None:
    await engine.chat(chat_request(max_tokens=32))
    assert upstream.last_request.json["max_tokens"] == 32


async def test_stop_reasons_are_mapped(engine: AnthropicEngine, upstream: FakeAnthropic) -> None:
    upstream.stop_reason = "max_tokens"
    assert (await engine.chat(chat_request())).finish_reason == "length"
    chunks: list[ChatChunk] = []
    await collect(engine.stream(chat_request()), chunks)
    assert chunks[-1].finish_reason == "length"
    upstream.stop_reason = "stop_sequence"
    assert (await engine.chat(chat_request())).finish_reason == "stop"


async def test_base_url_may_include_the_version(
    make_engine: MakeEngine, upstream: FakeAnthropic
) -> None:
    engine = await make_engine(base_url=upstream.url + "/v1/")
    await engine.chat(chat_request())
    assert upstream.last_request.path == "/v1/messages"


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    engine = AnthropicEngine(ModelConfig(alias="claude", engine="anthropic"))
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        await engine.start()


def test_message_mapping() -> None:
    messages = [
        ChatMessage(role="user", content="look"),
        ChatMessage.model_validate(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "text", "text": "what is it?"},
                ],
            }
        ),
        ChatMessage(role="assistant", content="It is "),
    ]
    system, mapped = map_messages(messages)
    assert system is None
    assert mapped == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                },
                {"type": "text", "text": "what is it?"},
            ],
        },
        {"role": "assistant", "content": "It is"},  # a prefill may not end in whitespace
    ]
    with pytest.raises(InvalidRequest, match="user message"):
        map_messages([ChatMessage(role="system", content="only a system prompt")])
    with pytest.raises(InvalidRequest, match="tool"):
        map_messages([ChatMessage(role="tool", content="42", tool_call_id="call_1")])


# ---------------------------------------------------------------------- streaming


async def test_stream_yields_text_then_a_final_chunk_with_usage(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.reply = "Paris is the capital."
    chunks: list[ChatChunk] = []

    await collect(
        engine.stream(chat_request(("system", "Be brief."), ("user", "Capital?"))), chunks
    )

    assert "".join(c.delta for c in chunks) == "Paris is the capital."
    assert [c.finish_reason for c in chunks[:-1]] == [None] * 4
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (3, 4)
    sent = upstream.last_request.json
    assert sent["stream"] is True
    assert sent["system"] == "Be brief."


async def test_mid_stream_death_keeps_the_chunks_and_is_not_retried(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.reply = "one two three four"
    upstream.die_mid_stream(after_chunks=3)
    chunks: list[ChatChunk] = []

    with pytest.raises(StreamInterrupted) as caught:
        await collect(engine.stream(chat_request()), chunks)

    assert "".join(c.delta for c in chunks) == "one two three "
    partial_usage = getattr(caught.value, "usage", None)
    assert partial_usage is not None and partial_usage.prompt_tokens == 6  # from message_start
    assert len(upstream.requests) == 1


async def test_overloaded_error_event_mid_stream_interrupts(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.error_mid_stream(after_chunks=2, error_type="overloaded_error", message="Overloaded")
    chunks: list[ChatChunk] = []
    with pytest.raises(StreamInterrupted, match="Overloaded"):
        await collect(engine.stream(chat_request()), chunks)
    assert len(chunks) == 2
    assert len(upstream.requests) == 1


async def test_overloaded_error_event_before_any_text_is_retried(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.error_mid_stream(after_chunks=0, error_type="overloaded_error")
    chunks: list[ChatChunk] = []
    await collect(engine.stream(chat_request()), chunks)
    assert "".join(c.delta for c in chunks) == upstream.default_reply
    assert len(upstream.requests) == 2


async def test_invalid_request_error_event_before_any_text_is_not_retried(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.error_mid_stream(after_chunks=0, error_type="invalid_request_error", message="bad")
    with pytest.raises(UpstreamError, match="bad") as caught:
        await collect(engine.stream(chat_request()), [])
    assert caught.value.upstream_status == 400
    assert len(upstream.requests) == 1


# ------------------------------------------------------------------------ retries


async def test_429_waits_for_retry_after_then_succeeds(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.fail(1, status=429, retry_after="1")
    result = await engine.chat(chat_request())
    assert result.content == upstream.default_reply
    first, second = upstream.requests
    assert second.at - first.at >= 0.9


async def test_529_overloaded_is_retried_then_succeeds(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.fail(2, status=529)
    chunks: list[ChatChunk] = []
    await collect(engine.stream(chat_request()), chunks)
    assert chunks[-1].finish_reason == "stop"
    assert len(upstream.requests) == 3


async def test_400_is_never_retried(engine: AnthropicEngine, upstream: FakeAnthropic) -> None:
    upstream.fail(1, status=400, message="temperature: range: 0..1")
    with pytest.raises(UpstreamError, match=r"temperature: range: 0\.\.1") as caught:
        await engine.chat(chat_request())
    assert caught.value.upstream_status == 400
    assert caught.value.code == "invalid_request_error"
    assert len(upstream.requests) == 1


async def test_exhausted_retries_carry_the_upstream_message(
    make_engine: MakeEngine, upstream: FakeAnthropic
) -> None:
    engine = await make_engine(max_retries=1)
    upstream.fail(3, status=529)
    with pytest.raises(UpstreamError, match="Overloaded") as caught:
        await engine.chat(chat_request())
    assert caught.value.upstream_status == 529
    assert len(upstream.requests) == 2

    upstream.clear()
    upstream.fail(3, status=429, retry_after="0")
    with pytest.raises(RateLimited, match="per-minute rate limit"):
        await engine.chat(chat_request())
    assert len(upstream.requests) == 2


async def test_prompt_too_long_is_a_context_window_error(
    engine: AnthropicEngine, upstream: FakeAnthropic
) -> None:
    upstream.context_window = 2
    with pytest.raises(ContextWindowExceeded, match="prompt is too long"):
        await engine.chat(chat_request())


async def test_a_hung_upstream_times_out_at_the_configured_timeout(
    make_engine: MakeEngine, upstream: FakeAnthropic
) -> None:
    engine = await make_engine(timeout=0.5)
    upstream.hang()
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await engine.chat(chat_request())
    assert 0.4 <= time.monotonic() - started < 5
    assert len(upstream.requests) == 1


# ----------------------------------------------------------------------- secrecy


async def test_the_key_never_appears_in_errors(
    make_engine: MakeEngine, upstream: FakeAnthropic
) -> None:
    engine = await make_engine(api_key="sk-ant-wrong-" + KEY)
    with pytest.raises(UpstreamError, match="invalid x-api-key") as caught:
        await engine.chat(chat_request())
    assert caught.value.upstream_status == 401
    for exc in error_chain(caught.value):
        assert KEY not in repr(exc)
        assert KEY not in str(exc)


def test_registered_through_the_plugin_hook() -> None:
    pm = pluggy.PluginManager("powertrain")
    pm.add_hookspecs(Specs)
    pm.register(anthropic_module)
    found: list[type] = []
    pm.hook.register_engines(register=found.append)
    assert found == [AnthropicEngine]
    caps = AnthropicEngine.capabilities
    assert caps.streaming and not caps.json_schema and not caps.embeddings and not caps.tools
