"""``classifier``: a label chosen by a linear head on frozen embeddings, as a chat model.

A model trained by ``powertrain finetune --method classifier`` is a directory:
``classifier.json`` (the manifest: labels in index order, the task's output
property, the encoder's catalog entry, what was measured) and
``classifier.npz`` (weights and the calibration temperature; numeric arrays
read without pickle, which would run code on load). The engine embeds the last
user message with that encoder, takes ``softmax(logits / T)`` and replies
``{"<property>": "<label>"}``: the text a task's output contract writes, so a
classifier serves a task's variant like any chat model, in one step.

Its calibrated probability is ``ChatResult.confidence`` (and the final
``ChatChunk``'s), which a cascade prefers over any other confidence signal,
and ``{"confidence": p, "top": [[label, p], …]}`` in the response's
``powertrain`` field. A ``response_format`` schema restricts the reply to the
labels it accepts, and is refused when it accepts none. ``temperature``,
``max_tokens``, ``stop`` and the earlier messages are ignored: the reply is
the most probable label, always.

The encoder runs where its engine runs it (sentence-transformers: its worker
thread). The head runs on the event loop: a (labels x 384) product and a
softmax, measured at 0.16 ms a call for 77 labels, reply included, which is
less than a hop to a thread would cost.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from powertrain.catalog import ModelConfig
from powertrain.engines.base import Capabilities, Engine
from powertrain.engines.registry import engine_classes
from powertrain.errors import ConfigError, EngineUnavailable, InvalidRequest
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, Usage

FORMAT = "powertrain-classifier"
FORMAT_VERSION = 1
MANIFEST_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.npz"
TOP_K = 3  # labels listed with their probability in the response's ``powertrain`` field
# The catalog fields an encoder is recreated from. Never a key, a key's variable or a
# base URL: a model directory someone hands over must not choose where prompts go.
ENCODER_FIELDS = ("alias", "engine", "model", "options", "context_window")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEMA_CACHE_SIZE = 64


class ClassifierManifest(BaseModel):
    """``classifier.json``: everything but the weights, as the trainer wrote it."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    task: str | None = None
    task_version: int | None = None
    variant: str | None = None
    property: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)  # in the weights' row order
    dimensions: int = Field(ge=1)
    encoder: dict[str, Any]  # a catalog entry: ENCODER_FIELDS only

    @field_validator("encoder")
    @classmethod
    def _no_upstream(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ENCODER_FIELDS))
        if unknown:
            raise ValueError(
                f"encoder field {unknown[0]!r} is not accepted (only {', '.join(ENCODER_FIELDS)})"
            )
        return value

    input: str = "the last user message"
    settings: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    def encoder_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.encoder)


def encoder_entry(encoder: ModelConfig) -> dict[str, Any]:
    """The manifest's record of an encoder: what recreates it, and no secret."""
    return encoder.model_dump(include=set(ENCODER_FIELDS))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)``; ``-inf`` logits get probability 0."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    result: np.ndarray = weights / weights.sum(axis=-1, keepdims=True)
    return result


@dataclass(frozen=True)
class ClassifierHead:
    """The trained weights: ``logits = vectors @ coef.T + intercept``."""

    coef: np.ndarray  # (labels, dimensions) float32
    intercept: np.ndarray  # (labels,) float32
    temperature: float

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors.astype(np.float32, copy=False) @ self.coef.T + self.intercept
        return softmax(logits.astype(np.float64), self.temperature)


def save_classifier(directory: Path, manifest: ClassifierManifest, head: ClassifierHead) -> None:
    """Write both files, each replaced whole (a reader never sees half of one)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / (WEIGHTS_FILE + ".tmp")
    with weights.open("wb") as handle:
        np.savez(
            handle,
            coef=head.coef.astype(np.float32),
            intercept=head.intercept.astype(np.float32),
            temperature=np.float64(head.temperature),
        )
    weights.replace(directory / WEIGHTS_FILE)
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    staged = directory / (MANIFEST_FILE + ".tmp")
    staged.write_text(text, encoding="utf-8")
    staged.replace(directory / MANIFEST_FILE)


def checked_directory(value: str, *, where: str) -> Path:
    """The model directory named by configuration, refused if it could mean another place."""
    if _CONTROL.search(value):
        raise ConfigError(f"{where} model path contains a NUL byte or control character")
    for part in value.replace("\\", "/").split("/"):
        if part == ".." or unicodedata.normalize("NFKC", part) == "..":
            raise ConfigError(f"{where} model path {value!r} contains '..'; give it without")
    return Path(value).expanduser()


def load_classifier(directory: Path, *, where: str) -> tuple[ClassifierManifest, ClassifierHead]:
    """Read and check a classifier directory; every problem is a ``ConfigError`` naming it."""
    hint = "train one with: powertrain finetune --method classifier"
    manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
    if not manifest_path.is_file():
        raise ConfigError(f"{where} {str(directory)!r} has no {MANIFEST_FILE}; {hint}")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where} {manifest_path} is not readable JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"{where} {manifest_path} is not a powertrain classifier manifest")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{where} {manifest_path} has format version {version!r}; this powertrain reads "
            f"version {FORMAT_VERSION} (upgrade powertrain, or retrain the classifier)"
        )
    try:
        manifest = ClassifierManifest.model_validate(raw)
        manifest.encoder_config()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where} {manifest_path}: {loc}: {first['msg']}") from None
    if len(set(manifest.labels)) != len(manifest.labels):
        raise ConfigError(f"{where} {manifest_path}: labels are not unique")
    if not weights_path.is_file():
        raise ConfigError(f"{where} {str(directory)!r} has no {WEIGHTS_FILE}; {hint}")
    head = _read_weights(weights_path, manifest, where)
    return manifest, head


def _read_weights(path: Path, manifest: ClassifierManifest, where: str) -> ClassifierHead:
    try:
        # Opened here, not by numpy: it leaks the handle of a file that is not a zip.
        with path.open("rb") as handle:
            arrays = np.load(handle, allow_pickle=False)
            if not isinstance(arrays, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with arrays:
                coef = np.asarray(arrays["coef"], dtype=np.float32)
                intercept = np.asarray(arrays["intercept"], dtype=np.float32)
                temperature = float(arrays["temperature"])
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{where} {path} is not a readable classifier ({exc})") from None
    labels, dims = len(manifest.labels), manifest.dimensions
    if coef.shape != (labels, dims) or intercept.shape != (labels,):
        raise ConfigError(
            f"{where} {path}: weights of shape {coef.shape} and {intercept.shape} do not match "
            f"{labels} labels of {dims} dimensions"
        )
    finite = np.isfinite(coef).all() and np.isfinite(intercept).all()
    if not finite or not (np.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"{where} {path}: weights or temperature are not finite and positive")
    return ClassifierHead(coef=coef, intercept=intercept, temperature=temperature)


def last_user_text(request: ChatCompletionRequest) -> str | None:
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return None


class ClassifierEngine(Engine):
    name: ClassVar[str] = "classifier"
    # Token counts are the encoder's: exact for a sentence-transformers encoder.
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, json_schema=True, exact_token_count=True
    )

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        self._where = f"[models.{model.alias}]"
        if model.options:
            raise ConfigError(
                f"{self._where} the classifier engine takes no options (its encoder's are in "
                f"its {MANIFEST_FILE})"
            )
        if not model.model:
            raise ConfigError(
                f'{self._where} needs model = "<directory>": a directory written by '
                "powertrain finetune --method classifier"
            )
        self.directory = checked_directory(model.model, where=self._where)
        self._manifest: ClassifierManifest | None = None
        self._head: ClassifierHead | None = None
        self._encoder: Engine | None = None
        self._accepted: dict[str, np.ndarray | None] = {}  # schema JSON → label indices

    async def start(self) -> None:
        if self._encoder is not None:
            return
        manifest, head = await asyncio.to_thread(load_classifier, self.directory, where=self._where)
        config = manifest.encoder_config()
        classes = engine_classes()
        if config.engine == self.name or config.engine not in classes:
            raise ConfigError(
                f"{self._where} the classifier's encoder uses engine {config.engine!r}, which "
                f"cannot embed here (known: {', '.join(sorted(classes))})"
            )
        encoder = classes[config.engine](config)
        await encoder.start()
        self._manifest, self._head, self._encoder = manifest, head, encoder

    async def aclose(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            await encoder.aclose()

    @property
    def manifest(self) -> ClassifierManifest:
        if self._manifest is None:
            raise EngineUnavailable(f"model {self.model.alias!r} is not loaded; call start()")
        return self._manifest

    @property
    def encoder(self) -> Engine:
        if self._encoder is None:
            raise EngineUnavailable(f"model {self.model.alias!r} is not loaded; call start()")
        return self._encoder

    @property
    def context_window(self) -> int | None:
        """The encoder's: a longer message would be truncated, so it is refused instead."""
        if self._encoder is not None and self._encoder.context_window:
            return self._encoder.context_window
        return self.model.context_window

    def count_tokens(self, request: ChatCompletionRequest) -> int:
        """Tokens of the one message the encoder reads (the last user message)."""
        return self.encoder.count_text(last_user_text(request) or "")

    def count_text(self, text: str) -> int:
        return self.encoder.count_text(text)

    def check_supported(self, request: ChatCompletionRequest) -> None:
        self._checked(request)

    def _checked(self, request: ChatCompletionRequest) -> np.ndarray | None:
        """Refuse what cannot be answered; the labels the request allows (None: all)."""
        super().check_supported(request)
        if last_user_text(request) is None:
            raise InvalidRequest(
                f"model {self.model.alias!r} classifies the last user message, and the "
                "request has none",
                param="messages",
            )
        return self._allowed(request.json_schema)

    def _allowed(self, schema: dict[str, Any] | None) -> np.ndarray | None:
        """Indices of the labels whose reply ``schema`` accepts (None: every label)."""
        if not schema:
            return None
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if key in self._accepted:
            return self._accepted[key]
        manifest = self.manifest
        try:
            validator = Draft202012Validator(schema)
            ok = [validator.is_valid({manifest.property: label}) for label in manifest.labels]
        except SchemaError as exc:
            raise InvalidRequest(
                f"response_format json_schema is not a valid JSON Schema: {exc.message}",
                param="response_format",
            ) from None
        if not any(ok):
            raise InvalidRequest(
                f"model {self.model.alias!r} is a classifier that replies "
                f'{{"{manifest.property}": <one of its {len(ok)} labels>}}, and the requested '
                f"schema accepts none of them; ask for an object whose property "
                f"{manifest.property!r} is one of its labels",
                param="response_format",
            )
        allowed = None if all(ok) else np.flatnonzero(ok)
        if len(self._accepted) >= _SCHEMA_CACHE_SIZE:
            self._accepted.clear()
        self._accepted[key] = allowed
        return allowed

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> ChatResult:
        allowed = self._checked(request)
        started = time.perf_counter()
        embedded = await self.encoder.embed([last_user_text(request) or ""], deadline=deadline)
        assert self._head is not None
        vector = np.asarray(embedded.vectors, dtype=np.float32)
        probabilities = self._head.probabilities(vector)[0]
        return self._answer(
            probabilities,
            allowed,
            prompt_tokens=embedded.usage.prompt_tokens,
            seconds=time.perf_counter() - started,
        )

    def _answer(
        self,
        probabilities: np.ndarray,
        allowed: np.ndarray | None,
        *,
        prompt_tokens: int,
        seconds: float,
    ) -> ChatResult:
        labels = self.manifest.labels
        indices = np.arange(len(labels)) if allowed is None else allowed
        chosen = probabilities[indices]
        chosen = chosen / chosen.sum()  # renormalised over the labels the schema allows
        order = np.argsort(-chosen, kind="stable")
        best = int(order[0])
        confidence = min(1.0, max(0.0, float(chosen[best])))
        top = [[labels[int(indices[i])], round(float(chosen[i]), 6)] for i in order[:TOP_K]]
        label = labels[int(indices[best])]
        return ChatResult(
            content=json.dumps({self.manifest.property: label}, ensure_ascii=False),
            usage=Usage(prompt_tokens=prompt_tokens),
            compute_seconds=seconds,
            confidence=confidence,
            extra={"confidence": round(confidence, 6), "top": top},
        )

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """The label in one chunk, then the final chunk with usage and confidence."""
        result = await self.chat(request, deadline=deadline)
        yield ChatChunk(delta=result.content)
        yield ChatChunk(
            finish_reason=result.finish_reason,
            usage=result.usage,
            compute_seconds=result.compute_seconds,
            confidence=result.confidence,
            extra=result.extra,
        )


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(ClassifierEngine)
