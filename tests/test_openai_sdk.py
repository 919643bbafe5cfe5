"""The official openai SDK against `powertrain serve` on the real bundled model."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ServerProcess, start_server

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("sdk")
    proc = start_server(home, env={"POWERTRAIN_HOME": str(home / "data")})
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def get_trace(server: ServerProcess, trace_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/api/traces/{trace_id}", timeout=10) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


QUESTION = [{"role": "user", "content": "What is 2+2? Answer briefly."}]


def test_chat_non_streaming_and_its_trace(server: ServerProcess, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24, seed=1
    )  # type: ignore[arg-type]
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text and "4" in text
    assert completion.model == "smollm2"
    assert completion.usage is not None and completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 24

    trace_id = raw.headers["x-powertrain-trace-id"]
    trace = get_trace(server, trace_id)
    assert trace["status"] == "ok" and trace["model"] == "smollm2"
    assert trace["engine"] == "llamacpp"
    assert trace["output"] == text
    assert trace["request"]["messages"] == QUESTION
    assert trace["prompt_tokens"] == completion.usage.prompt_tokens
    assert trace["completion_tokens"] == completion.usage.completion_tokens
    assert trace["finish_reason"] == completion.choices[0].finish_reason
    assert trace["latency_ms"] > 0 and trace["ttft_ms"] is not None
    assert trace["compute_seconds"] > 0
    assert trace["cost_usd"] == 0.0


def test_chat_streaming_and_its_trace(server: ServerProcess, client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    ) as response:
        trace_id = response.headers["x-powertrain-trace-id"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "4" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    trace = get_trace(server, trace_id)
    assert trace["stream"] is True and trace["status"] == "ok"
    assert trace["output"] == text
    assert trace["completion_tokens"] == usage.completion_tokens
    assert trace["ttft_ms"] <= trace["latency_ms"]


def test_json_schema_output_is_valid(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model="smollm2",
        temperature=0,
        max_tokens=60,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    value = json.loads(completion.choices[0].message.content or "")
    assert set(value) == {"city", "population"}
    assert isinstance(value["city"], str) and isinstance(value["population"], int)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smollm2",
        temperature=0,
        max_tokens=40,
        messages=[{"role": "user", "content": "Give me a JSON object with a key 'color'."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_models_list(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert "smollm2" in models
    assert client.models.retrieve("smollm2").id == "smollm2"


def test_errors_use_the_openai_shape(server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)  # type: ignore[arg-type]
    assert "no-such-model" in missing.value.message and "powertrain.toml" in missing.value.message
    # The refusal was traced too, and the error response points at its trace.
    trace = get_trace(server, missing.value.response.headers["x-powertrain-trace-id"])
    assert trace["status"] == "error" and trace["http_status"] == 404

    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "word " * 9000}]
        )
    message = too_long.value.message
    assert "8192" in message and "context window" in message
    assert too_long.value.code == "context_length_exceeded"

    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,  # type: ignore[arg-type]
            extra_body={"frobnicate": True},
        )
    assert "frobnicate" in unknown.value.message

    with pytest.raises(openai.BadRequestError) as bad_temp:
        client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=7)  # type: ignore[arg-type]
    assert "temperature" in bad_temp.value.message


def test_health_and_docs(server: ServerProcess, tmp_path: Path) -> None:
    for path in (
        "/healthz",
        "/readyz",
        "/docs",
        "/openapi.json",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
    ):
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:
            assert resp.status == 200
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as resp:
        spec = json.load(resp)
    assert "/v1/chat/completions" in spec["paths"] and "/api/traces" in spec["paths"]
