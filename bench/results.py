"""Where every benchmark's run goes: a JSON file under bench/results/, and a table or JSON."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json`` as every benchmark takes it, for ``publish``."""
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="no FILE: print JSON instead of the table; FILE: also write JSON there",
    )


def publish(
    document: dict[str, Any], prefix: str, table: Callable[[], str], json_arg: str | None
) -> Path:
    """Save ``document``; print it as JSON (``--json``), else the table (``--json FILE`` also writes FILE)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    saved = RESULTS_DIR / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    text = json.dumps(document, indent=2)
    saved.write_text(text, encoding="utf-8")
    if json_arg == "-":
        print(text)
    else:
        if json_arg:
            Path(json_arg).write_text(text, encoding="utf-8")
        print(table())
    return saved
