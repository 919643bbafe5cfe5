"""Semantic hits with real embeddings from the bundled all-MiniLM-L6-v2, loaded offline."""

from __future__ import annotations

from typing import Any

import pytest

from powertrain.cache import CachedResponse, CachePolicy, ResponseCache, engine_embedder
from powertrain.catalog import BUNDLED_EMBEDDING_MODEL
from powertrain.engines.sentence_transformers import SentenceTransformersEngine
from powertrain.schemas import ChatCompletionRequest

pytestmark = pytest.mark.model

STORED = "What is the capital of France?"
# Measured cosines with STORED (see docs/cache.md): rephrasings above the default 0.95,
# different questions well below it.
SAME_QUESTION = ["What's the capital of France?", "  What is the capital of France? "]
OTHER_QUESTIONS = [
    "What is the capital of Germany?",  # 0.66
    "What is the population of France?",  # 0.71
    "Tell me the capital city of France.",  # 0.92: the same question, but under 0.95
]


def request(text: str, **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "gpt",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": text},
        ],
        "temperature": 0,
    }
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def answer(content: str) -> CachedResponse:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
    }
    return CachedResponse.of(body, cost_usd=0.0003, latency_ms=600.0)


async def test_real_embeddings_hit_rephrasings_and_miss_other_questions() -> None:
    engine = SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL)
    await engine.start()
    try:
        embed = engine_embedder(engine, timeout=30)
        cache = ResponseCache.in_memory(CachePolicy(semantic=True))
        fp = cache.fingerprint(request(STORED), api_key_id="k")
        assert await cache.store(fp, cache.decide(fp), answer("Paris"), embed=embed)

        for text in SAME_QUESTION:
            probe = cache.fingerprint(request(text), api_key_id="k")
            hit = await cache.lookup(probe, cache.decide(probe), embed=embed)
            assert hit is not None, text
            assert hit.response.to_result().content == "Paris"
            assert hit.similarity >= 0.95
            assert hit.saved_cost_usd == pytest.approx(0.0003)

        for text in OTHER_QUESTIONS:
            probe = cache.fingerprint(request(text), api_key_id="k")
            assert await cache.lookup(probe, cache.decide(probe), embed=embed) is None, text

        # The same rephrasing misses for another key, and when the request samples.
        other_key = cache.fingerprint(request(SAME_QUESTION[0]), api_key_id="other")
        assert await cache.lookup(other_key, cache.decide(other_key), embed=embed) is None
        warm = cache.fingerprint(request(SAME_QUESTION[0], temperature=0.7), api_key_id="k")
        assert await cache.lookup(warm, cache.decide(warm), embed=embed) is None

        # A lower threshold, configured per task, accepts a looser rephrasing.
        loose = CachePolicy(semantic=True, semantic_threshold=0.9)
        probe = cache.fingerprint(request(OTHER_QUESTIONS[2]), api_key_id="k", policy=loose)
        hit = await cache.lookup(
            probe, cache.decide(probe, policy=loose), embed=embed, policy=loose
        )
        assert hit is not None and 0.9 <= hit.similarity < 0.95
    finally:
        await engine.aclose()
