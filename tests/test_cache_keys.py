"""The exact key: stable under noise, sensitive to everything that changes an answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from powertrain.cache import KEY_VERSION, TaskRef, fingerprint
from powertrain.catalog import ModelConfig
from powertrain.schemas import ChatCompletionRequest


def request(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "gpt",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "temperature": 0,
    }
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def key(req: ChatCompletionRequest, **kwargs: Any) -> str:
    kwargs.setdefault("api_key_id", "key-a")
    return fingerprint(req, **kwargs).exact_key


def test_key_is_versioned_sha256() -> None:
    value = key(request())
    prefix, digest = value.split(":")
    assert prefix == KEY_VERSION
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_same_request_parsed_from_differently_ordered_json_gives_same_key() -> None:
    a = orjson.loads(
        b'{"model":"gpt","temperature":0,"tools":[{"type":"function","function":'
        b'{"name":"f","parameters":{"a":1,"b":2}}}],'
        b'"messages":[{"role":"user","content":"hi"}]}'
    )
    b = orjson.loads(
        b'{"messages":[{"content":"hi","role":"user"}],"tools":[{"function":'
        b'{"parameters":{"b":2,"a":1},"name":"f"},"type":"function"}],'
        b'"temperature":0,"model":"gpt"}'
    )
    assert key(ChatCompletionRequest.model_validate(a)) == key(
        ChatCompletionRequest.model_validate(b)
    )


@pytest.mark.parametrize(
    "content",
    [
        "  What is the capital of France?\n",
        "What is the capital of France?\r\n",
        [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}],
    ],
)
def test_whitespace_at_the_ends_and_text_parts_are_normalised(content: Any) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": content},
    ]
    assert key(request(messages=messages)) == key(request())


@pytest.mark.parametrize(
    "content",
    [
        "what is the capital of france?",  # case is kept
        "What is the  capital of France?",  # interior whitespace is kept
        "What is the capital of Germany?",
    ],
)
def test_content_changes_change_the_key(content: str) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": content},
    ]
    assert key(request(messages=messages)) != key(request())


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "alice"},
        {"metadata": {"request": "r-1"}},
        {"n": 1},
        {"temperature": 0.0},
        {"response_format": {"type": "text"}},
        {"top_p": None},
    ],
)
def test_fields_that_do_not_change_the_answer_keep_the_key(fields: dict[str, Any]) -> None:
    assert key(request(**fields)) == key(request())


def test_equivalent_spellings_share_a_key() -> None:
    assert key(request(max_tokens=50)) == key(request(max_completion_tokens=50))
    assert key(request(stop=["b", "a"])) == key(request(stop=["a", "b", "a"]))
    assert key(request(stop="a")) == key(request(stop=["a"]))


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0.7},
        {"top_p": 0.5},
        {"max_tokens": 10},
        {"stop": ["\n"]},
        {"seed": 1},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"logit_bias": {"50256": -100}},
        {"model": "other"},
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    ],
)
def test_output_changing_fields_change_the_key(fields: dict[str, Any]) -> None:
    assert key(request(**fields)) != key(request())


def test_task_version_variant_and_variables_change_the_key() -> None:
    base = key(request(model="task:t"), task=TaskRef("t", 1))
    assert key(request(model="task:t"), task=TaskRef("t", 1)) == base
    assert key(request(model="task:t"), task=TaskRef("t", 2)) != base
    assert key(request(model="task:t"), task=TaskRef("t", 1, variant="b")) != base
    assert key(request(model="task:t"), task=TaskRef("u", 1)) != base
    assert key(request(model="task:t", variables={"tone": "dry"}), task=TaskRef("t", 1)) != base


def test_tenants_get_their_own_keys_unless_shared() -> None:
    assert key(request(), api_key_id="key-a") != key(request(), api_key_id="key-b")
    assert key(request(), api_key_id=None) != key(request(), api_key_id="key-a")
    assert key(request(), api_key_id="key-a", shared_across_keys=True) == key(
        request(), api_key_id="key-b", shared_across_keys=True
    )


def test_the_catalog_entry_behind_an_alias_is_part_of_the_key() -> None:
    small = ModelConfig(alias="gpt", engine="openai", model="gpt-small", api_key="sk-1")
    assert key(request(), model_config=small) != key(request())
    # Another credential, price or timeout for the same upstream model: same answers.
    same = small.model_copy(update={"api_key": "sk-2", "price_input": 3.0, "timeout": 9.0})
    assert key(request(), model_config=same) == key(request(), model_config=small)
    big = small.model_copy(update={"model": "gpt-big"})
    assert key(request(), model_config=big) != key(request(), model_config=small)
    warmer = small.model_copy(update={"params": {"temperature": 0.5}})
    assert key(request(), model_config=warmer) != key(request(), model_config=small)


def test_semantic_text_is_the_last_user_message_and_scope_holds_the_rest() -> None:
    fp = fingerprint(request(), api_key_id="k")
    assert fp.semantic_text == "What is the capital of France?"
    other_question = request(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Which city is France's capital?"},
        ]
    )
    assert fingerprint(other_question, api_key_id="k").semantic_scope == fp.semantic_scope
    other_system = request(
        messages=[
            {"role": "system", "content": "You are verbose."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    )
    assert fingerprint(other_system, api_key_id="k").semantic_scope != fp.semantic_scope
    assert fingerprint(request(), api_key_id="other").semantic_scope != fp.semantic_scope
    assert fingerprint(request(max_tokens=5), api_key_id="k").semantic_scope != fp.semantic_scope
    assert (
        fingerprint(request(), api_key_id="k", semantic_model="other").semantic_scope
        != fp.semantic_scope
    )


def test_no_semantic_text_when_the_last_message_is_not_a_users_text() -> None:
    tool_last = request(
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    )
    assert fingerprint(tool_last, api_key_id="k").semantic_text is None
    image = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ],
            }
        ]
    )
    fp = fingerprint(image, api_key_id="k")
    assert fp.semantic_text is None
    other_image = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,BB"}},
                ],
            }
        ]
    )
    assert fingerprint(other_image, api_key_id="k").exact_key != fp.exact_key
