"""Small PEFT training plans on the bundled model, and a base model loaded once per test module.

Dequantizing the GGUF into PyTorch takes seconds; each trainer run would do it
again. ``reuse_base`` loads it once and hands every run a fresh deep copy (PEFT
changes the model it wraps), so the tests still train a whole, untouched base.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powertrain.catalog import BUNDLED_EMBEDDING_MODEL, BUNDLED_MODEL, ModelConfig
from powertrain.engines.bundled import smollm2_path
from powertrain.flywheel.base import Progress, TrainingExample, TrainingPlan

# Short prompts whose replies the base model does not write by itself.
PAIRS = [
    ("What is the secret word?", "pineapple"),
    ("Name the colour of the sky in the code.", "mauve"),
    ("Which city is the capital of Zog?", "Quorth"),
    ("What does the robot say?", "beep boop"),
]


def example(
    question: str,
    answer: str,
    row: int,
    split: Any = "train",
    system: str = "Answer with one word.",
) -> TrainingExample:
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]
    return TrainingExample(messages, answer, answer, split, row)


def plan(
    train: list[TrainingExample],
    test: list[TrainingExample] | None = None,
    *,
    seed: int = 0,
    base: ModelConfig = BUNDLED_MODEL,
    **settings: Any,
) -> TrainingPlan:
    return TrainingPlan(
        job_id="test",
        task="t",
        task_version=1,
        variant="default",
        base=base,
        encoder=BUNDLED_EMBEDDING_MODEL,
        train=train,
        test=test if test is not None else train[:1],
        output_schema=None,
        seed=seed,
        settings={"threads": 1, **settings},
    )


class Reports:
    """A progress callback that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[Progress] = []

    def __call__(self, report: Progress) -> None:
        self.seen.append(report)

    def phases(self) -> list[str]:
        return [r.phase for r in self.seen]


@pytest.fixture(scope="module")
def base_model() -> Any:
    from powertrain.engines.torch_gguf import load_causal_lm, set_torch_threads

    set_torch_threads(1)  # 2 threads spin against each other on a busy machine
    return load_causal_lm(smollm2_path())


@pytest.fixture
def reuse_base(base_model: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Trainers in this test get a copy of the module's base model instead of loading one."""
    import powertrain.flywheel._peft as peft_part

    def load(path: Path) -> Any:
        assert path == smollm2_path()
        return copy.deepcopy(base_model)

    monkeypatch.setattr(peft_part, "load_causal_lm", load)
    yield


def safetensors_of(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))
