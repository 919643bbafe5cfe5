"""RELIABILITY.md scenarios 3, 4, 7 and 8 against real servers on 127.0.0.1.

3: a request cannot choose the upstream. 4: configured secrets never leave the
process. 7: oversized input is refused with a 4xx naming the limit. 8: the
server binds loopback by default and needs the admin key once one is set.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from powertrain.config import load_config
from powertrain.engines.base import estimate_tokens
from powertrain.engines.bundled import smollm2_path
from powertrain.redact import MASK, SecretScrubber
from powertrain.schemas.trace import Trace
from powertrain.settings import Settings
from powertrain.store import Database, TraceStore
from powertrain.tracing import TraceWriter
from tests.conftest import (
    ServerProcess,
    free_port,
    openai_model_toml,
    running_app,
    start_server,
    write_config,
)
from tests.fakes import FakeAnthropic, FakeOpenAI

JSON = {"content-type": "application/json"}


def chat_body(model: str, text: str = "Hello?", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def assert_openai_error(body: Any, *, error_type: str) -> dict[str, Any]:
    """The body is OpenAI's error shape; returns its ``error`` object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with session.post(url, data=orjson.dumps(body), headers={**JSON, **(headers or {})}) as r:
        return r.status, await r.json(content_type=None)


# ------------------------------------------------------------------ 3. upstream steering

STEERING_FIELDS = [
    "base_url",
    "api_base",
    "api_key",
    "host",
    "url",
    "endpoint",
    "proxy",
    "upstream",
    "organization",
    "api_version",
]


async def test_a_request_cannot_choose_its_upstream(tmp_path: Path) -> None:
    async with FakeOpenAI() as configured, FakeOpenAI() as attacker:
        config = load_config(write_config(tmp_path, openai_model_toml("gpt", configured.url)))
        async with running_app(config) as base, aiohttp.ClientSession() as session:
            for field in STEERING_FIELDS:
                value = attacker.url if field != "api_key" else "sk-attacker"
                for path, body in (
                    ("/v1/chat/completions", chat_body("gpt", **{field: value})),
                    ("/v1/chat/completions", chat_body("gpt", stream=True, **{field: value})),
                    ("/v1/embeddings", {"model": "gpt", "input": "hi", field: value}),
                ):
                    status, answer = await post(session, base + path, body)
                    assert status == 400, (field, path, answer)
                    error = assert_openai_error(answer, error_type="invalid_request_error")
                    assert repr(field) in error["message"], error

            # The official SDK merges extra_body into the request: refused the same way.
            sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            async with sdk:
                with pytest.raises(openai.BadRequestError) as refused:
                    await sdk.chat.completions.create(
                        model="gpt",
                        messages=[{"role": "user", "content": "hi"}],
                        extra_body={"base_url": attacker.url},
                    )
                assert refused.value.status_code == 400
                assert "'base_url'" in refused.value.message
                assert configured.requests == [] and attacker.requests == []

                # Only configuration picks the upstream: a clean request goes there.
                done = await sdk.chat.completions.create(
                    model="gpt", messages=[{"role": "user", "content": "hi"}]
                )
                assert done.choices[0].message.content == configured.default_reply
            assert len(configured.requests) == 1 and attacker.requests == []
            assert configured.requests[0].headers["authorization"] == "Bearer sk-test"


# ------------------------------------------------------------------ 4. secrets never leak


def _leak_config(openai_url: str, anthropic_url: str, openai_key: str, anthropic_key: str) -> str:
    no_retry = "max_retries = 0\n"
    return (
        "[settings]\ntrace_flush_interval = 0.05\n"
        + openai_model_toml("leaky", openai_url, api_key=openai_key, extra=no_retry)
        + f'[models.leaky-env]\nengine = "openai"\nmodel = "m"\nbase_url = "{openai_url}"\n'
        f'api_key_env = "PT_TEST_CANARY_KEY"\n{no_retry}\n'
        + f'[models.claude]\nengine = "anthropic"\nmodel = "claude-x"\n'
        f'base_url = "{anthropic_url}"\napi_key = "{anthropic_key}"\n{no_retry}\n'
    )


async def test_canary_secrets_appear_in_no_response_trace_row_or_log(
    tmp_path: Path, isolated: Path, server_process: list[ServerProcess]
) -> None:
    tag = uuid.uuid4().hex[:12]
    admin_key = f"pt-admin-canary-{tag}"
    openai_key = f"sk-canary-openai-{tag}"
    env_key = f"sk-canary-env-{tag}"
    anthropic_key = f"sk-ant-canary-{tag}"
    canaries = [admin_key, openai_key, env_key, anthropic_key]
    async with (
        FakeOpenAI(reply="one two three four five") as gpt,
        FakeAnthropic(reply="one two three four five") as claude,
    ):
        write_config(tmp_path, _leak_config(gpt.url, claude.url, openai_key, anthropic_key))
        server = await asyncio.to_thread(
            start_server,
            tmp_path,
            "--log-level",
            "debug",
            env={"POWERTRAIN_ADMIN_KEY": admin_key, "PT_TEST_CANARY_KEY": env_key},
        )
        server_process.append(server)
        auth = {"Authorization": f"Bearer {admin_key}"}
        seen: list[bytes] = []  # every byte any client received

        async def call(
            path: str, body: Any, headers: dict[str, str] | None = None, method: str = "POST"
        ) -> int:
            async with session.request(
                method,
                server.url + path,
                headers={**JSON, **(auth if headers is None else headers)},
                data=None if body is None else orjson.dumps(body),
            ) as resp:
                seen.append(orjson.dumps(list(resp.raw_headers), default=bytes.decode))
                seen.append(await resp.read())
                return resp.status

        async with aiohttp.ClientSession() as session:
            # Upstreams that echo the key in their error bodies, in every way they can fail.
            gpt.fail(1, 401, message=f"Incorrect API key provided: {openai_key}.")
            assert await call("/v1/chat/completions", chat_body("leaky")) == 502
            gpt.fail(1, 500, message=f"internal error for key {openai_key}")
            assert await call("/v1/chat/completions", chat_body("leaky")) == 502
            gpt.fail(1, 429, message=f"rate limit for {env_key}", retry_after=1)
            assert await call("/v1/chat/completions", chat_body("leaky-env")) == 429
            gpt.fail(
                1,
                400,
                code="context_length_exceeded",
                message=f"maximum context length exceeded for {openai_key}",
            )
            assert await call("/v1/chat/completions", chat_body("leaky")) == 400
            gpt.fail(1, 400, message=f"bad request from {openai_key}")
            assert await call("/v1/chat/completions", chat_body("leaky", stream=True)) == 400
            gpt.error_mid_stream(2, message=f"stream failed for {openai_key}")
            assert await call("/v1/chat/completions", chat_body("leaky", stream=True)) == 200
            claude.fail(1, 401, message=f"invalid x-api-key {anthropic_key}")
            assert await call("/v1/chat/completions", chat_body("claude")) == 502
            claude.error_mid_stream(1, message=f"overloaded for {anthropic_key}")
            assert await call("/v1/chat/completions", chat_body("claude", stream=True)) == 200
            assert await call("/v1/chat/completions", chat_body("leaky")) == 200
            # Refused credentials, and every read route.
            wrong = {"Authorization": f"Bearer {admin_key[:-1]}"}
            assert await call("/v1/chat/completions", chat_body("leaky"), wrong) == 401
            assert await call("/api/traces", None, wrong, "GET") == 401
            for route in (
                "/v1/models",
                "/v1/models/leaky",
                "/v1/models/claude",
                "/readyz",
                "/openapi.json",
            ):
                assert await call(route, None, method="GET") == 200, route

            # The upstreams really were given the canaries (so there was something to leak).
            assert {r.headers["authorization"] for r in gpt.requests} == {
                f"Bearer {openai_key}",
                f"Bearer {env_key}",
            }
            assert {r.headers["x-api-key"] for r in claude.requests} == {anthropic_key}
            assert sum(MASK.encode() in body for body in seen) >= 7  # echoes were scrubbed

            # Traces, through the API (list and one by one).
            chat_calls = 9
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                async with session.get(
                    server.url + "/api/traces", params={"limit": 100}, headers=auth
                ) as resp:
                    listing = await resp.read()
                traces = orjson.loads(listing)["data"]
                if len(traces) >= chat_calls or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert len(traces) == chat_calls
            seen.append(listing)
            for trace in traces:
                assert await call(f"/api/traces/{trace['id']}", None, method="GET") == 200
            assert sum(MASK in (t["error_message"] or "") for t in traces) >= 7

            # The store's own bytes (the SQLite file and its WAL), while running and after.
            db_files = sorted(isolated.glob("powertrain.db*"))
            assert any(p.name.endswith("-wal") for p in db_files)
            raw_store = [p.read_bytes() for p in db_files]
        assert server.stop() == 0

    raw_store += [p.read_bytes() for p in sorted(isolated.glob("powertrain.db*"))]
    assert sum(b"[redacted]" in chunk for chunk in raw_store) >= 1
    spill = isolated / "traces-spill.jsonl"
    log = server.log()
    assert "DEBUG" in log and "powertrain on http://127.0.0.1" in log
    for canary in canaries:
        secret = canary.encode()
        for i, chunk in enumerate(seen):
            assert secret not in chunk, (canary, i, chunk[:500])
        for chunk in raw_store:
            assert secret not in chunk, canary
        assert canary not in log, canary
        if spill.exists():
            assert secret not in spill.read_bytes()


async def test_spilled_traces_are_scrubbed(tmp_path: Path) -> None:
    """Traces that spill to the JSONL file (buffer full, or store down at shutdown)."""
    canary = f"sk-canary-spill-{uuid.uuid4().hex[:12]}"

    class DownStore(TraceStore):
        def insert_rows(self, rows: Any) -> None:
            raise ConnectionError("the store is down")

    spill = tmp_path / "spill.jsonl"
    writer = TraceWriter(
        DownStore(Database(f"sqlite:///{tmp_path / 'down.db'}")),
        spill_path=spill,
        buffer_limit=1,
        flush_interval=60,
        scrubber=SecretScrubber([canary]),
    )
    await writer.start()
    for i in range(3):
        writer.submit(
            Trace(
                model="m",
                request={"messages": [{"content": f"{i} {canary}"}]},
                output=f"echo {canary}",
                error_message=f"bad key {canary}",
                metadata={"header": canary},
            )
        )
    assert writer.spilled == 2  # over the buffer limit: spilled, not dropped
    await writer.aclose()  # store down at shutdown: the rest spills too
    assert writer.spilled == 3
    raw = spill.read_bytes()
    assert raw.count(b"\n") == 3 and canary.encode() not in raw
    assert raw.count(MASK.encode()) == 3 * 4


# ------------------------------------------------------------------------ 7. bounded input


async def test_oversized_body_is_refused_naming_the_limit(tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        config = load_config(
            write_config(
                tmp_path, "[settings]\nmax_body_bytes = 2048\n" + openai_model_toml("gpt", fake.url)
            )
        )
        big = orjson.dumps(chat_body("gpt", "x" * 4096))

        async def chunked() -> Any:  # no content-length: the limit holds while reading
            yield big[:1500]
            yield big[1500:]

        async with running_app(config) as base, aiohttp.ClientSession() as session:
            for data in (big, chunked()):
                async with session.post(
                    base + "/v1/chat/completions", data=data, headers=JSON
                ) as resp:
                    assert resp.status == 413
                    error = assert_openai_error(
                        await resp.json(), error_type="invalid_request_error"
                    )
                assert error["code"] == "request_too_large"
                assert "2048 bytes" in error["message"] and "max_body_bytes" in error["message"]
            # Just under the limit is fine.
            status, _ = await post(
                session, base + "/v1/chat/completions", chat_body("gpt", "x" * 1500)
            )
            assert status == 200
        assert len(fake.requests) == 1


async def test_too_many_messages_and_too_long_prompts_are_refused(tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        config = load_config(
            write_config(
                tmp_path,
                "[settings]\nmax_messages = 4\n"
                + openai_model_toml("gpt", fake.url, extra="context_window = 64"),
            )
        )
        async with running_app(config) as base, aiohttp.ClientSession() as session:
            url = base + "/v1/chat/completions"
            five = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}] * 5}
            for stream in (False, True):
                status, body = await post(session, url, {**five, "stream": stream})
                assert status == 400
                error = assert_openai_error(body, error_type="invalid_request_error")
                assert error["param"] == "messages"
                assert "5 messages" in error["message"] and "limit of 4" in error["message"]
                assert "max_messages" in error["message"]

            text = "tell me about the weather in a very long-winded way " * 8
            prompt_tokens = estimate_tokens(f"user: {text}")
            assert prompt_tokens > 64
            status, body = await post(session, url, chat_body("gpt", text))
            assert status == 400
            error = assert_openai_error(body, error_type="invalid_request_error")
            assert error["code"] == "context_length_exceeded"
            assert f"{prompt_tokens} tokens" in error["message"]
            assert "context window of 64 tokens" in error["message"]

            # Fits alone, but not with the output asked for: refused naming max_tokens.
            status, body = await post(session, url, chat_body("gpt", "short", max_tokens=100))
            assert status == 400
            error = assert_openai_error(body, error_type="invalid_request_error")
            assert error["param"] == "max_tokens" and "max_tokens (100)" in error["message"]
            assert "64 tokens" in error["message"]
            assert fake.requests == []  # refused, never truncated and sent anyway

            status, body = await post(session, url, chat_body("gpt", "short", max_tokens=20))
            assert status == 200 and len(fake.requests) == 1


def _smollm2_chatml_tokens(system: str, user: str) -> int:
    """The prompt's exact length under SmolLM2's own tokenizer, built independently."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)
    try:
        prompt = (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        return len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))
    finally:
        vocab.close()


@pytest.mark.model
@pytest.mark.parametrize(
    "window",
    [
        256,
        300,  # not a multiple of 256: llama.cpp pads it, the window must not grow
    ],
)
async def test_local_model_context_is_checked_with_its_own_tokenizer(
    tmp_path: Path, window: int
) -> None:
    config = load_config(
        write_config(
            tmp_path,
            f'[models.smollm2]\nengine = "llamacpp"\ncontext_window = {window}\n'
            "[models.smollm2.options]\nn_threads = 1\n",
        )
    )
    system, user = "Be brief.", "antidisestablishmentarianism " * 70
    exact = _smollm2_chatml_tokens(system, user)
    assert 300 < exact < 512 and exact != estimate_tokens(f"system: {system}\nuser: {user}")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    async with running_app(config) as base, aiohttp.ClientSession() as session:
        status, body = await post(
            session,
            base + "/v1/chat/completions",
            {"model": "smollm2", "messages": messages, "max_tokens": 4},
        )
    if status == 500:  # whatever went wrong, the answer keeps the OpenAI shape
        assert_openai_error(body, error_type="server_error")
    assert status == 400, body
    error = assert_openai_error(body, error_type="invalid_request_error")
    assert error["code"] == "context_length_exceeded"
    assert f"the prompt is {exact} tokens" in error["message"]
    assert f"context window of {window} tokens" in error["message"]


# --------------------------------------------------------------------- 8. default exposure


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_default_bind_is_loopback(tmp_path: Path, server_process: list[ServerProcess]) -> None:
    assert Settings().host == "127.0.0.1"
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp to see what the server bound")
    server = start_server(tmp_path)
    server_process.append(server)
    port = int(server.url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert server.stop() == 0


@pytest.mark.parametrize("how", ["flag", "config"])
def test_public_bind_without_admin_key_is_refused(tmp_path: Path, how: str) -> None:
    port = free_port()
    args = ["--port", str(port)]
    if how == "flag":
        args += ["--host", "0.0.0.0"]
    else:
        write_config(tmp_path, '[settings]\nhost = "0.0.0.0"\n')
    done = subprocess.run(
        [sys.executable, "-m", "powertrain.cli", "serve", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "0.0.0.0" in lines[0] and "POWERTRAIN_ADMIN_KEY" in lines[0]
    assert done.stdout == ""


async def test_admin_key_guards_api_and_v1_but_not_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_key = f"pt-admin-{uuid.uuid4().hex}"
    monkeypatch.setenv("POWERTRAIN_ADMIN_KEY", admin_key)
    async with FakeOpenAI() as fake:
        config = load_config(write_config(tmp_path, openai_model_toml("gpt", fake.url)))
        assert config.settings.admin_key == admin_key
        async with running_app(config) as base, aiohttp.ClientSession() as session:
            routes = [
                ("GET", "/api/traces", None),
                ("GET", "/api/traces/tr_0", None),
                ("GET", "/v1/models", None),
                ("GET", "/v1/models/gpt", None),
                ("POST", "/v1/chat/completions", chat_body("gpt")),
                ("POST", "/v1/chat/completions", chat_body("gpt", stream=True)),
                ("POST", "/v1/embeddings", {"model": "gpt", "input": "hi"}),
            ]
            refused = [
                None,
                "Bearer wrong-key",
                f"Bearer {admin_key}x",
                f"Basic {admin_key}",
                admin_key,
            ]
            for method, path, body in routes:
                for value in refused:
                    headers = {**JSON, **({"Authorization": value} if value else {})}
                    async with session.request(
                        method,
                        base + path,
                        headers=headers,
                        data=orjson.dumps(body) if body else None,
                    ) as r:
                        assert r.status == 401, (method, path, value)
                        error = assert_openai_error(
                            await r.json(), error_type="authentication_error"
                        )
                        assert error["code"] == "invalid_api_key"
            assert fake.requests == []

            for path in ("/healthz", "/readyz"):
                async with session.get(base + path) as r:
                    assert r.status == 200, path

            sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
            async with sdk:
                with pytest.raises(openai.AuthenticationError):
                    await sdk.chat.completions.create(
                        model="gpt", messages=[{"role": "user", "content": "hi"}]
                    )
            sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key=admin_key, max_retries=0)
            async with sdk:
                done = await sdk.chat.completions.create(
                    model="gpt", messages=[{"role": "user", "content": "hi"}]
                )
                assert done.choices[0].message.content == fake.default_reply
            async with session.get(
                base + "/api/traces", headers={"Authorization": f"Bearer {admin_key}"}
            ) as r:
                assert r.status == 200
            assert len(fake.requests) == 1
