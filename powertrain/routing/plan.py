"""A route plan: the models one call may use, in order, and why each is there.

The ordering functions here are pure (no breakers, no I/O), so every strategy
can be checked on its own; :class:`powertrain.routing.router.Router` applies
the context-window and breaker filters and builds the plan.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from powertrain.engines.base import estimate_tokens, prompt_text
from powertrain.routing.retry import FailureKind
from powertrain.schemas import ChatCompletionRequest

Reason = Literal[
    "primary",  # the first model of a fallback route, or a plain model alias
    "fallback",  # a later model of a fallback route, or any model after the chosen one
    "split",  # chosen by a weighted split
    "cascade",  # a step of a cost cascade
    "semantic",  # the target whose examples the query matched
    "semantic_default",  # no target matched well enough
    "forced",  # every model's breaker was open; tried anyway
]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What routing needs to know about a request (and nothing else)."""

    prompt_tokens: int | None = None  # the gateway's count or estimate of the prompt
    max_output_tokens: int | None = None
    user: str | None = None  # the request's ``user`` field (sticky splits)
    api_key_id: str | None = None  # the caller's key id (sticky splits)
    text: str | None = None  # the last user message (semantic routing)

    @classmethod
    def of(
        cls,
        request: ChatCompletionRequest,
        *,
        prompt_tokens: int | None = None,
        api_key_id: str | None = None,
    ) -> RequestInfo:
        """From a chat request; ``prompt_tokens`` defaults to a tokenizer-free estimate."""
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        return cls(
            prompt_tokens=(
                prompt_tokens
                if prompt_tokens is not None
                else estimate_tokens(prompt_text(request))
            ),
            max_output_tokens=request.max_output_tokens,
            user=request.user,
            api_key_id=api_key_id,
            text=last_user.text() if last_user is not None else None,
        )

    @property
    def needed_tokens(self) -> int | None:
        """Prompt plus the output the caller asked room for, when the prompt is known."""
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens + (self.max_output_tokens or 0)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model a call may be sent to."""

    model: str
    reason: Reason
    detail: str = ""  # "weight 90 of 100", "step 1 of 2", "billing 0.83"
    engine: str | None = None
    context_window: int | None = None
    price_input: float = 0.0  # USD per 1M tokens, for the attempt's cost
    price_output: float = 0.0
    similarity: float | None = None  # semantic routing: the matched target's score
    forced: bool = False

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input + completion_tokens * self.price_output) / 1e6

    def fits(self, tokens: int | None) -> bool:
        return tokens is None or self.context_window is None or tokens <= self.context_window

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "reason": self.reason}
        if self.detail:
            out["detail"] = self.detail
        if self.similarity is not None:
            out["similarity"] = round(self.similarity, 4)
        return out


@dataclass(frozen=True, slots=True)
class Skipped:
    model: str
    why: str

    def describe(self) -> dict[str, str]:
        return {"model": self.model, "why": self.why}


@dataclass(frozen=True)
class RoutePlan:
    """The ordered candidates for one call, and the settings its execution follows."""

    route: str  # the route name, or the model alias for a plain model call
    strategy: str  # fallback | split | cascade | semantic | model
    candidates: tuple[Candidate, ...]
    skipped: tuple[Skipped, ...] = ()
    fallback_on: frozenset[FailureKind] = frozenset()
    needed_tokens: int | None = None
    when_all_open: str = "try_oldest"
    # cascade only: what makes an answer not good enough
    escalate_on: frozenset[str] = frozenset()
    min_confidence: float | None = None
    semantic_scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [c.model for c in self.candidates]

    def describe(self) -> dict[str, Any]:
        """A plain dict for the trace (``trace.metadata["route"]``)."""
        out: dict[str, Any] = {
            "route": self.route,
            "strategy": self.strategy,
            "candidates": [c.describe() for c in self.candidates],
        }
        if self.skipped:
            out["skipped"] = [s.describe() for s in self.skipped]
        if self.semantic_scores:
            out["semantic_scores"] = {k: round(v, 4) for k, v in self.semantic_scores.items()}
        return out


# ------------------------------------------------------------------ ordering


def unit_interval(key: str) -> float:
    """A stable point in [0, 1) for ``key`` (the same hashing as task variants use), so
    a sticky caller lands on the same model every time."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_order(
    route: str,
    weights: Mapping[str, float],
    *,
    sticky_key: str | None = None,
    rng: random.Random | None = None,
) -> list[tuple[str, str]]:
    """``(model, detail)`` for a weighted split: the chosen model first, then the others
    by weight (heaviest first) as fallbacks. Weight-0 models are never chosen first."""
    total = sum(w for w in weights.values() if w > 0)
    positive = [(name, w) for name, w in sorted(weights.items()) if w > 0]
    if sticky_key is not None:
        point = unit_interval(f"{route}\0{sticky_key}") * total
    else:
        point = (rng or _random).random() * total
    chosen = positive[-1][0]
    for name, weight in positive:
        point -= weight
        if point < 0:
            chosen = name
            break
    rest = sorted((n for n in weights if n != chosen), key=lambda n: (-weights[n], n))
    detail = f"weight {weights[chosen]:g} of {total:g}" + (" (sticky)" if sticky_key else "")
    return [(chosen, detail)] + [(n, f"weight {weights[n]:g}") for n in rest]


def cascade_order(models: Sequence[str]) -> list[tuple[str, str]]:
    return [(m, f"step {i} of {len(models)}") for i, m in enumerate(models, 1)]


_random = random.SystemRandom()
