"""When the cache may answer and when it may remember: the policy and one request's decision.

Two things decide, and the stricter wins:

- the policy (configuration, or a task's own): is the cache on, and is this
  request deterministic enough to cache? A sampled request (temperature above
  0 with no seed) is neither read nor written unless ``cache_sampled`` is set,
  because serving a stored sample turns "regenerate" into "repeat".
  Semantic matching has its own, lower, temperature ceiling.
- the request: ``Cache-Control: no-cache`` (or ``max-age=0``) skips the read,
  ``no-store`` skips the write, ``max-age=N`` accepts only entries up to N
  seconds old; ``x-powertrain-cache: bypass`` skips both and ``refresh`` skips
  the read only; the body option ``"cache": false | "bypass" | "refresh"``
  does the same as the header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from powertrain.errors import InvalidRequest

REQUEST_HEADER = "x-powertrain-cache"  # also the response header: hit | miss | bypass
CacheOption = bool | Literal["bypass", "refresh"]  # the request body's ``cache`` field
_HEADER_VALUES = ("bypass", "refresh")

MiB = 2**20


class CachePolicy(BaseModel):
    """``[cache]`` in ``powertrain.toml`` (and a task's own cache policy)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl: float = Field(default=3600.0, gt=0, description="Seconds an entry is served.")
    max_entries: int = Field(default=10_000, ge=1, description="Entries kept (LRU beyond).")
    max_bytes: int = Field(
        default=64 * MiB, ge=1, description="Bytes of stored responses kept (in process only)."
    )
    max_entry_bytes: int = Field(
        default=1 * MiB, ge=1, description="A larger response is answered but not stored."
    )
    cache_sampled: bool = Field(
        default=False,
        description="Also cache requests that sample (temperature above 0 and no seed).",
    )
    unset_temperature: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="The temperature assumed when neither the request nor the catalog sets "
        "one (OpenAI's default is 1; llama.cpp here samples at 0.8).",
    )
    shared_across_keys: bool = Field(
        default=False, description="Let every API key read entries other keys wrote."
    )
    semantic: bool = Field(default=False, description="Also match by meaning.")
    semantic_model: str = Field(
        default="minilm", description="Catalog alias of the embedding model."
    )
    semantic_threshold: float = Field(
        default=0.95, gt=0, le=1, description="Cosine similarity a match must reach."
    )
    semantic_max_temperature: float = Field(
        default=0.0, ge=0, le=2, description="Match by meaning only at or below this."
    )
    semantic_max_entries: int = Field(
        default=1000, ge=1, le=100_000, description="Vectors kept per scope (oldest go)."
    )
    semantic_max_chars: int = Field(
        default=1000,
        ge=1,
        description="Longer messages are matched exactly only (the embedder truncates).",
    )

    def is_sampled(self, temperature: float | None, seed: int | None) -> bool:
        """Whether two identical requests may get different answers."""
        effective = self.unset_temperature if temperature is None else temperature
        return effective > 0 and seed is None

    def decide(
        self,
        *,
        temperature: float | None,
        seed: int | None,
        headers: Mapping[str, str] | None = None,
        option: object = None,
    ) -> CacheDecision:
        """This request's decision: the policy's, narrowed by what the request asks."""
        asked = request_directives(headers, option)
        if not self.enabled:
            return CacheDecision(read=False, write=False, semantic=False, reason="disabled")
        if self.is_sampled(temperature, seed) and not self.cache_sampled:
            return CacheDecision(read=False, write=False, semantic=False, reason="sampled")
        effective = self.unset_temperature if temperature is None else temperature
        semantic = self.semantic and effective <= self.semantic_max_temperature
        return CacheDecision(
            read=asked.read,
            write=asked.write,
            semantic=semantic and (asked.read or asked.write),
            max_age=asked.max_age,
            reason=asked.reason,
        )


@dataclass(frozen=True)
class CacheDecision:
    """Whether one request may be answered from the cache, and may be remembered.

    ``reason`` says why a read or a write is off (``disabled``, ``sampled``,
    ``no-cache``, ``no-store``, ``max-age``, ``bypass``, ``refresh``), for the trace.
    """

    read: bool
    write: bool
    semantic: bool = False
    max_age: float | None = None
    reason: str | None = None

    @property
    def bypassed(self) -> bool:
        return not self.read and not self.write


@dataclass(frozen=True)
class RequestDirectives:
    read: bool = True
    write: bool = True
    max_age: float | None = None
    reason: str | None = None


def request_directives(
    headers: Mapping[str, str] | None, option: object = None
) -> RequestDirectives:
    """What the caller asked for, from headers (any case) and the body's ``cache`` option."""
    read = write = True
    max_age: float | None = None
    reasons: list[str] = []
    lowered = {k.lower(): v for k, v in (headers or {}).items()}

    for directive in _cache_control(lowered.get("cache-control", "")):
        name, _, value = directive.partition("=")
        if name == "no-cache":
            read = False
            reasons.append("no-cache")
        elif name == "no-store":
            write = False
            reasons.append("no-store")
        elif name == "max-age":
            seconds = _seconds(value)
            if seconds is None:
                continue  # an unparseable directive is ignored, as HTTP caches do
            if seconds == 0:
                read = False
                reasons.append("max-age")
            max_age = seconds if max_age is None else min(max_age, seconds)

    header = lowered.get(REQUEST_HEADER)
    if header is not None:
        value = header.strip().lower()
        if value not in _HEADER_VALUES:
            raise InvalidRequest(
                f"header {REQUEST_HEADER}: {header!r} is not understood; send "
                f"{' or '.join(_HEADER_VALUES)}, or leave it out to use the cache"
            )
        read, write = _apply(value, read, write)
        reasons.append(value)

    if option is not None and option is not True:
        if option is False:
            option = "bypass"
        if option not in _HEADER_VALUES:
            raise InvalidRequest(
                f'"cache": {option!r} is not understood; use true, false, "bypass" or "refresh"',
                param="cache",
            )
        assert isinstance(option, str)
        read, write = _apply(option, read, write)
        reasons.append(option)

    return RequestDirectives(
        read=read, write=write, max_age=max_age, reason=",".join(reasons) or None
    )


def _apply(value: str, read: bool, write: bool) -> tuple[bool, bool]:
    if value == "bypass":
        return False, False
    return False, write  # refresh: answer fresh, and remember it


def _cache_control(value: str) -> list[str]:
    return [d.strip().lower() for d in value.split(",") if d.strip()]


def _seconds(value: str) -> float | None:
    try:
        seconds = int(value.strip().strip('"'))
    except ValueError:
        return None
    return float(seconds) if seconds >= 0 else None
