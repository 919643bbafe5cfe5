"""The base model of the GGUF-tuning methods: where its file is, and whether it can be tuned.

Kept free of PyTorch: ``applicable`` runs when a job is submitted, in a process
that need not load a model.
"""

from __future__ import annotations

from pathlib import Path

from powertrain.engines.bundled import smollm2_path
from powertrain.errors import PowertrainError
from powertrain.flywheel.base import TrainingPlan


def base_gguf(plan: TrainingPlan) -> Path:
    """The GGUF file of the plan's base model (None means the bundled SmolLM2)."""
    return Path(plan.base.model).expanduser() if plan.base.model else smollm2_path()


def gguf_base_problem(plan: TrainingPlan, method: str) -> str | None:
    """Why ``method`` cannot tune ``plan.base``, or None when it can."""
    if plan.base.engine != "llamacpp":
        return (
            f"{method} tunes a llama.cpp GGUF model; {plan.base.alias!r} runs on the "
            f"{plan.base.engine} engine"
        )
    try:
        path = base_gguf(plan)
    except PowertrainError as exc:  # the bundled model's package is missing
        return exc.message
    if not path.is_file():
        return f"the GGUF file {str(path)!r} of {plan.base.alias!r} does not exist"
    return None
