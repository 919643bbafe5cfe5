"""What the PEFT methods (LoRA, prompt tuning) share around the loop.

Both tune the same base — a llama.cpp GGUF loaded into PyTorch — on the same
token ids, the ones ``GGUFChat`` gives the llama.cpp engine; they differ only
in the adapter they put on it and in how it is served.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from powertrain.engines.gguf_chat import GGUFChat
from powertrain.engines.torch_gguf import load_causal_lm, set_torch_threads
from powertrain.flywheel._gguf_base import base_gguf
from powertrain.flywheel.base import ProgressFn, TrainedModel, TrainingPlan
from powertrain.flywheel.loop import LoopResult, TrainingLoop
from powertrain.flywheel.loop_settings import LoopSettings
from powertrain.flywheel.sequences import (
    BatchLoss,
    TokenSequence,
    encode_examples,
    shared_prefix_loss,
)

ADAPTER_DIR = "adapter"


def context_window(plan: TrainingPlan, chat: GGUFChat) -> int | None:
    """The base's window: the catalog's, else the one the GGUF was trained with."""
    if plan.base.context_window:
        return plan.base.context_window
    metadata = chat.llm.metadata
    arch = metadata.get("general.architecture", "")
    value = metadata.get(f"{arch}.context_length")
    return int(value) if value else None


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT's notices that do not apply here, silenced where they arise.

    Wrapping a model asks transformers a deprecated property (a FutureWarning
    from inside PEFT), and saving an adapter whose base has no Hub id (ours is a
    local GGUF) says it cannot find the base's config.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*is_gradient_checkpointing", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"Could not find a config file", category=UserWarning
        )
        yield


class PeftAdaptation:
    """A PEFT model as the loop sees it: its trainable weights and a shared-prefix loss."""

    def __init__(self, peft_model: Any, *, virtual_tokens: bool, micro_batch: int):
        self.peft_model = peft_model
        self.micro_batch = micro_batch
        self.causal_lm = peft_model.get_base_model()
        self.virtual_tokens = virtual_tokens

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.peft_model.named_parameters() if p.requires_grad}

    def batch_loss(self, batch: Sequence[TokenSequence], *, backward: bool) -> BatchLoss:
        virtual = self.peft_model.get_prompt(batch_size=1) if self.virtual_tokens else None
        return shared_prefix_loss(
            self.causal_lm, batch, virtual=virtual, micro_batch=self.micro_batch, backward=backward
        )

    def train_mode(self, training: bool) -> None:
        self.peft_model.train(training)


@dataclass
class PeftRun:
    """A finished PEFT training: the adapter directory and what the loop measured."""

    adapter: Path
    base: Path
    result: LoopResult


def train_peft(
    plan: TrainingPlan,
    settings: LoopSettings,
    workdir: Path,
    progress: ProgressFn,
    *,
    resume: bool,
    make_adapter: Callable[[Any, GGUFChat], Any],
    virtual_tokens: int = 0,
) -> PeftRun:
    """Load the base, wrap it with ``make_adapter(causal_lm, chat)``, train, save the adapter.

    ``virtual_tokens`` is how many positions the adapter adds in front of every
    prompt (prompt tuning), counted against the context window.
    """
    set_torch_threads(settings.threads)
    path = base_gguf(plan)
    chat = GGUFChat.open(path)
    window = context_window(plan, chat)
    train = encode_examples(plan.train, chat, window=window, extra=virtual_tokens)
    test = encode_examples(plan.test, chat, window=window, extra=virtual_tokens)
    torch.manual_seed(plan.seed)  # the adapter's initial weights
    peft_model = make_adapter(load_causal_lm(path), chat)
    adaptation = PeftAdaptation(
        peft_model, virtual_tokens=virtual_tokens > 0, micro_batch=settings.micro_batch
    )
    loop = TrainingLoop(
        adaptation, train, test, settings, seed=plan.seed, workdir=workdir, progress=progress
    )
    result = loop.run(resume=resume)
    adapter = workdir / ADAPTER_DIR
    with quiet_peft():
        peft_model.save_pretrained(str(adapter))
    return PeftRun(adapter=adapter, base=path, result=result)


def adapter_model_entry(plan: TrainingPlan, run: PeftRun, metrics: dict[str, Any]) -> TrainedModel:
    """The catalog entry that serves a PEFT adapter directory with the transformers engine."""
    options: dict[str, Any] = {"adapter": str(run.adapter)}
    if "n_threads" in plan.base.options:
        options["n_threads"] = plan.base.options["n_threads"]
    return TrainedModel(
        engine="transformers",
        model=plan.base.model,
        options=options,
        context_window=plan.base.context_window,
        metrics=metrics,
        curves=run.result.curves,
        files=[run.adapter],
    )
