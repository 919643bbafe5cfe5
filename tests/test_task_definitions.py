"""Task definitions: parsing, checks at load time, variables, templates, output contracts."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from powertrain.errors import ConfigError, InvalidRequest
from powertrain.tasks.definition import PromptVersion, TaskDefinition, VariantSpec
from powertrain.tasks.output import OutputContract, OutputRejected
from powertrain.tasks.prompt import build_messages, fit_to_window
from powertrain.tasks.template import RenderFailed, render
from powertrain.tasks.variables import VariableSpec, bind_variables
from powertrain.tasks.variants import choose_variant
from tests.conftest import config_from

SENTIMENT = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}


def task_toml(extra: str = "", *, user: str = "Review: {{ review }}") -> str:
    return f"""
[tasks.sentiment]
description = "Sentiment of a review"
system = "Classify the sentiment."
user = "{user}"
variables = {{ review = {{ type = "string", max_length = 200 }}, stars = {{ type = "integer", required = false }} }}
[tasks.sentiment.output]
schema = '{json.dumps(SENTIMENT)}'
[[tasks.sentiment.examples]]
variables = {{ review = "I loved it" }}
output = {{ sentiment = "positive" }}
[[tasks.sentiment.examples]]
variables = {{ review = "Awful" }}
output = {{ sentiment = "negative" }}
{extra}
"""


def parse(table: dict[str, Any], name: str = "t", base_dir: Path | None = None) -> TaskDefinition:
    return TaskDefinition.parse(name, table, base_dir=base_dir, where=f"[tasks.{name}]")


def test_config_task_is_parsed_and_split(tmp_path: Path) -> None:
    config = config_from(tmp_path, task_toml())
    task = config.tasks["sentiment"]
    assert task.version.output_schema == SENTIMENT
    assert task.version.input == "review"  # the only required string variable
    assert [e.output for e in task.version.examples] == [
        {"sentiment": "positive"},
        {"sentiment": "negative"},
    ]
    assert task.settings.description == "Sentiment of a review"
    assert set(task.settings.effective_variants()) == {"default"}
    # The content hash covers the version only, and is stable across parses.
    again = config_from(tmp_path, task_toml("[tasks.sentiment.variants.a]\nweight = 2"))
    assert again.tasks["sentiment"].version.content_hash() == task.version.content_hash()
    changed = config_from(tmp_path, task_toml(user="Text: {{ review }}"))
    assert changed.tasks["sentiment"].version.content_hash() != task.version.content_hash()


@pytest.mark.parametrize(
    ("extra_or_user", "message"),
    [
        ({"user": "Review: {{ review "}, "template syntax error"),
        ({"user": "{{ reveiw }}"}, "declares no variable 'reveiw'"),
        (
            {"extra": "[tasks.sentiment.variants.a]\nmodel = 'gpt-9'"},
            "'gpt-9' is neither in the catalog nor a route",
        ),
        ({"extra": "[tasks.sentiment.variants.a]\nweight = 0"}, "weight above 0"),
        ({"extra": "[tasks.sentiment.variants.a]\nparams = { tempreature = 1 }"}, "tempreature"),
        (
            {"extra": "[tasks.sentiment.variants.a]\nparams = { temperature = 7 }"},
            "temperature: Input should be less than or equal to 2",
        ),
        ({"extra": "[tasks.sentiment.variants.a]\nversion = 'Prod!'"}, "label"),
        ({"extra": "[tasks.sentiment.context]\non_overflow = 'truncate'"}, "on_overflow"),
        (
            {
                "extra": "[[tasks.sentiment.examples]]\nvariables = { review = 'meh' }\noutput = { sentiment = 'neutral' }"
            },
            r"examples\[3\]: the output does not match",
        ),
        (
            {
                "extra": "[[tasks.sentiment.examples]]\nvariables = { text = 'meh' }\noutput = { sentiment = 'positive' }"
            },
            "unknown variable 'text'",
        ),
    ],
)
def test_bad_definitions_fail_at_load_with_a_clear_line(
    tmp_path: Path, extra_or_user: dict[str, str], message: str
) -> None:
    text = task_toml(
        extra_or_user.get("extra", ""), user=extra_or_user.get("user", "Review: {{ review }}")
    )
    with pytest.raises(ConfigError, match=message) as info:
        config_from(tmp_path, text)
    assert "[tasks.sentiment" in info.value.message
    assert "\n" not in info.value.message


def test_output_from_a_schema_file_and_a_pydantic_model(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SENTIMENT))
    (tmp_path / "shapes.py").write_text(
        "from typing import Literal\nfrom pydantic import BaseModel\n"
        "class Verdict(BaseModel):\n    sentiment: Literal['positive', 'negative']\n"
        "    confidence: float\n"
    )
    from_file = parse(
        {"user": "{{ x }}", "variables": {"x": "string"}, "output": {"schema_file": "schema.json"}},
        base_dir=tmp_path,
    )
    assert from_file.version.output_schema == SENTIMENT
    from_model = parse(
        {"user": "{{ x }}", "variables": {"x": "string"}, "output": {"model": "shapes:Verdict"}},
        base_dir=tmp_path,
    )
    schema = from_model.version.output_schema
    assert schema is not None and schema["required"] == ["sentiment", "confidence"]
    # Files and imports are for the config file only: a request must send the schema itself.
    with pytest.raises(InvalidRequest, match=r"only allowed in powertrain\.toml"):
        parse(
            {"user": "{{ x }}", "variables": {"x": "string"}, "output": {"model": "shapes:Verdict"}}
        )
    with pytest.raises(InvalidRequest, match="not a valid JSON Schema"):
        parse(
            {
                "user": "{{ x }}",
                "variables": {"x": "string"},
                "output": {"schema": {"type": "nope"}},
            }
        )


def test_variables_are_typed_and_checked() -> None:
    declared = {
        "text": VariableSpec(type="string", max_length=5),
        "n": VariableSpec(type="integer", required=False, default=3),
        "flag": VariableSpec(type="boolean", required=False),
    }
    assert bind_variables(declared, {"text": "hi"}, where="t") == {
        "text": "hi",
        "n": 3,
        "flag": None,
    }
    cases = [
        ({}, "missing required variable 'text'"),
        ({"text": "hi", "extra": 1}, "unknown variable 'extra'"),
        ({"text": "toolong"}, "7 characters, over its max_length of 5"),
        ({"text": "hi", "n": "3"}, "'n' must be integer, got string"),
        ({"text": "hi", "n": True}, "'n' must be integer, got boolean"),
        ({"text": 5}, "'text' must be string, got integer"),
    ]
    for given, message in cases:
        with pytest.raises(InvalidRequest, match=message):
            bind_variables(declared, given, where="t")


@pytest.mark.parametrize(
    "payload",
    [
        "{{ 7*7 }}",
        "{% for i in range(3) %}x{% endfor %}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% include '/etc/passwd' %}",
        "{#",
        "}}{{",
    ],
)
def test_template_syntax_inside_a_variable_is_inert(payload: str) -> None:
    """RELIABILITY 6: values are data; what the caller typed is what the model reads."""
    version = parse(
        {"system": "Be terse.", "user": "Review: {{ review }}!", "variables": {"review": "string"}}
    ).version
    messages = build_messages(version, {"review": payload}, [], where="t")
    assert messages[-1] == {"role": "user", "content": f"Review: {payload}!"}


def test_the_sandbox_stops_a_template_reaching_python_internals() -> None:
    with pytest.raises(RenderFailed, match="sandbox forbids"):
        render("{{ x.__class__.__mro__[1].__subclasses__() }}", {"x": ""}, where="t")
    with pytest.raises(RenderFailed, match="sandbox forbids"):
        render("{% set _ = x.append(1) %}", {"x": []}, where="t")


def test_messages_are_system_then_examples_then_input() -> None:
    version = parse(
        {
            "system": "Labels: {{ output_schema.properties.sentiment.enum | join(', ') }}",
            "user": "Review: {{ review }}",
            "variables": {"review": "string"},
            "output": {"schema": SENTIMENT, "instructions": False},
            "examples": [
                {"variables": {"review": "great"}, "output": {"sentiment": "positive"}},
            ],
        }
    ).version
    messages = build_messages(version, {"review": "bad"}, list(version.examples), where="t")
    assert messages == [
        {"role": "system", "content": "Labels: positive, negative"},
        {"role": "user", "content": "Review: great"},
        {"role": "assistant", "content": '{"sentiment": "positive"}'},
        {"role": "user", "content": "Review: bad"},
    ]


def test_overflow_is_an_error_naming_sizes_or_drops_the_oldest_examples() -> None:
    examples = [
        {"variables": {"q": f"example {i} " + "w " * 20}, "output": f"a{i}"} for i in range(5)
    ]
    version = parse({"user": "{{ q }}", "variables": {"q": "string"}, "examples": examples}).version

    def words(messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    kwargs: dict[str, Any] = {
        "max_examples": None,
        "count_tokens": words,
        "reserve": 10,
        "describe": "task 't'",
    }
    with pytest.raises(
        InvalidRequest,
        match=r"is 116 tokens with 5 few-shot examples but the context window is 100 tokens, less 10 kept for max_tokens",
    ) as info:
        fit_to_window(version, {"q": "now"}, window=100, drop_examples=False, **kwargs)
    assert info.value.code == "context_length_exceeded"
    fitted = fit_to_window(version, {"q": "now"}, window=100, drop_examples=True, **kwargs)
    assert fitted.examples_used == 3 and fitted.examples_dropped == 2
    kept = [m["content"] for m in fitted.messages if m["role"] == "assistant"]
    assert kept == ["a2", "a3", "a4"]  # the oldest two went first
    with pytest.raises(InvalidRequest, match="even with every few-shot example dropped"):
        fit_to_window(version, {"q": "now " * 200}, window=100, drop_examples=True, **kwargs)


def test_output_contract_validates_and_extracts_reasoning() -> None:
    plain = OutputContract(SENTIMENT, reasoning=False)
    assert plain.parse('{"sentiment": "negative"}').output == {"sentiment": "negative"}
    for bad, why in [
        ("not json", "not valid JSON"),
        ('{"sentiment": "meh"}', "'meh' is not one of"),
        ('{"sentiment": "positive", "x": 1}', "Additional properties"),
        ('{"sentiment": "positive"', "not valid JSON"),
    ]:
        with pytest.raises(OutputRejected, match=why):
            plain.parse(bad)

    thinking = OutputContract(SENTIMENT, reasoning=True)
    assert thinking.engine_schema is not None
    assert list(thinking.engine_schema["properties"]) == ["reasoning", "answer"]
    parsed = thinking.parse('{"reasoning": "It says awful.", "answer": {"sentiment": "negative"}}')
    assert parsed.output == {"sentiment": "negative"} and parsed.reasoning == "It says awful."
    assert parsed.text == '{"sentiment": "negative"}'
    with pytest.raises(OutputRejected):
        thinking.parse('{"sentiment": "negative"}')  # the answer must come after reasoning

    text_with_reasoning = OutputContract(None, reasoning=True)
    assert text_with_reasoning.parse('{"reasoning": "r", "answer": "42"}').text == "42"
    assert OutputContract(None, reasoning=False).streamable


def test_reasoning_wrapper_keeps_pydantic_definitions_resolvable() -> None:
    schema = {
        "$defs": {"Label": {"type": "string", "enum": ["a", "b"]}},
        "type": "object",
        "properties": {"label": {"$ref": "#/$defs/Label"}},
        "required": ["label"],
    }
    contract = OutputContract(schema, reasoning=True)
    assert contract.parse('{"reasoning": "", "answer": {"label": "a"}}').output == {"label": "a"}
    with pytest.raises(OutputRejected, match="'c' is not one of"):
        contract.parse('{"reasoning": "", "answer": {"label": "c"}}')


def test_variant_split_follows_the_weights_within_statistical_tolerance() -> None:
    variants = {
        "control": VariantSpec(weight=3),
        "canary": VariantSpec(weight=1),
        "shadow": VariantSpec(weight=0),
    }
    draws = 20_000
    counts = Counter(choose_variant("t", variants) for _ in range(draws))
    assert counts["shadow"] == 0  # weight 0 serves only when pinned
    share = counts["canary"] / draws
    sigma = math.sqrt(0.25 * 0.75 / draws)
    assert abs(share - 0.25) < 5 * sigma, counts
    assert choose_variant("t", variants, pinned="shadow") == "shadow"
    with pytest.raises(InvalidRequest, match="no variant 'nope'"):
        choose_variant("t", variants, pinned="nope")
    # Sticky keys: one user always gets the same variant, and users still split by weight.
    assert len({choose_variant("t", variants, sticky_key="user-1") for _ in range(50)}) == 1
    users = Counter(choose_variant("t", variants, sticky_key=f"user-{i}") for i in range(4000))
    assert abs(users["canary"] / 4000 - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 4000)


@pytest.mark.parametrize("name", ["../etc", "a/b", "a..b", "", ".hidden", "a\x00b", "x" * 129])
def test_task_names_stay_plain(name: str) -> None:
    with pytest.raises(InvalidRequest, match="task name"):
        parse({"user": "hi"}, name=name)


def test_version_content_is_immutable() -> None:
    version = PromptVersion(user="{{ x }}")
    with pytest.raises(ValueError, match="frozen"):
        version.user = "other"  # type: ignore[misc]
