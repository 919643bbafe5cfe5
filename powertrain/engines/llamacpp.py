"""``llamacpp``: GGUF models in-process through llama-cpp-python.

The weights load once per (file, context, threads, adapter) and are shared by
every alias that names them. Generation runs in a worker thread with a bounded
queue (see ``_local_worker``), so the event loop never blocks on the model.
Prompts are built with the GGUF's own chat template and counted with its own
tokenizer, so the context check is exact.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from powertrain.catalog import ModelConfig
from powertrain.engines._local_chat import LocalChatEngine, Sampling, SharedModels, stop_strings
from powertrain.engines._local_worker import Job, LocalWorker
from powertrain.engines.base import Capabilities
from powertrain.engines.bundled import smollm2_path
from powertrain.engines.gguf_chat import GGUFChat
from powertrain.errors import ConfigError, EngineUnavailable, InvalidRequest
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatCompletionRequest


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
        # llama.cpp pads its context up to a multiple of 256, but llama-cpp-python sizes
        # its token buffers to the number asked for: that number is the real window.
        self.n_ctx = min(int(self.llm.n_ctx()), n_ctx)

    def prompt_tokens(self, request: ChatCompletionRequest) -> list[int]:
        return self.chat.prompt_tokens([(m.role, m.text()) for m in request.messages])

    def close(self) -> None:
        self.worker.shutdown()
        self.llm.close()


def _load(key: tuple[Any, ...]) -> LoadedModel:
    path, n_ctx, n_threads, queue_size, lora = key
    return LoadedModel(
        path, n_ctx=n_ctx, n_threads=n_threads, queue_size=queue_size, lora_path=lora
    )


_models: SharedModels[tuple[Any, ...], LoadedModel] = SharedModels(_load)


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


class LlamaCppEngine(LocalChatEngine[tuple[Any, ...], LoadedModel]):
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
        key = (
            path.resolve(),
            n_ctx,
            int(options.get("n_threads") or os.cpu_count() or 1),
            int(options.get("queue_size", 16)),
            options.get("lora_path"),
        )
        self._share(_models, key)

    @property
    def context_window(self) -> int:
        return self.loaded.n_ctx if self._loaded else int(self._key[1])

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
                    stop=stop_strings(request, loaded.eos_text),
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
        sampling = Sampling.of(request)
        kwargs: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
        }
        if sampling.logit_bias:
            kwargs["logit_bias"] = sampling.logit_bias
        schema = request.json_schema
        if schema is not None:
            kwargs["grammar"] = _grammar(json.dumps(schema, sort_keys=True))
        return kwargs


@hookimpl
def register_engines(register: Any) -> None:
    register(LlamaCppEngine)
