"""A PEFT LoRA adapter, written as a GGUF LoRA adapter that llama.cpp serves (``lora_path``).

Fine-tuning trains the adapter in PyTorch against the GGUF's own weights (see
``engines/torch_gguf.py``); this module writes it in the format llama.cpp's
adapter loader reads, so the llamacpp engine can serve the tuned model at its
own speed. What that loader checks, and what this writer therefore does:

- metadata ``general.type = adapter``, ``general.architecture`` equal to the
  base's, ``adapter.type = lora`` and ``adapter.lora.alpha``;
- one ``blk.N.<gguf name>.weight.lora_a`` / ``.lora_b`` pair per adapted
  matrix, ``lora_a`` of shape (rank, in) and ``lora_b`` (out, rank) as numpy
  sees them (llama.cpp refuses mismatched shapes), float32;
- llama.cpp scales ``B·A`` by ``alpha / rank`` with each pair's own rank, as
  PEFT does, so ranks that differ per module (``rank_pattern``) need nothing;
  rsLoRA's ``alpha / sqrt(rank)`` is folded into ``lora_b``.

Converting a llama model to GGUF permutes the rows of ``q`` and ``k`` so that
llama.cpp's rotary embedding sees each head's halves interleaved; transformers
undoes that when it loads a GGUF, so the adapter is in Hugging Face layout and
its ``lora_b`` rows for ``q_proj`` and ``k_proj`` need the same permutation.
Without it the adapter still loads and quietly computes something else.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from powertrain.errors import ConfigError

# PEFT module names in a llama decoder layer → the tensor names llama.cpp gives them.
GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
SUPPORTED_ARCHITECTURES = ("llama",)

# PEFT LoRA variants that change the computation beyond B·A (or add weights of their
# own); a GGUF LoRA adapter cannot express them, so an adapter using one is refused.
_VARIANTS = {
    "use_dora": "DoRA",
    "bias": "trained biases",
    "lora_bias": "trained LoRA biases",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "trainable_token_indices": "trained token embeddings",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D) layers",
    "layer_replication": "layer replication",
    "alpha_pattern": "per-module lora_alpha (alpha_pattern)",
    "alora_invocation_tokens": "activated LoRA",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "block-diagonal LoRA",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
    "arrow_config": "Arrow routing",
}
_KEY = re.compile(
    r"(?:^|\.)layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<module>\w+)\.lora_(?P<ab>[AB])\.weight$"
)


class AdapterExportUnsupported(ConfigError):
    """The adapter is valid but cannot be written as a GGUF LoRA adapter; serve it with
    the transformers engine instead."""


@dataclass(frozen=True)
class BaseShape:
    """What the export needs to know of the base GGUF."""

    name: str
    architecture: str
    n_head: int
    n_head_kv: int
    n_layer: int
    tensors: dict[str, tuple[int, ...]]  # name → shape as numpy sees it (rows, columns)


def export_gguf_lora(peft_dir: Path, base_gguf: Path, out: Path) -> Path:
    """Write the PEFT LoRA adapter in ``peft_dir``, trained on ``base_gguf``, as a GGUF LoRA
    adapter at ``out`` (atomically) and return ``out``.

    Raises ``AdapterExportUnsupported`` (a ``ConfigError``) with a one-line reason when the
    adapter cannot be expressed as one, and ``ConfigError`` for missing or unreadable files.
    """
    return _export(Path(peft_dir), Path(base_gguf), Path(out), permute_qk=True)


def _export(peft_dir: Path, base_gguf: Path, out: Path, *, permute_qk: bool) -> Path:
    """``export_gguf_lora``; ``permute_qk=False`` writes the wrong, unpermuted adapter, which
    only the tests want (to show the permutation is needed)."""
    config = _read_config(peft_dir)
    base = read_base(base_gguf)
    alpha = float(config.get("lora_alpha") or 0)
    if alpha <= 0:
        raise AdapterExportUnsupported(
            f"{peft_dir.name}: lora_alpha {alpha:g} is not positive; llama.cpp cannot scale by it"
        )
    tensors = _gguf_tensors(
        _read_weights(peft_dir), base, rslora=bool(config.get("use_rslora")), permute=permute_qk
    )
    return _write(out, base.architecture, alpha, tensors)


def read_base(path: Path) -> BaseShape:
    """Architecture, head counts and tensor shapes of a GGUF, read without its weights."""
    if not path.is_file():
        raise ConfigError(f"base GGUF {str(path)!r} does not exist")
    stat = path.stat()
    return _read_base(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_base(path: Path, _mtime_ns: int, _size: int) -> BaseShape:
    """``read_base`` for one version of a file (the reader parses the whole vocabulary,
    seconds for a 49k-token model; every export of a job's adapters reads the same base)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path.name} is not a readable GGUF file ({exc})") from None

    def field(key: str) -> Any:
        found = reader.get_field(key)
        return None if found is None else found.contents()

    arch = str(field("general.architecture") or "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise AdapterExportUnsupported(
            f"{path.name} is a {arch or 'unknown'}-architecture model; GGUF LoRA export "
            f"supports {', '.join(SUPPORTED_ARCHITECTURES)} (serve the adapter with the "
            "transformers engine)"
        )
    n_head = field(f"{arch}.attention.head_count")
    n_head_kv = field(f"{arch}.attention.head_count_kv") or n_head
    n_layer = field(f"{arch}.block_count")
    if not isinstance(n_head, int) or not isinstance(n_head_kv, int) or not n_layer:
        raise AdapterExportUnsupported(
            f"{path.name} does not declare one head count and one kv head count per layer"
        )
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    return BaseShape(path.name, arch, n_head, n_head_kv, int(n_layer), shapes)


def _read_config(peft_dir: Path) -> dict[str, Any]:
    path = peft_dir / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(
            f"{str(peft_dir)!r} is not a PEFT adapter directory (no adapter_config.json)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterExportUnsupported(
            f"{peft_dir.name} is a {kind or 'unknown'} adapter, not LoRA; only LoRA exports to "
            "GGUF (serve it with the transformers engine)"
        )
    for key, what in _VARIANTS.items():
        value = config.get(key)
        if value not in (None, False, "none", [], {}):
            raise AdapterExportUnsupported(
                f"{peft_dir.name} uses {what} ({key}={json.dumps(value)[:60]}), which a GGUF "
                "LoRA adapter cannot express (serve it with the transformers engine)"
            )
    return config


def _read_weights(peft_dir: Path) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 arrays, by PEFT's key."""
    import torch

    safetensors = peft_dir / "adapter_model.safetensors"
    pickled = peft_dir / "adapter_model.bin"
    if safetensors.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors), device="cpu")
    elif pickled.is_file():
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    else:
        raise ConfigError(
            f"{str(peft_dir)!r} has no adapter weights (adapter_model.safetensors or .bin)"
        )
    return {key: value.to(torch.float32).numpy() for key, value in state.items()}


def _gguf_tensors(
    weights: dict[str, np.ndarray], base: BaseShape, *, rslora: bool, permute: bool
) -> dict[str, np.ndarray]:
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        match = _KEY.search(key)
        if match is None:
            raise AdapterExportUnsupported(
                f"adapter tensor {key!r} is not a LoRA matrix of a decoder layer's "
                f"{', '.join(GGUF_NAMES)}; it has no GGUF LoRA equivalent"
            )
        module = match["module"]
        if module not in GGUF_NAMES:
            raise AdapterExportUnsupported(
                f"the adapter targets {module!r}, which has no GGUF name (supported: "
                f"{', '.join(GGUF_NAMES)})"
            )
        pairs.setdefault((int(match["layer"]), module), {})[match["ab"]] = value
    if not pairs:
        raise AdapterExportUnsupported("the adapter has no LoRA matrices")
    tensors: dict[str, np.ndarray] = {}
    for (layer, module), pair in sorted(pairs.items()):
        name = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"the adapter has lora_{''.join(pair)} but not both for {name}")
        a, b = _checked_pair(name, pair["A"], pair["B"], base)
        rank = a.shape[0]
        if rslora:  # PEFT scales by alpha/sqrt(rank); llama.cpp by alpha/rank
            b = b * math.sqrt(rank)
        if permute and module in ("q_proj", "k_proj"):
            b = permute_rows(b, base.n_head if module == "q_proj" else base.n_head_kv)
        tensors[f"{name}.lora_a"] = np.ascontiguousarray(a, dtype=np.float32)
        tensors[f"{name}.lora_b"] = np.ascontiguousarray(b, dtype=np.float32)
    return tensors


def _checked_pair(
    name: str, a: np.ndarray, b: np.ndarray, base: BaseShape
) -> tuple[np.ndarray, np.ndarray]:
    target = base.tensors.get(name)
    if target is None:
        raise AdapterExportUnsupported(
            f"{base.name} has no tensor {name}; was the adapter trained on another model?"
        )
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or target != (b.shape[0], a.shape[1]):
        raise AdapterExportUnsupported(
            f"the adapter's {name} is {b.shape[0]}x{a.shape[1]} (ranks {a.shape[0]}, "
            f"{b.shape[-1]}) but {base.name} has {target[0]}x{target[-1]}; was it trained "
            "on another model?"
        )
    return a, b


def permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face → GGUF order of a q/k projection's output rows.

    Within each head, Hugging Face's rotary embedding pairs dimension i with
    i + head_dim/2; llama.cpp's pairs 2i with 2i + 1. Row 2i (+1) of a GGUF head
    is therefore row i (+ head_dim/2) of the Hugging Face head.
    """
    out = rows.shape[0]
    half = out // n_head // 2
    return rows.reshape(n_head, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _write(out: Path, arch: str, alpha: float, tensors: dict[str, np.ndarray]) -> Path:
    from gguf import GGUFWriter, Keys

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        writer = GGUFWriter(temp, arch=arch)
        writer.add_type("adapter")
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, alpha)
        for name, value in tensors.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return out
