"""``powertrain finetune --method auto``: every method it tried, with the numbers it measured.

Real methods on a small Banking77 set: the classifier, LoRA and prompt tuning
(one optimiser step each, so the test stays short — the numbers are honest, not
good), all scored by serving the test split through the gateway.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from powertrain.cli import main as cli
from powertrain.config import Config
from tests.classifier_helpers import needs_data
from tests.flywheel_helpers import intents_config, service

pytestmark = [needs_data, pytest.mark.model, pytest.mark.timeout(900)]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return intents_config(tmp_path)


def _auto(config: Config, *extra: str) -> dict:  # type: ignore[type-arg]
    assert config.path is not None
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--task",
            "intents",
            "--dataset",
            "intents-data",
            "--method",
            "auto",
            "--json",
            "--config",
            str(config.path),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_auto_lists_every_method_it_tried_and_recommends_one(config: Config) -> None:
    service(config)[0].database.dispose()
    report = _auto(config, "--set", "max_steps=1", "--set", "batch_size=4", "--score-limit", "3")
    methods = {m["method"]: m for m in report["methods"]}
    assert {"classifier", "lora", "prompt-tuning"} <= set(methods)
    for name in ("classifier", "lora", "prompt-tuning"):
        entry = methods[name]
        assert entry["status"] == "succeeded", entry
        assert entry["training_seconds"] > 0
        score = entry["score"]
        assert score["cases"] == 3 and 0 <= score["accuracy"] <= 1
        assert score["cost_per_1k_calls"] >= 0
    # A token-generating model reports tokens per second; the classifier answers in one step.
    assert methods["lora"]["score"]["tokens_per_second"] > 0
    assert methods["classifier"]["score"]["tokens_per_second"] is None
    assert methods["classifier"]["score"]["calls_per_second"] > 0
    assert [b["variant"] for b in report["base"]] == ["llm"]
    best = max(m["score"]["accuracy"] for m in methods.values())
    chosen = methods[report["recommended"]["method"]]
    assert chosen["score"]["accuracy"] >= best - 0.01
    assert report["eval_run"].startswith("ev_")


def test_a_spent_time_budget_skips_the_dearer_methods(config: Config, tmp_path: Path) -> None:
    service(config)[0].database.dispose()
    report = _auto(config, "--time-budget", "0.001", "--no-score")  # spent by the first
    statuses = {m["method"]: (m["status"], m["reason"]) for m in report["methods"]}
    assert statuses["classifier"][0] == "succeeded"  # the cheapest goes first
    assert statuses["lora"] == ("skipped", "the time budget was spent")
    assert statuses["prompt-tuning"] == ("skipped", "the time budget was spent")
    assert report["recommended"] is None and report["eval_run"] is None
