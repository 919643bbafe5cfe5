"""Keeping configured secrets out of everything we emit.

Upstreams sometimes echo the key they were given in an error message; a
``SecretScrubber`` replaces every configured secret value wherever text leaves
the process (error responses, traces, logs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

MASK = "[redacted]"


class SecretScrubber:
    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # As they appear inside JSON text (escaping included), for the quick check in deep().
        self._encoded = [orjson.dumps(s)[1:-1] for s in self._secrets]

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def appears_in(self, value: Any) -> bool:
        """Whether any secret occurs anywhere in ``value`` (one C-speed serialisation)."""
        if not self._secrets:
            return False
        try:
            encoded = orjson.dumps(value)
        except TypeError:
            return True  # cannot tell cheaply: let the caller scrub field by field
        return any(s in encoded for s in self._encoded)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def deep(self, value: Any) -> Any:
        """Scrub strings anywhere inside dicts and lists."""
        if not self._secrets:
            return value
        if isinstance(value, dict | list) and not self.appears_in(value):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.deep(k): self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value
