"""``--method prompt-tuning``: soft prompts trained with the shared prefix, served by transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from powertrain.catalog import ModelConfig
from powertrain.engines.bundled import smollm2_path
from powertrain.engines.gguf_chat import GGUFChat
from powertrain.flywheel.prompt_tuning import PromptTuningTrainer
from powertrain.flywheel.registry import trainer_classes
from powertrain.flywheel.sequences import encode_examples, shared_prefix_loss
from powertrain.schemas import ChatCompletionRequest
from tests.peft_helpers import PAIRS, Reports, base_model, example, plan, reuse_base

__all__ = ["base_model", "reuse_base"]  # fixtures


def test_registered_and_applicable_only_to_a_llamacpp_gguf() -> None:
    assert trainer_classes()["prompt-tuning"] is PromptTuningTrainer
    trainer = PromptTuningTrainer()
    assert trainer.applicable(plan([])) is None
    hosted = ModelConfig(alias="claude", engine="anthropic", model="claude-x")
    assert "anthropic engine" in (trainer.applicable(plan([], base=hosted)) or "")
    assert trainer.settings(plan([])).virtual_tokens == 20


@pytest.mark.model
def test_virtual_tokens_in_the_shared_prefix_give_peft_s_own_loss(base_model: Any) -> None:
    """PEFT's forward (virtual tokens prepended, default positions) is the reference, for the
    loss and for the soft prompt's gradient."""
    import copy

    import torch
    from peft import PromptTuningConfig, get_peft_model

    from powertrain.flywheel._peft import quiet_peft

    torch.manual_seed(0)
    with quiet_peft():
        model = get_peft_model(
            copy.deepcopy(base_model),
            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        )
    chat = GGUFChat.open(smollm2_path())
    batch = encode_examples(
        [example(q, a, i) for i, (q, a) in enumerate(PAIRS[:3])], chat, window=None
    )
    fast = shared_prefix_loss(
        model.get_base_model(), batch, virtual=model.get_prompt(1), micro_batch=2, backward=True
    )
    (soft_prompt,) = [p for p in model.parameters() if p.requires_grad]
    fast_grad = soft_prompt.grad.clone()
    model.zero_grad()

    total, count = torch.zeros(()), 0
    for s in batch:
        ids = torch.tensor([s.prompt + s.target])
        labels = torch.tensor([[-100] * len(s.prompt) + list(s.target)])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        total = total + out.loss * len(s.target)
        count += len(s.target)
    reference = total / count
    torch.autograd.backward(reference)

    assert float(fast.loss) == pytest.approx(float(reference.detach()), rel=1e-5)
    # Float32 sums in another order: equal to within a thousandth of the gradient's scale.
    scale = float(soft_prompt.grad.abs().max())
    torch.testing.assert_close(fast_grad, soft_prompt.grad, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.model
async def test_a_tiny_run_is_served_by_the_transformers_engine(
    tmp_path: Path, reuse_base: None
) -> None:
    from powertrain.engines.transformers import TransformersEngine

    question, answer = PAIRS[0]
    row = example(question, answer, 0)
    settings = {"batch_size": 1, "max_steps": 12, "learning_rate": 0.1, "virtual_tokens": 8}
    reports = Reports()
    trained = PromptTuningTrainer().train(plan([row], [row], **settings), tmp_path, reports)

    assert trained.engine == "transformers" and trained.model is None
    assert trained.options == {"adapter": str(tmp_path / "adapter")}
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert reports.phases()[0] == "eval" and reports.phases()[-1] == "eval"
    assert trained.metrics["eval_loss"] < trained.metrics["base_eval_loss"]

    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": row.messages, "temperature": 0, "max_tokens": 8}
    )

    async def greedy(options: dict[str, Any]) -> str:
        config = ModelConfig(alias="m", engine="transformers", options=options)
        engine = TransformersEngine(config)
        await engine.start()
        try:
            return (await engine.chat(request)).content
        finally:
            await engine.aclose()

    assert await greedy({"n_threads": 1}) != answer
    assert await greedy({**trained.options, "n_threads": 1}) == answer
