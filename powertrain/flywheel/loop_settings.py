"""The hyperparameters the PEFT methods' training loop takes, kept apart from the loop.

Plugins are imported whenever powertrain starts; this module (and so a
method's settings model) must not pull PyTorch in with it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from powertrain.flywheel.base import TrainerSettings


class LoopSettings(TrainerSettings):
    """Hyperparameters every PEFT method shares; a method adds its own and sets defaults."""

    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    epochs: int = Field(default=3, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1, le=1024)
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many steps (overrides epochs)."
    )
    max_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Start no new step after this many seconds of training (the schedule "
        "still plans for every step; the last eval and the export run after it).",
    )
    warmup_ratio: float = Field(default=0.1, ge=0, le=0.5)
    schedule: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    micro_batch: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Rows whose suffixes run together on the shared prefix: memory, not "
        "results (each row holds a copy of the prefix's KV cache).",
    )
    eval_batch_size: int = Field(default=32, ge=1, le=1024)
    checkpoint_every: int = Field(default=25, ge=1, description="Steps between checkpoints.")
    threads: int | None = Field(default=None, ge=1, description="Torch threads (default: all).")
