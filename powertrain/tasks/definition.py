"""What a task is, as typed data: the versioned prompt and the settings around it.

A task splits in two. ``PromptVersion`` is what a version number pins: the
templates, variables, few-shot examples, output schema and chain-of-thought
flag. It is immutable once stored and identified by the hash of its content.
``TaskSettings`` is how the task is served — variants and their traffic split,
repairs, context policy — and may change without making a new version.

``[tasks.<name>]`` in ``powertrain.toml`` and ``POST /api/tasks`` use the same
flat shape; ``TaskDefinition.parse`` splits it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from powertrain.catalog import Catalog
from powertrain.errors import InvalidRequest
from powertrain.schemas.chat import ChatCompletionRequest
from powertrain.tasks.output import OutputContract, check_schema, schema_errors
from powertrain.tasks.template import TEMPLATE_GLOBALS, check_template, reads
from powertrain.tasks.variables import VariableSpec, bind_variables

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

# Request fields a task or variant may set (the same ones a catalog model may default).
TASK_PARAMS = frozenset(
    {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty"}
)
DEFAULT_VARIANT = "default"


class Example(BaseModel):
    """One few-shot example: the variables it fills in, and the answer it shows."""

    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any]
    output: Any
    reasoning: str | None = None


class PromptVersion(BaseModel):
    """The immutable, versioned content of a task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str | None = None
    user: str
    variables: dict[str, VariableSpec] = Field(default_factory=dict)
    input: str | None = Field(
        default=None,
        description="The variable a chat completion's last user message fills.",
    )
    examples: list[Example] = Field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    output_instructions: bool = Field(
        default=True, description="Tell the model the output schema in the system prompt."
    )
    reasoning: bool = Field(default=False, description="Chain-of-thought before the answer.")

    def content_hash(self) -> str:
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def reads(self, name: str) -> bool:
        """Whether the system or user template reads ``name``."""
        return any(t is not None and reads(t, name) for t in (self.system, self.user))

    def contract(self) -> OutputContract:
        return OutputContract(self.output_schema, reasoning=self.reasoning)

    def checked(self, where: str) -> PromptVersion:
        """Refuse a version that could never render or never validate; fill in ``input``."""
        for name in self.variables:
            if not IDENTIFIER.match(name) or name in TEMPLATE_GLOBALS:
                raise InvalidRequest(
                    f"{where}: variable name {name!r} must be a letter then letters, digits or _ "
                    f"(and not {', '.join(sorted(TEMPLATE_GLOBALS))})"
                )
        declared = set(self.variables)
        check_template(self.user, where=f"{where}.user", declared=declared)
        if self.system is not None:
            check_template(self.system, where=f"{where}.system", declared=declared)
        if self.output_schema is not None:
            check_schema(self.output_schema, where=f"{where}.output")
        contract = self.contract()
        for i, example in enumerate(self.examples, 1):
            bind_variables(self.variables, example.variables, where=f"{where}.examples[{i}]")
            if self.output_schema is not None:
                problem = schema_errors(self.output_schema, example.output)
                if problem:
                    raise InvalidRequest(
                        f"{where}.examples[{i}]: the output does not match the output schema: "
                        f"{problem}"
                    )
            contract.example_reply(example.output, example.reasoning)
        return self.model_copy(update={"input": self._input_variable(where)})

    def _input_variable(self, where: str) -> str | None:
        if self.input is not None:
            spec = self.variables.get(self.input)
            if spec is None or spec.type != "string":
                raise InvalidRequest(
                    f"{where}.input: {self.input!r} must name a declared string variable"
                )
            return self.input
        strings = [n for n, v in self.variables.items() if v.type == "string" and v.required]
        return strings[0] if len(strings) == 1 else None


class VariantSpec(BaseModel):
    """One way to run a task: a prompt version, a model and parameters, with a weight."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Catalog model (default: the task's).")
    version: int | str = Field(default="production", description="Version number or label.")
    params: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(default=1.0, ge=0, description="Share of traffic; 0 = only if pinned.")
    examples: int | None = Field(
        default=None, ge=0, description="At most this many few-shot examples (newest kept)."
    )

    @field_validator("params")
    @classmethod
    def _known_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_params(value)

    @field_validator("version")
    @classmethod
    def _version_selector(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("version numbers start at 1")
        elif not LABEL_NAME.match(value):
            raise ValueError(f"{value!r} is neither a version number nor a label name")
        return value


class ContextPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_overflow: Literal["error", "drop_examples"] = Field(
        default="error",
        description="A prompt over the context window is an error, or drops the oldest "
        "few-shot examples until it fits.",
    )


class RetrievalSpec(BaseModel):
    """``[tasks.<name>.retrieval]``: ground the task in a collection's chunks."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(description="A collection of the admin key's.")
    k: int = Field(default=4, ge=1, le=50)
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"
    threshold: float | None = Field(
        default=0.25, ge=-1, le=1, description="Least cosine similarity of a chunk."
    )
    mmr: float | None = Field(default=None, ge=0, le=1)
    paths: list[str] | None = Field(default=None, description="Globs over document paths.")
    query: str | None = Field(
        default=None, description="The variable searched for (default: the input variable)."
    )
    no_match: str = Field(
        default="I don't know: nothing in the knowledge base answers that.",
        description="The answer of a text task when nothing relevant is found "
        "(no model call); a task with a schema is called with no sources instead.",
    )


class TaskSettings(BaseModel):
    """How a task is served; changing these makes no new version."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    model: str | None = Field(default=None, description="Default model of its variants.")
    params: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, VariantSpec] = Field(default_factory=dict)
    repairs: int = Field(default=2, ge=0, le=10, description="Retries after invalid output.")
    context: ContextPolicy = Field(default_factory=ContextPolicy)
    retrieval: RetrievalSpec | None = None
    labels: list[str] = Field(
        default_factory=lambda: ["production"],
        description="Labels the version from the config file gets when it changes.",
    )
    guardrails: list[str] = Field(
        default_factory=list,
        description="Guardrails besides the global ones; '!name' opts out of a global one.",
    )

    @field_validator("params")
    @classmethod
    def _known_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_params(value)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: list[str]) -> list[str]:
        for label in value:
            if not LABEL_NAME.match(label):
                raise ValueError(f"label {label!r} must be lowercase letters, digits, _ . -")
        return value

    def effective_variants(self) -> dict[str, VariantSpec]:
        return self.variants or {DEFAULT_VARIANT: VariantSpec()}


def check_models(
    definition_settings: TaskSettings,
    catalog: Catalog,
    where: str,
    routes: Collection[str] = (),
) -> None:
    """Every variant must name a model the catalog has, or a route."""
    for name, variant in definition_settings.effective_variants().items():
        alias = variant.model or definition_settings.model
        if alias is not None and alias not in catalog and alias not in routes:
            known = [m.alias for m in catalog] + sorted(routes)
            raise InvalidRequest(
                f"{where}.variants.{name}: model {alias!r} is neither in the catalog nor a "
                f"route (known: {', '.join(known)})"
            )


def _check_params(value: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(value) - TASK_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} (allowed: {', '.join(sorted(TASK_PARAMS))})"
        )
    # Values are checked the way a chat request checks them (temperature 0 to 2, and so on).
    probe = {"model": "probe", "messages": [{"role": "user", "content": ""}], **value}
    try:
        ChatCompletionRequest.model_validate(probe)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None
    return value


_VERSION_KEYS = frozenset(
    {"system", "user", "variables", "input", "examples", "output", "reasoning"}
)


class TaskDefinition(BaseModel):
    """A whole task as defined in the config file or posted to the API."""

    name: str
    version: PromptVersion
    settings: TaskSettings

    @classmethod
    def parse(
        cls, name: str, table: dict[str, Any], *, base_dir: Path | None, where: str
    ) -> TaskDefinition:
        """Split and check a flat ``[tasks.<name>]`` table.

        ``base_dir`` enables ``output.schema_file`` and ``output.model`` (an import
        path); only the config file may use them, never a request.
        """
        if not TASK_NAME.match(name) or ".." in name:
            raise InvalidRequest(
                f"{where}: task name {name!r} must be letters, digits, _ . - (at most 128)"
            )
        version_part = {k: v for k, v in table.items() if k in _VERSION_KEYS}
        settings_part = {k: v for k, v in table.items() if k not in _VERSION_KEYS}
        version = parse_version(version_part, base_dir=base_dir, where=where)
        settings = parse_settings(settings_part, where=where)
        return cls(name=name, version=version, settings=settings)


def parse_settings(table: dict[str, Any], *, where: str) -> TaskSettings:
    """``TaskSettings`` from the non-versioned keys, with its variants checked."""
    settings: TaskSettings = _validated(TaskSettings, table, where)
    for variant in settings.variants:
        if not LABEL_NAME.match(variant):
            raise InvalidRequest(
                f"{where}.variants: variant name {variant!r} must be lowercase letters, "
                "digits, _ . -"
            )
    if settings.variants and not any(v.weight > 0 for v in settings.variants.values()):
        raise InvalidRequest(f"{where}.variants: at least one variant needs a weight above 0")
    return settings


def parse_version(table: dict[str, Any], *, base_dir: Path | None, where: str) -> PromptVersion:
    """A ``PromptVersion`` from the flat keys (``output`` resolved to a schema)."""
    unknown = sorted(set(table) - _VERSION_KEYS)
    if unknown:
        raise InvalidRequest(f"{where}: unknown key {unknown[0]!r}")
    values = dict(table)
    output = values.pop("output", None)
    if output is not None:
        if not isinstance(output, dict):
            raise InvalidRequest(f"{where}.output must be a table (schema, schema_file or model)")
        values["output_schema"], instructions = _resolve_output(output, base_dir, f"{where}.output")
        values["output_instructions"] = instructions
    variables = values.get("variables")
    if isinstance(variables, dict):
        # ``text = "string"`` is shorthand for ``text = { type = "string" }``.
        values["variables"] = {
            k: {"type": v} if isinstance(v, str) else v for k, v in variables.items()
        }
    version: PromptVersion = _validated(PromptVersion, values, where)
    return version.checked(where)


def _resolve_output(
    output: dict[str, Any], base_dir: Path | None, where: str
) -> tuple[dict[str, Any], bool]:
    known = {"schema", "schema_file", "model", "instructions"}
    unknown = sorted(set(output) - known)
    if unknown:
        raise InvalidRequest(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    sources = [k for k in ("schema", "schema_file", "model") if k in output]
    if len(sources) != 1:
        raise InvalidRequest(f"{where}: give exactly one of schema, schema_file or model")
    instructions = bool(output.get("instructions", True))
    source = sources[0]
    if source == "schema":
        schema = output["schema"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{where}.schema: not valid JSON ({exc})") from None
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where}.schema must be a JSON Schema object")
        return schema, instructions
    if base_dir is None:
        raise InvalidRequest(
            f"{where}: {source} is only allowed in powertrain.toml; send the schema itself"
        )
    if source == "schema_file":
        path = (base_dir / str(output["schema_file"])).resolve()
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidRequest(
                f"{where}.schema_file: cannot read {str(path)!r}: {exc.strerror}"
            ) from None
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"{where}.schema_file: {str(path)!r} is not JSON ({exc})"
            ) from None
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where}.schema_file: {str(path)!r} must hold a JSON object")
        return schema, instructions
    return _pydantic_schema(str(output["model"]), base_dir, f"{where}.model"), instructions


def _pydantic_schema(path: str, base_dir: Path, where: str) -> dict[str, Any]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise InvalidRequest(f"{where}: {path!r} must look like package.module:ClassName")
    # Modules next to powertrain.toml import the way they would from a script there.
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidRequest(f"{where}: cannot import {module_name!r}: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    model = getattr(module, attr, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise InvalidRequest(f"{where}: {path!r} is not a pydantic model class")
    return model.model_json_schema()


def _validated(model: type[Any], values: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{where}{'.' + loc if loc else ''}: {first['msg']}") from None
