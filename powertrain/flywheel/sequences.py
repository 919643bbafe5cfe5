"""Training sequences: examples as the served token ids, and a loss that runs a shared prefix once.

A task's prompts are mostly the same tokens: Banking77's zero-shot prompt is
~630 tokens, ~600 of them the system message listing the labels, identical on
every row. A plain batch would push those 600 tokens through the model (and
back) once per example, ~5 s each on 2 cores. Here a batch runs the longest
common prefix of its prompts once, at batch size 1 and with gradients, repeats
its KV cache across the batch, and runs only the rows' own suffixes (the rest
of the prompt, then the target) on top of it. The LM head is applied only where
a target token is predicted, so no full-vocabulary logits are made for prompts.
The loss is the same number a full-sequence forward gives (the tests check it
on the real model); only the work differs.

Token ids come from ``GGUFChat`` — the GGUF's own chat template and tokenizer —
so a model is trained on exactly the tokens the llama.cpp engine will serve.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from powertrain.engines.gguf_chat import GGUFChat
from powertrain.errors import InvalidRequest
from powertrain.flywheel.base import TrainingExample

# How many batches' worth of examples are sorted together by prompt: enough for
# rows with the same few-shot examples to meet, few enough to keep the order random.
BUCKET_BATCHES = 8


@dataclass(frozen=True)
class TokenSequence:
    """One example as token ids: the prompt as served, then the reply ending its turn."""

    row: int
    prompt: tuple[int, ...]
    target: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.target)


def encode_examples(
    examples: Sequence[TrainingExample], chat: GGUFChat, *, window: int | None, extra: int = 0
) -> list[TokenSequence]:
    """``examples`` as token ids, refusing one that does not fit ``window``.

    ``extra`` counts positions the method adds in front (prompt tuning's virtual tokens).
    """
    sequences = []
    for example in examples:
        pairs = [(m.get("role", "user"), m.get("content", "")) for m in example.messages]
        sequence = TokenSequence(
            example.row, tuple(chat.prompt_tokens(pairs)), tuple(chat.reply_tokens(example.target))
        )
        if window is not None and len(sequence) + extra > window:
            added = f" plus {extra} virtual tokens" if extra else ""
            raise InvalidRequest(
                f"{example.split} row {example.row}: prompt and target are {len(sequence)} "
                f"tokens{added}, over the base model's context window of {window}; "
                "drop or shorten that row",
                param="dataset",
            )
        sequences.append(sequence)
    return sequences


def shared_prefix_length(batch: Sequence[TokenSequence]) -> int:
    """How many leading prompt tokens every row of ``batch`` shares and can run once.

    At least one prompt token is left to each row: the first target token is
    predicted from the last prompt position, which must be in the row's own suffix.
    """
    if not batch:
        return 0
    first = batch[0].prompt
    limit = min(len(s.prompt) for s in batch) - 1
    length = 0
    while length < limit and all(s.prompt[length] == first[length] for s in batch[1:]):
        length += 1
    return max(0, length)


def order_batches(
    sequences: Sequence[TokenSequence], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Indices of ``sequences`` in batches, shuffled by ``rng`` but sharing long prefixes.

    Rows are shuffled, sorted by prompt within buckets of ``BUCKET_BATCHES``
    batches (so rows with the same prompt start land together), cut into
    batches, and the batches shuffled again. The same ``rng`` state gives the
    same batches.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = list(range(len(sequences)))
    rng.shuffle(order)
    bucket = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: sequences[i].prompt)
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class BatchLoss:
    """A batch's mean loss over its target tokens, and what computing it took."""

    loss: torch.Tensor  # a scalar with a graph when gradients are on
    target_tokens: int
    tokens: int  # every token of every row, as a plain batch would run them
    computed_tokens: int  # the shared prefix once, plus each row's suffix


def _decoder_parts(causal_lm: Any) -> tuple[Any, Any, Any]:
    """The decoder stack, input embeddings and LM head of a transformers causal LM."""
    return (
        causal_lm.get_decoder(),
        causal_lm.get_input_embeddings(),
        causal_lm.get_output_embeddings(),
    )


def shared_prefix_loss(
    causal_lm: Any,
    batch: Sequence[TokenSequence],
    *,
    virtual: torch.Tensor | None = None,
    micro_batch: int | None = None,
    backward: bool = False,
    pad_id: int = 0,
) -> BatchLoss:
    """Cross-entropy of ``batch``'s targets (mean per target token), the shared prefix run once.

    ``causal_lm`` is a transformers causal LM (a PEFT LoRA model's base model
    works as is: its linear layers carry the adapter). ``virtual`` is a ``(1, V,
    hidden)`` tensor of embeddings placed before every row, at positions 0..V-1,
    as PEFT's prompt tuning does; it is part of the shared prefix.

    The rows' suffixes run ``micro_batch`` rows at a time on the prefix's KV
    cache, because each row holds a copy of that cache while its graph is alive
    (~240 MB a row for Banking77's 617-token prefix). With ``backward`` each
    micro-batch's loss is back-propagated at once, down to the cache only; the
    cache's gradients add up and go back through the prefix once, at the end —
    the same gradients as one backward of the whole batch, in bounded memory.
    The loss returned is then detached; without ``backward`` it keeps its graph.
    """
    if not batch:
        raise ValueError("an empty batch has no loss")
    decoder, embed, head = _decoder_parts(causal_lm)
    shared = shared_prefix_length(batch)
    n_virtual = 0 if virtual is None else int(virtual.shape[1])
    offset = n_virtual + shared  # positions taken by the shared part
    targets = sum(len(s.target) for s in batch)

    prefix: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values
    if offset:
        parts = [] if virtual is None else [virtual]
        if shared:
            parts.append(embed(torch.tensor([batch[0].prompt[:shared]], dtype=torch.long)))
        cache = decoder(
            inputs_embeds=torch.cat(parts, dim=1),
            position_ids=torch.arange(offset).unsqueeze(0),
            use_cache=True,
        ).cache
        prefix = [(layer.keys, layer.values) for layer in cache.layers]
    # With backward, the micro-batches hang off leaf copies of the cache, so their
    # backward stops there; the leaves' gradients are then sent through the prefix once.
    leaves = [
        (k.detach().requires_grad_(backward), v.detach().requires_grad_(backward))
        for k, v in prefix
    ]
    step = micro_batch or len(batch)
    total: torch.Tensor | float = 0.0
    computed = offset
    for start in range(0, len(batch), step):
        rows = batch[start : start + step]
        cache = None
        if leaves:
            cache = DynamicCache(config=causal_lm.config)
            source = leaves if backward else prefix
            for index, (k, v) in enumerate(source):
                cache.update(
                    k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1), index
                )
        part, tokens = _suffix_loss(decoder, head, rows, shared, offset, cache, pad_id)
        part = part / targets
        computed += tokens
        if backward:
            torch.autograd.backward(part)
            total += float(part.detach())
        else:
            total = total + part
    if backward and prefix:
        outputs = [t for pair in prefix for t in pair]
        grads = [leaf.grad for pair in leaves for leaf in pair]
        # A layer's keys may not depend on any trained weight (layer 0 with LoRA on the MLP only).
        kept = [
            (o, g) for o, g in zip(outputs, grads, strict=True) if g is not None and o.requires_grad
        ]
        if kept:
            torch.autograd.backward([o for o, _ in kept], [g for _, g in kept])
    loss = torch.as_tensor(total, dtype=torch.float32)
    every = sum(len(s) for s in batch) + len(batch) * n_virtual
    return BatchLoss(loss, targets, every, computed)


def _suffix_loss(
    decoder: Any,
    head: Any,
    batch: Sequence[TokenSequence],
    shared: int,
    offset: int,
    cache: Any,
    pad_id: int,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of ``batch``'s targets, its suffixes run on ``cache``; and their tokens."""
    n = len(batch)
    suffixes = [s.prompt[shared:] + s.target for s in batch]
    width = max(len(s) for s in suffixes)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, offset + width), dtype=torch.long)
    mask[:, :offset] = 1
    rows: list[int] = []
    columns: list[int] = []
    labels: list[int] = []
    for i, (sequence, suffix) in enumerate(zip(batch, suffixes, strict=True)):
        ids[i, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        mask[i, offset : offset + len(suffix)] = 1
        start = len(sequence.prompt) - shared  # the first target token's index in the suffix
        for k, token in enumerate(sequence.target):
            rows.append(i)
            columns.append(start + k - 1)  # predicted from the position before it
            labels.append(token)
    hidden = decoder(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(offset + torch.arange(width)).unsqueeze(0).expand(n, width),
        cache=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    picked = hidden[torch.tensor(rows), torch.tensor(columns)]
    logits = head(picked).float()
    loss = F.cross_entropy(logits, torch.tensor(labels, dtype=torch.long), reduction="sum")
    return loss, sum(len(s) for s in suffixes)
