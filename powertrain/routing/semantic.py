"""The semantic router: send a query to the route whose example queries it is closest to.

Each target's examples are embedded once (by an injected ``embed`` function,
so the library never loads a model), as unit vectors. A query is embedded
and scored against every target as the mean of its ``top_k`` highest cosine
similarities to that target's examples (``top_k = 1``: the single nearest
example, the default, chosen by measurement; see docs/routing.md). The best
target wins if its score reaches ``threshold``; otherwise the default model
serves the query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from powertrain.errors import ConfigError

# Texts in, one row per text out (a list of lists or an array), e.g. the bundled
# ``minilm`` model's vectors; ``powertrain.cache.engine_embedder`` makes one from an engine.
EmbedFn = Callable[[list[str]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    model: str
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SemanticChoice:
    """Where a query goes, and why."""

    model: str
    target: str | None  # None: no target reached the threshold, the default serves it
    best: str  # the best-scoring target, even when under the threshold
    similarity: float  # the best target's score
    scores: dict[str, float]  # every target's score, for the trace

    @property
    def matched(self) -> bool:
        return self.target is not None


def unit_rows(vectors: Any) -> np.ndarray:
    """``vectors`` as float32 rows of length 1 (a zero row stays zero and matches nothing)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return array / norms  # type: ignore[no-any-return]


def target_scores(similarities: np.ndarray, top_k: int) -> float:
    """A target's score from the query's cosine to each of its examples: the mean of the
    ``top_k`` highest (all of them when it has fewer)."""
    if similarities.size == 0:
        return -1.0
    k = min(top_k, similarities.size)
    if k == 1:
        return float(similarities.max())
    return float(np.sort(similarities)[-k:].mean())


class SemanticRouter:
    """Classifies queries among targets; thread- and task-safe once prepared."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        default: str,
        threshold: float,
        embed: EmbedFn,
        top_k: int = 1,
    ):
        if not targets:
            raise ConfigError("a semantic router needs at least one target")
        self.targets = tuple(targets)
        self.default = default
        self.threshold = threshold
        self.top_k = top_k
        self._embed = embed
        self._matrix: np.ndarray | None = None
        self._owners: np.ndarray | None = None  # target index of each row
        self._lock = asyncio.Lock()

    @classmethod
    def from_routes(
        cls,
        routes: Mapping[str, tuple[str, Sequence[str]]],
        *,
        default: str,
        threshold: float,
        embed: EmbedFn,
        top_k: int = 1,
    ) -> SemanticRouter:
        """From ``{target: (model, examples)}``."""
        targets = [Target(name, model, tuple(ex)) for name, (model, ex) in routes.items()]
        return cls(targets, default=default, threshold=threshold, embed=embed, top_k=top_k)

    @property
    def prepared(self) -> bool:
        return self._matrix is not None

    async def prepare(self) -> None:
        """Embed every example (once; later calls return at once)."""
        if self._matrix is not None:
            return
        async with self._lock:
            if self._matrix is not None:
                return
            texts = [text for t in self.targets for text in t.examples]
            owners = [i for i, t in enumerate(self.targets) for _ in t.examples]
            matrix = unit_rows(await self._embed(texts))
            if matrix.shape[0] != len(texts):
                raise ConfigError(
                    f"the embedding model returned {matrix.shape[0]} vectors for "
                    f"{len(texts)} examples"
                )
            self._owners = np.asarray(owners)
            self._matrix = matrix

    def score(self, query: Any) -> dict[str, float]:
        """Every target's score for one query vector (after :meth:`prepare`)."""
        assert self._matrix is not None and self._owners is not None, "call prepare() first"
        similarities = self._matrix @ unit_rows(query)[0]
        return {
            t.name: target_scores(similarities[self._owners == i], self.top_k)
            for i, t in enumerate(self.targets)
        }

    def choose(self, scores: Mapping[str, float]) -> SemanticChoice:
        best = max(self.targets, key=lambda t: scores[t.name])
        similarity = scores[best.name]
        matched = similarity >= self.threshold
        return SemanticChoice(
            model=best.model if matched else self.default,
            target=best.name if matched else None,
            best=best.name,
            similarity=similarity,
            scores=dict(scores),
        )

    async def classify(self, text: str) -> SemanticChoice:
        """Where ``text`` goes: embeds the examples on first use, then the query."""
        await self.prepare()
        vectors = unit_rows(await self._embed([text]))
        return self.choose(self.score(vectors[0]))
