"""``sentence-transformers``: local embedding models, the bundled all-MiniLM-L6-v2 by default.

The model loads once per (directory, threads, queue size) and is shared by
every alias that names it. Encoding runs on one worker thread with a bounded
queue (see ``_local_worker``), in batches, so the event loop never blocks and
a caller that leaves or runs out of time stops the work at the next batch.
Loading is from local files only: nothing is fetched from a hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from powertrain.catalog import ModelConfig
from powertrain.engines._local_worker import Job, LocalWorker
from powertrain.engines.base import Capabilities, Engine, prompt_text
from powertrain.engines.bundled import minilm_path
from powertrain.errors import ConfigError, EngineUnavailable, InvalidRequest, UpstreamTimeout
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, EmbeddingResult, Usage

BUNDLED_NAME = "all-MiniLM-L6-v2"
_INSTALL_HINT = (
    "the sentence-transformers engine needs the sentence-transformers package: "
    "pip install torch==2.13.0 sentence-transformers (pin torch to a CPU build first, "
    "or pip pulls a multi-GB CUDA one)"
)


class EmbedderOptions(BaseModel):
    """``[models.<alias>.options]`` of a sentence-transformers model."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=32, ge=1, le=4096)
    normalize: bool = True
    max_seq_length: int | None = Field(default=None, ge=1)
    n_threads: int | None = Field(default=None, ge=1)
    queue_size: int = Field(default=16, ge=0)


class LoadedEmbedder:
    """One copy of a sentence-transformers model in memory, with its tokenizer and worker."""

    def __init__(self, path: Path, *, label: str, n_threads: int, queue_size: int):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EngineUnavailable(_INSTALL_HINT) from None
        with _no_progress_bars():
            # A local directory with local_files_only never reaches a hub (checked by a
            # test that refuses sockets while the model loads).
            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        # Normalisation is a per-alias choice (option ``normalize``), so a pipeline's own
        # trailing Normalize layer is dropped and applied per call instead.
        if len(model) and type(model[len(model) - 1]).__name__ == "Normalize":
            del model[len(model) - 1]
        self.model: Any = model
        self.n_threads = n_threads
        self.max_seq_length: int | None = model.max_seq_length  # the model's own default
        self.max_positions = _max_positions(model)
        # The worker thread tokenizes with ``model.tokenizer``; a fast tokenizer used from
        # two threads at once can fail ("Already borrowed"), so counting on other threads
        # uses its own copy under a lock.
        self._counter = copy.deepcopy(model.tokenizer)
        self._counter_lock = threading.Lock()
        self.worker = LocalWorker(label, queue_size)
        self.users = 0

    def count(self, text: str) -> int:
        """Tokens ``text`` is, special tokens included, before any truncation."""
        with self._counter_lock:
            return len(self._counter(text, truncation=False, verbose=False)["input_ids"])

    def encode(
        self, texts: list[str], *, batch_size: int, normalize: bool, max_seq_length: int
    ) -> Iterator[tuple[list[int], Any, int]]:
        """Runs in the worker thread: (input positions, vectors, tokens) per batch.

        Longest texts first, as sentence-transformers does, so each batch pads little;
        the caller puts the vectors back in input order.
        """
        import torch

        if torch.get_num_threads() != self.n_threads:
            torch.set_num_threads(self.n_threads)  # per thread: it binds this worker only
        # Safe to set per job: only this thread encodes with the model.
        self.model.max_seq_length = max_seq_length
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            batch = [texts[i] for i in positions]
            ids = self.model.tokenizer(batch, truncation=True, max_length=max_seq_length)
            tokens = sum(len(row) for row in ids["input_ids"])
            vectors = self.model.encode(
                batch,
                batch_size=len(batch),
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            yield positions, vectors, tokens

    def close(self) -> None:
        self.worker.shutdown()  # waits for the thread: nothing encodes while we free
        self.model = None


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    # transformers draws a "Loading weights" bar on stderr; a server's log is no terminal.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _max_positions(model: Any) -> int | None:
    """The longest sequence the transformer has position embeddings for, when it says."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


_loaded: dict[tuple[Path, int, int], LoadedEmbedder] = {}
_loaded_lock = threading.Lock()


def _acquire(key: tuple[Path, int, int], label: str) -> LoadedEmbedder:
    with _loaded_lock:
        loaded = _loaded.get(key)
        if loaded is None:
            path, n_threads, queue_size = key
            loaded = LoadedEmbedder(path, label=label, n_threads=n_threads, queue_size=queue_size)
            _loaded[key] = loaded
        loaded.users += 1
        return loaded


def _release(key: tuple[Path, int, int]) -> None:
    with _loaded_lock:
        loaded = _loaded.get(key)
        if loaded is None:
            return
        loaded.users -= 1
        if loaded.users <= 0:
            del _loaded[key]
            loaded.close()


class SentenceTransformersEngine(Engine):
    name: ClassVar[str] = "sentence-transformers"
    capabilities: ClassVar[Capabilities] = Capabilities(
        chat=False, streaming=False, embeddings=True, exact_token_count=True
    )

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        try:
            self.options = EmbedderOptions.model_validate(model.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"[models.{model.alias}.options] {where}: {first['msg']} (known options: "
                f"{', '.join(EmbedderOptions.model_fields)})"
            ) from None
        path = Path(model.model).expanduser() if model.model else minilm_path()
        if not (path / "modules.json").is_file():
            raise ConfigError(
                f"[models.{model.alias}] {str(path)!r} is not a sentence-transformers model "
                "directory (no modules.json); models load from local files only"
            )
        threads = self.options.n_threads or os.cpu_count() or 1
        self._key = (path.resolve(), threads, self.options.queue_size)
        # How errors (a full queue) name the model; the bundled directory is just "model".
        self._label = path.name if model.model else BUNDLED_NAME
        self._loaded: LoadedEmbedder | None = None
        self._max_seq_length = self.options.max_seq_length

    async def start(self) -> None:
        if self._loaded is not None:
            return
        loaded = await asyncio.to_thread(_acquire, self._key, self._label)
        try:
            self._max_seq_length = self._checked_max_seq_length(loaded)
        except ConfigError:
            await asyncio.to_thread(_release, self._key)
            raise
        self._loaded = loaded

    def _checked_max_seq_length(self, loaded: LoadedEmbedder) -> int:
        where = f"[models.{self.model.alias}.options]"
        wanted = self.options.max_seq_length or loaded.max_seq_length
        if wanted is None:
            raise ConfigError(f"{where} the model declares no max_seq_length; set one")
        limit = loaded.max_positions
        if limit is not None and wanted > limit:
            raise ConfigError(
                f"{where} max_seq_length {wanted} is over the {limit} positions the model has"
            )
        return wanted

    async def aclose(self) -> None:
        if self._loaded is not None:
            self._loaded = None
            await asyncio.to_thread(_release, self._key)

    @property
    def loaded(self) -> LoadedEmbedder:
        if self._loaded is None:
            raise EngineUnavailable(f"model {self.model.alias!r} is not loaded; call start()")
        return self._loaded

    @property
    def max_seq_length(self) -> int:
        """Tokens an input is truncated to (special tokens included)."""
        if self._loaded is None or self._max_seq_length is None:
            raise EngineUnavailable(f"model {self.model.alias!r} is not loaded; call start()")
        return self._max_seq_length

    @property
    def context_window(self) -> int | None:
        return self._max_seq_length or self.model.context_window

    async def embed(
        self, inputs: list[str], *, deadline: float | None = None, dimensions: int | None = None
    ) -> EmbeddingResult:
        """One vector per input, in input order; usage counts the tokens the model read."""
        loaded = self.loaded
        native = loaded.model.get_embedding_dimension()
        if dimensions is not None and dimensions != native:
            # Cutting a vector short is only meaningful for models trained for it
            # (Matryoshka); these are not, so say so instead of returning worse vectors.
            raise InvalidRequest(
                f"model {self.model.alias!r} returns {native}-dimensional embeddings and "
                f"cannot shorten them to {dimensions}; leave out 'dimensions'",
                param="dimensions",
            )
        if not inputs:
            return EmbeddingResult(vectors=[])
        work = _encode_job(loaded, inputs, self.options, self.max_seq_length, deadline)
        job = loaded.worker.submit(work)
        vectors: list[list[float] | None] = [None] * len(inputs)
        filled = tokens = 0
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
                async for positions, batch, batch_tokens in job.items():
                    for position, row in zip(positions, batch.tolist(), strict=True):
                        vectors[position] = row
                    filled += len(positions)
                    tokens += batch_tokens
        except TimeoutError:
            self._timed_out(len(inputs))
        finally:
            job.cancel()  # no-op when finished; stops at the next batch if the caller left
        if filled != len(inputs):  # the worker stopped early: out of time, or closing
            if deadline is not None and time.monotonic() >= deadline:
                self._timed_out(len(inputs))
            raise EngineUnavailable(f"model {self.model.alias!r} was closed while embedding")
        return EmbeddingResult(
            vectors=[row for row in vectors if row is not None],
            usage=Usage(prompt_tokens=tokens),
        )

    def _timed_out(self, count: int) -> NoReturn:
        raise UpstreamTimeout(
            f"model {self.model.alias!r} did not embed {count} inputs in time; send fewer "
            "inputs per request or raise request_timeout"
        )

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        return self.loaded.count(prompt_text(request))

    def count_text(self, text: str) -> int:
        """Tokens ``text`` is before truncation (special tokens included), so a chunker
        can keep chunks within ``max_seq_length``."""
        return self.loaded.count(text)

    def check_supported(self, request: ChatCompletionRequest) -> None:
        self._refuse_chat()

    def _refuse_chat(self) -> NoReturn:
        raise InvalidRequest(
            f"model {self.model.alias!r} only embeds; use it with /v1/embeddings",
            param="model",
        )

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        self._refuse_chat()

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        self._refuse_chat()
        yield ChatChunk()  # pragma: no cover - makes this an async generator


def _encode_job(
    loaded: LoadedEmbedder,
    inputs: list[str],
    options: EmbedderOptions,
    max_seq_length: int,
    deadline: float | None,
) -> Callable[[Job], Iterator[Any]]:
    def work(_job: Job) -> Iterator[Any]:
        for item in loaded.encode(
            inputs,
            batch_size=options.batch_size,
            normalize=options.normalize,
            max_seq_length=max_seq_length,
        ):
            yield item
            # The awaiting side times out too; this stops the thread without waiting for it.
            if deadline is not None and time.monotonic() > deadline:
                return

    return work


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(SentenceTransformersEngine)
