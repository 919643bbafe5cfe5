"""The classifier fine-tuning method: a calibrated head on MiniLM embeddings of Banking77 messages.

Real embeddings (the bundled all-MiniLM-L6-v2), real scikit-learn; a small
labelled set (see ``classifier_helpers``) so a training run takes seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powertrain.engines.classifier import FORMAT, FORMAT_VERSION, load_classifier
from powertrain.errors import InvalidRequest
from powertrain.flywheel.base import Progress
from powertrain.flywheel.classifier import ClassifierTrainer, expected_calibration_error
from powertrain.flywheel.registry import trainer
from tests.classifier_helpers import INTENTS, UNSEEN, needs_data, plan, train

pytestmark = needs_data


def test_the_method_is_registered_and_applies_only_to_a_label_choice() -> None:
    method = trainer("classifier")
    assert isinstance(method, ClassifierTrainer)
    assert method.generates_tokens is False
    assert method.applicable(plan()) is None
    free_text = plan()
    for schema in (None, {"type": "object", "properties": {"summary": {"type": "string"}}}):
        other = type(free_text)(**{**free_text.__dict__, "output_schema": schema})
        reason = method.applicable(other)
        assert reason is not None and "enum" in reason
        with pytest.raises(InvalidRequest, match="cannot train task 'intents'"):
            method.train(other, Path("unused"), lambda _p: None)


def test_unknown_or_invalid_settings_are_refused_by_name() -> None:
    method = ClassifierTrainer()
    with pytest.raises(InvalidRequest, match="classifier setting learning_rate"):
        method.settings(plan(settings={"learning_rate": 0.1}))
    with pytest.raises(InvalidRequest, match="classifier setting C"):
        method.settings(plan(settings={"C": -1}))
    with pytest.raises(InvalidRequest, match="classifier setting calibration"):
        method.settings(plan(settings={"calibration": "isotonic"}))


async def test_it_trains_scores_writes_and_is_deterministic(tmp_path: Path) -> None:
    progress: list[Progress] = []
    # train() blocks: once on this thread, whose event loop is running, and once on a
    # worker thread that has no loop (as the jobs layer runs it). Same seed, same weights.
    first = train(tmp_path / "a", progress=progress, extra_rows=True)
    second = await asyncio.to_thread(train, tmp_path / "b", extra_rows=True)

    assert first.engine == "classifier" and first.options == {}
    assert first.context_window == 256  # the encoder's
    directory = tmp_path / "a" / "classifier"
    assert first.model == str(directory)
    assert sorted(p.name for p in first.files) == ["classifier.json", "classifier.npz"]
    assert all(p.is_file() for p in first.files)

    m = first.metrics
    chance = 1 / len(INTENTS)
    assert m["test_accuracy"] > 5 * chance, m
    assert 0 < m["test_macro_f1"] <= 1
    assert m["train_examples"] == 12 * 8 and m["test_examples"] == 12 * 3 + 1
    assert m["skipped_rows"] == 2  # an unknown label and no reference at all
    assert m["labels"] == 12
    assert m["labels_absent_from_train"] == [UNSEEN]
    assert m["test_rows_with_unseen_label"] == 1
    assert m["C"] in (1.0, 4.0, 16.0, 64.0) and m["cv_folds"] == 5
    assert 0 < m["cv_accuracy"] <= 1
    assert m["temperature"] > 0 and m["temperature"] != 1.0
    for key in ("test_ece", "test_ece_uncalibrated"):
        assert 0 <= m[key] <= 1
    assert m["test_log_loss"] > 0 and m["eval_loss"] == m["test_log_loss"]
    assert m["embed_seconds"] >= 0 and m["fit_seconds"] >= 0

    manifest = json.loads((directory / "classifier.json").read_text())
    assert manifest["format"] == FORMAT and manifest["format_version"] == FORMAT_VERSION
    assert manifest["task"] == "intents" and manifest["property"] == "intent"
    assert manifest["labels"] == INTENTS  # in the schema's order: the weights' rows
    assert manifest["encoder"] == {
        "alias": "minilm",
        "engine": "sentence-transformers",
        "model": None,
        "options": {"n_threads": 1},
        "context_window": 256,
    }
    assert "last user message" in manifest["input"]
    assert manifest["metrics"]["test_accuracy"] == m["test_accuracy"]
    loaded, head = load_classifier(directory, where="test")
    assert head.coef.shape == (12, 384) and head.coef.dtype == np.float32
    assert head.temperature == pytest.approx(m["temperature"])
    with np.load(directory / "classifier.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["coef", "intercept", "temperature"]

    other, _ = load_classifier(tmp_path / "b" / "classifier", where="test")
    _, head_b = load_classifier(tmp_path / "b" / "classifier", where="test")
    assert np.array_equal(head.coef, head_b.coef)
    assert np.array_equal(head.intercept, head_b.intercept)
    assert head.temperature == head_b.temperature
    assert second.metrics["test_accuracy"] == m["test_accuracy"]
    assert other.labels == loaded.labels

    phases = [p.phase for p in progress]
    embeds = [p for p in progress if p.phase == "embed"]
    assert [p.step for p in embeds] == list(range(1, embeds[0].total + 1))
    assert embeds[0].total == 3  # 96 train and 37 test texts, 64 a batch (unlabelled: skipped)
    fits = [p for p in progress if p.phase == "fit"]
    assert fits[-1].step == fits[-1].total == 4 * 5 + 1
    assert phases.index("fit") > phases.index("embed") and phases[-1] == "eval"
    assert progress[-1].metrics["test_accuracy"] == m["test_accuracy"]


def test_settings_fix_c_and_turn_calibration_off(tmp_path: Path) -> None:
    result = train(
        tmp_path,
        settings={"C": 2.5, "calibration": "none", "class_weight": "balanced", "batch_size": 200},
    )
    m = result.metrics
    assert m["C"] == 2.5 and m["temperature"] == 1.0
    assert m["test_ece"] == m["test_ece_uncalibrated"]
    manifest = json.loads(Path(result.files[1]).read_text())
    assert manifest["settings"]["class_weight"] == "balanced"


def test_two_labels_make_a_two_row_head(tmp_path: Path) -> None:
    # scikit-learn fits one score for two classes; the head stores it as two symmetric rows.
    full = plan()
    pair = INTENTS[:2]
    schema = {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": pair}},
        "required": ["intent"],
    }

    def keep(examples: list[Any]) -> list[Any]:
        return [e for e in examples if e.reference["intent"] in pair]

    binary = type(full)(
        **{
            **full.__dict__,
            "train": keep(full.train),
            "test": keep(full.test),
            "output_schema": schema,
        }
    )
    result = ClassifierTrainer().train(binary, tmp_path, lambda _p: None)
    manifest, head = load_classifier(tmp_path / "classifier", where="test")
    assert manifest.labels == pair and head.coef.shape == (2, 384)
    assert np.allclose(head.coef[0], -head.coef[1])
    assert result.metrics["test_accuracy"] > 0.8


def test_a_train_split_with_one_label_is_refused(tmp_path: Path) -> None:
    one = plan()
    only = [e for e in one.train if e.reference == {"intent": INTENTS[0]}]
    single = type(one)(**{**one.__dict__, "train": only})
    with pytest.raises(InvalidRequest, match="at least two labels"):
        ClassifierTrainer().train(single, tmp_path, lambda _p: None)


def test_expected_calibration_error() -> None:
    # Two rows at 0.9 confidence, one right: |0.5 - 0.9| over all of them.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]])
    correct = np.array([True, False, True, True])
    assert expected_calibration_error(probabilities, correct) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.3
    )
