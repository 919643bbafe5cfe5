"""``--method lora``: a LoRA adapter for a llama.cpp GGUF model, trained on the CPU.

The GGUF is loaded into PyTorch (``engines/torch_gguf.py``), PEFT puts LoRA
pairs on its linear projections, and the shared loop (``flywheel/loop.py``)
trains them on the task's examples as the llama.cpp engine will serve them
(``flywheel/sequences.py``). The adapter is saved in PEFT's format under
``adapter/`` and written as a GGUF LoRA adapter (``adapter.gguf``), which the
llamacpp engine loads with ``lora_path`` at its own speed; an adapter that
cannot be exported is served by the transformers engine instead.

The defaults were measured on Banking77 (77 intents, 4 to 8 messages per
intent, the zero-shot prompt): see ``bench/flywheel/lora_banking77.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from powertrain.flywheel._gguf_base import gguf_base_problem
from powertrain.flywheel._openmp import prefer_passive_openmp
from powertrain.flywheel.base import ProgressFn, TrainedModel, Trainer, TrainingPlan
from powertrain.flywheel.loop_settings import LoopSettings
from powertrain.plugins import hookimpl

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_ADAPTER = "adapter.gguf"


class LoraSettings(LoopSettings):
    """``--set`` values of the LoRA method (and the loop's, with defaults measured for it)."""

    rank: int = Field(default=16, ge=1, le=512)
    alpha: int = Field(default=32, ge=1, description="Scale: B·A is multiplied by alpha/rank.")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        description="Linear layers to adapt (default: every attention and MLP projection).",
    )
    # Measured on Banking77 (308 examples, 3 epochs, batch 16; bench/flywheel/lora_banking77):
    # 1e-3 reaches 24.7% held-out accuracy, 3e-3 52.0%, 5e-3 53.5%.
    learning_rate: float = Field(default=5e-3, gt=0, le=1)

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"target module {name!r} is not a module name")
        return value


class LoraTrainer(Trainer):
    name: ClassVar[str] = "lora"
    description: ClassVar[str] = (
        "LoRA adapter on the base GGUF model, trained on the CPU; served by llama.cpp"
    )
    settings_model: ClassVar[type[LoraSettings]] = LoraSettings

    def applicable(self, plan: TrainingPlan) -> str | None:
        return gguf_base_problem(plan, "LoRA")

    def train(
        self, plan: TrainingPlan, workdir: Path, progress: ProgressFn, *, resume: bool = False
    ) -> TrainedModel:
        prefer_passive_openmp()  # before torch loads
        from powertrain.flywheel._peft import adapter_model_entry, quiet_peft, train_peft
        from powertrain.flywheel.gguf_lora import AdapterExportUnsupported, export_gguf_lora

        settings: LoraSettings = self.settings(plan)

        def make_adapter(causal_lm: Any, _chat: Any) -> Any:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=list(settings.target_modules),
                task_type="CAUSAL_LM",
            )
            with quiet_peft():
                return get_peft_model(causal_lm, config)

        run = train_peft(
            plan, settings, workdir, progress, resume=resume, make_adapter=make_adapter
        )
        metrics = dict(run.result.metrics)
        try:
            gguf = export_gguf_lora(run.adapter, run.base, workdir / GGUF_ADAPTER)
        except AdapterExportUnsupported as exc:
            metrics["export"] = f"not exported: {exc.message}; served by the transformers engine"
            return adapter_model_entry(plan, run, metrics)
        return TrainedModel(
            engine="llamacpp",
            model=plan.base.model,
            options={**plan.base.options, "lora_path": str(gguf)},
            context_window=plan.base.context_window,
            metrics=metrics,
            curves=run.result.curves,
            files=[run.adapter, gguf],
        )


@hookimpl
def register_trainers(register: Any) -> None:
    register(LoraTrainer)
