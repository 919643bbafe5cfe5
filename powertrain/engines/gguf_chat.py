"""A GGUF's own chat template and tokenizer: the one way messages become token ids.

The llama.cpp engine serves with it, fine-tuning builds its training sequences
with it and the transformers engine prompts with it, so a model is trained on
exactly the tokens it will be served with (a template or tokenizer mismatch
would quietly cost accuracy). It reads the template and vocabulary through
llama.cpp; ``GGUFChat.open`` loads the vocabulary only, without the weights.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from powertrain.errors import ConfigError, EngineUnavailable

# Chat templates know system/user/assistant; newer OpenAI roles map onto them.
_ROLE_MAP = {"developer": "system", "tool": "user", "function": "user"}


def template_message(role: str, content: str) -> dict[str, str]:
    return {"role": _ROLE_MAP.get(role, role), "content": content}


class GGUFChat:
    """Renders messages with a GGUF's chat template and tokenizes them with its vocabulary."""

    def __init__(self, llm: Any, name: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"{name} has no chat template; it cannot serve chat")
        vocab_token = llm._model.token_get_text
        self.eos_id: int = llm.token_eos()
        self.eos_text: str = vocab_token(self.eos_id)
        bos_id = llm.token_bos()
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.eos_text,
            bos_token=vocab_token(bos_id) if bos_id >= 0 else "",
        )
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> GGUFChat:
        """The template and vocabulary of the GGUF at ``path`` (no weights are loaded)."""
        try:
            from llama_cpp import Llama
        except ImportError:  # pragma: no cover - a declared dependency
            raise EngineUnavailable("reading a GGUF needs llama-cpp-python") from None
        if not path.is_file():
            raise ConfigError(f"GGUF file {str(path)!r} does not exist")
        return cls(Llama(model_path=str(path), vocab_only=True, verbose=False), path.name)

    def prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt text for ``(role, content)`` pairs, ending where the reply begins."""
        rendered = [template_message(role, content) for role, content in messages]
        return self.formatter(messages=rendered).prompt  # type: ignore[arg-type]

    def prompt_tokens(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of the prompt, exactly as the llama.cpp engine evaluates it."""
        return self.tokenize(self.prompt(messages), special=True, add_bos=True)

    def reply_tokens(self, text: str) -> list[int]:
        """Token ids of a reply as the model writes it after the prompt, ending its turn."""
        return [*self.tokenize(text, special=False, add_bos=False), self.eos_id]

    def tokenize(self, text: str, *, special: bool, add_bos: bool) -> list[int]:
        with self._lock:  # llama.cpp's tokenizer is not documented as thread-safe
            return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def detokenize(self, tokens: Sequence[int]) -> str:
        with self._lock:
            return bytes(self.llm.detokenize(list(tokens))).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The bytes one generated token writes; a character may span several tokens, so a
        streaming decoder joins them (special tokens write nothing, as when llama.cpp serves)."""
        with self._lock:
            return bytes(self.llm.detokenize([token]))

    def end_of_generation_ids(self) -> frozenset[int]:
        """Every token that ends a reply (end of turn, end of text), as llama.cpp stops on."""
        from llama_cpp import llama_vocab_is_eog

        vocab = self.llm._model.vocab
        return frozenset(t for t in range(self.llm.n_vocab()) if llama_vocab_is_eog(vocab, t))
