"""Tasks over HTTP: the /api/tasks routes and model="task:<name>" through the openai SDK.

The model behind the tasks is a local fake of OpenAI's API, scripted per test, so
invalid output, repairs and traffic splits can be driven exactly.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from powertrain.config import Config
from tests.conftest import config_from, openai_model_toml, running_app
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.upstreams import RecordedRequest

ADMIN = "sk-admin-test-key"
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}

TASK = f"""
[settings]
admin_key = "{ADMIN}"

[tasks.sentiment]
system = "Classify the sentiment."
user = "Review: {{{{ review }}}}"
variables = {{ review = "string" }}
model = "gpt"
repairs = 1
[tasks.sentiment.output]
schema = '{json.dumps(SCHEMA)}'
"""


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str):
        self.http = http
        self.url = url

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str = ADMIN
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
            data = await r.json() if r.status != 204 else None
            return r.status, data, dict(r.headers)


@asynccontextmanager
async def served(config: Config) -> AsyncIterator[tuple[str, Api]]:
    async with running_app(config) as url, aiohttp.ClientSession() as http:
        yield url, Api(http, url)


def config_with(tmp_path: Path, upstream: FakeOpenAI | FakeAnthropic, extra: str = "") -> Config:
    model = openai_model_toml("gpt", upstream.url, extra="price_input = 1.0\nprice_output = 2.0")
    return config_from(tmp_path, TASK + extra + "\n" + model)


async def test_run_returns_validated_output_with_trace_variant_usage_and_cost(
    tmp_path: Path,
) -> None:
    async with FakeOpenAI(reply='{"sentiment": "negative"}') as upstream:
        async with served(config_with(tmp_path, upstream)) as (_url, api):
            status, body, _ = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "awful"}}
            )
            assert status == 200, body
            assert body["output"] == {"sentiment": "negative"}
            assert body["variant"] == "default" and body["version"] == 1
            assert body["model"] == "gpt" and body["attempts"] == 1
            usage = body["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
            expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
            assert body["cost"] == pytest.approx(expected)
            assert "reasoning" not in body

            # The engine was asked for JSON under the schema, with the rendered prompt.
            sent = upstream.requests[-1].json
            assert sent["response_format"]["type"] == "json_schema"
            assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
            assert sent["messages"][-1] == {"role": "user", "content": "Review: awful"}

            status, trace, _ = await api.call("GET", f"/api/traces/{body['trace_id']}")
            assert trace["task"] == "sentiment" and trace["variant"] == "default"
            assert trace["model"] == "gpt" and trace["status"] == "ok"
            assert trace["metadata"]["task_version"] == 1
            assert trace["metadata"]["prompt"] == sent["messages"]
            assert json.loads(trace["output"]) == {"sentiment": "negative"}
            assert trace["request"] == {"variables": {"review": "awful"}}

            # DESIGN's short form runs the same thing.
            status, short, _ = await api.call(
                "POST", "/v1/tasks/sentiment", {"variables": {"review": "awful"}}
            )
            assert status == 200 and short["output"] == body["output"]


async def test_invalid_output_is_repaired_then_refused_never_returned(tmp_path: Path) -> None:
    """RELIABILITY 23: valid JSON matching the schema, or a clear error after the repairs."""
    replies = iter(['{"sentiment": "meh"}', '{"sentiment": "positive"}'])
    async with FakeOpenAI(reply=lambda _r: next(replies)) as upstream:
        async with served(config_with(tmp_path, upstream)) as (_url, api):
            status, body, _ = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "fine"}}
            )
            assert status == 200 and body["output"] == {"sentiment": "positive"}
            assert body["attempts"] == 2
            repair = upstream.requests[-1].json["messages"]
            assert repair[-2] == {"role": "assistant", "content": '{"sentiment": "meh"}'}
            assert "'meh' is not one of" in repair[-1]["content"]
            _, trace, _ = await api.call("GET", f"/api/traces/{body['trace_id']}")
            assert len(trace["attempts"]) == 2
            assert trace["metadata"]["rejections"][0].startswith("the reply does not match")

            for garbage in ["Sure! It is positive.", '{"sentiment": "positive"', "[]", "null"]:
                upstream.reply = garbage
                status, body, headers = await api.call(
                    "POST", "/api/tasks/sentiment/run", {"variables": {"review": "x"}}
                )
                assert status == 502, body
                error = body["error"]
                assert error["code"] == "output_invalid" and error["type"] == "upstream_error"
                assert "2 attempts" in error["message"] and "repairs" in error["message"]
                trace_id = headers["x-powertrain-trace-id"]
                _, trace, _ = await api.call("GET", f"/api/traces/{trace_id}")
                assert trace["status"] == "error" and trace["error_type"] == "upstream_error"
                assert trace["output"] == garbage  # kept for debugging, never as a success
                assert len(trace["metadata"]["rejections"]) == 2

            # A reply cut off by max_tokens says so, with what to change.
            upstream.reply, upstream.finish_reason = '{"sent', "length"
            status, body, _ = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "x"}}
            )
            assert status == 502
            assert "cut off at max_tokens; raise max_tokens" in body["error"]["message"]


async def test_engines_without_json_schema_still_validate(tmp_path: Path) -> None:
    async with FakeAnthropic(reply='{"sentiment": "positive"}') as upstream:
        model = (
            f'[models.gpt]\nengine = "anthropic"\nmodel = "claude"\n'
            f'base_url = "{upstream.url}"\napi_key = "sk-ant-test"\n'
        )
        config = config_from(tmp_path, TASK + model)
        async with served(config) as (_url, api):
            status, body, _ = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "nice"}}
            )
            assert status == 200 and body["output"] == {"sentiment": "positive"}
            sent = upstream.requests[-1].json
            assert "JSON Schema" in sent["system"]  # told in the prompt, checked after
            upstream.reply = "positive"
            status, body, _ = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "nice"}}
            )
            assert status == 502 and body["error"]["code"] == "output_invalid"


async def test_chain_of_thought_keeps_reasoning_in_the_trace(tmp_path: Path) -> None:
    reply = json.dumps(
        {"reasoning": "The word awful is negative.", "answer": {"sentiment": "negative"}}
    )
    async with FakeOpenAI(reply=reply) as upstream:
        config = config_with(tmp_path, upstream, extra="")
        config.tasks["sentiment"] = config.tasks["sentiment"].model_copy(
            update={
                "version": config.tasks["sentiment"].version.model_copy(update={"reasoning": True})
            }
        )
        async with served(config) as (url, api):
            status, body, _ = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "awful"}}
            )
            assert status == 200 and body["output"] == {"sentiment": "negative"}
            assert "reasoning" not in body
            schema = upstream.requests[-1].json["response_format"]["json_schema"]["schema"]
            assert list(schema["properties"]) == ["reasoning", "answer"]
            _, trace, _ = await api.call("GET", f"/api/traces/{body['trace_id']}")
            assert trace["metadata"]["reasoning"] == "The word awful is negative."
            status, body, _ = await api.call(
                "POST",
                "/api/tasks/sentiment/run",
                {"variables": {"review": "awful"}, "include_reasoning": True},
            )
            assert body["reasoning"] == "The word awful is negative."

            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN) as sdk:
                completion = await sdk.chat.completions.create(
                    model="task:sentiment", messages=[{"role": "user", "content": "awful"}]
                )
                message = completion.choices[0].message
                assert json.loads(message.content or "") == {"sentiment": "negative"}
                assert getattr(message, "reasoning_content", None) is None
                completion = await sdk.chat.completions.create(
                    model="task:sentiment",
                    messages=[{"role": "user", "content": "awful"}],
                    extra_body={"include_reasoning": True},
                )
                assert completion.choices[0].message.reasoning_content == (  # type: ignore[attr-defined]
                    "The word awful is negative."
                )


async def test_task_model_through_the_openai_sdk(tmp_path: Path) -> None:
    def reply(request: RecordedRequest) -> str:
        if request.json.get("response_format"):
            return '{"sentiment": "positive"}'
        return "Once upon a time, " + request.json["messages"][-1]["content"]

    extra = """
[tasks.story]
user = "Write about {{ topic }} in a {{ mood }} mood."
variables = { topic = "string", mood = { type = "string", default = "happy" } }
model = "gpt"
input = "topic"
"""
    async with FakeOpenAI(reply=reply) as upstream:
        async with (
            served(config_with(tmp_path, upstream, extra)) as (url, api),
            openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0) as sdk,
        ):
            raw = await sdk.chat.completions.with_raw_response.create(
                model="task:sentiment",
                messages=[
                    {"role": "system", "content": "ignored: the task owns its prompt"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "x"},
                    {"role": "user", "content": "I love it"},
                ],
            )
            completion = raw.parse()
            assert completion.model == "task:sentiment"
            assert json.loads(completion.choices[0].message.content or "") == {
                "sentiment": "positive"
            }
            assert upstream.requests[-1].json["messages"][-1]["content"] == "Review: I love it"
            _, trace, _ = await api.call(
                "GET", f"/api/traces/{raw.headers['x-powertrain-trace-id']}"
            )
            assert trace["task"] == "sentiment" and trace["request"]["model"] == "task:sentiment"

            # Structured output streams only once validated: one content chunk, then the end.
            stream = await sdk.chat.completions.create(
                model="task:sentiment",
                messages=[{"role": "user", "content": "great"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert json.loads(text) == {"sentiment": "positive"}
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

            # Plain text streams token by token; other variables come in extra_body.
            stream = await sdk.chat.completions.create(
                model="task:story",
                messages=[{"role": "user", "content": "dragons"}],
                stream=True,
                extra_body={"variables": {"mood": "gloomy"}},
            )
            pieces = [c.choices[0].delta.content async for c in stream if c.choices]
            assert len([p for p in pieces if p]) > 3
            assert "".join(p or "" for p in pieces).endswith(
                "Write about dragons in a gloomy mood."
            )

            for kwargs, message in [
                ({"model": "task:nope"}, "no task named 'nope'"),
                (
                    {"model": "task:sentiment", "response_format": {"type": "json_object"}},
                    "response_format",
                ),
                (
                    {"model": "task:sentiment", "extra_body": {"variables": {"stars": 5}}},
                    "unknown variable 'stars'",
                ),
                ({"model": "task:sentiment", "extra_body": {"variant": "b"}}, "no variant 'b'"),
                ({"model": "gpt", "extra_body": {"variables": {"a": "b"}}}, "only for task models"),
            ]:
                error = (
                    openai.NotFoundError if "nope" in kwargs["model"] else openai.BadRequestError
                )
                with pytest.raises(error, match=message):
                    await sdk.chat.completions.create(
                        messages=[{"role": "user", "content": "hi"}], **kwargs
                    )


async def test_versions_labels_and_api_defined_tasks(tmp_path: Path) -> None:
    async with FakeOpenAI(reply='{"sentiment": "positive"}') as upstream:
        async with served(config_with(tmp_path, upstream)) as (_url, api):
            definition = {
                "name": "triage",
                "system": "Triage v1",
                "user": "{{ ticket }}",
                "variables": {"ticket": "string"},
                "model": "gpt",
                "output": {"schema": SCHEMA},
            }
            status, body, _ = await api.call("POST", "/api/tasks", definition, key="sk-wrong")
            assert status == 401
            status, body, _ = await api.call("POST", "/api/tasks", definition)
            assert status == 201, body
            assert body["source"] == "api" and body["labels"] == {"latest": 1, "production": 1}
            status, body, _ = await api.call("POST", "/api/tasks", definition)
            assert status == 409

            v2 = {k: definition[k] for k in ("user", "variables", "output")}
            v2["system"] = "Triage v2"
            status, body, _ = await api.call(
                "POST", "/api/tasks/triage/versions", {**v2, "labels": ["staging"]}
            )
            assert (status, body) == (201, {"version": 2, "created": True})
            # Identical content is the same version, not a new number.
            status, body, _ = await api.call("POST", "/api/tasks/triage/versions", v2)
            assert body == {"version": 2, "created": False}

            async def system_prompt_used(**pins: Any) -> str:
                status, body, _ = await api.call(
                    "POST", "/api/tasks/triage/run", {"variables": {"ticket": "t"}, **pins}
                )
                assert status == 200, body
                return str(upstream.requests[-1].json["messages"][0]["content"]).split("\n")[0]

            assert await system_prompt_used() == "Triage v1"  # production is still 1
            assert await system_prompt_used(version="staging") == "Triage v2"
            assert await system_prompt_used(version=1) == "Triage v1"
            status, _, _ = await api.call(
                "PUT", "/api/tasks/triage/labels/production", {"version": 2}
            )
            assert status == 200
            assert await system_prompt_used() == "Triage v2"  # promoted
            status, body, _ = await api.call(
                "PUT", "/api/tasks/triage/labels/production", {"version": 9}
            )
            assert status == 400 and "no version 9" in body["error"]["message"]

            status, body, _ = await api.call("GET", "/api/tasks/triage")
            assert [(v["version"], v["labels"]) for v in body["versions"]] == [
                (1, []),
                (2, ["production", "staging", "latest"]),
            ]
            status, body, _ = await api.call("GET", "/api/tasks/triage/versions/1")
            assert body["system"] == "Triage v1" and body["output_schema"] == SCHEMA

            # Settings change without a new version; a file-defined task refuses them.
            status, body, _ = await api.call(
                "PUT", "/api/tasks/triage", {"model": "gpt", "repairs": 0}
            )
            assert status == 200 and body["settings"]["repairs"] == 0
            assert body["latest_version"] == 2
            status, body, _ = await api.call("PUT", "/api/tasks/sentiment", {"repairs": 0})
            assert status == 409 and "powertrain.toml" in body["error"]["message"]

            status, body, _ = await api.call(
                "POST", "/api/tasks", {**definition, "name": "x", "output": {"model": "os:path"}}
            )
            assert status == 400 and "only allowed in powertrain.toml" in body["error"]["message"]
            status, body, _ = await api.call("DELETE", "/api/tasks/triage")
            assert status == 204
            status, body, _ = await api.call("GET", "/api/tasks/triage")
            assert status == 404 and body["error"]["code"] == "task_not_found"


async def test_config_edits_make_versions_and_restarts_keep_label_moves(tmp_path: Path) -> None:
    async with FakeOpenAI(reply='{"sentiment": "positive"}') as upstream:
        home = f'home = "{tmp_path / "home"}"\n'
        first = TASK.replace("[settings]\n", "[settings]\n" + home)
        model = openai_model_toml("gpt", upstream.url)
        async with served(config_from(tmp_path, first + model)) as (_url, api):
            _, body, _ = await api.call("GET", "/api/tasks/sentiment")
            assert body["source"] == "config" and body["labels"] == {"latest": 1, "production": 1}

        edited = first.replace("Classify the sentiment.", "Classify the sentiment, carefully.")
        async with served(config_from(tmp_path, edited + model)) as (_url, api):
            _, body, _ = await api.call("GET", "/api/tasks/sentiment")
            assert body["labels"] == {"latest": 2, "production": 2}
            # Roll back through the API...
            await api.call("PUT", "/api/tasks/sentiment/labels/production", {"version": 1})

        async with served(config_from(tmp_path, edited + model)) as (_url, api):
            _, body, _ = await api.call("GET", "/api/tasks/sentiment")
            # ...and an unchanged file does not undo it on restart.
            assert body["labels"] == {"latest": 2, "production": 1}
            assert [v["version"] for v in body["versions"]] == [1, 2]


async def test_variant_split_over_real_calls(tmp_path: Path) -> None:
    extra = """
[tasks.sentiment.variants.control]
weight = 3
[tasks.sentiment.variants.canary]
weight = 1
params = { temperature = 0.1 }
"""
    async with FakeOpenAI(reply='{"sentiment": "positive"}') as upstream:
        async with served(config_with(tmp_path, upstream, extra)) as (url, api):
            calls = 300
            served_by: Counter[str] = Counter()
            for i in range(calls):
                status, body, _ = await api.call(
                    "POST", "/api/tasks/sentiment/run", {"variables": {"review": f"r{i}"}}
                )
                assert status == 200
                served_by[body["variant"]] += 1
            share = served_by["canary"] / calls
            assert abs(share - 0.25) < 5 * math.sqrt(0.25 * 0.75 / calls), served_by
            temperatures = Counter(r.json.get("temperature") for r in upstream.requests)
            assert temperatures[0.1] == served_by["canary"]
            _, traces, _ = await api.call("GET", "/api/traces?task=sentiment&limit=500")
            assert Counter(t["variant"] for t in traces["data"]) == served_by

            # A caller's own sampling parameters override the variant's, zero included.
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN) as sdk:
                await sdk.chat.completions.create(
                    model="task:sentiment",
                    messages=[{"role": "user", "content": "ok"}],
                    temperature=0,
                    extra_body={"variant": "canary"},
                )
            assert upstream.requests[-1].json["temperature"] == 0


async def test_context_overflow_names_the_sizes(tmp_path: Path) -> None:
    async with FakeOpenAI(reply='{"sentiment": "positive"}') as upstream:
        config = config_from(
            tmp_path,
            TASK + openai_model_toml("gpt", upstream.url, extra="context_window = 64"),
        )
        async with served(config) as (_url, api):
            status, body, headers = await api.call(
                "POST", "/api/tasks/sentiment/run", {"variables": {"review": "word " * 400}}
            )
            assert status == 400, body
            error = body["error"]
            assert error["code"] == "context_length_exceeded"
            assert "context window is 64 tokens" in error["message"]
            assert "task 'sentiment'" in error["message"]
            assert upstream.requests == []  # refused before any model call
            _, trace, _ = await api.call("GET", f"/api/traces/{headers['x-powertrain-trace-id']}")
            assert trace["status"] == "error" and trace["task"] == "sentiment"
