"""The classifier engine: a trained head served as a chat model, alone, as a task variant and as
the cheap step of a cascade, through the real gateway and the official openai SDK.

The model is trained once per session on a small Banking77 set (``classifier_helpers``) with the
bundled all-MiniLM-L6-v2; nothing here is faked but the LLM a cascade escalates to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator

from powertrain.catalog import ModelConfig
from powertrain.engines.classifier import MANIFEST_FILE, WEIGHTS_FILE, ClassifierEngine
from powertrain.errors import ConfigError, InvalidRequest
from powertrain.routing import confidence_of
from powertrain.schemas import ChatCompletionRequest, ChatResult
from tests.classifier_helpers import (
    INTENTS,
    SCHEMA,
    SYSTEM,
    held_out_messages,
    needs_data,
    task_toml,
    trained_model,
)
from tests.conftest import config_from, openai_model_toml, serving
from tests.fakes import FakeOpenAI

pytestmark = needs_data

VALID = Draft202012Validator(SCHEMA)
OFF_TOPIC = [
    "What's the weather like in Paris tomorrow?",
    "Write me a short poem about autumn leaves.",
    "How do I reverse a list in Python?",
]


@pytest.fixture
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model(tmp_path_factory)


def _engine(directory: Path | str) -> ClassifierEngine:
    return ClassifierEngine(ModelConfig(alias="clf", engine="classifier", model=str(directory)))


def _request(text: str, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "clf", "messages": [{"role": "user", "content": text}], **fields}
    )


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


async def _trace(app: Any, trace_id: str) -> Any:
    await app.gateway.traces.flush()
    return app.gateway.trace_store.get(trace_id)


async def _ask(sdk: openai.AsyncOpenAI, model: str, text: str) -> tuple[str, Any, str]:
    """A schema-valid reply's text, its ``powertrain`` field and its trace id."""
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    completion = raw.parse()
    content = completion.choices[0].message.content
    assert content is not None and VALID.is_valid(json.loads(content))
    extra = (completion.model_extra or {})["powertrain"]
    return content, extra, raw.headers["x-powertrain-trace-id"]


def _clf_toml(directory: Path) -> str:
    return f'[models.clf]\nengine = "classifier"\nmodel = "{directory}"\n'


# -- the engine itself ------------------------------------------------------------------------


async def test_the_engine_answers_with_a_label_and_a_calibrated_confidence(
    model_dir: Path,
) -> None:
    engine = _engine(model_dir)
    await engine.start()
    try:
        messages = held_out_messages()[::2]
        right = 0
        for text, intent in messages:
            result = await engine.chat(_request(text))
            reply = json.loads(result.content)
            assert VALID.is_valid(reply) and list(reply) == ["intent"]
            assert result.content == json.dumps(reply, ensure_ascii=False)
            right += reply["intent"] == intent
            assert result.confidence is not None and 0 < result.confidence <= 1
            assert result.extra is not None
            top = result.extra["top"]
            assert top[0][0] == reply["intent"] and len(top) == 3
            assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
            assert result.extra["confidence"] == pytest.approx(result.confidence, abs=1e-6)
            assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens == 0
            assert result.compute_seconds is not None and result.compute_seconds > 0
        assert right / len(messages) > 0.7

        # Only the last user message counts: it is all the encoder reads.
        long = ChatCompletionRequest.model_validate(
            {
                "model": "clf",
                "messages": [
                    {"role": "system", "content": SYSTEM * 50},
                    {"role": "user", "content": "an earlier question " * 40},
                    {"role": "assistant", "content": '{"intent": "age_limit"}'},
                    {"role": "user", "content": "my card never came"},
                ],
            }
        )
        assert engine.count_tokens(long) == engine.encoder.count_text("my card never came")
        assert engine.context_window == 256

        chunks = [chunk async for chunk in engine.stream(_request("my card never came"))]
        assert len(chunks) == 2 and json.loads(chunks[0].delta)["intent"] in INTENTS
        assert chunks[1].finish_reason == "stop" and chunks[1].usage is not None
        assert chunks[1].confidence is not None and chunks[1].extra is not None
    finally:
        await engine.aclose()


async def test_a_schema_restricts_the_labels_or_is_refused_by_property(model_dir: Path) -> None:
    engine = _engine(model_dir)
    await engine.start()
    try:
        text = "I lost my card on the train"
        two = {
            "type": "object",
            "properties": {"intent": {"enum": ["age_limit", "exchange_rate"]}},
            "required": ["intent"],
        }
        result = await engine.chat(_request(text, response_format=_schema_format(two)))
        assert json.loads(result.content)["intent"] in ("age_limit", "exchange_rate")
        assert result.extra is not None
        assert {label for label, _ in result.extra["top"]} == {"age_limit", "exchange_rate"}
        assert sum(p for _, p in result.extra["top"]) == pytest.approx(1, abs=1e-5)
        free = await engine.chat(_request(text, response_format={"type": "json_object"}))
        assert json.loads(free.content)["intent"] == "lost_or_stolen_card"

        other = {
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
        }
        with pytest.raises(InvalidRequest, match="'intent'") as refused:
            await engine.chat(_request(text, response_format=_schema_format(other)))
        assert refused.value.param == "response_format"
        with pytest.raises(InvalidRequest, match="tools"):
            engine.check_supported(_request(text, tools=[{"type": "function", "function": {}}]))
        no_user = ChatCompletionRequest.model_validate(
            {"model": "clf", "messages": [{"role": "system", "content": "hi"}]}
        )
        with pytest.raises(InvalidRequest, match="last user message"):
            await engine.chat(no_user)
    finally:
        await engine.aclose()


def test_calibrated_confidence_wins_over_every_other_signal() -> None:
    reported = '{"intent": "age_limit", "confidence": 0.2}'
    assert confidence_of(ChatResult(content=reported, confidence=0.93)) == (0.93, "calibrated")
    assert confidence_of(ChatResult(content=reported)) == (0.2, "self_reported")


async def test_bad_model_directories_are_clear_config_errors(
    model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"contains '\.\.'"):
        _engine(f"{tmp_path}/../elsewhere")
    with pytest.raises(ConfigError, match="NUL byte"):
        _engine(f"{tmp_path}/a\x00b")
    with pytest.raises(ConfigError, match="needs model"):
        ClassifierEngine(ModelConfig(alias="clf", engine="classifier"))
    with pytest.raises(ConfigError, match="takes no options"):
        ClassifierEngine(
            ModelConfig(alias="clf", engine="classifier", model=str(model_dir), options={"a": 1})
        )
    with pytest.raises(ConfigError, match=r"has no classifier\.json; train one"):
        await _engine(tmp_path / "missing").start()

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(model_dir, copy)
        return copy

    unknown = broken("future")
    manifest = json.loads((unknown / MANIFEST_FILE).read_text())
    (unknown / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ConfigError, match="format version 99; this powertrain reads version 1"):
        await _engine(unknown).start()

    steering = broken("steering")
    encoder = {**manifest["encoder"], "base_url": "http://127.0.0.1:9/v1"}
    (steering / MANIFEST_FILE).write_text(json.dumps({**manifest, "encoder": encoder}))
    with pytest.raises(ConfigError, match="encoder field 'base_url' is not accepted"):
        await _engine(steering).start()

    corrupt = broken("corrupt")
    (corrupt / WEIGHTS_FILE).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConfigError, match="not a readable classifier"):
        await _engine(corrupt).start()

    no_weights = broken("no-weights")
    (no_weights / WEIGHTS_FILE).unlink()
    with pytest.raises(ConfigError, match=r"has no classifier\.npz"):
        await _engine(no_weights).start()

    mangled = broken("mangled")
    (mangled / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        await _engine(mangled).start()

    fewer = broken("fewer-labels")
    manifest = json.loads((fewer / MANIFEST_FILE).read_text())
    (fewer / MANIFEST_FILE).write_text(json.dumps({**manifest, "labels": INTENTS[:5]}))
    with pytest.raises(ConfigError, match="do not match 5 labels"):
        await _engine(fewer).start()


# -- through the gateway ----------------------------------------------------------------------


async def test_served_as_a_model_and_as_a_task_variant(model_dir: Path, tmp_path: Path) -> None:
    toml = _clf_toml(model_dir) + task_toml(tmp_path)
    async with (
        serving(config_from(tmp_path, toml)) as (url, app),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk,
    ):
        text, intent = held_out_messages()[0]
        content, extra, trace_id = await _ask(sdk, "clf", text)
        assert 0 < extra["confidence"] <= 1 and len(extra["top"]) == 3
        trace = await _trace(app, trace_id)
        assert trace.engine == "classifier" and trace.output == content
        assert trace.metadata["confidence"] == pytest.approx(extra["confidence"], abs=1e-5)
        assert [a["engine"] for a in trace.attempts] == ["classifier"]
        assert trace.compute_seconds is not None and trace.compute_seconds > 0

        # The task renders its prompt (system message and all); the classifier reads the
        # last user message, and the reply passes the task's own output contract.
        for text, _intent in held_out_messages()[:6]:
            content, extra, trace_id = await _ask(sdk, "task:intents", text)
            assert extra["task"] == "intents" and extra["variant"] == "clf"
            assert extra["model"] == "clf" and 0 < extra["confidence"] <= 1
        trace = await _trace(app, trace_id)
        assert trace.task == "intents" and trace.variant == "clf" and trace.model == "clf"
        assert trace.metadata["prompt"][0] == {"role": "system", "content": SYSTEM}
        assert trace.metadata["confidence"] == pytest.approx(extra["confidence"], abs=1e-5)

        # Streams: the label in one piece, confidence on the last chunk (model and task).
        for model in ("clf", "task:intents"):
            stream = await sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": intent.replace("_", " ")}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert VALID.is_valid(json.loads(text_out)), text_out
            extras = [(c.model_extra or {}).get("powertrain") for c in chunks]
            assert [e for e in extras if e][-1]["confidence"] > 0
            assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0

        # Over the encoder's window: refused, never truncated silently.
        with pytest.raises(openai.BadRequestError, match="context window of 256"):
            await sdk.chat.completions.create(
                model="clf", messages=[{"role": "user", "content": "card " * 400}]
            )
        other = {"type": "object", "properties": {"label": {"enum": ["x"]}}, "required": ["label"]}
        with pytest.raises(openai.BadRequestError, match="'intent'") as refused:
            await sdk.chat.completions.create(
                model="clf",
                messages=[{"role": "user", "content": "hi"}],
                response_format=_schema_format(other),  # type: ignore[arg-type]
            )
        assert refused.value.body["param"] == "response_format"  # type: ignore[index]


async def test_a_missing_model_directory_fails_the_call_clearly(tmp_path: Path) -> None:
    toml = _clf_toml(tmp_path / "never-trained")
    async with (
        serving(config_from(tmp_path, toml)) as (url, _app),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk,
    ):
        with pytest.raises(openai.InternalServerError, match=r"no classifier\.json"):
            await sdk.chat.completions.create(
                model="clf", messages=[{"role": "user", "content": "hi"}]
            )


async def _confidences(directory: Path, texts: list[str]) -> list[float]:
    engine = _engine(directory)
    await engine.start()
    try:
        return [(await engine.chat(_request(text))).confidence or 0.0 for text in texts]
    finally:
        await engine.aclose()


def _threshold(confidences: list[float]) -> float:
    """Midway across the widest gap that leaves at least two calls on each side."""
    ranked = sorted(confidences)
    gaps = [(ranked[i + 1] - ranked[i], i) for i in range(1, len(ranked) - 2)]
    _, i = max(gaps)
    return (ranked[i] + ranked[i + 1]) / 2


async def test_a_cascade_escalates_exactly_the_unsure_calls(
    model_dir: Path, tmp_path: Path
) -> None:
    texts = [text for text, _ in held_out_messages()[::3]] + OFF_TOPIC
    confidences = await _confidences(model_dir, texts)
    threshold = _threshold(confidences)
    unsure = {t for t, c in zip(texts, confidences, strict=True) if c < threshold}
    assert 2 <= len(unsure) <= len(texts) - 2
    async with FakeOpenAI(reply='{"intent": "from the llm"}') as llm:
        toml = (
            _clf_toml(model_dir)
            + openai_model_toml("llm", llm.url, extra="price_input = 1\nprice_output = 2\n")
            + f'[routes.r]\nstrategy = "cascade"\nmodels = ["clf", "llm"]\n'
            f"min_confidence = {threshold!r}\n"
        )
        async with (
            serving(config_from(tmp_path, toml)) as (url, app),
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk,
        ):
            for text, confidence in zip(texts, confidences, strict=True):
                raw = await sdk.chat.completions.with_raw_response.create(
                    model="r", messages=[{"role": "user", "content": text}]
                )
                content = raw.parse().choices[0].message.content
                trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
                first = trace.attempts[0]
                assert first["model"] == "clf"
                assert first["verdict"]["confidence"] == pytest.approx(confidence, abs=1e-4)
                assert first["verdict"]["confidence_source"] == "calibrated"
                if text in unsure:
                    assert content == '{"intent": "from the llm"}'
                    assert first["outcome"] == "rejected" and first["then"] == "escalate"
                    assert [a["model"] for a in trace.attempts] == ["clf", "llm"]
                    assert trace.metadata["route"]["answered_by"] == "llm"
                else:
                    assert content is not None and VALID.is_valid(json.loads(content))
                    assert first["verdict"]["accepted"] is True
                    assert [a["model"] for a in trace.attempts] == ["clf"]
                    assert trace.metadata["confidence"] == pytest.approx(confidence, abs=1e-5)
        asked = [r.json["messages"][-1]["content"] for r in llm.requests]
        assert sorted(asked) == sorted(unsure)
