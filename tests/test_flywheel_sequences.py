"""Training sequences: the served token ids, and a shared-prefix loss equal to the plain one."""

from __future__ import annotations

import random
from typing import Any

import pytest

from powertrain.engines.bundled import smollm2_path
from powertrain.engines.gguf_chat import GGUFChat
from powertrain.errors import InvalidRequest
from powertrain.flywheel.sequences import (
    TokenSequence,
    encode_examples,
    order_batches,
    shared_prefix_length,
    shared_prefix_loss,
)
from tests.peft_helpers import base_model, example

__all__ = ["base_model"]  # a fixture

SYSTEM = "You sort messages by intent. Reply with JSON naming one intent from the list."


@pytest.fixture(scope="module")
def chat() -> GGUFChat:
    return GGUFChat.open(smollm2_path())


def plain_loss(causal_lm: Any, batch: list[TokenSequence]) -> Any:
    """The reference: each row as one full sequence, the mean over every target token."""
    import torch
    import torch.nn.functional as F

    total, count = torch.zeros(()), 0
    for s in batch:
        logits = causal_lm(input_ids=torch.tensor([s.prompt + s.target])).logits[0]
        first = len(s.prompt) - 1
        predicted = logits[first : first + len(s.target)]
        total = total + F.cross_entropy(predicted, torch.tensor(s.target), reduction="sum")
        count += len(s.target)
    return total / count


def test_prefix_length_leaves_each_row_a_prompt_token() -> None:
    a = TokenSequence(0, (1, 2, 3, 4), (9,))
    b = TokenSequence(1, (1, 2, 5), (9, 9))
    assert shared_prefix_length([a, b]) == 2
    assert shared_prefix_length([a]) == 3  # one row: all but its last prompt token
    assert shared_prefix_length([a, a]) == 3
    assert shared_prefix_length([a, TokenSequence(2, (7, 2, 3, 4), (9,))]) == 0
    assert shared_prefix_length([TokenSequence(3, (1,), (9,)), a]) == 0


def test_batches_are_seeded_and_group_shared_prompts() -> None:
    # Two kinds of prompt, interleaved: each batch of 4 should hold one kind only.
    seqs = [TokenSequence(i, (1, 2, i % 2, 5, i), (7,)) for i in range(32)]
    first = order_batches(seqs, 4, random.Random("s/0"))
    assert first == order_batches(seqs, 4, random.Random("s/0"))
    assert first != order_batches(seqs, 4, random.Random("s/1"))
    assert sorted(i for batch in first for i in batch) == list(range(32))
    assert all(len({seqs[i].prompt[2] for i in batch}) == 1 for batch in first)
    assert all(shared_prefix_length([seqs[i] for i in batch]) == 4 for batch in first)


def test_a_row_over_the_window_is_named(chat: GGUFChat) -> None:
    rows = [example("Hi", "Hello", 3), example("Hello there " * 40, "Hi", 7)]
    assert len(encode_examples(rows, chat, window=None)) == 2
    with pytest.raises(InvalidRequest) as info:
        encode_examples(rows, chat, window=100)
    assert "train row 7" in info.value.message and "window of 100" in info.value.message
    with pytest.raises(InvalidRequest, match="plus 90 virtual tokens"):
        encode_examples(rows[:1], chat, window=100, extra=90)


def test_sequences_are_the_served_tokens(chat: GGUFChat) -> None:
    row = example("What is 2+2?", "4", 0)
    (seq,) = encode_examples([row], chat, window=8192)
    assert list(seq.prompt) == chat.prompt_tokens([(m["role"], m["content"]) for m in row.messages])
    assert list(seq.target) == chat.reply_tokens("4") and seq.target[-1] == chat.eos_id


@pytest.mark.model
def test_shared_prefix_loss_and_gradients_equal_the_plain_ones(
    chat: GGUFChat, base_model: Any
) -> None:
    """A LoRA with non-zero B (so the prefix's keys and values depend on it): the loss and
    every gradient match a plain forward, rows of different suffix lengths included."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from powertrain.flywheel._peft import quiet_peft

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    with quiet_peft():
        model = get_peft_model(copy.deepcopy(base_model), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    rows = [
        example("Where is my card?", '{"intent": "card_arrival"}', 0, system=SYSTEM),
        example("I was charged twice for coffee", '{"intent": "twice"}', 1, system=SYSTEM),
        example("Hi", '{"intent": "greeting_and_a_much_longer_label"}', 2, system=SYSTEM),
    ]
    batch = encode_examples(rows, chat, window=None)
    causal_lm = model.get_base_model()
    shared = shared_prefix_length(batch)
    assert shared > 20 and len({len(s) - shared for s in batch}) == 3

    # Micro-batches of 2: the prefix's gradient adds up over two, then goes back once.
    result = shared_prefix_loss(causal_lm, batch, micro_batch=2, backward=True)
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    reference = plain_loss(causal_lm, batch)
    torch.autograd.backward(reference)
    slow = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    assert float(result.loss) == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, grad in slow.items():
        # Float32 sums in another order: equal to within a thousandth of the gradient's scale.
        scale = float(grad.abs().max())
        torch.testing.assert_close(fast[name], grad, rtol=1e-3, atol=1e-3 * scale, msg=name)
    assert result.target_tokens == sum(len(s.target) for s in batch)
    assert result.tokens == sum(len(s) for s in batch)
    assert result.computed_tokens == result.tokens - 2 * shared


@pytest.mark.model
@pytest.mark.parametrize("case", ["no common prefix", "one row", "identical prompts"])
def test_degenerate_batches(case: str, base_model: Any) -> None:
    import torch

    a = TokenSequence(0, (1, 504, 4875, 314, 253, 3853), (1130, 2))
    b = TokenSequence(1, (1, 504, 4875, 30, 2114), (1130, 2))
    batch = {
        "no common prefix": [a, TokenSequence(2, (253, 3853, 4875), (2,)), b],
        "one row": [a],
        "identical prompts": [a, TokenSequence(3, a.prompt, (30, 30, 2))],
    }[case]
    with torch.no_grad():
        result = shared_prefix_loss(base_model, batch)
        reference = plain_loss(base_model, batch)
    assert float(result.loss) == pytest.approx(float(reference), rel=1e-5)
