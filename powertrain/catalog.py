"""The model catalog: named models, each an engine plus its parameters and prices.

With no configuration at all the catalog holds ``smollm2``, the bundled local
chat model, and ``minilm``, the bundled local embedding model, so
``powertrain serve`` works on a fresh machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from powertrain.errors import ConfigError, ModelNotFound

_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+\-/@]{0,127}$")


class ModelConfig(BaseModel):
    """``[models.<alias>]`` in ``powertrain.toml``."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    engine: str = Field(description="Engine plugin name: llamacpp, openai, anthropic, …")
    model: str | None = Field(
        default=None,
        description="The engine's model id, a GGUF path for llamacpp, "
        "or a model directory for sentence-transformers.",
    )
    base_url: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    params: dict[str, Any] = Field(
        default_factory=dict, description="Default request parameters (temperature, …)."
    )
    price_input: float = Field(default=0.0, ge=0, description="USD per 1M input tokens.")
    price_output: float = Field(default=0.0, ge=0, description="USD per 1M output tokens.")
    context_window: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0, description="Per-attempt timeout (s).")
    max_retries: int = Field(default=2, ge=0, le=10)
    options: dict[str, Any] = Field(
        default_factory=dict, description="Engine-specific options (n_threads, queue_size, …)."
    )

    @field_validator("alias")
    @classmethod
    def _alias_is_a_name(cls, value: str) -> str:
        if not _ALIAS.match(value) or ".." in value:
            raise ValueError(f"model alias {value!r} must be letters, digits and ._:+-/@")
        return value

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input + completion_tokens * self.price_output) / 1e6


BUNDLED_MODEL = ModelConfig(
    alias="smollm2",
    engine="llamacpp",
    model=None,  # the llamacpp engine locates the bundled GGUF
    context_window=8192,
    params={"temperature": 0.2},
)

BUNDLED_EMBEDDING_MODEL = ModelConfig(
    alias="minilm",
    engine="sentence-transformers",
    model=None,  # the sentence-transformers engine locates the bundled all-MiniLM-L6-v2
    context_window=256,  # the model's max_seq_length; longer inputs are truncated
)


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``model`` field: a catalog alias, or ``task:<name>``."""

    kind: str  # "model" or "task"
    name: str

    @classmethod
    def parse(cls, value: str) -> ModelRef:
        """The one place that reads a ``model`` string a client sent."""
        if value.startswith("task:"):
            name = value[len("task:") :]
            if not name:
                raise ModelNotFound("model 'task:' names no task; use task:<name>")
            return cls("task", name)
        return cls("model", value)


class Catalog:
    """The configured models, looked up by alias."""

    def __init__(self, models: list[ModelConfig]):
        self._models: dict[str, ModelConfig] = {}
        for model in models:
            if model.alias in self._models:
                raise ConfigError(f"model alias {model.alias!r} is defined twice")
            self._models[model.alias] = model

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> Catalog:
        # A user's own [models.smollm2] or [models.minilm] replaces the bundled entry.
        bundled = (BUNDLED_MODEL, BUNDLED_EMBEDDING_MODEL)
        models = [m for m in bundled if m.alias not in table]
        for alias, entry in table.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"[models.{alias}] must be a table")
            try:
                models.append(ModelConfig(alias=alias, **entry))
            except ValueError as exc:
                raise ConfigError(f"[models.{alias}]: {_first_error(exc)}") from None
        return cls(models)

    def register(self, model: ModelConfig) -> bool:
        """Add a model at run time (a fine-tuned one); False if the alias is taken.

        The config file's entries always win: a registered model never replaces one.
        """
        if model.alias in self._models:
            return False
        self._models[model.alias] = model
        return True

    def get(self, alias: str) -> ModelConfig:
        try:
            return self._models[alias]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(
                f"model {alias!r} is not in the catalog (known: {known}); "
                "add it under [models] in powertrain.toml"
            ) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._models.values(), key=lambda m: m.alias))

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, alias: object) -> bool:
        return alias in self._models


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first['msg']}" if loc else str(first["msg"])
    return str(exc)
