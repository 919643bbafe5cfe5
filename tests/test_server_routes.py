"""Server routes against hosted-API engines served by local fakes of their real protocols."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import config_from, openai_model_toml, running_app
from tests.fakes import FakeAnthropic, FakeOpenAI


async def test_embeddings_pass_through_an_embedding_engine(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream:
        config = config_from(
            tmp_path, openai_model_toml("emb", upstream.url, extra="price_input = 0.02")
        )
        async with (
            running_app(config) as url,
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="x") as client,
        ):
            raw = await client.embeddings.with_raw_response.create(
                model="emb", input=["one", "two"]
            )
            result = raw.parse()
            assert [d.index for d in result.data] == [0, 1]
            assert len(result.data[0].embedding) == upstream.embedding_dim
            assert upstream.last_request is not None
            assert upstream.last_request.json["model"] == "emb-upstream"
            trace_id = raw.headers["x-powertrain-trace-id"]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{url}/api/traces/{trace_id}") as resp,
            ):
                trace = await resp.json()
            assert trace["status"] == "ok" and trace["metadata"]["kind"] == "embeddings"

            floats = await client.embeddings.create(
                model="emb", input="one", encoding_format="float"
            )
            assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)

            with pytest.raises(openai.BadRequestError, match="does not produce"):
                await client.embeddings.create(model="smollm2", input="x")


async def test_anthropic_model_behind_the_openai_endpoint(tmp_path: Path) -> None:
    async with FakeAnthropic() as upstream:
        upstream.reply = "Bonjour from Claude."
        config = config_from(
            tmp_path,
            f'''
[models.claude]
engine = "anthropic"
model = "claude-test"
base_url = "{upstream.url}"
api_key = "sk-ant-test"
price_input = 3.0
price_output = 15.0
''',
        )
        async with (
            running_app(config) as url,
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="x") as client,
        ):
            reply = await client.chat.completions.create(
                model="claude",
                max_tokens=50,
                messages=[
                    {"role": "system", "content": "Be French."},
                    {"role": "user", "content": "Hello"},
                ],
            )
            assert reply.choices[0].message.content == "Bonjour from Claude."
            sent = upstream.last_request
            assert sent is not None and sent.json["system"] == "Be French."
            assert sent.headers["x-api-key"] == "sk-ant-test"
            stream = await client.chat.completions.create(
                model="claude",
                max_tokens=50,
                stream=True,
                messages=[{"role": "user", "content": "Hello"}],
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            assert text == "Bonjour from Claude."
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{url}/api/traces?model=claude") as resp,
            ):
                traces = (await resp.json())["data"]
            assert len(traces) == 2
            assert all(t["cost_usd"] > 0 and t["engine"] == "anthropic" for t in traces)


async def test_unknown_routes_and_methods_use_the_error_shape(tmp_path: Path) -> None:
    async with running_app(config_from(tmp_path)) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/nothing") as resp:
            body = await resp.json()
            assert resp.status == 404 and body["error"]["type"] == "not_found_error"
        async with http.post(url + "/v1/chat/completions", data=b"{not json") as resp:
            body = await resp.json()
            assert resp.status == 400 and "not valid JSON" in body["error"]["message"]
        async with http.post(url + "/v1/chat/completions", json=[1, 2]) as resp:
            assert resp.status == 400
        async with http.get(url + "/v1/chat/completions") as resp:
            body = await resp.json()
            assert resp.status == 405 and "use POST" in body["error"]["message"]
        async with http.get(url + "/api/traces?limit=100000") as resp:
            body = await resp.json()
            assert resp.status == 400 and "limit" in body["error"]["message"]
