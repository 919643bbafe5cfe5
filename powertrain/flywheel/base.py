"""The fine-tuning seam: what every training method implements, and what it is given.

A method (LoRA, prompt tuning, a classifier on embeddings, or a third party's)
is a ``Trainer`` registered through the ``register_trainers`` plugin hook, the
same way engines are. The jobs layer (``flywheel/jobs.py``) does everything
around it — reading the dataset, rendering the task's prompts, recording the
job, registering the result in the catalog, scoring it — so a trainer only
turns examples into files plus the catalog entry that serves them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from powertrain.catalog import ModelConfig
from powertrain.errors import InvalidRequest

Split = Literal["train", "test"]


@dataclass(frozen=True)
class TrainingExample:
    """One row of a dataset, rendered exactly as the task serves it.

    ``messages`` is the prompt an engine receives for this row (system message,
    few-shot turns, the user's input); ``target`` is the reply the model should
    write, in the form the task's output contract writes it (JSON for a schema
    task). ``reference`` is the row's reference output as data, for scoring.
    """

    messages: list[dict[str, str]]
    target: str
    reference: Any
    split: Split
    row: int  # the dataset row's index, for error messages and resuming

    @property
    def user_text(self) -> str:
        """The last user message: what a classifier or an embedding sees."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""


@dataclass(frozen=True)
class LabelChoice:
    """A task whose output is one property chosen among known labels.

    Set when the output schema is an object with exactly one required property
    whose schema is a string ``enum`` (``{"intent": "<one of 77>"}``); the
    classifier method applies only then.
    """

    property: str
    labels: tuple[str, ...]

    @classmethod
    def of_schema(cls, schema: dict[str, Any] | None) -> LabelChoice | None:
        if not schema or schema.get("type") != "object":
            return None
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        if len(properties) != 1 or list(properties) != list(required):
            return None
        name, spec = next(iter(properties.items()))
        labels = spec.get("enum") if isinstance(spec, dict) else None
        if not labels or not all(isinstance(v, str) for v in labels):
            return None
        return cls(name, tuple(labels))

    def label_of(self, reference: Any) -> str | None:
        if isinstance(reference, dict):
            value = reference.get(self.property)
            return value if isinstance(value, str) and value in self.labels else None
        return None


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a trainer is given: the examples, the models, and its own settings."""

    job_id: str
    task: str
    task_version: int
    variant: str  # the variant whose prompt rendered the examples
    base: ModelConfig  # the chat model being tuned (a GGUF for the built-in methods)
    encoder: ModelConfig  # the embedding model (the classifier method's frozen encoder)
    train: list[TrainingExample]
    test: list[TrainingExample]
    output_schema: dict[str, Any] | None
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # validated by the trainer

    @property
    def label_choice(self) -> LabelChoice | None:
        return LabelChoice.of_schema(self.output_schema)


@dataclass(frozen=True)
class Progress:
    """One report from a running trainer."""

    step: int
    total: int
    phase: str = "train"  # "train", "eval", "embed", "export", …
    metrics: dict[str, float] = field(default_factory=dict)  # loss, eval_loss, lr, …


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class TrainedModel:
    """What a trainer produced: a catalog entry that serves it, and what it measured.

    ``model`` needs no alias of its own: the jobs layer names it and registers it.
    ``files`` live under the work directory the trainer was given.
    """

    engine: str
    model: str | None  # the engine's ``model`` field (a path, or None for the bundled model)
    options: dict[str, Any]
    context_window: int | None
    metrics: dict[str, Any]  # final train loss, eval loss on the test split, test score, …
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # name → [[step, value]]
    files: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # default request params


class TrainerSettings(BaseModel):
    """A trainer's own hyperparameters; unknown keys are refused with their names."""

    model_config = ConfigDict(extra="forbid")


class Trainer(ABC):
    """One fine-tuning method. Instances are cheap; ``train`` does the work, blocking."""

    name: ClassVar[str]
    description: ClassVar[str]
    settings_model: ClassVar[type[TrainerSettings]] = TrainerSettings
    # Whether the result serves chat completions with tokens (its speed is tokens/s)
    # or answers in one step (its speed is calls/s).
    generates_tokens: ClassVar[bool] = True

    def applicable(self, plan: TrainingPlan) -> str | None:
        """None when this method can train for ``plan``, else why not (one line)."""
        return None

    def settings(self, plan: TrainingPlan) -> Any:
        """``plan.settings`` checked against ``settings_model``."""
        try:
            return self.settings_model.model_validate(plan.settings)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise InvalidRequest(f"{self.name} setting {loc}: {first['msg']}") from None

    @abstractmethod
    def train(
        self, plan: TrainingPlan, workdir: Path, progress: ProgressFn, *, resume: bool = False
    ) -> TrainedModel:
        """Train on ``plan.train``, measure on ``plan.test``, write files under ``workdir``.

        With ``resume``, continue from the newest checkpoint under ``workdir`` (a method
        that keeps none starts over). The same plan and seed give the same result.
        """
