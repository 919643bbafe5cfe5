"""Tasks: versioned prompts with typed variables, variants, and output that always validates."""

from powertrain.tasks.definition import PromptVersion, TaskDefinition, TaskSettings, VariantSpec
from powertrain.tasks.runner import TaskPlan, TaskResult

__all__ = [
    "PromptVersion",
    "TaskDefinition",
    "TaskPlan",
    "TaskResult",
    "TaskSettings",
    "VariantSpec",
]
