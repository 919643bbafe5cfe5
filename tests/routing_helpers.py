"""What the routing tests share: a catalog with prices and windows, a fake clock and embedder."""

from __future__ import annotations

import tomllib
from typing import Any

import numpy as np

from powertrain.catalog import Catalog
from powertrain.routing import Breakers, RoutingConfig, parse_routes
from powertrain.routing.breaker import BreakerSettings

MODELS = """
[models.small]
engine = "llamacpp"
context_window = 4096

[models.mini]
engine = "openai"
model = "gpt-4o-mini"
price_input = 0.15
price_output = 0.60
context_window = 16000

[models.big]
engine = "openai"
model = "gpt-4o"
price_input = 2.5
price_output = 10.0
context_window = 128000

[models.embedder]
engine = "sentence-transformers"
"""


def catalog() -> Catalog:
    return Catalog.from_config(tomllib.loads(MODELS)["models"])


def routes(text: str) -> RoutingConfig:
    return parse_routes(tomllib.loads(text)["routes"], catalog())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breakers(clock: FakeClock, threshold: int = 2, cooldown: float = 10.0) -> Breakers:
    return Breakers(BreakerSettings(threshold, cooldown), clock=clock)


# Deterministic "embeddings": one axis per topic word, so similarities are known exactly.
TOPICS = ["charge", "card", "transfer", "weather"]


def topic_vector(text: str) -> list[float]:
    lowered = text.lower()
    vector = [float(lowered.count(word)) for word in TOPICS]
    vector.append(0.3)  # shared by every text: no two texts are orthogonal
    return vector


class FakeEmbedder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail = False

    async def __call__(self, texts: list[str]) -> Any:
        self.calls.append(list(texts))
        if self.fail:
            raise RuntimeError("embedder down")
        return np.array([topic_vector(t) for t in texts])
