"""What the flywheel job tests share: a small Banking77 task and dataset in a real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from powertrain.config import Config
from powertrain.datasets import Datasets, row_from_object
from powertrain.flywheel.jobs import FineTuning
from powertrain.gateway import Gateway
from tests.classifier_helpers import INTENTS, messages_by_intent, task_toml
from tests.conftest import config_from

PER_INTENT = 8  # six train, two test per intent with this split's seed (checked below)


def rows() -> list[Any]:
    texts = messages_by_intent()
    return [
        row_from_object({"vars": {"text": text}, "expected": {"intent": intent}}, "test")
        for intent in INTENTS
        for text in texts[intent][:PER_INTENT]
    ]


TASK = """
[tasks.intents]
system = "Sort the bank customer's message by intent."
user = "{{ text }}"
variables = { text = "string" }

[tasks.intents.output]
schema_file = "intents.schema.json"
instructions = false

[tasks.intents.variants.llm]
weight = 1
"""


def intents_config(tmp_path: Path) -> Config:
    """A config with the ``intents`` task (its schema file written beside it)."""
    task_toml(tmp_path)
    return config_from(tmp_path, TASK)


def service(config: Config) -> tuple[Gateway, FineTuning]:
    gateway = Gateway(config)
    gateway.tasks.registry.sync_config()
    datasets = Datasets(gateway.database, gateway.tasks.registry)
    datasets.create("", "intents-data", rows(), test_fraction=0.25, seed=3)
    return gateway, FineTuning.of(gateway)
