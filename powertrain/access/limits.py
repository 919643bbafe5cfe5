"""Token buckets for requests and tokens per minute: in process, or shared through Redis.

A bucket holds up to one minute's allowance and refills continuously at
``limit / 60`` per second, so a key may burst to its whole per-minute limit and
then goes at the steady rate. ``take`` removes ``amount`` if it is there and
otherwise says how long until it will be; ``adjust`` corrects a bucket after
the fact (a call that used more or fewer tokens than it was charged) without
refusing anything, and may leave a small debt (down to minus one minute's
allowance) that later requests wait out.

``RedisLimiter`` runs each check as one Lua script, atomic across every worker
that shares the Redis, on Redis's clock (workers' clocks do not matter), and
lets idle buckets expire. If Redis cannot be reached it falls back to a
per-worker bucket and logs it, rather than failing every call.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("powertrain.access")

WINDOW_SECONDS = 60.0
_KEY_PREFIX = "powertrain:limit:"


@dataclass(frozen=True)
class Decision:
    """``allowed``, or the seconds until ``amount`` would be there (None: never fits)."""

    allowed: bool
    retry_after: float | None = None


ALLOWED = Decision(True)


class Limiter(ABC):
    """Token buckets named by the caller, each sized by its per-minute ``limit``."""

    async def take(self, bucket: str, limit: int, amount: int = 1) -> Decision:
        """Remove ``amount`` from the bucket, or refuse with a wait and remove nothing."""
        if amount > limit:
            return Decision(False, None)  # more than a whole minute's allowance
        if amount <= 0:
            return ALLOWED
        return await self._take(bucket, limit, amount)

    @abstractmethod
    async def _take(self, bucket: str, limit: int, amount: int) -> Decision: ...

    @abstractmethod
    async def adjust(self, bucket: str, limit: int, amount: int) -> None:
        """Charge ``amount`` more (or, negative, give it back) without refusing."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryLimiter(Limiter):
    """Buckets in this process (one worker, or a fallback)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._clock = clock

    def _level(self, bucket: str, limit: int, now: float) -> float:
        tokens, at = self._buckets.get(bucket, (float(limit), now))
        return min(float(limit), tokens + (now - at) * limit / WINDOW_SECONDS)

    async def _take(self, bucket: str, limit: int, amount: int) -> Decision:
        now = self._clock()
        tokens = self._level(bucket, limit, now)
        if tokens >= amount:
            self._buckets[bucket] = (tokens - amount, now)
            return ALLOWED
        self._buckets[bucket] = (tokens, now)
        return Decision(False, (amount - tokens) * WINDOW_SECONDS / limit)

    async def adjust(self, bucket: str, limit: int, amount: int) -> None:
        now = self._clock()
        tokens = self._level(bucket, limit, now) - amount
        self._buckets[bucket] = (max(-float(limit), min(float(limit), tokens)), now)


# KEYS[1]: the bucket. ARGV: limit per minute, amount, mode (1 take, 0 adjust), ttl (s).
# Returns {allowed (0/1), seconds to wait as a string (Lua numbers reach the client as
# integers)}. TIME is Redis's clock; with effect replication (Redis >= 5, the default
# from 7) a script may read it before writing.
_BUCKET_LUA = """
local limit = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local take = ARGV[3] == '1'
local rate = limit / 60.0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1])
local at = tonumber(saved[2])
if tokens == nil or at == nil then
  tokens = limit
  at = now
end
tokens = math.min(limit, tokens + math.max(0, now - at) * rate)
local allowed = 1
local wait = 0
if take then
  if tokens >= amount then
    tokens = tokens - amount
  else
    allowed = 0
    wait = (amount - tokens) / rate
  end
else
  tokens = math.max(-limit, math.min(limit, tokens - amount))
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {allowed, tostring(wait)}
"""

# An idle bucket refills completely within a window (twice, from the deepest debt);
# after that it is indistinguishable from a new one, so Redis may forget it.
_TTL_SECONDS = int(WINDOW_SECONDS * 2) + 5
_FALLBACK_LOG_EVERY = 30.0
_REDIS_TIMEOUT = 1.0
_RETRY_REDIS_AFTER = 5.0


class RedisLimiter(Limiter):
    """Buckets in Redis, shared by every worker pointed at it."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        if client is None:
            # Short timeouts: a limit check must not hold a call up for long when Redis
            # is in trouble; the per-worker fallback takes over instead.
            client = redis.Redis.from_url(
                url, socket_connect_timeout=_REDIS_TIMEOUT, socket_timeout=_REDIS_TIMEOUT
            )
        self._redis = client
        self._script = client.register_script(_BUCKET_LUA)
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError, RedisError)
        self._fallback = MemoryLimiter()
        self._down_until = -math.inf
        self._last_warning = -math.inf

    async def _run(self, bucket: str, limit: int, amount: int, take: bool) -> Decision | None:
        """The script's answer, or None when Redis is unreachable (then: the fallback)."""
        now = time.monotonic()
        if now < self._down_until:
            return None
        try:
            allowed, wait = await self._script(
                keys=[_KEY_PREFIX + bucket], args=[limit, amount, 1 if take else 0, _TTL_SECONDS]
            )
        except self._errors as exc:
            # Don't ask again for a while: every call would wait out the timeout.
            self._down_until = now + _RETRY_REDIS_AFTER
            if now - self._last_warning > _FALLBACK_LOG_EVERY:
                self._last_warning = now
                log.warning(
                    "rate limits: Redis is unreachable (%s); limiting per worker until it is back",
                    type(exc).__name__,
                )
            return None
        return ALLOWED if int(allowed) else Decision(False, float(wait))

    async def _take(self, bucket: str, limit: int, amount: int) -> Decision:
        decision = await self._run(bucket, limit, amount, take=True)
        if decision is None:
            return await self._fallback._take(bucket, limit, amount)
        return decision

    async def adjust(self, bucket: str, limit: int, amount: int) -> None:
        if amount and await self._run(bucket, limit, amount, take=False) is None:
            await self._fallback.adjust(bucket, limit, amount)

    async def aclose(self) -> None:
        await self._redis.aclose()
