"""Engines arrive through one hook; a test plugin is served like a built-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import openai
import pytest

from powertrain.engines.base import Capabilities, Engine, estimate_tokens, prompt_text
from powertrain.engines.registry import engine_classes
from powertrain.plugins import DEFAULT_PLUGINS, hookimpl, plugin_manager
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, Usage
from tests.conftest import config_from, running_app


class EchoEngine(Engine):
    """Answers with the last user message reversed; used as a third-party plugin."""

    name: ClassVar[str] = "echo"
    capabilities: ClassVar[Capabilities] = Capabilities(streaming=True)

    def _answer(self, request: ChatCompletionRequest) -> str:
        return request.messages[-1].text()[::-1]

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        return estimate_tokens(prompt_text(request))

    async def chat(
        self,
        request: ChatCompletionRequest,
        *,
        deadline: float | None = None,
    ) -> ChatResult:
        text = self._answer(request)
        return ChatResult(
            content=text,
            usage=Usage(prompt_tokens=self.count_tokens(request), completion_tokens=len(text)),
        )

    async def stream(
        self,
        request: ChatCompletionRequest,
        *,
        deadline: float | None = None,
    ) -> AsyncIterator[ChatChunk]:
        for char in self._answer(request):
            yield ChatChunk(delta=char)
        yield ChatChunk(finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1))


class EchoPlugin:
    @hookimpl
    def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
        register(EchoEngine)


@pytest.fixture
def echo_plugin() -> Iterator[None]:
    pm = plugin_manager()
    plugin = EchoPlugin()
    pm.register(plugin, name="echo-test-plugin")
    yield
    pm.unregister(plugin)


def test_builtins_register_through_the_hook() -> None:
    names = {name for name, _plugin in plugin_manager().list_name_plugin()}
    assert set(DEFAULT_PLUGINS) <= names
    classes = engine_classes()
    assert {"llamacpp", "openai", "anthropic"} <= set(classes)
    for cls in classes.values():
        assert isinstance(cls.capabilities, Capabilities)
    assert classes["llamacpp"].capabilities.json_schema
    assert classes["openai"].capabilities.embeddings


@pytest.mark.usefixtures("echo_plugin")
async def test_a_plugin_engine_is_served_like_a_builtin(tmp_path: Any) -> None:
    config = config_from(tmp_path, '[models.echo]\nengine = "echo"\nprice_input = 1.0\n')
    async with running_app(config) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x") as client:
            reply = await client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "abc"}]
            )
            assert reply.choices[0].message.content == "cba"
            stream = await client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "xyz"}], stream=True
            )
            assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "zyx"


async def test_unknown_engine_is_a_clear_error(tmp_path: Any) -> None:
    config = config_from(tmp_path, '[models.ghost]\nengine = "nonexistent"\n')
    async with running_app(config) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(
                    model="ghost", messages=[{"role": "user", "content": "hi"}]
                )
    assert "nonexistent" in info.value.message and "known:" in info.value.message
