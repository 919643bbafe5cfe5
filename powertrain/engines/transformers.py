"""``transformers``: a GGUF model in PyTorch, with a PEFT adapter, served without llama.cpp.

The fallback for adapters llama.cpp cannot serve (prompt tuning, LoRA variants
that do not export to GGUF) and a reference for the ones it can. The GGUF is
loaded into PyTorch (``torch_gguf.load_causal_lm``), the adapter applied with
PEFT — a LoRA merged into the weights, so it runs at the base model's speed —
and prompts are the exact token ids the llamacpp engine evaluates
(``GGUFChat``), so training and every engine see the same tokens.

Generation runs on one ``LocalWorker`` thread per loaded model with a KV cache,
one token at a time: greedy at temperature 0, otherwise seeded sampling
(temperature, top_p, penalties, logit_bias), stopped by the end-of-turn token,
a stop string or ``max_tokens``, and cancelled between tokens when the caller
leaves. Output is not constrained to JSON schemas (no grammar here): a task's
runner validates and repairs instead.
"""

from __future__ import annotations

import codecs
import os
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from powertrain.catalog import ModelConfig
from powertrain.engines._local_chat import LocalChatEngine, Sampling, SharedModels, stop_strings
from powertrain.engines._local_worker import Job, LocalWorker
from powertrain.engines.base import Capabilities, Engine
from powertrain.engines.bundled import smollm2_path
from powertrain.engines.gguf_chat import GGUFChat
from powertrain.engines.torch_gguf import load_causal_lm, set_torch_threads
from powertrain.errors import (
    ConfigError,
    ContextWindowExceeded,
    InvalidRequest,
)
from powertrain.plugins import hookimpl
from powertrain.schemas import ChatCompletionRequest

# Prompt-learning adapters whose learned prefix is a block of input embeddings.
_PREFIX_ADAPTERS = ("PROMPT_TUNING", "P_TUNING")


class TransformersOptions(BaseModel):
    """``[models.<alias>.options]`` of a transformers model."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, description="A PEFT adapter directory.")
    n_threads: int | None = Field(default=None, ge=1)
    queue_size: int = Field(default=16, ge=0)


LoadKey = tuple[Path, Path | None, int, int]  # GGUF, adapter, threads, queue size


class LoadedCausalLM:
    """One GGUF in PyTorch (with its adapter applied), its tokens and its worker."""

    def __init__(self, path: Path, *, adapter: Path | None, n_threads: int, queue_size: int):
        self.chat = GGUFChat.open(path)
        self.end_ids = self.chat.end_of_generation_ids()
        self.n_threads = set_torch_threads(n_threads)
        base = load_causal_lm(path)
        self.model, self.prefix = _with_adapter(base, adapter, path.name)
        virtual = 0 if self.prefix is None else int(self.prefix.shape[1])
        # The window is the GGUF's (its context_length), less the adapter's virtual tokens.
        self.n_ctx = int(base.config.max_position_embeddings) - virtual
        self.vocab = int(base.config.vocab_size)
        label = path.stem if adapter is None else f"{path.stem}+{adapter.name}"
        self.worker = LocalWorker(label, queue_size)

    def prompt_tokens(self, request: ChatCompletionRequest) -> list[int]:
        return self.chat.prompt_tokens([(m.role, m.text()) for m in request.messages])

    def generate(
        self,
        job: Job,
        tokens: list[int],
        sampling: Sampling,
        max_tokens: int,
        stops: list[str],
        counter: dict[str, int],
    ) -> Iterator[tuple[str, str | None]]:
        """Runs in the worker thread: ``(text, finish_reason)`` pieces, the last one finishing."""
        import torch

        set_torch_threads(self.n_threads)
        choose = TokenChooser(sampling, self.vocab)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(stops)
        finish = "length"
        with torch.inference_mode():
            logits, cache = self._prefill(tokens)
            while counter["completion"] < max_tokens and not job.cancelled.is_set():
                token = choose(logits)
                if token in self.end_ids:
                    finish = "stop"
                    break
                counter["completion"] += 1
                text, stopped = scanner.feed(decoder.decode(self.chat.token_bytes(token)))
                if stopped:
                    yield text, "stop"
                    return
                if text:
                    yield text, None
                if counter["completion"] < max_tokens:
                    logits, cache = self._step(token, cache)
        yield scanner.feed(decoder.decode(b"", final=True))[0] + scanner.flush(), finish

    def _prefill(self, tokens: list[int]) -> tuple[Any, Any]:
        import torch

        ids = torch.tensor([tokens])
        if self.prefix is None:
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        else:  # prompt tuning: the learned embeddings go first, as PEFT trains them
            embeds = self.model.get_input_embeddings()(ids)
            joined = torch.cat([self.prefix, embeds], dim=1)
            out = self.model(inputs_embeds=joined, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.cache

    def _step(self, token: int, cache: Any) -> tuple[Any, Any]:
        import torch

        out = self.model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
        return out.logits[0, -1], out.cache

    def close(self) -> None:
        self.worker.shutdown()  # waits for the thread: nothing generates while we free
        self.model = None
        self.prefix = None


def _with_adapter(model: Any, adapter: Path | None, base_name: str) -> tuple[Any, Any]:
    """The model to run, and the prompt-tuning prefix embeddings (None for other adapters)."""
    if adapter is None:
        return model, None
    import torch
    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            # PEFT reads a property transformers has deprecated; not ours to act on.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            tuned = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"adapter {adapter.name!r} cannot be applied to {base_name}: {first}"
        ) from None
    config = tuned.active_peft_config
    if not config.is_prompt_learning:
        # LoRA and the other weight adapters: merged once, then served at the base's speed.
        return tuned.merge_and_unload(), None
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind not in _PREFIX_ADAPTERS:
        raise ConfigError(
            f"adapter {adapter.name!r} is {kind}; the transformers engine serves LoRA-style "
            f"adapters and {', '.join(_PREFIX_ADAPTERS)}"
        )
    with torch.inference_mode():
        prefix = tuned.get_prompt(batch_size=1).to(torch.float32)
    return tuned.get_base_model(), prefix


class TokenChooser:
    """Picks each next token from the logits: greedy at temperature 0, else a seeded sample."""

    def __init__(self, sampling: Sampling, vocab: int):
        import torch

        self.sampling = sampling
        self.greedy = sampling.temperature == 0
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.counts = torch.zeros(vocab)
        self.bias = torch.zeros(vocab)
        for token, value in sampling.logit_bias.items():
            self.bias[token] = value

    def __call__(self, logits: Any) -> int:
        import torch

        s = self.sampling
        logits = logits.float() + self.bias
        if s.frequency_penalty or s.presence_penalty:  # OpenAI's definition, per token so far
            logits = logits - s.frequency_penalty * self.counts
            logits = logits - s.presence_penalty * (self.counts > 0).float()
        if self.greedy:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / s.temperature, dim=-1)
            if s.top_p < 1.0:
                ordered, order = torch.sort(probs, descending=True)
                before = torch.cumsum(ordered, dim=-1) - ordered
                ordered[before >= s.top_p] = 0.0  # keeps the most likely token always
                probs = torch.zeros_like(probs).scatter_(0, order, ordered)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.counts[token] += 1
        return token


class StopScanner:
    """Streamed text cut at the first stop string; text that may begin one is held back."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((self._overlap(s) for s in self.stops), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _overlap(self, stop: str) -> int:
        """The longest end of the pending text that is a beginning of ``stop``."""
        for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if stop.startswith(self.pending[-size:]):
                return size
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _load(key: LoadKey) -> LoadedCausalLM:
    path, adapter, n_threads, queue_size = key
    return LoadedCausalLM(path, adapter=adapter, n_threads=n_threads, queue_size=queue_size)


_models: SharedModels[LoadKey, LoadedCausalLM] = SharedModels(_load)


class TransformersEngine(LocalChatEngine[LoadKey, LoadedCausalLM]):
    name: ClassVar[str] = "transformers"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, json_schema=False, exact_token_count=True
    )

    def __init__(self, model: ModelConfig):
        super().__init__(model)
        where = f"[models.{model.alias}.options]"
        known = ", ".join(TransformersOptions.model_fields)
        unknown = sorted(set(model.options) - set(TransformersOptions.model_fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown transformers option(s) {', '.join(unknown)} (known: {known})"
            )
        try:
            options = TransformersOptions.model_validate(model.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(
                f"{where} {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
            ) from None
        path = Path(model.model).expanduser() if model.model else smollm2_path()
        if not path.is_file():
            raise ConfigError(f"[models.{model.alias}] GGUF file {str(path)!r} does not exist")
        adapter = Path(options.adapter).expanduser() if options.adapter else None
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise ConfigError(
                f"{where} adapter {str(adapter)!r} is not a PEFT adapter directory "
                "(no adapter_config.json)"
            )
        key: LoadKey = (
            path.resolve(),
            adapter.resolve() if adapter else None,
            options.n_threads or os.cpu_count() or 1,
            options.queue_size,
        )
        self._share(_models, key)

    @property
    def context_window(self) -> int | None:
        """The GGUF's window (less prompt tuning's virtual tokens), or the catalog's if smaller."""
        configured = self.model.context_window
        if self._loaded is None:
            return configured
        return min(self._loaded.n_ctx, configured or self._loaded.n_ctx)

    def count_text(self, text: str) -> int:
        return len(self.loaded.chat.tokenize(text, special=False, add_bos=False))

    def _submit(self, request: ChatCompletionRequest) -> tuple[Job, int, dict[str, int]]:
        loaded = self.loaded
        self.check_supported(request)
        tokens = loaded.prompt_tokens(request)
        window = self.context_window or loaded.n_ctx
        if len(tokens) > window:  # the gateway refuses these first; direct callers too
            raise ContextWindowExceeded(
                f"the prompt is {len(tokens)} tokens but model {self.model.alias!r} has a "
                f"context window of {window} tokens; shorten the messages",
                param="messages",
            )
        sampling = Sampling.of(request)
        if any(not 0 <= t < loaded.vocab for t in sampling.logit_bias):
            raise InvalidRequest(
                f"logit_bias token ids must be below the vocabulary size {loaded.vocab}",
                param="logit_bias",
            )
        budget = window - len(tokens)
        max_tokens = min(request.max_output_tokens or budget, budget)
        stops = stop_strings(request, loaded.chat.eos_text)
        counter = {"completion": 0}

        def work(job: Job) -> Iterator[tuple[str, str | None]]:
            return loaded.generate(job, tokens, sampling, max_tokens, stops, counter)

        return loaded.worker.submit(work), len(tokens), counter


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(TransformersEngine)
