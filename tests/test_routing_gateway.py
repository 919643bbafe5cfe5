"""Routes on the request path: fallback, retries, the circuit breaker and streams, through the
real server, the openai SDK and fake upstreams (RELIABILITY 12, 13, 14)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import config_from, openai_model_toml, serving
from tests.fakes import FakeOpenAI

PRICE_A = "price_input = 1000\nprice_output = 1000\n"
PRICE_B = "price_input = 10\nprice_output = 10\n"


def _route(extra: str = "") -> str:
    return (
        '[routes.support]\nstrategy = "fallback"\nmodels = ["a", "b"]\n'
        "retries = 1\nbackoff_base = 0.01\nbackoff_max = 0.02\n" + extra
    )


@contextlib.asynccontextmanager
async def routed(
    tmp_path: Path, route: str, settings: str = ""
) -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeOpenAI, FakeOpenAI, Any]]:
    async with FakeOpenAI(reply="from a") as a, FakeOpenAI(reply="from b") as b:
        a.usage = b.usage = (10, 5)
        toml = (
            settings
            + openai_model_toml("a", a.url, extra=PRICE_A)
            + openai_model_toml("b", b.url, extra=PRICE_B)
            + route
        )
        async with (
            serving(config_from(tmp_path, toml)) as (url, app),
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as sdk,
        ):
            yield sdk, a, b, app


async def _trace(app: Any, trace_id: str) -> Any:
    await app.gateway.traces.flush()
    return app.gateway.trace_store.get(trace_id)


async def _ask(sdk: openai.AsyncOpenAI, **params: Any) -> Any:
    return await sdk.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "hello"}], **params
    )


async def test_a_failing_model_falls_back_with_every_attempt_traced(tmp_path: Path) -> None:
    async with routed(tmp_path, _route()) as (sdk, a, b, app):
        a.fail(times=10, status=500)
        raw = await _ask(sdk)
        assert raw.parse().choices[0].message.content == "from b"
        assert len(a.requests) == 2  # the first try and one retry: the engine's own are off
        assert len(b.requests) == 1
        trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
        assert [(t["model"], t["status"]) for t in trace.attempts] == [
            ("a", "error"),
            ("a", "error"),
            ("b", "ok"),
        ]
        assert trace.attempts[1]["wait_s"] > 0  # backed off before the retry
        assert trace.metadata["route"]["answered_by"] == "b"
        # Only b answered; a's failures cost nothing.
        assert trace.cost_usd == pytest.approx((10 + 5) * 10 / 1e6)
        assert trace.status == "ok"


async def test_client_errors_are_never_retried_or_rerouted(tmp_path: Path) -> None:
    async with routed(tmp_path, _route()) as (sdk, a, b, _app):
        a.fail(times=1, status=400, message="bad request")
        with pytest.raises(openai.BadRequestError):
            await _ask(sdk)
        assert len(a.requests) == 1 and not b.requests


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    async with routed(tmp_path, _route()) as (sdk, a, b, app):
        a.fail(times=1, status=429, retry_after="0.3")
        raw = await _ask(sdk)
        assert raw.parse().choices[0].message.content == "from a"
        assert len(a.requests) == 2 and not b.requests
        gap = a.requests[1].at - a.requests[0].at
        assert gap >= 0.3
        trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
        assert trace.attempts[0]["outcome"] == "rate_limited"
        assert trace.attempts[1]["wait_s"] == pytest.approx(0.3, abs=0.05)


async def test_the_breaker_opens_moves_traffic_and_one_probe_closes_it(tmp_path: Path) -> None:
    route = _route("retries = 0\n").replace("retries = 1\n", "") + (
        "failure_threshold = 2\ncooldown = 0.5\n"
    )
    async with routed(tmp_path, route) as (sdk, a, _b, app):
        a.fail(times=2, status=503)
        for _ in range(2):  # two failures on a: its breaker opens
            raw = await _ask(sdk)
            assert raw.parse().choices[0].message.content == "from b"
        assert len(a.requests) == 2
        raw = await _ask(sdk)  # a is skipped while open
        assert raw.parse().choices[0].message.content == "from b"
        assert len(a.requests) == 2
        trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
        assert [t["model"] for t in trace.attempts] == ["b"]
        assert any(s["model"] == "a" for s in trace.metadata["route"]["skipped"])

        await asyncio.sleep(0.6)  # the cooldown passes; a has recovered
        raw = await _ask(sdk)
        assert raw.parse().choices[0].message.content == "from a"  # the probe succeeded
        raw = await _ask(sdk)
        assert raw.parse().choices[0].message.content == "from a"  # closed again
        assert len(a.requests) == 4


async def test_a_stream_falls_back_before_its_first_chunk(tmp_path: Path) -> None:
    async with routed(tmp_path, _route()) as (sdk, a, b, _app):
        a.fail(times=10, status=502)
        stream = await sdk.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "from b"
        assert len(a.requests) == 2 and len(b.requests) == 1


async def test_a_hung_model_times_out_at_the_deadline_and_falls_back(tmp_path: Path) -> None:
    route = _route("attempt_timeout = 0.5\n")
    async with routed(tmp_path, route) as (sdk, a, _b, app):
        a.hang(times=5)
        raw = await _ask(sdk)
        assert raw.parse().choices[0].message.content == "from b"
        trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
        assert trace.attempts[0]["outcome"] == "timeout"
        await a.wait_for_disconnects(1)  # the hung request was abandoned, not leaked


def test_a_route_naming_an_unknown_model_is_one_clear_line(tmp_path: Path) -> None:
    from powertrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"routes\.support"):
        config_from(tmp_path, '[routes.support]\nstrategy = "fallback"\nmodels = ["nope"]\n')


async def test_routes_are_listed_like_models(tmp_path: Path) -> None:
    async with routed(tmp_path, _route()) as (sdk, _a, _b, _app):
        listed = {m.id: m.owned_by for m in (await sdk.models.list()).data}
        assert listed["support"] == "powertrain:route:fallback"
        assert {"a", "b"} <= set(listed)
        assert (await sdk.models.retrieve("support")).id == "support"


async def test_a_cascade_escalates_an_answer_a_guardrail_would_block(tmp_path: Path) -> None:
    route = (
        '[routes.support]\nstrategy = "cascade"\nmodels = ["b", "a"]\n'
        'escalate_on = ["guardrail"]\n'
        '[guardrails.competitors]\ntype = "banned_terms"\nterms = ["globex"]\n'
        'action = "block"\nstages = ["output"]\n'
    )
    async with routed(tmp_path, route) as (sdk, _a, b, app):
        b.reply = "Try Globex."  # the cheap model's answer would be blocked
        raw = await _ask(sdk)
        assert raw.parse().choices[0].message.content == "from a"
        trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
        assert [t["model"] for t in trace.attempts] == ["b", "a"]
        assert trace.attempts[0]["outcome"] == "rejected"
        assert "competitors" in str(trace.attempts[0]["verdict"])
        # Both answers were paid for.
        assert trace.cost_usd == pytest.approx(15 * 10 / 1e6 + 15 * 1000 / 1e6)


async def test_a_task_can_use_a_route(tmp_path: Path) -> None:
    task = (
        '[tasks.greet]\nsystem = "Greet."\nuser = "Hello {{ name }}"\n'
        'variables = { name = "string" }\nmodel = "support"\n'
    )
    async with routed(tmp_path, _route() + task) as (sdk, a, b, app):
        a.fail(times=10, status=500)
        raw = await sdk.chat.completions.with_raw_response.create(
            model="task:greet", messages=[{"role": "user", "content": "Ada"}]
        )
        assert raw.parse().choices[0].message.content == "from b"
        assert "Hello Ada" in b.requests[-1].json["messages"][-1]["content"]
        trace = await _trace(app, raw.headers["x-powertrain-trace-id"])
        assert trace.task == "greet" and trace.model == "support"
        assert [t["model"] for t in trace.attempts] == ["a", "a", "b"]
        result = await app.gateway.tasks.run("greet", {"name": "Grace"})
        assert result.text == "from b"


def test_a_task_naming_neither_a_model_nor_a_route_is_refused(tmp_path: Path) -> None:
    from powertrain.errors import ConfigError

    task = '[tasks.greet]\nuser = "Hello"\nmodel = "nowhere"\n'
    with pytest.raises(ConfigError, match="neither in the catalog nor a route"):
        config_from(tmp_path, task)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_plain_models_own_retries_are_each_in_the_trace(
    tmp_path: Path, stream: bool
) -> None:
    async with routed(tmp_path, _route()) as (sdk, a, _b, app):
        a.fail(times=2, status=503, retry_after="0.05")
        raw = await sdk.chat.completions.with_raw_response.create(
            model="a", messages=[{"role": "user", "content": "hello"}], stream=stream
        )
        trace_id = raw.headers["x-powertrain-trace-id"]
        if stream:
            async for _ in raw.parse():
                pass
        else:
            assert raw.parse().choices[0].message.content == "from a"
        assert len(a.requests) == 3
        trace = await _trace(app, trace_id)
        assert [t["status"] for t in trace.attempts] == ["error", "error", "ok"]
        assert "wait_s" not in trace.attempts[0]
        assert [t["wait_s"] for t in trace.attempts[1:]] == pytest.approx([0.05, 0.05])
        assert all(t["model"] == "a" for t in trace.attempts)
