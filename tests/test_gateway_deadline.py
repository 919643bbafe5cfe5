"""The request deadline on streams: one timer, which interrupts only waits on the engine."""

from __future__ import annotations

import asyncio

import pytest

from powertrain.calls import _StreamDeadline


async def test_expiry_during_a_wait_becomes_a_timeout() -> None:
    deadline = _StreamDeadline(0.05)
    with pytest.raises(TimeoutError):
        await deadline.wait(asyncio.sleep(5))
    deadline.close()
    # The task is not left cancelled: it can go on awaiting.
    await asyncio.sleep(0)


async def test_expiry_between_waits_is_raised_at_the_next_wait() -> None:
    deadline = _StreamDeadline(0.02)
    assert await deadline.wait(asyncio.sleep(0, result="first")) == "first"
    await asyncio.sleep(0.05)  # the caller's own await (e.g. a slow client): not interrupted
    with pytest.raises(TimeoutError):
        await deadline.wait(asyncio.sleep(0))
    deadline.close()


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    deadline = _StreamDeadline(10)
    task = asyncio.ensure_future(deadline.wait(asyncio.sleep(5)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline.close()


async def test_closed_deadline_never_fires() -> None:
    deadline = _StreamDeadline(0.01)
    deadline.close()
    await asyncio.sleep(0.03)
    assert not deadline.expired
    assert await deadline.wait(asyncio.sleep(0, result=1)) == 1
