"""What the classifier tests share: a small Banking77 task, its rendered examples, a trained model.

Twelve intents (and a thirteenth the schema lists but no train row has), eight
train messages each and three test messages each, taken in ``train.csv`` order:
small enough to embed in seconds, large enough to classify far above chance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from powertrain.catalog import BUNDLED_EMBEDDING_MODEL, BUNDLED_MODEL
from powertrain.flywheel.base import Progress, Split, TrainedModel, TrainingExample, TrainingPlan
from powertrain.flywheel.classifier import ClassifierTrainer
from powertrain.tasks.definition import PromptVersion, parse_version
from powertrain.tasks.prompt import build_messages
from tests.conftest import REPO

DATA = REPO.parent / "shared" / "data" / "banking77" / "train.csv"
needs_data = pytest.mark.skipif(
    not DATA.is_file(), reason=f"the Banking77 data is not in {DATA.parent}"
)

INTENTS = [
    "card_arrival",
    "exchange_rate",
    "lost_or_stolen_card",
    "cash_withdrawal_charge",
    "top_up_failed",
    "passcode_forgotten",
    "terminate_account",
    "age_limit",
    "apple_pay_or_google_pay",
    "country_support",
    "change_pin",
    "request_refund",
]
UNSEEN = "visa_or_mastercard"  # in the schema and the test split, never in train
TRAIN_PER_INTENT, TEST_PER_INTENT = 8, 3
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"intent": {"type": "string", "enum": [*INTENTS, UNSEEN]}},
    "required": ["intent"],
    "additionalProperties": False,
}
SYSTEM = "Sort the bank customer's message by intent."
# One torch thread: on a 2-core machine busy with other work, two are several times slower.
ENCODER = BUNDLED_EMBEDDING_MODEL.model_copy(update={"options": {"n_threads": 1}})

TASK_TOML = f"""
[tasks.intents]
system = "{SYSTEM}"
user = "{{{{ text }}}}"
variables = {{ text = "string" }}
model = "smollm2"

[tasks.intents.output]
schema_file = "intents.schema.json"
instructions = false

[tasks.intents.variants.llm]
weight = 0

[tasks.intents.variants.clf]
model = "clf"
weight = 1
"""


def task_toml(directory: Path) -> str:
    """The task's config (its schema file written next to ``powertrain.toml``)."""
    (directory / "intents.schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    return TASK_TOML


def version() -> PromptVersion:
    return parse_version(
        {
            "system": SYSTEM,
            "user": "{{ text }}",
            "variables": {"text": "string"},
            "output": {"schema": SCHEMA, "instructions": False},
        },
        base_dir=None,
        where="task 'intents'",
    )


def messages_by_intent() -> dict[str, list[str]]:
    wanted = {*INTENTS, UNSEEN}
    found: dict[str, list[str]] = {intent: [] for intent in wanted}
    with DATA.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in wanted:
                found[row["category"]].append(row["text"])
    return found


def example(
    prompt: PromptVersion, text: str, reference: Any, split: Split, row: int
) -> TrainingExample:
    messages = build_messages(prompt, {"text": text}, [], where="task 'intents'")
    return TrainingExample(messages, json.dumps(reference), reference, split, row)


def plan(
    *, seed: int = 7, settings: dict[str, Any] | None = None, extra_rows: bool = False
) -> TrainingPlan:
    prompt = version()
    texts = messages_by_intent()
    train: list[TrainingExample] = []
    test: list[TrainingExample] = []
    for intent in INTENTS:
        rows = texts[intent]
        for text in rows[:TRAIN_PER_INTENT]:
            train.append(example(prompt, text, {"intent": intent}, "train", len(train)))
        for text in rows[TRAIN_PER_INTENT : TRAIN_PER_INTENT + TEST_PER_INTENT]:
            test.append(example(prompt, text, {"intent": intent}, "test", len(test)))
    test.append(example(prompt, texts[UNSEEN][0], {"intent": UNSEEN}, "test", len(test)))
    if extra_rows:  # rows no label can be read from
        train.append(example(prompt, "hello", {"intent": "not_a_label"}, "train", len(train)))
        train.append(example(prompt, "hi", None, "train", len(train)))
    return TrainingPlan(
        job_id="job-test",
        task="intents",
        task_version=1,
        variant="clf",
        base=BUNDLED_MODEL,
        encoder=ENCODER,
        train=train,
        test=test,
        output_schema=SCHEMA,
        seed=seed,
        settings=settings or {},
    )


def train(workdir: Path, *, progress: list[Progress] | None = None, **kwargs: Any) -> TrainedModel:
    reports = progress if progress is not None else []
    return ClassifierTrainer().train(plan(**kwargs), workdir, reports.append)


_trained: dict[str, Path] = {}


def trained_model(factory: pytest.TempPathFactory) -> Path:
    """One classifier trained on the default plan, shared by every test of the session."""
    if "default" not in _trained:
        result = train(factory.mktemp("classifier"))
        assert result.model is not None
        _trained["default"] = Path(result.model)
    return _trained["default"]


def held_out_messages() -> list[tuple[str, str]]:
    """(text, intent) of the test split, the unseen intent's row excluded."""
    texts = messages_by_intent()
    return [
        (text, intent)
        for intent in INTENTS
        for text in texts[intent][TRAIN_PER_INTENT : TRAIN_PER_INTENT + TEST_PER_INTENT]
    ]
