"""Combining rankings: reciprocal rank fusion, and maximal marginal relevance for diversity.

RRF needs no score calibration between BM25 and cosine similarity (they live on
different scales); only ranks matter. ``k = 60`` is the constant from Cormack,
Clarke and Büttcher (2009), which damps the head of each list without ignoring
its tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], *, k: int = RRF_K
) -> list[tuple[int, float]]:
    """Ids from several best-first lists, fused: (id, score) best first, ties by first seen."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))


def maximal_marginal_relevance(
    candidates: Sequence[tuple[int, float]],
    similarity: Callable[[int, int], float],
    *,
    k: int,
    diversity: float = 0.3,
) -> list[tuple[int, float]]:
    """Pick ``k`` of ``candidates`` (id, relevance) trading relevance for novelty.

    ``diversity`` 0 keeps the relevance order; 1 picks the most different ones.
    Relevance is scaled by the best score (to at most 1) so it is comparable to
    similarity; scaling by the range instead would zero the last candidate.
    """
    if not candidates or k <= 0:
        return []
    top = max(score for _, score in candidates)
    low = min(score for _, score in candidates)
    if top > 0 and low >= 0:
        relevance = {item: score / top for item, score in candidates}
    else:
        span = (top - low) or 1.0
        relevance = {item: (score - low) / span for item, score in candidates}
    chosen: list[tuple[int, float]] = []
    remaining = dict(candidates)
    while remaining and len(chosen) < k:

        def gain(item: int) -> float:
            redundancy = max((similarity(item, c) for c, _ in chosen), default=0.0)
            return (1 - diversity) * relevance[item] - diversity * redundancy

        best = max(remaining, key=gain)
        chosen.append((best, remaining.pop(best)))
    return chosen
