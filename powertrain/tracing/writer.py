"""The async batched trace writer.

The request path only appends a trace to a list (no I/O, no await). A
background task writes batches to the store in a worker thread. If the store
is down, batches stay in memory and are retried with backoff; inserts are
idempotent by trace id, so a retried batch never duplicates. Past
``buffer_limit`` pending traces, the oldest spill to a JSONL file under the
data directory (never silently dropped) and are replayed on the next start.
On shutdown everything pending is written, or spilled if the store is
unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from powertrain.redact import SecretScrubber
from powertrain.schemas.trace import TRACE_ADAPTER, Trace
from powertrain.store.traces import TraceStore

log = logging.getLogger("powertrain.traces")

_ROWS_PER_SLICE = 32


def _store_unreachable(exc: BaseException) -> bool:
    """Connection-level failures are retried; anything else is about the rows themselves."""
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | OSError)


class TraceWriter:
    def __init__(
        self,
        store: TraceStore,
        *,
        spill_path: Path,
        batch_size: int = 256,
        flush_interval: float = 0.2,
        buffer_limit: int = 100_000,
        scrubber: SecretScrubber | None = None,
    ):
        self.store = store
        self.spill_path = spill_path
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer_limit = buffer_limit
        self.scrubber = scrubber or SecretScrubber()
        self._pending: deque[Trace] = deque()
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()
        # The spill file has its own lock: ``submit`` spills on the event loop and must
        # never wait behind a store write that is hanging on a dead connection.
        self._spill_lock = threading.Lock()
        self.written = 0
        self.spilled = 0
        self.rejected = 0
        self.store_failures = 0

    # -- the hot path -----------------------------------------------------
    def submit(self, trace: Trace) -> None:
        """Queue one trace. Never blocks and never raises."""
        self._pending.append(trace)
        if len(self._pending) > self.buffer_limit:
            self._spill(
                [self._pending.popleft() for _ in range(len(self._pending) - self.buffer_limit)]
            )
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def find_pending(self, trace_id: str) -> Trace | None:
        """A finished trace not yet written, so a caller can read it right after its answer."""
        for trace in reversed(self._pending):
            if trace.id == trace_id:
                return trace
        return None

    # -- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._replay_spill)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="powertrain-trace-writer")

    async def flush(self) -> None:
        """Write everything pending now; raises if the store refuses."""
        # One flush at a time: the background task, the API and the Python client all
        # flush, and two taking the same batch would then drop the batch after it.
        async with self._flush_lock:
            while self._pending:
                batch = list(itertools.islice(self._pending, self.batch_size))
                rows = await self._rows(batch)
                await asyncio.to_thread(self._write, batch, rows)
                # Drop exactly what was written; a spill during the write may have taken
                # some of it already (spills and flushes both take from the left).
                written = {id(trace) for trace in batch}
                while self._pending and id(self._pending[0]) in written:
                    self._pending.popleft()

    async def _rows(self, batch: list[Trace]) -> list[tuple[Any, ...]]:
        """Scrub and build rows on the loop, a slice at a time.

        On the loop, so the worker thread spends its time in the database driver's
        C code rather than contending for the GIL; in slices, so a large batch never
        holds up the calls in flight for more than a fraction of a millisecond.
        """
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(batch), _ROWS_PER_SLICE):
            if start:
                await asyncio.sleep(0)
            part = batch[start : start + _ROWS_PER_SLICE]
            rows += self.store.to_rows([self._scrub(t) for t in part])
        return rows

    async def aclose(self) -> None:
        """Stop the background task and write (or spill) whatever is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            log.error(
                "trace store unavailable at shutdown (%s); spilling %d traces to %s",
                type(exc).__name__,
                len(self._pending),
                self.spill_path,
            )
            self._spill(list(self._pending))
            self._pending.clear()

    # -- background -------------------------------------------------------
    async def _run(self) -> None:
        backoff = self.flush_interval
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set, and aclose() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                if backoff > self.flush_interval:
                    log.warning("trace store is back; pending traces written")
                backoff = self.flush_interval
            except Exception as exc:
                self.store_failures += 1
                if backoff == self.flush_interval:
                    log.warning(
                        "trace store unavailable (%s: %s); keeping %d traces in memory",
                        type(exc).__name__,
                        self.scrubber.text(str(exc))[:200],
                        len(self._pending),
                    )
                backoff = min(5.0, backoff * 2)

    def _write(self, batch: list[Trace], rows: list[tuple[Any, ...]]) -> None:
        with self._write_lock:
            try:
                self.store.insert_rows(rows)
            except Exception as exc:
                if _store_unreachable(exc):
                    raise
                # One row the store refuses must not hold back the others forever.
                self._write_row_by_row(batch, rows)
                return
        self.written += len(batch)

    def _write_row_by_row(self, batch: list[Trace], rows: list[tuple[Any, ...]]) -> None:
        for trace, row in zip(batch, rows, strict=True):
            try:
                self.store.insert_rows([row])
                self.written += 1
            except Exception as exc:
                if _store_unreachable(exc):
                    raise
                self._reject(trace, exc)

    def _reject(self, trace: Trace, exc: Exception) -> None:
        """Keep a trace the store refuses in a dead-letter file, and say so loudly."""
        path = self.spill_path.with_name("traces-rejected.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(orjson.dumps(self._scrub(trace)) + b"\n")
        self.rejected += 1
        log.error("the store refused trace %s (%s); kept in %s", trace.id, type(exc).__name__, path)

    def _scrub(self, trace: Trace) -> Trace:
        if not self.scrubber.appears_in(trace):
            return trace
        return dataclasses.replace(
            trace,
            request=self.scrubber.deep(trace.request),
            output=self.scrubber.text(trace.output) if trace.output else trace.output,
            error_message=self.scrubber.text(trace.error_message) if trace.error_message else None,
            metadata=self.scrubber.deep(trace.metadata),
        )

    def _spill(self, traces: list[Trace]) -> None:
        if not traces:
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_lock, self.spill_path.open("ab") as out:
            for trace in traces:
                out.write(orjson.dumps(self._scrub(trace)) + b"\n")
        self.spilled += len(traces)
        log.warning(
            "%d traces spilled to %s (store unavailable or buffer full)",
            len(traces),
            self.spill_path,
        )

    def _replay_spill(self) -> None:
        if not self.spill_path.exists():
            return
        with self._spill_lock:
            lines = self.spill_path.read_bytes().splitlines()
            traces = [TRACE_ADAPTER.validate_json(line) for line in lines if line.strip()]
            for start in range(0, len(traces), self.batch_size):
                batch = traces[start : start + self.batch_size]
                rows = self.store.to_rows(batch)
                try:
                    self.store.insert_rows(rows)
                except Exception as exc:
                    if _store_unreachable(exc):
                        raise
                    self._write_row_by_row(batch, rows)
            self.spill_path.unlink()
        log.info("replayed %d spilled traces from %s", len(traces), self.spill_path)
