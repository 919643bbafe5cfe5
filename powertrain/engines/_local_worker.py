"""Running a local model off the event loop, one generation at a time, with a bounded queue.

A local model can serve one generation at a time per loaded copy. Requests
beyond the one running wait in a queue of fixed size; past that the caller is
told to come back (``EngineOverloaded`` with a ``Retry-After`` estimate)
instead of piling up unbounded. Each job can be cancelled: a queued job never
starts, a running one stops at its next token, and its slot is freed.

Every in-process model runs on one shared thread, the *compute lane*, and so
does in-process training. llama.cpp and PyTorch share one OpenMP runtime, which
gives every calling thread a team of worker threads of its own, and a second
team on the same cores slows the first down, idle or not: llama.cpp calls took
1.04 s instead of 0.44 s beside a second llama.cpp model on its own thread, and
0.73 s instead of 0.41 s after a LoRA training step ran on another thread (on
the lane: 0.45 s). On a CPU each model already uses every core, so taking
turns loses nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any, TypeVar

from powertrain.errors import EngineOverloaded

_DONE = object()
T = TypeVar("T")


@dataclass(eq=False)  # jobs are tracked by identity
class Job:
    """One generation: its token stream, its cancel flag and what it measured."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    compute_seconds: float = 0.0

    def emit(self, item: Any) -> None:
        """Called from the worker thread: hand one item to the event loop."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled.set()

    async def items(self) -> AsyncIterator[Any]:
        """Items in order until the job ends; re-raises the worker's exception."""
        while True:
            item = await self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


_lane: ThreadPoolExecutor | None = None
_lane_lock = threading.Lock()
_here = threading.local()


def _mark_lane() -> None:
    _here.on_lane = True


def compute_lane() -> ThreadPoolExecutor:
    """The one thread this process runs its models and its training on."""
    global _lane
    with _lane_lock:
        if _lane is None:
            _lane = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pt-compute", initializer=_mark_lane
            )
        return _lane


def on_compute_lane() -> bool:
    return bool(getattr(_here, "on_lane", False))


def run_on_compute_lane(
    work: Callable[[], T], *, interrupted: Callable[[], None] | None = None
) -> T:
    """``work()`` on the compute lane, from any other thread; blocks until it returns.

    On Ctrl-C, ``interrupted`` is called (it should make ``work`` stop soon) and the
    call waits for ``work`` to end before re-raising, so nothing runs on unobserved.
    """
    if on_compute_lane():
        return work()
    future = compute_lane().submit(work)
    try:
        return future.result()
    except KeyboardInterrupt:
        if interrupted is not None:
            interrupted()
        wait_for([future])
        raise


class LocalWorker:
    """Runs one model's jobs in order on the compute lane, admitting at most
    ``1 + queue_size`` of them."""

    def __init__(self, name: str, queue_size: int):
        self.name = name
        self.queue_size = queue_size
        self._executor = compute_lane()
        self._admitted = 0
        self._jobs: set[Job] = set()  # admitted and not finished
        self._futures: set[Future[None]] = set()
        self._avg_job_seconds = 2.0  # refined by an moving average as jobs finish

    @property
    def admitted(self) -> int:
        return self._admitted

    def submit(self, work: Callable[[Job], Iterator[Any]]) -> Job:
        """Queue ``work`` (a generator run in the worker thread); its items stream to the Job."""
        if self._admitted >= 1 + self.queue_size:
            wait = self._avg_job_seconds * self._admitted
            raise EngineOverloaded(
                f"model {self.name!r} is busy: {self._admitted} requests running or queued "
                f"(queue_size={self.queue_size}); retry in a few seconds",
                retry_after=min(60.0, max(1.0, wait)),
            )
        loop = asyncio.get_running_loop()
        job = Job(loop=loop)
        self._jobs.add(job)
        self._admitted += 1
        if on_compute_lane():
            # Asked from the lane itself (training that embeds through a model): queued
            # behind the work asking, it would wait forever, so it runs here and now.
            self._run(job, work)
            self._release(job)
            return job
        future = self._executor.submit(self._run, job, work)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        asyncio.wrap_future(future, loop=loop).add_done_callback(lambda _f: self._release(job))
        return job

    def _release(self, job: Job) -> None:
        self._jobs.discard(job)
        self._admitted -= 1
        if job.compute_seconds:
            self._avg_job_seconds = 0.8 * self._avg_job_seconds + 0.2 * job.compute_seconds

    @staticmethod
    def _run(job: Job, work: Callable[[Job], Iterator[Any]]) -> None:
        started = time.perf_counter()
        try:
            if job.cancelled.is_set():
                return
            for item in work(job):
                job.emit(item)
                if job.cancelled.is_set():
                    break
        except BaseException as exc:  # handed to the awaiting coroutine, not lost
            job.emit(exc)
        finally:
            job.compute_seconds = time.perf_counter() - started
            job.emit(_DONE)

    def shutdown(self) -> None:
        """Stop this model's jobs and wait for them, so the model can then be freed safely.

        Freeing llama.cpp's context while a generation still runs in the lane's
        thread crashes the process; a cancelled job stops at its next token, and
        one still queued never starts. Other models' jobs on the lane go on.
        """
        for job in list(self._jobs):
            job.cancel()
        wait_for(list(self._futures))
