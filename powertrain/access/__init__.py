"""Access control as a library: virtual keys, rate limits and budgets (no HTTP here)."""

from powertrain.access.gate import AccessGate, Admission
from powertrain.access.keys import KeyService
from powertrain.access.limits import Decision, Limiter, MemoryLimiter, RedisLimiter

__all__ = [
    "AccessGate",
    "Admission",
    "Decision",
    "KeyService",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
]
