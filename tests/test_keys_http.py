"""Virtual API keys over HTTP: management, allowed models and tasks, limits, budgets, tenants.

Every call goes through the real app under uvicorn to a local fake of OpenAI's API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from tests.conftest import eventually
from tests.fakes import FakeOpenAI
from tests.keys_helpers import assert_error, chat, keyed_config, served

TASK = """
[tasks.greet]
system = "Greet."
user = "{{ name }}"
variables = { name = "string" }
input = "name"
model = "cheap"

[tasks.other]
user = "{{ name }}"
variables = { name = "string" }
model = "cheap"
"""


async def test_keys_are_created_listed_changed_and_revoked(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        status, made, _ = await api.call(
            "POST",
            "/api/keys",
            {"name": "web", "rpm": 60, "tpm": 5000, "budget_usd": 2, "models": ["paid"]},
        )
        assert status == 201
        secret = made["key"]
        assert secret.startswith("pt-") and made["prefix"] == secret[:10]
        assert (made["budget_usd"], made["spend_usd"], made["remaining_usd"]) == (2.0, 0.0, 2.0)

        status, listed, _ = await api.call("GET", "/api/keys")
        assert status == 200 and [k["id"] for k in listed] == [made["id"]]
        assert "key" not in listed[0] and secret not in str(listed)  # shown once, only
        assert listed[0]["models"] == ["paid"] and listed[0]["tasks"] is None

        status, body, _ = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
        )
        assert status == 200, body
        info = await api.key_info(made["id"])
        assert info["last_used_at"] is not None

        status, changed, _ = await api.call(
            "PATCH", f"/api/keys/{made['id']}", {"rpm": None, "models": ["paid", "cheap"]}
        )
        assert status == 200 and changed["rpm"] is None and changed["tpm"] == 5000
        assert changed["models"] == ["paid", "cheap"]

        # Only the admin key manages keys; a virtual key is refused, no key is unauthenticated.
        status, body, _ = await api.call("GET", "/api/keys", key=secret)
        assert status == 403
        assert_error(body, status_type="permission_error")
        status, body, _ = await api.call("POST", "/api/keys", {"name": "x"}, key=None)
        assert status == 401

        status, body, _ = await api.call("POST", "/api/keys", {"name": "x", "models": ["nope"]})
        assert status == 400 and "'nope' is not in the catalog" in body["error"]["message"]
        status, body, _ = await api.call("POST", "/api/keys", {"name": "x", "rpm": 0})
        assert status == 400
        status, body, _ = await api.call("DELETE", "/api/keys/key_missing")
        assert status == 404

        status, _, _ = await api.call("DELETE", f"/api/keys/{made['id']}")
        assert status == 204
        status, body, _ = await api.call("POST", "/v1/chat/completions", chat(), key=secret)
        assert status == 401
        assert_error(body, status_type="authentication_error", code="invalid_api_key")
        status, listed, _ = await api.call("GET", "/api/keys")
        assert listed[0]["revoked_at"] is not None  # kept, with its spend
        status, listed, _ = await api.call("GET", "/api/keys?include_revoked=false")
        assert listed == []
        assert len(upstream.requests) == 1


async def test_a_key_reaches_only_its_allowed_models_and_tasks(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream:
        config = keyed_config(tmp_path, upstream.url, extra=TASK)
        async with served(config) as api:
            _id, secret = await api.new_key(models=["cheap"], tasks=["greet"])
            status, body, _ = await api.call("POST", "/v1/chat/completions", chat(), key=secret)
            assert status == 403
            error = assert_error(body, status_type="permission_error", code="model_not_allowed")
            assert "'paid'" in error["message"] and error["param"] == "model"
            status, body, _ = await api.call(
                "POST", "/v1/embeddings", {"model": "emb", "input": "x"}, key=secret
            )
            assert status == 403 and body["error"]["code"] == "model_not_allowed"
            status, body, _ = await api.call("GET", "/v1/models/paid", key=secret)
            assert status == 403
            status, body, _ = await api.call("GET", "/v1/models", key=secret)
            assert [m["id"] for m in body["data"]] == ["cheap"]
            assert not upstream.requests  # refused before any upstream call

            status, body, _ = await api.call(
                "POST", "/v1/chat/completions", chat("cheap"), key=secret
            )
            assert status == 200, body
            status, body, _ = await api.call(
                "POST", "/v1/tasks/greet", {"variables": {"name": "Ada"}}, key=secret
            )
            assert status == 200, body
            status, body, _ = await api.call(
                "POST", "/v1/chat/completions", chat("task:greet"), key=secret
            )
            assert status == 200, body
            for path, payload in (
                ("/v1/tasks/other", {"variables": {"name": "Ada"}}),
                ("/v1/chat/completions", chat("task:other")),
            ):
                status, body, _ = await api.call("POST", path, payload, key=secret)
                assert status == 403, (path, body)
                error = assert_error(body, status_type="permission_error", code="task_not_allowed")
                assert "'other'" in error["message"]
            assert len(upstream.requests) == 3

            sdk = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=secret, max_retries=0)
            async with sdk:
                with pytest.raises(openai.PermissionDeniedError, match="may not use model"):
                    await sdk.chat.completions.create(
                        model="paid", messages=[{"role": "user", "content": "hi"}]
                    )


async def test_requests_per_minute_give_429_with_retry_after(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        _id, limited = await api.new_key("limited", rpm=2)
        _id, other = await api.new_key("other", rpm=2)
        for _ in range(2):
            status, _body, _ = await api.call(
                "POST", "/v1/chat/completions", chat("cheap"), key=limited
            )
            assert status == 200
        status, body, headers = await api.call(
            "POST", "/v1/chat/completions", chat("cheap"), key=limited
        )
        assert status == 429
        error = assert_error(body, status_type="rate_limit_error", code="rate_limit_exceeded")
        assert "2 requests per minute" in error["message"]
        assert 1 <= int(headers["Retry-After"]) <= 30  # one request refills in 30 s
        assert "x-powertrain-trace-id" in {h.lower() for h in headers}  # refusals are traced
        status, body, headers = await api.call(
            "POST", "/v1/embeddings", {"model": "emb", "input": "x"}, key=limited
        )
        assert status == 429 and "Retry-After" in headers
        # Another key has its own bucket, and the admin key is not limited.
        status, _body, _ = await api.call("POST", "/v1/chat/completions", chat("cheap"), key=other)
        assert status == 200
        for _ in range(3):
            status, _body, _ = await api.call("POST", "/v1/chat/completions", chat("cheap"))
            assert status == 200
        sdk = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=limited, max_retries=0)
        async with sdk:
            with pytest.raises(openai.RateLimitError) as raised:
                await sdk.chat.completions.create(
                    model="cheap", messages=[{"role": "user", "content": "hi"}]
                )
            assert raised.value.response.headers["retry-after"]
        assert len(upstream.requests) == 6


async def test_tokens_per_minute_hold_the_most_a_call_may_use_then_correct(
    tmp_path: Path,
) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        upstream.usage = (2, 3)  # each call really uses 5 tokens
        _id, secret = await api.new_key(tpm=100)
        # Each takes ~61 tokens up front (prompt + max_tokens 60): the second fits only
        # because the first gave back what it did not use.
        for _ in range(3):
            status, body, _ = await api.call(
                "POST", "/v1/chat/completions", chat("cheap", max_tokens=60), key=secret
            )
            assert status == 200, body
            await api.app.gateway.access.drain()
        status, body, headers = await api.call(
            "POST", "/v1/chat/completions", chat("cheap", max_tokens=90), key=secret
        )
        assert status == 429
        error = assert_error(body, status_type="rate_limit_error", code="rate_limit_exceeded")
        assert "100 tokens per minute" in error["message"]
        assert int(headers["Retry-After"]) >= 1
        status, body, headers = await api.call(
            "POST", "/v1/chat/completions", chat("cheap", max_tokens=500), key=secret
        )
        assert status == 429 and "Retry-After" not in headers  # it would never fit
        assert "lower max_tokens" in body["error"]["message"]
        assert len(upstream.requests) == 3


async def test_spend_is_reported_and_a_budget_refuses_what_it_cannot_cover(
    tmp_path: Path,
) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        upstream.usage = (4, 7)  # $0.007 at $1000 per 1M output tokens
        key_id, secret = await api.new_key("metered", budget_usd=0.02)
        for _ in range(2):
            status, body, _ = await api.call(
                "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
            )
            assert status == 200, body
        info = await api.key_info(key_id)
        assert info["spend_usd"] == pytest.approx(0.014)
        assert info["reserved_usd"] == 0 and info["remaining_usd"] == pytest.approx(0.006)
        # The next call may cost $0.01 (10 tokens), more than the $0.006 left.
        status, body, headers = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
        )
        assert status == 429 and "Retry-After" not in headers
        error = assert_error(body, status_type="insufficient_quota", code="budget_exceeded")
        assert "spent $0.014 of its $0.02 budget" in error["message"]
        assert f"powertrain keys update {key_id} --budget" in error["message"]
        # A free model is still allowed; a smaller max_tokens fits what is left.
        status, _body, _ = await api.call("POST", "/v1/chat/completions", chat("cheap"), key=secret)
        assert status == 200
        status, _body, _ = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=5), key=secret
        )
        assert status == 200
        status, _body, _ = await api.call("PATCH", f"/api/keys/{key_id}", {"budget_usd": 1})
        status, _body, _ = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
        )
        assert status == 200
        info = await api.key_info(key_id)
        assert info["spend_usd"] == pytest.approx(0.028)
        # A stream is charged too, when it ends.
        status, _body, _ = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=10, stream=True), key=secret
        )
        assert status == 200
        info = await api.key_info(key_id)
        assert info["spend_usd"] == pytest.approx(0.035)
        traces = api.app.gateway.trace_store
        await api.app.gateway.traces.flush()
        assert traces.count() >= 6


async def test_an_upstream_failure_releases_its_hold(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        key_id, secret = await api.new_key(budget_usd=0.01)
        upstream.fail(3, status=500)  # the first attempt and both retries
        status, _body, _ = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
        )
        assert status == 502
        info = await api.key_info(key_id)
        assert (info["spend_usd"], info["reserved_usd"]) == (0, 0)
        upstream.usage = (1, 10)
        status, _body, _ = await api.call(
            "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
        )
        assert status == 200  # the whole budget was still there


async def test_a_client_that_leaves_releases_its_hold(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        key_id, secret = await api.new_key(budget_usd=0.01)
        upstream.hang()
        request = api.call("POST", "/v1/chat/completions", chat(max_tokens=10), key=secret)
        waiting = asyncio.ensure_future(request)
        await upstream.wait_for_requests(1)
        assert (await api.key_info(key_id))["reserved_usd"] == 0.01
        waiting.cancel()  # the client goes away while the model "thinks"
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await upstream.wait_for_disconnects(1)
        store = api.app.gateway.keys.store

        def released() -> bool:
            record = store.get(key_id)
            return record is not None and record.reserved_nano == 0

        await eventually(released, "the hold is released")
        info = await api.key_info(key_id)
        assert (info["reserved_usd"], info["spend_usd"]) == (0, 0)


async def test_tenants_cannot_reach_each_others_traces_or_collections(tmp_path: Path) -> None:
    """RELIABILITY 9 over HTTP: key B guesses key A's ids and names and finds nothing."""
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        a_id, a = await api.new_key("a")
        b_id, b = await api.new_key("b")
        status, _body, headers = await api.call(
            "POST", "/v1/chat/completions", chat("cheap"), key=a
        )
        assert status == 200
        a_trace = headers["x-powertrain-trace-id"]
        status, _body, headers = await api.call(
            "POST", "/v1/chat/completions", chat("cheap"), key=b
        )
        b_trace = headers["x-powertrain-trace-id"]
        await api.app.gateway.traces.flush()

        status, page, _ = await api.call("GET", "/api/traces", key=a)
        assert [t["id"] for t in page["data"]] == [a_trace]
        status, page, _ = await api.call("GET", f"/api/traces?api_key_id={b_id}", key=a)
        assert [t["id"] for t in page["data"]] == [a_trace]  # a key cannot widen its scope
        status, body, _ = await api.call("GET", f"/api/traces/{a_trace}", key=b)
        assert status == 404 and body["error"]["type"] == "not_found_error"
        status, body, _ = await api.call("GET", f"/api/traces/{b_trace}", key=b)
        assert status == 200 and body["api_key_id"] == b_id
        status, page, _ = await api.call("GET", "/api/traces")  # the admin key sees all
        assert {a_trace, b_trace} <= {t["id"] for t in page["data"]}
        status, page, _ = await api.call("GET", f"/api/traces?api_key_id={a_id}")
        assert [t["id"] for t in page["data"]] == [a_trace]

        base = "/api/collections"
        status, body, _ = await api.call(
            "POST", base, {"name": "secrets", "embedding_model": "emb"}, key=a
        )
        assert status == 201, body
        async with api.http.put(
            api.url + base + "/secrets/documents/plan.md",
            data=b"# Plan\n\nThe launch code is 4417.",
            headers={"Authorization": f"Bearer {a}"},
        ) as r:
            assert r.status == 200, await r.text()
        status, listed, _ = await api.call("GET", base, key=b)
        assert listed == []
        for method, path, payload in (
            ("GET", f"{base}/secrets", None),
            ("GET", f"{base}/secrets/documents", None),
            ("POST", f"{base}/secrets/search", {"query": "launch code"}),
            ("PUT", f"{base}/secrets/documents/plan.md", {"overwrite": True}),
            ("DELETE", f"{base}/secrets/documents/plan.md", None),
            ("DELETE", f"{base}/secrets", None),
        ):
            status, body, _ = await api.call(method, path, payload, key=b)
            assert status == 404, (method, path, body)
        status, body, _ = await api.call(
            "POST", f"{base}/secrets/search", {"query": "launch code", "mode": "keyword"}, key=a
        )
        assert status == 200 and "4417" in body["data"][0]["text"]
        # B's own collection of the same name is B's, and A's is untouched by it.
        status, body, _ = await api.call(
            "POST", base, {"name": "secrets", "embedding_model": "emb"}, key=b
        )
        assert status == 201 and body["documents"] == 0
        status, body, _ = await api.call("GET", f"{base}/secrets", key=a)
        assert body["documents"] == 1
        # The admin key's collections are its own namespace too.
        status, listed, _ = await api.call("GET", base)
        assert listed == []
        # And a key may not embed with a model it is not allowed.
        _id, narrow = await api.new_key("narrow", models=["cheap"])
        status, body, _ = await api.call(
            "POST", base, {"name": "kb", "embedding_model": "emb"}, key=narrow
        )
        assert status == 403 and body["error"]["code"] == "model_not_allowed"


PRICED_TASK = """
[tasks.priced]
user = "Review: {{ review }}"
variables = { review = "string" }
model = "paid"
params = { max_tokens = 10 }
repairs = 1
[tasks.priced.output]
schema = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'
"""


async def test_a_task_holds_budget_for_every_attempt_it_may_make(tmp_path: Path) -> None:
    async with FakeOpenAI(reply='{"ok": true}') as upstream:
        upstream.usage = (5, 10)
        config = keyed_config(tmp_path, upstream.url, extra=PRICED_TASK)
        async with served(config) as api:
            short_id, short = await api.new_key("short", budget_usd=0.015)
            status, body, _ = await api.call(
                "POST", "/v1/tasks/priced", {"variables": {"review": "fine"}}, key=short
            )
            assert status == 429, body
            assert "may cost up to $0.02" in body["error"]["message"]  # 2 attempts x $0.01
            key_id, enough = await api.new_key("enough", budget_usd=0.02)
            status, body, _ = await api.call(
                "POST", "/v1/tasks/priced", {"variables": {"review": "fine"}}, key=enough
            )
            assert status == 200 and body["output"] == {"ok": True}, body
            info = await api.key_info(key_id)
            assert info["spend_usd"] == pytest.approx(0.01)  # charged what it used
            assert info["reserved_usd"] == 0
            assert (await api.key_info(short_id))["spend_usd"] == 0
