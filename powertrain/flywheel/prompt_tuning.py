"""``--method prompt-tuning``: learned soft-prompt embeddings in front of every prompt.

The base model stays frozen; PEFT's prompt tuning trains ``virtual_tokens``
input embeddings placed before the served prompt (at positions 0..V-1, as PEFT
runs them). They start as the embeddings of ``init_text``'s tokens — the
GGUF's own tokenizer reads it, so no Hugging Face tokenizer is needed. The
same loop and shared-prefix batching as LoRA apply: the virtual tokens are the
start of every row, so they are part of the prefix a batch runs once.

llama.cpp has no way to load soft prompts, so the adapter is served by the
``transformers`` engine (``options = {adapter = "<dir>"}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from powertrain.flywheel._gguf_base import gguf_base_problem
from powertrain.flywheel._openmp import prefer_passive_openmp
from powertrain.flywheel.base import ProgressFn, TrainedModel, Trainer, TrainingPlan
from powertrain.flywheel.loop_settings import LoopSettings
from powertrain.plugins import hookimpl

DEFAULT_INIT_TEXT = "Read the instructions and the message, then reply exactly as instructed."


class PromptTuningSettings(LoopSettings):
    """``--set`` values of the prompt-tuning method (and the loop's)."""

    virtual_tokens: int = Field(default=20, ge=1, le=256)
    init_text: str | None = Field(
        default=DEFAULT_INIT_TEXT,
        max_length=2000,
        description="Text whose token embeddings start the soft prompt (repeated to fill "
        "it); null starts from random embeddings.",
    )
    # Soft prompts move through embedding space slowly: they need a far larger step than LoRA.
    learning_rate: float = Field(default=3e-2, gt=0, le=10)


class PromptTuningTrainer(Trainer):
    name: ClassVar[str] = "prompt-tuning"
    description: ClassVar[str] = (
        "Soft prompt (learned virtual-token embeddings) on the frozen base GGUF model, "
        "trained on the CPU; served by the transformers engine"
    )
    settings_model: ClassVar[type[PromptTuningSettings]] = PromptTuningSettings

    def applicable(self, plan: TrainingPlan) -> str | None:
        return gguf_base_problem(plan, "prompt tuning")

    def train(
        self, plan: TrainingPlan, workdir: Path, progress: ProgressFn, *, resume: bool = False
    ) -> TrainedModel:
        prefer_passive_openmp()  # before torch loads
        from powertrain.flywheel._peft import adapter_model_entry, quiet_peft, train_peft

        settings: PromptTuningSettings = self.settings(plan)

        def make_adapter(causal_lm: Any, chat: Any) -> Any:
            import torch
            from peft import PromptTuningConfig, get_peft_model

            config = PromptTuningConfig(
                task_type="CAUSAL_LM", num_virtual_tokens=settings.virtual_tokens
            )
            with quiet_peft():
                model = get_peft_model(causal_lm, config)
            if settings.init_text:
                ids = chat.tokenize(settings.init_text, special=False, add_bos=False)
                if ids:
                    ids = (ids * (settings.virtual_tokens // len(ids) + 1))[
                        : settings.virtual_tokens
                    ]
                    embedding: Any = model.prompt_encoder["default"].embedding
                    with torch.no_grad():
                        words = causal_lm.get_input_embeddings()(torch.tensor(ids))
                        embedding.weight.copy_(words)
            return model

        run = train_peft(
            plan,
            settings,
            workdir,
            progress,
            resume=resume,
            make_adapter=make_adapter,
            virtual_tokens=settings.virtual_tokens,
        )
        return adapter_model_entry(plan, run, dict(run.result.metrics))


@hookimpl
def register_trainers(register: Any) -> None:
    register(PromptTuningTrainer)
