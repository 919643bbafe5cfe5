"""The flywheel: fine-tune a local model on a task's dataset, register it, promote it."""

from powertrain.flywheel.base import (
    LabelChoice,
    Progress,
    ProgressFn,
    TrainedModel,
    Trainer,
    TrainerSettings,
    TrainingExample,
    TrainingPlan,
)
from powertrain.flywheel.registry import trainer_classes

__all__ = [
    "LabelChoice",
    "Progress",
    "ProgressFn",
    "TrainedModel",
    "Trainer",
    "TrainerSettings",
    "TrainingExample",
    "TrainingPlan",
    "trainer_classes",
]
