"""A GGUF model's weights in PyTorch, for training adapters and serving them without llama.cpp.

transformers reads the GGUF (``gguf_file=``) and dequantizes it to float32, so
an adapter is trained against the same weights llama.cpp serves (to within its
quantisation). Loading is quiet: transformers' progress bars and notices would
otherwise interleave with our own output.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from powertrain.errors import ConfigError, EngineUnavailable

_threads_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    import importlib

    # Untyped modules: reached through Any so strict typing stays meaningful elsewhere.
    gguf_loader: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    hf_logging: Any = importlib.import_module("transformers.utils.logging")

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The GGUF reader draws its own tqdm bar, which transformers' switch does not reach.
    gguf_bar = getattr(gguf_loader, "tqdm", None)
    if gguf_bar is not None:
        gguf_loader.tqdm = lambda iterable, *_a, **_k: iterable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices inside transformers' loader
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_bar is not None:
            gguf_loader.tqdm = gguf_bar


def set_torch_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads in PyTorch (default: every core); returns the number."""
    import torch

    wanted = max(1, int(threads or os.cpu_count() or 1))
    with _threads_lock:
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
    return wanted


def load_causal_lm(path: Path) -> Any:
    """The GGUF at ``path`` as a float32 ``transformers`` causal LM in eval mode."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:  # pragma: no cover - declared dependencies
        raise EngineUnavailable(
            "loading a GGUF into PyTorch needs torch, transformers and gguf: "
            "pip install torch==2.13.0 transformers gguf"
        ) from None
    if not path.is_file():
        raise ConfigError(f"GGUF file {str(path)!r} does not exist")
    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
        except (ValueError, KeyError, NotImplementedError) as exc:
            raise ConfigError(
                f"transformers cannot load {path.name} into PyTorch ({exc}); fine-tuning and "
                "the transformers engine support the GGUF architectures transformers reads"
            ) from None
    model.eval()  # type: ignore[no-untyped-call]
    return model
