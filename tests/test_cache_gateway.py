"""The response cache on the request path, through the real server and the openai SDK."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

from powertrain.schemas.trace import Trace
from tests.conftest import config_from, openai_model_toml, serving
from tests.fakes import FakeOpenAI
from tests.keys_helpers import ADMIN, Api, keyed_config

PRICED = "price_input = 100\nprice_output = 1000\n"


def _question() -> list[dict[str, str]]:
    # Unique per test run: a shared Redis must not answer from an earlier run.
    return [{"role": "user", "content": f"What is the capital of France? ({uuid.uuid4().hex})"}]


async def _trace(app: Any, trace_id: str) -> Trace:
    await app.gateway.traces.flush()
    trace = app.gateway.trace_store.get(trace_id)
    assert trace is not None
    return trace  # type: ignore[no-any-return]


async def test_a_repeated_request_is_answered_from_the_cache(tmp_path: Path) -> None:
    async with FakeOpenAI(reply="Paris.") as upstream:
        upstream.usage = (20, 3)
        config = config_from(tmp_path, openai_model_toml("paid", upstream.url, extra=PRICED))
        async with serving(config) as (url, app), contextlib.AsyncExitStack() as stack:
            sdk = await stack.enter_async_context(
                openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            )
            messages = _question()
            first = await sdk.chat.completions.with_raw_response.create(
                model="paid",
                messages=messages,
                temperature=0,  # type: ignore[arg-type]
            )
            assert first.headers["x-powertrain-cache"] == "miss"
            second = await sdk.chat.completions.with_raw_response.create(
                model="paid",
                messages=messages,
                temperature=0,  # type: ignore[arg-type]
            )
            assert second.headers["x-powertrain-cache"] == "hit"
            assert len(upstream.requests) == 1
            assert second.parse().choices[0].message.content == "Paris."
            assert second.parse().usage.completion_tokens == 3  # type: ignore[union-attr]

            original = await _trace(app, first.headers["x-powertrain-trace-id"])
            hit = await _trace(app, second.headers["x-powertrain-trace-id"])
            assert original.cost_usd == pytest.approx(20 * 100e-6 + 3 * 1000e-6)
            assert original.metadata["cache"]["status"] == "miss"
            assert hit.cost_usd == 0.0 and hit.status == "ok"
            assert hit.output == "Paris."
            cache = hit.metadata["cache"]
            assert cache["kind"] == "exact"
            assert cache["saved_cost_usd"] == pytest.approx(original.cost_usd)
            assert cache["saved_ms"] >= 0

            # A stream of the same request replays the stored answer.
            async with sdk.chat.completions.with_streaming_response.create(
                model="paid",
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                stream=True,
            ) as response:
                assert response.headers["x-powertrain-cache"] == "hit"
                parts = [
                    c.choices[0].delta.content or ""
                    async for c in await response.parse()
                    if c.choices
                ]
            assert "".join(parts) == "Paris." and len(upstream.requests) == 1

            # Other parameters are another request.
            await sdk.chat.completions.create(
                model="paid",
                messages=messages,
                temperature=0,
                max_tokens=5,  # type: ignore[arg-type]
            )
            assert len(upstream.requests) == 2


async def test_bypass_refresh_and_sampling_reach_the_model(tmp_path: Path) -> None:
    async with FakeOpenAI(reply="Paris.") as upstream:
        config = config_from(tmp_path, openai_model_toml("paid", upstream.url, extra=PRICED))
        async with serving(config) as (url, _app), contextlib.AsyncExitStack() as stack:
            sdk = await stack.enter_async_context(
                openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            )
            messages = _question()
            create = sdk.chat.completions.with_raw_response.create
            await create(model="paid", messages=messages, temperature=0)  # type: ignore[arg-type]
            skipped = await create(
                model="paid",
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                extra_body={"cache": False},
            )
            assert skipped.headers["x-powertrain-cache"] == "bypass"
            no_cache = await create(
                model="paid",
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                extra_headers={"Cache-Control": "no-cache"},
            )
            assert no_cache.headers["x-powertrain-cache"] != "hit"
            assert len(upstream.requests) == 3
            # The body option never travels upstream.
            assert "cache" not in upstream.requests[1].json

            # Sampling (no temperature: the default of 1) is not cached by default.
            for _ in range(2):
                sampled = await create(model="paid", messages=messages)  # type: ignore[arg-type]
                assert sampled.headers["x-powertrain-cache"] == "bypass"
            assert len(upstream.requests) == 5

            with pytest.raises(openai.BadRequestError, match="x-powertrain-cache"):
                await create(
                    model="paid",
                    messages=messages,  # type: ignore[arg-type]
                    temperature=0,
                    extra_headers={"x-powertrain-cache": "sometimes"},
                )


async def test_keys_do_not_share_entries(tmp_path: Path) -> None:
    import aiohttp

    async with FakeOpenAI(reply="Paris.") as upstream:
        config = keyed_config(tmp_path, upstream.url)
        async with serving(config) as (url, app), aiohttp.ClientSession() as http:
            api = Api(http, url, app)
            _, key_a = await api.new_key("a")
            _, key_b = await api.new_key("b")
            body = {"model": "cheap", "messages": _question(), "temperature": 0}
            for key, expected in (
                (key_a, "miss"),
                (key_a, "hit"),
                (key_b, "miss"),
                (ADMIN, "miss"),
            ):
                status, _, headers = await api.call("POST", "/v1/chat/completions", body, key=key)
                assert status == 200 and headers["x-powertrain-cache"] == expected, (key, headers)
            assert len(upstream.requests) == 3


@pytest.mark.skipif(
    not os.environ.get("POWERTRAIN_TEST_REDIS_URL"), reason="POWERTRAIN_TEST_REDIS_URL is not set"
)
async def test_workers_share_a_redis_cache(tmp_path: Path) -> None:
    redis_url = os.environ["POWERTRAIN_TEST_REDIS_URL"]
    async with FakeOpenAI(reply="Paris.") as upstream:
        toml = (
            f'[settings]\nredis_url = "{redis_url}"\n[cache]\nbackend = "redis"\n'
            + openai_model_toml("paid", upstream.url, extra=PRICED)
        )
        (tmp_path / "one").mkdir()
        (tmp_path / "two").mkdir()
        one, two = config_from(tmp_path / "one", toml), config_from(tmp_path / "two", toml)
        async with serving(one) as (url_one, _), serving(two) as (url_two, _):
            messages = _question()
            for url, expected in ((url_one, "miss"), (url_two, "hit")):
                sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
                raw = await sdk.chat.completions.with_raw_response.create(
                    model="paid",
                    messages=messages,
                    temperature=0,  # type: ignore[arg-type]
                )
                assert raw.headers["x-powertrain-cache"] == expected
                assert raw.parse().choices[0].message.content == "Paris."
                await sdk.close()
            assert len(upstream.requests) == 1


def test_a_bad_cache_table_is_one_clear_line(tmp_path: Path) -> None:
    from powertrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[cache\] backend must be 'memory' or 'redis'"):
        config_from(tmp_path, '[cache]\nbackend = "memcached"\n')
    with pytest.raises(ConfigError, match=r"\[cache\] ttl"):
        config_from(tmp_path, "[cache]\nttl = -1\n")


TASK = """
[tasks.capital]
system = "Answer with the capital city only."
user = "Country: {{ country }}"
variables = { country = "string" }
model = "paid"
params = { temperature = 0 }
"""


async def test_task_answers_are_cached(tmp_path: Path) -> None:
    async with FakeOpenAI(reply="Paris") as upstream:
        upstream.usage = (20, 1)
        config = config_from(tmp_path, TASK + openai_model_toml("paid", upstream.url, extra=PRICED))
        async with serving(config) as (url, app), contextlib.AsyncExitStack() as stack:
            sdk = await stack.enter_async_context(
                openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            )
            country = f"France {uuid.uuid4().hex[:6]}"
            statuses = []
            for _ in range(2):
                raw = await sdk.chat.completions.with_raw_response.create(
                    model="task:capital",
                    messages=[{"role": "user", "content": country}],
                )
                statuses.append(raw.headers["x-powertrain-cache"])
                assert raw.parse().choices[0].message.content == "Paris"
            assert statuses == ["miss", "hit"] and len(upstream.requests) == 1
            hit = await _trace(app, raw.headers["x-powertrain-trace-id"])
            assert hit.cost_usd == 0.0 and hit.task == "capital" and not hit.attempts
            assert hit.metadata["cache"]["kind"] == "exact"

            # The library's run_task hits the same entry; other variables miss.
            result = await app.gateway.tasks.run("capital", {"country": country})
            assert result.text == "Paris" and len(upstream.requests) == 1
            await app.gateway.tasks.run("capital", {"country": country + " (the old one)"})
            assert len(upstream.requests) == 2


@pytest.mark.model
async def test_a_rephrased_question_is_answered_by_meaning(tmp_path: Path) -> None:
    async with FakeOpenAI(reply="Paris.") as upstream:
        toml = "[cache]\nsemantic = true\n" + openai_model_toml("paid", upstream.url, extra=PRICED)
        async with (
            serving(config_from(tmp_path, toml)) as (url, app),
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk,
        ):
            tag = uuid.uuid4().hex[:8]  # one system prompt per run: its own semantic scope
            system = {"role": "system", "content": f"You answer geography questions. ({tag})"}
            create = sdk.chat.completions.with_raw_response.create
            first = await create(
                model="paid",
                messages=[system, {"role": "user", "content": "What is the capital of France?"}],  # type: ignore[list-item]
                temperature=0,
            )
            assert first.headers["x-powertrain-cache"] == "miss"
            again = await create(
                model="paid",
                messages=[
                    system,
                    {"role": "user", "content": "What's the capital city of France?"},
                ],  # type: ignore[list-item]
                temperature=0,
            )
            assert again.headers["x-powertrain-cache"] == "hit"
            assert len(upstream.requests) == 1
            trace = await _trace(app, again.headers["x-powertrain-trace-id"])
            assert trace.metadata["cache"]["kind"] == "semantic"
            assert trace.metadata["cache"]["similarity"] >= 0.95
            other = await create(
                model="paid",
                messages=[system, {"role": "user", "content": "How tall is Mont Blanc?"}],  # type: ignore[list-item]
                temperature=0,
            )
            assert other.headers["x-powertrain-cache"] == "miss"
            assert len(upstream.requests) == 2
