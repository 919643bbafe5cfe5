"""The in-process cache: LRU and TTL bounds, exact and semantic hits, isolation, what a hit says."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from powertrain.cache import (
    CachedResponse,
    CachePolicy,
    MemoryBackend,
    MemorySemanticIndex,
    ResponseCache,
    TaskRef,
    header_value,
)
from powertrain.schemas import ChatCompletionRequest, Usage


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(text: str = "What is the capital of France?", **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "gpt",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text},
        ],
        "temperature": 0,
    }
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def answer(content: str = "Paris.", *, finish_reason: str = "stop") -> CachedResponse:
    body = {
        "id": "chatcmpl-original",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
    }
    return CachedResponse.of(body, cost_usd=0.0021, latency_ms=850.0, trace_id="tr_original")


def answer_at(clock: Clock) -> CachedResponse:
    base = answer()
    return CachedResponse.of(
        base.body, cost_usd=base.cost_usd, latency_ms=base.latency_ms, created_at=clock()
    )


class FakeEmbedder:
    """Fixed vectors by text, and a count of the texts it was asked to embed."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


FRANCE = "What is the capital of France?"
FRANCE_2 = "Which city is the capital of France?"
GERMANY = "What is the capital of Germany?"
VECTORS = {
    FRANCE: [1.0, 0.0, 0.0],
    FRANCE_2: [0.98, 0.199, 0.0],  # cosine 0.98 with FRANCE
    GERMANY: [0.8, 0.6, 0.0],  # cosine 0.8
}


# -- the backend --------------------------------------------------------------------


async def test_memory_backend_expires_entries_by_ttl() -> None:
    clock = Clock()
    backend = MemoryBackend(max_entries=10, max_bytes=10_000, clock=clock)
    await backend.set("a", b"1", ttl=10)
    await backend.set("b", b"2", ttl=30)
    clock.advance(9.9)
    assert await backend.get("a") == b"1"
    clock.advance(0.1)
    assert await backend.get("a") is None
    assert await backend.get("b") == b"2"
    assert len(backend) == 1 and backend.nbytes == 2


async def test_memory_backend_evicts_least_recently_used_beyond_max_entries() -> None:
    backend = MemoryBackend(max_entries=3, max_bytes=10_000)
    for name in "abc":
        await backend.set(name, name.encode(), ttl=60)
    assert await backend.get("a") == b"a"  # a is now the most recently used
    await backend.set("d", b"d", ttl=60)
    assert await backend.get("b") is None
    assert [await backend.get(n) for n in "acd"] == [b"a", b"c", b"d"]
    assert len(backend) == 3


async def test_memory_backend_evicts_by_bytes_and_skips_what_cannot_fit() -> None:
    backend = MemoryBackend(max_entries=100, max_bytes=100)
    await backend.set("a", b"x" * 40, ttl=60)  # 41 bytes with its key
    await backend.set("b", b"x" * 40, ttl=60)
    await backend.set("c", b"x" * 40, ttl=60)  # 123 > 100: a goes
    assert await backend.get("a") is None
    assert backend.nbytes == 82
    await backend.set("huge", b"x" * 200, ttl=60)
    assert await backend.get("huge") is None
    assert await backend.get("b") is not None and await backend.get("c") is not None
    await backend.set("b", b"y", ttl=60)  # replacing an entry frees its old bytes
    assert backend.nbytes == 41 + 2
    await backend.delete("b")
    await backend.clear()
    assert len(backend) == 0 and backend.nbytes == 0


# -- exact hits ---------------------------------------------------------------------------


async def test_exact_hit_carries_the_answer_and_what_it_saved() -> None:
    cache = ResponseCache.in_memory()
    fp = cache.fingerprint(request(), api_key_id="key-a")
    decision = cache.decide(fp)
    assert await cache.lookup(fp, decision) is None
    assert await cache.store(fp, decision, answer())

    again = cache.fingerprint(request("  What is the capital of France?\n"), api_key_id="key-a")
    hit = await cache.lookup(again, cache.decide(again))
    assert hit is not None
    assert (hit.kind, hit.similarity) == ("exact", 1.0)
    assert hit.saved_cost_usd == pytest.approx(0.0021)
    assert 0 < hit.saved_ms <= 850
    assert hit.response.usage == Usage(prompt_tokens=20, completion_tokens=3)
    assert header_value(hit, decision) == "hit"
    meta = hit.trace_metadata()
    assert meta["status"] == "hit" and meta["original_trace_id"] == "tr_original"

    body = hit.response.replay_body(completion_id="chatcmpl-new", created=5)
    assert (body["id"], body["created"]) == ("chatcmpl-new", 5)
    assert body["choices"][0]["message"]["content"] == "Paris."
    assert hit.response.body["id"] == "chatcmpl-original"  # the stored body is untouched
    result = hit.response.to_result()
    assert (result.content, result.finish_reason, result.usage.completion_tokens) == (
        "Paris.",
        "stop",
        3,
    )


async def test_entries_expire_after_the_policy_ttl() -> None:
    clock = Clock()
    cache = ResponseCache.in_memory(CachePolicy(ttl=60), clock=clock)
    fp = cache.fingerprint(request(), api_key_id="k")
    decision = cache.decide(fp)
    await cache.store(fp, decision, answer())
    clock.advance(59)
    assert await cache.lookup(fp, decision) is not None
    clock.advance(1)
    assert await cache.lookup(fp, decision) is None


async def test_max_age_refuses_older_entries() -> None:
    clock = Clock()
    cache = ResponseCache.in_memory(clock=clock)
    fp = cache.fingerprint(request(), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer_at(clock))
    clock.advance(30)
    young = cache.decide(fp, headers={"Cache-Control": "max-age=60"})
    old = cache.decide(fp, headers={"Cache-Control": "max-age=10"})
    hit = await cache.lookup(fp, young)
    assert hit is not None and hit.age_s == pytest.approx(30)
    assert await cache.lookup(fp, old) is None


async def test_a_tenant_never_reads_another_tenants_entry() -> None:
    cache = ResponseCache.in_memory(CachePolicy(semantic=True))
    embed = FakeEmbedder(VECTORS)
    fp_a = cache.fingerprint(request(), api_key_id="key-a")
    await cache.store(fp_a, cache.decide(fp_a), answer("A's answer"), embed=embed)
    for text in (FRANCE, FRANCE_2):
        fp_b = cache.fingerprint(request(text), api_key_id="key-b")
        assert await cache.lookup(fp_b, cache.decide(fp_b), embed=embed) is None


async def test_tenants_share_when_the_policy_says_so() -> None:
    cache = ResponseCache.in_memory(CachePolicy(shared_across_keys=True))
    fp_a = cache.fingerprint(request(), api_key_id="key-a")
    await cache.store(fp_a, cache.decide(fp_a), answer())
    fp_b = cache.fingerprint(request(), api_key_id="key-b")
    assert await cache.lookup(fp_b, cache.decide(fp_b)) is not None


async def test_task_versions_do_not_share_entries() -> None:
    cache = ResponseCache.in_memory()
    v1 = cache.fingerprint(request(model="task:faq"), api_key_id="k", task=TaskRef("faq", 1))
    await cache.store(v1, cache.decide(v1), answer())
    v2 = cache.fingerprint(request(model="task:faq"), api_key_id="k", task=TaskRef("faq", 2))
    assert await cache.lookup(v2, cache.decide(v2)) is None
    assert await cache.lookup(v1, cache.decide(v1)) is not None


async def test_refresh_and_bypass() -> None:
    cache = ResponseCache.in_memory()
    fp = cache.fingerprint(request(), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer("old"))

    refresh = cache.decide(fp, headers={"x-powertrain-cache": "refresh"})
    assert await cache.lookup(fp, refresh) is None
    assert header_value(None, refresh) == "miss"
    assert await cache.store(fp, refresh, answer("new"))

    bypass = cache.decide(fp, option=False)
    assert await cache.lookup(fp, bypass) is None
    assert not await cache.store(fp, bypass, answer("ignored"))
    assert header_value(None, bypass) == "bypass"

    hit = await cache.lookup(fp, cache.decide(fp))
    assert hit is not None and hit.response.to_result().content == "new"


async def test_sampled_requests_are_neither_served_nor_stored_by_default() -> None:
    cache = ResponseCache.in_memory()
    fp = cache.fingerprint(request(temperature=0.9), api_key_id="k")
    decision = cache.decide(fp)
    assert not await cache.store(fp, decision, answer())
    assert len(cache.backend) == 0  # type: ignore[arg-type]
    # A task that knows its variants run at temperature 0 says so.
    assert cache.decide(fp, temperature=0).read


async def test_errors_and_oversized_answers_are_not_stored() -> None:
    cache = ResponseCache.in_memory(CachePolicy(max_entry_bytes=2_000))
    fp = cache.fingerprint(request(), api_key_id="k")
    decision = cache.decide(fp)
    assert not await cache.store(fp, decision, answer(finish_reason="error"))
    assert not await cache.store(fp, decision, answer("x" * 5_000))
    assert await cache.store(fp, decision, answer(finish_reason="length"))


async def test_unreadable_entries_are_misses() -> None:
    cache = ResponseCache.in_memory()
    fp = cache.fingerprint(request(), api_key_id="k")
    for junk in (b"not json", b'{"format": 999}', b"[]", b'{"format": 1}'):
        await cache.backend.set(fp.exact_key, junk, ttl=60)
        assert await cache.lookup(fp, cache.decide(fp)) is None


async def test_entry_round_trips_through_bytes() -> None:
    entry = answer()
    again = CachedResponse.from_bytes(entry.to_bytes())
    assert again == entry


# -- semantic hits with fixed vectors ---------------------------------------------------------


async def test_semantic_hit_above_threshold_and_miss_below() -> None:
    cache = ResponseCache.in_memory(CachePolicy(semantic=True, semantic_threshold=0.95))
    embed = FakeEmbedder(VECTORS)
    fp = cache.fingerprint(request(FRANCE), api_key_id="k")
    assert await cache.lookup(fp, cache.decide(fp), embed=embed) is None
    assert await cache.store(fp, cache.decide(fp), answer(), embed=embed)
    assert embed.calls == [[FRANCE]]  # the lookup's vector is reused by the store

    close = cache.fingerprint(request(FRANCE_2), api_key_id="k")
    hit = await cache.lookup(close, cache.decide(close), embed=embed)
    assert hit is not None
    assert hit.kind == "semantic"
    assert hit.similarity == pytest.approx(0.98, abs=1e-3)
    assert hit.trace_metadata()["kind"] == "semantic"

    far = cache.fingerprint(request(GERMANY), api_key_id="k")
    assert await cache.lookup(far, cache.decide(far), embed=embed) is None


async def test_semantic_is_off_for_sampled_requests_by_default() -> None:
    policy = CachePolicy(semantic=True, cache_sampled=True)
    cache = ResponseCache.in_memory(policy)
    embed = FakeEmbedder(VECTORS)
    fp = cache.fingerprint(request(FRANCE, temperature=0.8), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer(), embed=embed)
    close = cache.fingerprint(request(FRANCE_2, temperature=0.8), api_key_id="k")
    assert await cache.lookup(close, cache.decide(close), embed=embed) is None
    assert embed.calls == []  # never even embedded
    assert await cache.lookup(fp, cache.decide(fp), embed=embed) is not None  # exact still hits


async def test_semantic_needs_the_same_system_prompt_and_params() -> None:
    cache = ResponseCache.in_memory(CachePolicy(semantic=True))
    embed = FakeEmbedder(VECTORS)
    fp = cache.fingerprint(request(FRANCE), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer(), embed=embed)
    other_system = ChatCompletionRequest(
        model="gpt",
        temperature=0,
        messages=[
            {"role": "system", "content": "Answer in French."},  # type: ignore[list-item]
            {"role": "user", "content": FRANCE_2},  # type: ignore[list-item]
        ],
    )
    for req in (other_system, request(FRANCE_2, max_tokens=3), request(FRANCE_2, model="o")):
        other = cache.fingerprint(req, api_key_id="k")
        assert await cache.lookup(other, cache.decide(other), embed=embed) is None


async def test_semantic_skips_long_messages_and_survives_a_failing_embedder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = ResponseCache.in_memory(CachePolicy(semantic=True, semantic_max_chars=10))
    embed = FakeEmbedder(VECTORS)
    fp = cache.fingerprint(request(FRANCE), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer(), embed=embed)
    assert embed.calls == []

    async def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("embedder is down")

    cache = ResponseCache.in_memory(CachePolicy(semantic=True))
    fp = cache.fingerprint(request(FRANCE), api_key_id="k")
    with caplog.at_level(logging.WARNING, logger="powertrain.cache"):
        assert await cache.lookup(fp, cache.decide(fp), embed=broken) is None
        assert await cache.store(fp, cache.decide(fp), answer(), embed=broken)  # exact kept
        assert await cache.lookup(fp, cache.decide(fp), embed=broken) is not None
        await cache.lookup(
            cache.fingerprint(request(FRANCE_2), api_key_id="k"),
            cache.decide(fp),
            embed=broken,
        )
    warnings = [r for r in caplog.records if "embedder is down" in r.getMessage()]
    assert len(warnings) == 2  # once for lookup, once for store: not once per request


async def test_a_semantic_match_whose_entry_expired_is_dropped() -> None:
    cache = ResponseCache.in_memory(CachePolicy(semantic=True))
    embed = FakeEmbedder(VECTORS)
    fp = cache.fingerprint(request(FRANCE), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer(), embed=embed)
    await cache.backend.delete(fp.exact_key)  # evicted by the LRU, say
    close = cache.fingerprint(request(FRANCE_2), api_key_id="k")
    assert await cache.lookup(close, cache.decide(close), embed=embed) is None
    assert len(cache.index) == 0  # type: ignore[arg-type]


async def test_memory_semantic_index_bounds() -> None:
    clock = Clock()
    index = MemorySemanticIndex(max_vectors=5, clock=clock)
    basis = np.eye(4, dtype=np.float32)
    for i in range(4):
        await index.add("s1", f"k{i}", basis[i], ttl=60, max_entries=3)
    assert len(index) == 3  # per scope: the oldest (k0) went
    assert await index.search("s1", basis[0], threshold=0.9) == []
    assert [m.key for m in await index.search("s1", basis[3], threshold=0.9)] == ["k3"]

    for i in range(3):
        await index.add("s2", f"j{i}", basis[i], ttl=60, max_entries=3)
    assert len(index) == 5  # in all: s1, the least recently used scope, gave up its oldest
    assert await index.search("s1", basis[1], threshold=0.9) == []
    assert [m.key for m in await index.search("s1", basis[2], threshold=0.9)] == ["k2"]

    clock.advance(61)
    assert await index.search("s2", basis[0], threshold=0.9) == []
    assert len(index) == 2


async def test_memory_semantic_index_orders_matches_best_first() -> None:
    index = MemorySemanticIndex(max_vectors=10)
    for key, vector in {"a": [1, 0], "b": [0.96, 0.28], "c": [0.99, 0.141]}.items():
        await index.add("s", key, np.array(vector, dtype=np.float32), ttl=60, max_entries=10)
    matches = await index.search("s", np.array([1, 0], dtype=np.float32), threshold=0.95)
    assert [m.key for m in matches] == ["a", "c", "b"]
    assert matches[0].similarity == pytest.approx(1.0)
