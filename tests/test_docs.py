"""Settings and engine options are documented (the docs cannot drift from the code)."""

from __future__ import annotations

from pathlib import Path

from powertrain.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for name, _default, _help in Settings.describe():
        assert f"| `{name}` | `POWERTRAIN_{name.upper()}` |" in text, name


def test_llamacpp_options_are_documented() -> None:
    text = DOCS.read_text()
    for option in ("n_threads", "n_ctx", "queue_size", "lora_path"):
        assert f"| `{option}` |" in text, option
