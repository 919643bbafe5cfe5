"""Rank fusion and diversity, on small cases whose answers can be worked out by hand."""

from __future__ import annotations

from powertrain.rag.fusion import maximal_marginal_relevance, reciprocal_rank_fusion


def test_rrf_rewards_agreement_between_rankings() -> None:
    vector = [1, 2, 3, 4]
    keyword = [3, 9, 1]
    fused = reciprocal_rank_fusion([vector, keyword], k=60)
    ids = [i for i, _ in fused]
    # 1 and 3 appear in both lists and beat anything seen once.
    assert ids[:2] == [1, 3]
    assert set(ids) == {1, 2, 3, 4, 9}
    assert fused[0][1] == 1 / 61 + 1 / 63
    # One list alone keeps its order.
    assert [i for i, _ in reciprocal_rank_fusion([[5, 6, 7]])] == [5, 6, 7]
    assert reciprocal_rank_fusion([]) == []


def test_mmr_skips_near_duplicates_but_keeps_order_without_diversity() -> None:
    candidates = [(1, 0.9), (2, 0.89), (3, 0.5)]
    twins = {frozenset({1, 2}): 0.99, frozenset({1, 3}): 0.1, frozenset({2, 3}): 0.1}

    def similarity(a: int, b: int) -> float:
        return twins[frozenset({a, b})]

    assert [
        i for i, _ in maximal_marginal_relevance(candidates, similarity, k=2, diversity=0.0)
    ] == [1, 2]
    picked = maximal_marginal_relevance(candidates, similarity, k=2, diversity=0.5)
    assert [i for i, _ in picked] == [1, 3]  # 2 repeats 1
    assert picked[1] == (3, 0.5)  # the original relevance is reported
    assert maximal_marginal_relevance([], similarity, k=3) == []
