"""``--method lora`` on the bundled model: files, curves, determinism, resume, and serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from powertrain.catalog import BUNDLED_MODEL, ModelConfig
from powertrain.engines.llamacpp import LlamaCppEngine
from powertrain.errors import InvalidRequest
from powertrain.flywheel.base import Progress, TrainedModel
from powertrain.flywheel.lora import LoraSettings, LoraTrainer
from powertrain.flywheel.registry import trainer_classes
from powertrain.schemas import ChatCompletionRequest
from tests.peft_helpers import (
    PAIRS,
    Reports,
    base_model,
    example,
    plan,
    reuse_base,
    safetensors_of,
)

__all__ = ["base_model", "reuse_base"]  # fixtures

TINY = {"batch_size": 2, "max_steps": 4, "checkpoint_every": 2, "rank": 4, "alpha": 8}


def tiny_plan(seed: int = 0, **settings: Any) -> Any:
    rows = [example(q, a, i) for i, (q, a) in enumerate(PAIRS)]
    return plan(rows, rows[:2], seed=seed, **{**TINY, **settings})


class StopAt:
    """Progress that interrupts the job at a train step, as a cancel does."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, report: Progress) -> None:
        if report.phase == "train" and report.step == self.step:
            raise KeyboardInterrupt


def test_registered_and_settings_checked() -> None:
    assert trainer_classes()["lora"] is LoraTrainer
    trainer = LoraTrainer()
    with pytest.raises(InvalidRequest, match="lora setting rnak"):
        trainer.settings(plan([], rnak=4))
    with pytest.raises(InvalidRequest, match="target_modules"):
        trainer.settings(plan([], target_modules=["q_proj; rm"]))
    defaults = LoraSettings()
    assert defaults.target_modules == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip


def test_applicable_only_to_a_llamacpp_gguf(tmp_path: Path) -> None:
    trainer = LoraTrainer()
    assert trainer.applicable(plan([])) is None
    hosted = ModelConfig(alias="gpt", engine="openai", model="gpt-4o-mini")
    assert "openai engine" in (trainer.applicable(plan([], base=hosted)) or "")
    missing = BUNDLED_MODEL.model_copy(update={"alias": "m", "model": str(tmp_path / "x.gguf")})
    assert "does not exist" in (trainer.applicable(plan([], base=missing)) or "")


@pytest.fixture(scope="module")
def straight(
    tmp_path_factory: pytest.TempPathFactory, base_model: Any
) -> tuple[Any, Path, Reports]:
    """Four steps in one go (the reference the other runs are compared with)."""
    import copy

    import powertrain.flywheel._peft as peft_part

    workdir = tmp_path_factory.mktemp("straight")
    reports = Reports()
    original = peft_part.load_causal_lm
    peft_part.load_causal_lm = lambda _path: copy.deepcopy(base_model)
    try:
        trained = LoraTrainer().train(tiny_plan(), workdir, reports)
    finally:
        peft_part.load_causal_lm = original
    return trained, workdir, reports


@pytest.mark.model
def test_a_tiny_run_leaves_an_adapter_curves_and_a_catalog_entry(
    straight: tuple[TrainedModel, Path, Reports],
) -> None:
    trained, workdir, reports = straight
    assert trained.engine == "llamacpp" and trained.model is None
    assert trained.options == {"lora_path": str(workdir / "adapter.gguf")}
    assert trained.context_window == BUNDLED_MODEL.context_window
    assert (workdir / "adapter" / "adapter_config.json").is_file()
    assert (workdir / "adapter.gguf").stat().st_size > 10_000
    assert trained.files == [workdir / "adapter", workdir / "adapter.gguf"]
    # Base eval, 4 steps, eval after each epoch (2 steps of 2 rows); last 2 checkpoints kept.
    assert reports.phases() == ["eval", "train", "train", "eval", "train", "train", "eval"]
    assert [p[0] for p in trained.curves["loss"]] == [1, 2, 3, 4]
    assert [p[0] for p in trained.curves["eval_loss"]] == [0, 2, 4]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    m = trained.metrics
    assert m["steps"] == 4 and m["epochs"] == 2 and m["train_examples"] == 4
    assert m["eval_loss"] < m["base_eval_loss"]  # it learned the two test rows it trains on
    assert m["train_tokens"] > m["computed_tokens"] > 0  # the system prompt ran once per batch
    assert m["seconds_per_step"] > 0


@pytest.mark.model
def test_same_seed_same_weights_and_resume_continues_exactly(
    straight: tuple[TrainedModel, Path, Reports], tmp_path: Path, reuse_base: None
) -> None:
    """Dropout is on (0.05), so this also needs the RNG state restored."""
    import torch

    reference = safetensors_of(straight[1] / "adapter")
    again = tmp_path / "again"
    LoraTrainer().train(tiny_plan(), again, Reports())
    for name, value in safetensors_of(again / "adapter").items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        LoraTrainer().train(tiny_plan(), interrupted, StopAt(3))
    assert (interrupted / "checkpoints" / "step-3").is_dir()  # kept where it stopped
    reports = Reports()
    trained = LoraTrainer().train(tiny_plan(), interrupted, reports, resume=True)
    assert [(r.phase, r.step) for r in reports.seen] == [("train", 4), ("eval", 4)]
    assert [p[0] for p in trained.curves["loss"]] == [1, 2, 3, 4]
    for name, value in safetensors_of(interrupted / "adapter").items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-7)

    other = tmp_path / "other-seed"
    LoraTrainer().train(tiny_plan(seed=1), other, Reports())
    changed = safetensors_of(other / "adapter")
    assert any(not torch.equal(changed[k], v) for k, v in reference.items())


@pytest.mark.model
def test_resume_refuses_another_run_s_checkpoint(tmp_path: Path, reuse_base: None) -> None:
    with pytest.raises(KeyboardInterrupt):
        LoraTrainer().train(tiny_plan(), tmp_path, StopAt(1))
    with pytest.raises(InvalidRequest, match="other data, settings or seed"):
        LoraTrainer().train(tiny_plan(learning_rate=0.5), tmp_path, Reports(), resume=True)


@pytest.mark.model
async def test_the_exported_adapter_serves_the_target_in_llama_cpp(
    tmp_path: Path, reuse_base: None
) -> None:
    question, answer = PAIRS[0]
    row = example(question, answer, 0)
    settings = {"batch_size": 1, "max_steps": 8, "learning_rate": 3e-3, "dropout": 0.0}
    trained = LoraTrainer().train(plan([row], [row], **settings), tmp_path, Reports())
    assert trained.engine == "llamacpp"

    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": row.messages, "temperature": 0, "max_tokens": 8}
    )

    async def greedy(options: dict[str, Any]) -> str:
        config = BUNDLED_MODEL.model_copy(update={"alias": "m", "options": options})
        engine = LlamaCppEngine(config)
        await engine.start()
        try:
            return (await engine.chat(request)).content
        finally:
            await engine.aclose()

    assert await greedy({"n_threads": 2}) != answer
    assert await greedy({**trained.options, "n_threads": 2}) == answer


@pytest.mark.model
def test_an_adapter_llama_cpp_cannot_load_is_served_by_transformers(
    tmp_path: Path, reuse_base: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import powertrain.flywheel.gguf_lora as gguf_lora

    def refuse(peft_dir: Path, base_gguf: Path, out: Path) -> Path:
        raise gguf_lora.AdapterExportUnsupported("a module llama.cpp has no name for")

    monkeypatch.setattr(gguf_lora, "export_gguf_lora", refuse)
    trained = LoraTrainer().train(tiny_plan(max_steps=1), tmp_path, Reports())
    assert trained.engine == "transformers"
    assert trained.options == {"adapter": str(tmp_path / "adapter")}
    assert "llama.cpp has no name for" in trained.metrics["export"]
    assert not (tmp_path / "adapter.gguf").exists()
