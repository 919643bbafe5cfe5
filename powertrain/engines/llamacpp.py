"""``llamacpp``: GGUF models in-process through llama-cpp-python.

The weights load once per (file, context, threads, adapter) and are shared by
every alias that names them. Generation runs in a worker thread with a bounded
queue (see ``_local_worker``), so the event loop never blocks on the model.
Prompts are built with the GGUF's own chat template and counted with its own
tokenizer, so the context check is exact.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

from powertrain.catalog import ModelConfig
from powertrain.engines._local_worker import Job, LocalWorker
from powertrain.engines.base import Capabilities, Engine
from powertrain.engines.bundled import smollm2_path
from powertrain.engines.gguf_chat import GGUFChat
from powertrain.errors import ConfigError, EngineUnavailable, InvalidRequest
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, Usage

# Sampling defaults for small local models when neither the request nor the
# catalog sets them; OpenAI's own defaults (temperature 1, no top-k / min-p)
# make a 135M model ramble.
LOCAL_SAMPLING_DEFAULTS: dict[str, float] = {"temperature": 0.8, "top_p": 0.95}


class LoadedModel:
    """One copy of a GGUF in memory, with its tokenizer, chat template and worker."""

    def __init__(
        self, path: Path, *, n_ctx: int, n_threads: int, queue_size: int, lora_path: str | None
    ):
        try:
            from llama_cpp import Llama
        except ImportError:  # pragma: no cover - a declared dependency
            raise EngineUnavailable(
                "the llamacpp engine needs llama-cpp-python: pip install llama-cpp-python"
            ) from None
        self.llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            lora_path=lora_path,
            verbose=False,
        )
        self.chat = GGUFChat(self.llm, path.name)
        self.eos_text = self.chat.eos_text
        self.worker = LocalWorker(path.stem, queue_size)
        self.users = 0
        # llama.cpp pads its context up to a multiple of 256, but llama-cpp-python sizes
        # its token buffers to the number asked for: that number is the real window.
        self.n_ctx = min(int(self.llm.n_ctx()), n_ctx)

    def prompt_tokens(self, request: ChatCompletionRequest) -> list[int]:
        return self.chat.prompt_tokens([(m.role, m.text()) for m in request.messages])

    def close(self) -> None:
        self.worker.shutdown()
        self.llm.close()


_loaded: dict[tuple[Any, ...], LoadedModel] = {}
_loaded_lock = threading.Lock()


def _acquire(key: tuple[Any, ...]) -> LoadedModel:
    with _loaded_lock:
        model = _loaded.get(key)
        if model is None:
            path, n_ctx, n_threads, queue_size, lora = key
            model = LoadedModel(
                path, n_ctx=n_ctx, n_threads=n_threads, queue_size=queue_size, lora_path=lora
            )
            _loaded[key] = model
        model.users += 1
        return model


def _release(key: tuple[Any, ...]) -> None:
    with _loaded_lock:
        model = _loaded.get(key)
        if model is None:
            return
        model.users -= 1
        if model.users <= 0:
            del _loaded[key]
            model.close()


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_json == "{}":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as exc:
        raise InvalidRequest(
            f"response_format json_schema cannot be turned into a grammar: {exc}",
            param="response_format",
        ) from None


class LlamaCppEngine(Engine):
    name: ClassVar[str] = "llamacpp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, json_schema=True, exact_token_count=True
    )

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        options = dict(model.options)
        unknown = set(options) - {"n_threads", "n_ctx", "queue_size", "lora_path"}
        if unknown:
            raise ConfigError(
                f"[models.{model.alias}.options]: unknown llamacpp option(s) "
                f"{', '.join(sorted(unknown))} (known: n_threads, n_ctx, queue_size, lora_path)"
            )
        path = Path(model.model).expanduser() if model.model else smollm2_path()
        if not path.is_file():
            raise ConfigError(f"[models.{model.alias}] GGUF file {str(path)!r} does not exist")
        n_ctx = int(options.get("n_ctx") or model.context_window or 4096)
        self._key = (
            path.resolve(),
            n_ctx,
            int(options.get("n_threads") or os.cpu_count() or 1),
            int(options.get("queue_size", 16)),
            options.get("lora_path"),
        )
        self._loaded: LoadedModel | None = None

    async def start(self) -> None:
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(_acquire, self._key)

    async def aclose(self) -> None:
        if self._loaded is not None:
            self._loaded = None
            await asyncio.to_thread(_release, self._key)

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise EngineUnavailable(f"model {self.model.alias!r} is not loaded; call start()")
        return self._loaded

    @property
    def context_window(self) -> int:
        return self.loaded.n_ctx if self._loaded else int(self._key[1])

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        return len(self.loaded.prompt_tokens(request))

    def _submit(self, request: ChatCompletionRequest) -> tuple[Job, int, dict[str, int]]:
        loaded = self.loaded
        tokens = loaded.prompt_tokens(request)
        budget = loaded.n_ctx - len(tokens)
        max_tokens = request.max_output_tokens or budget
        counter = {"completion": 0}
        kwargs = self._sampling(request)
        from llama_cpp import StoppingCriteriaList

        def stop_when_cancelled(_ids: Any, _logits: Any) -> bool:
            return job_ref[0].cancelled.is_set()

        def work(_job: Job) -> Iterator[Any]:
            finish = None
            try:
                stream = loaded.llm.create_completion(
                    prompt=tokens,
                    max_tokens=max(1, min(max_tokens, budget)),
                    stop=[*request.stop_list, loaded.eos_text],
                    stream=True,
                    stopping_criteria=StoppingCriteriaList([stop_when_cancelled]),
                    **kwargs,
                )
                for piece in stream:
                    choice = piece["choices"][0]  # type: ignore[index]
                    finish = choice["finish_reason"]  # type: ignore[index]
                    yield choice["text"], finish  # type: ignore[index]
            finally:
                # Tokens now in the context, less the prompt, are the ones generated;
                # the last sampled token is only evaluated when generation goes on.
                generated = loaded.llm.n_tokens - len(tokens)
                counter["completion"] = max(0, generated + (1 if finish == "length" else 0))

        job_ref: list[Job] = []
        job = loaded.worker.submit(work)
        job_ref.append(job)
        return job, len(tokens), counter

    def _sampling(self, request: ChatCompletionRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "temperature": request.temperature
            if request.temperature is not None
            else LOCAL_SAMPLING_DEFAULTS["temperature"],
            "top_p": request.top_p
            if request.top_p is not None
            else LOCAL_SAMPLING_DEFAULTS["top_p"],
            "seed": request.seed,
            "presence_penalty": request.presence_penalty or 0.0,
            "frequency_penalty": request.frequency_penalty or 0.0,
        }
        if request.logit_bias:
            try:
                kwargs["logit_bias"] = {int(k): v for k, v in request.logit_bias.items()}
            except ValueError:
                raise InvalidRequest(
                    "logit_bias keys must be token ids", param="logit_bias"
                ) from None
        schema = request.json_schema
        if schema is not None:
            kwargs["grammar"] = _grammar(json.dumps(schema, sort_keys=True))
        return kwargs

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        job, prompt_tokens, counter = self._submit(request)
        finish: str = "stop"
        try:
            async for text, finish_reason in job.items():
                if finish_reason:
                    finish = finish_reason
                if text:
                    yield ChatChunk(delta=text)
        finally:
            job.cancel()  # no-op when finished; stops generation if our caller left
        yield ChatChunk(
            finish_reason="length" if finish == "length" else "stop",
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=counter["completion"]),
            compute_seconds=job.compute_seconds,
        )

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        parts: list[str] = []
        last = ChatChunk()
        async for chunk in self.stream(request, deadline=deadline):
            parts.append(chunk.delta)
            last = chunk
        return ChatResult(
            content="".join(parts),
            finish_reason=last.finish_reason or "stop",
            usage=last.usage or Usage(),
            compute_seconds=last.compute_seconds,
        )


@hookimpl
def register_engines(register: Any) -> None:
    register(LlamaCppEngine)
