"""Where entries live: in this process (LRU), or in Redis shared by every gateway worker.

A backend stores opaque bytes under a key with a TTL. A cache is an
optimisation, so a backend never fails a request: the in-process one cannot,
and the Redis one turns every Redis error into a miss (or a skipped write),
logs the outage once, and stops trying for a few seconds so a dead Redis costs
no latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger("powertrain.cache")

T = TypeVar("T")
Clock = Callable[[], float]


class CacheBackend(Protocol):
    """Bytes by key, each with a time to live in seconds."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value``; whether it was stored (a cache may decline, or be down)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def clear(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryBackend:
    """An LRU in this process, bounded by entry count and by bytes, with a TTL per entry.

    A lock (not an ``asyncio.Lock``) guards it: no operation awaits while holding
    it, so it is safe from the event loop and from worker threads alike. Bytes
    count keys and values, not Python's own overhead (about 200 bytes an entry).
    """

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock = time.monotonic):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            slot = self._entries.get(key)
            if slot is None:
                return None
            value, expires = slot
            if expires <= self._clock():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return value

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        size = len(key) + len(value)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if size > self.max_bytes:
                return False  # could never fit; keeping it would empty the cache for one entry
            self._entries[key] = (value, self._clock() + ttl)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            return True

    async def delete(self, key: str) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key)

    async def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    async def aclose(self) -> None:
        await self.clear()

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(key) + len(value)


class RedisConnection:
    """One Redis client, the key layout under a prefix, and the rule that errors are misses.

    Keys share one hash tag (``{prefix}``), so the Lua steps that touch an
    entry and its index stay on one slot of a cluster (and one node holds them).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "powertrain:cache",
        timeout: float = 0.5,
        pause: float = 5.0,
        client: Any = None,
    ):
        if client is None:
            client = _client(url, timeout)
        self.client: Any = client
        self.url = url
        self.prefix = prefix
        self._tag = "{" + prefix + "}"
        self._pause = pause
        self._down_until = 0.0
        self._outage = False
        self._scripts: dict[str, Any] = {}

    def key(self, *parts: str) -> str:
        return ":".join((self._tag, *parts))

    def script(self, source: str) -> Any:
        """A registered Lua script (EVALSHA, falling back to EVAL once per server)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def run(self, what: str, op: Callable[[], Awaitable[T]], default: T) -> T:
        """``op``'s result, or ``default`` when Redis is down or fails (logged once)."""
        if not self.available:
            return default
        from redis.exceptions import RedisError

        try:
            result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self._pause
            if not self._outage:
                self._outage = True
                log.warning(
                    "cache: Redis at %s failed (%s: %s) during %s; serving without the shared "
                    "cache and retrying every %g s",
                    _redacted(self.url),
                    type(exc).__name__,
                    exc,
                    what,
                    self._pause,
                )
            return default
        if self._outage:
            self._outage = False
            log.warning("cache: Redis at %s is reachable again", _redacted(self.url))
        return result

    async def clear(self) -> None:
        """Delete every key under this prefix (SCAN, not KEYS, so Redis never stalls)."""

        async def scan_and_unlink() -> None:
            batch: list[bytes] = []
            async for name in self.client.scan_iter(match=_glob_escape(self._tag) + ":*"):
                batch.append(name)
                if len(batch) >= 500:
                    await self.client.unlink(*batch)
                    batch.clear()
            if batch:
                await self.client.unlink(*batch)

        await self.run("clear", scan_and_unlink, None)

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing a client whose server is gone must not raise
            log.debug("cache: closing the Redis client failed", exc_info=True)


# SET the entry, index it by expiry time, drop index members that expired, and
# trim the index (and the entries) to max entries, soonest-to-expire first.
_SET_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, name in ipairs(old) do redis.call('DEL', name) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return over
"""


class RedisBackend:
    """Entries in Redis with ``PX`` expiry, shared by every worker using the same prefix.

    Bounded by entry count per prefix: a sorted set indexes entries by expiry
    time, and each write (one Lua step) trims it, evicting the entries closest
    to expiry. Bytes are bounded by Redis itself (``maxmemory`` and an eviction
    policy), since expiries Redis applies on its own would make a byte counter drift.
    """

    def __init__(self, connection: RedisConnection, *, max_entries: int):
        self.connection = connection
        self.max_entries = max_entries
        self._index = connection.key("index")

    def _entry(self, key: str) -> str:
        return self.connection.key("e", key)

    async def get(self, key: str) -> bytes | None:
        client = self.connection.client
        value: bytes | None = await self.connection.run(
            "get", lambda: client.get(self._entry(key)), None
        )
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        ttl_ms = max(1, round(ttl * 1000))
        now_ms = round(time.time() * 1000)
        script = self.connection.script(_SET_SCRIPT)

        async def write() -> bool:
            await script(
                keys=[self._entry(key), self._index],
                args=[value, ttl_ms, now_ms + ttl_ms, now_ms, self.max_entries],
            )
            return True

        return await self.connection.run("set", write, False)

    async def delete(self, key: str) -> None:
        name = self._entry(key)

        async def unindex() -> None:
            async with self.connection.client.pipeline(transaction=True) as pipe:
                pipe.delete(name)
                pipe.zrem(self._index, name)
                await pipe.execute()

        await self.connection.run("delete", unindex, None)

    async def clear(self) -> None:
        await self.connection.clear()

    async def aclose(self) -> None:
        await self.connection.aclose()


def _client(url: str, timeout: float) -> Any:
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:  # pragma: no cover - redis is a dependency
        from powertrain.errors import ConfigError

        raise ConfigError(
            "the Redis cache needs the redis package: pip install 'redis>=5'"
        ) from None
    # No retries and short timeouts: a cache that waits on a sick Redis is slower than none.
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
    )


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
