"""Response caching: exact and by meaning, in process or in Redis shared by every worker.

See docs/cache.md for what is in a key, the policies, bypass headers and limits.
"""

from powertrain.cache.backends import (
    CacheBackend,
    MemoryBackend,
    RedisBackend,
    RedisConnection,
)
from powertrain.cache.cache import (
    RESPONSE_HEADER,
    CacheHit,
    HeaderValue,
    ResponseCache,
    header_value,
)
from powertrain.cache.entry import CachedResponse
from powertrain.cache.keys import KEY_VERSION, RequestFingerprint, TaskRef, fingerprint
from powertrain.cache.policy import (
    REQUEST_HEADER,
    CacheDecision,
    CacheOption,
    CachePolicy,
    request_directives,
)
from powertrain.cache.semantic import (
    EmbedFn,
    MemorySemanticIndex,
    RedisSemanticIndex,
    SemanticIndex,
    SemanticMatch,
    engine_embedder,
)

__all__ = [
    "KEY_VERSION",
    "REQUEST_HEADER",
    "RESPONSE_HEADER",
    "CacheBackend",
    "CacheDecision",
    "CacheHit",
    "CacheOption",
    "CachePolicy",
    "CachedResponse",
    "EmbedFn",
    "HeaderValue",
    "MemoryBackend",
    "MemorySemanticIndex",
    "RedisBackend",
    "RedisConnection",
    "RedisSemanticIndex",
    "RequestFingerprint",
    "ResponseCache",
    "SemanticIndex",
    "SemanticMatch",
    "TaskRef",
    "engine_embedder",
    "fingerprint",
    "header_value",
    "request_directives",
]
