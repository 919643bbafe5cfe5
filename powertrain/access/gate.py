"""The limits stage of the request path: admit a keyed call, then settle what it used.

``count_request`` runs first, before any work is spent on a call (requests
per minute). ``admit`` runs once its model and final request are known, before
the engine is called: tokens per minute (the prompt plus the most it may
write), then the budget, where the call's worst-case cost is held in the store. ``settle`` runs when the call finishes, from its trace:
the token bucket is corrected to the tokens actually used and the hold is
replaced by the actual cost. Calls without a virtual key (the admin key, no
authentication, the CLI and Python API) are not limited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from powertrain.access.keys import KeyService
from powertrain.access.limits import Limiter
from powertrain.catalog import ModelConfig
from powertrain.errors import AuthenticationError, BudgetExceeded, KeyRateLimited
from powertrain.store.keys import ApiKeyRecord, to_nano, to_usd

log = logging.getLogger("powertrain.access")

# The completion a call without max_tokens is assumed to write, for its holds: at
# most this, and never more than its model's window leaves. Setting max_tokens
# makes the hold exact.
DEFAULT_OUTPUT_HOLD = 4096
_SETTLE_RETRIES = (0.2, 1.0, 5.0, 15.0, 30.0)


@dataclass(frozen=True)
class Admission:
    """What an admitted call was charged up front, to be settled when it finishes."""

    key: ApiKeyRecord
    tokens: int  # taken from the key's tokens-per-minute bucket
    held_nano: int  # held from the key's budget


def _usd(nano: int) -> str:
    return f"${to_usd(nano):.6f}".rstrip("0").rstrip(".") if nano else "$0"


class AccessGate:
    def __init__(self, keys: KeyService, limiter: Limiter) -> None:
        self.keys = keys
        self.limiter = limiter
        self._settling: set[asyncio.Task[None]] = set()

    async def count_request(self, key: ApiKeyRecord) -> None:
        """Take one request from the key's requests-per-minute bucket, or raise a 429."""
        if not key.rpm:
            return
        decision = await self.limiter.take(f"{key.id}:rpm", key.rpm)
        if not decision.allowed:
            raise KeyRateLimited(
                f"API key {key.name!r} is over its limit of {key.rpm} requests per minute; "
                "retry after the time in Retry-After, or ask an admin to raise its rpm",
                retry_after=decision.retry_after,
            )

    async def admit(
        self,
        key: ApiKeyRecord,
        model: ModelConfig,
        *,
        prompt_tokens: Callable[[], int],
        max_output_tokens: int | None,
        window: int | None,
        attempts: int = 1,
    ) -> Admission:
        """Take the call's tokens and hold its cost, or raise a 429.

        ``attempts`` is how many engine calls it may make (a task's repairs): the hold
        covers all of them.
        """
        need_tokens = bool(key.tpm) or key.budget_nano is not None
        prompt = prompt_tokens() if need_tokens else 0
        output = max_output_tokens
        if output is None:
            room = window - prompt if window else DEFAULT_OUTPUT_HOLD
            output = max(0, min(DEFAULT_OUTPUT_HOLD, room))
        tokens = (prompt + output) * attempts if need_tokens else 0
        if key.tpm:
            decision = await self.limiter.take(f"{key.id}:tpm", key.tpm, tokens)
            if not decision.allowed:
                if decision.retry_after is None:
                    raise KeyRateLimited(
                        f"this request may use {tokens} tokens, more than API key {key.name!r} "
                        f"may use in a minute ({key.tpm}); lower max_tokens or shorten the "
                        "prompt, or ask an admin to raise its tpm"
                    )
                raise KeyRateLimited(
                    f"API key {key.name!r} is over its limit of {key.tpm} tokens per minute "
                    f"(this request may use {tokens}); retry after the time in Retry-After, "
                    "or ask an admin to raise its tpm",
                    retry_after=decision.retry_after,
                )
        held = 0
        if key.budget_nano is not None:
            held = to_nano(model.cost(prompt, output)) * attempts
            try:
                await self._hold(key, held)
            except BaseException:
                if key.tpm:
                    await self.limiter.adjust(f"{key.id}:tpm", key.tpm, -tokens)
                raise
        return Admission(key=key, tokens=tokens if key.tpm else 0, held_nano=held)

    async def _hold(self, key: ApiKeyRecord, amount: int) -> None:
        if amount == 0:
            return  # a free (local) model: nothing to hold, whatever the budget says
        if await self._reserve(key, amount):
            return
        fresh = await asyncio.to_thread(self.keys.store.get, key.id)
        if fresh is None or fresh.revoked:
            self.keys.forget(key.id)
            raise AuthenticationError("this API key has been revoked")
        budget = fresh.budget_nano or 0
        in_flight = ""
        retry_after = None
        if fresh.reserved_nano:
            in_flight = f" ({_usd(fresh.reserved_nano)} more is held by calls in flight)"
            if fresh.spend_nano + amount <= budget:
                retry_after = 1.0  # it fits once those calls finish
        raise BudgetExceeded(
            f"API key {fresh.name!r} has spent {_usd(fresh.spend_nano)} of its "
            f"{_usd(budget)} budget{in_flight}, and this call may cost up to {_usd(amount)}; "
            f"lower max_tokens, or ask an admin to raise it "
            f"(powertrain keys update {fresh.id} --budget <usd>)",
            retry_after=retry_after,
        )

    async def _reserve(self, key: ApiKeyRecord, amount: int) -> bool:
        reserving = asyncio.ensure_future(
            asyncio.to_thread(self.keys.store.reserve, key.id, amount)
        )
        try:
            return await asyncio.shield(reserving)
        except asyncio.CancelledError:
            # The caller left while the store was answering: a hold it made is released.
            def release(done: asyncio.Future[bool]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    self.settle_soon(Admission(key, 0, amount), tokens=0, cost_usd=0.0)

            reserving.add_done_callback(release)
            raise

    # -- after the call ------------------------------------------------------------------
    async def settle(self, admission: Admission, *, tokens: int, cost_usd: float) -> None:
        """Correct the token bucket and swap the hold for the actual cost."""
        key = admission.key
        if key.tpm and tokens != admission.tokens:
            await self.limiter.adjust(f"{key.id}:tpm", key.tpm, tokens - admission.tokens)
        actual = to_nano(cost_usd) if cost_usd > 0 else 0
        if admission.held_nano == 0 and actual == 0:
            return
        for pause in (*_SETTLE_RETRIES, None):
            try:
                await asyncio.to_thread(self.keys.store.settle, key.id, admission.held_nano, actual)
                return
            except Exception as exc:
                if pause is None:
                    log.error(
                        "could not record %s spent by API key %s (hold %s): %s",
                        _usd(actual),
                        key.id,
                        _usd(admission.held_nano),
                        type(exc).__name__,
                    )
                    return
                await asyncio.sleep(pause)

    def settle_soon(self, admission: Admission, *, tokens: int, cost_usd: float) -> None:
        """``settle`` in the background (a call finishes synchronously); ``aclose`` waits."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a call finished during interpreter teardown)
            asyncio.run(self.settle(admission, tokens=tokens, cost_usd=cost_usd))
            return
        task = loop.create_task(self.settle(admission, tokens=tokens, cost_usd=cost_usd))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait until every finished call's spend is recorded."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self.limiter.aclose()
