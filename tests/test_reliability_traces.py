"""RELIABILITY.md scenarios 17 and 18 against real servers on 127.0.0.1.

17: N concurrent calls leave exactly N traces, on SQLite and on Postgres; a
store that goes away keeps traces buffered and writes them, once, when it
returns. 18: SIGTERM with live streams lets them finish, flushes every trace
and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from powertrain.config import load_config
from powertrain.schemas.trace import Trace
from powertrain.store import Database, TraceFilter, TraceStore
from powertrain.tracing import TraceWriter
from tests.conftest import (
    POSTGRES_ENV,
    ServerProcess,
    eventually,
    running_app,
    serving,
    start_server,
    write_config,
)
from tests.fakes import FakeOpenAI

CHAT = "/v1/chat/completions"


def stored(url: str, model: str) -> list[Trace]:
    """Every trace of ``model`` in the store at ``url``, read afresh."""
    database = Database(url)
    try:
        return TraceStore(database).list(TraceFilter(model=model), limit=100_000).data
    finally:
        database.dispose()


def model_toml(alias: str, base_url: str) -> str:
    return (
        f'[models."{alias}"]\nengine = "openai"\nmodel = "gpt-x"\nbase_url = "{base_url}"\n'
        'api_key = "sk-test"\nmax_retries = 0\n'
    )


def body(model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something."}],
    }


async def stream_text(resp: aiohttp.ClientResponse, text: str = "") -> tuple[str, bool]:
    """The rest of a streamed answer's text after ``text``, and whether it ended in ``[DONE]``."""
    done = False
    async for line in resp.content:
        if line.startswith(b"data: "):
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            event = orjson.loads(payload)
            if event.get("choices"):
                text += event["choices"][0]["delta"].get("content") or ""
    return text, done


# --------------------------------------------------------------------- 17. no trace lost


async def test_concurrent_calls_leave_exactly_one_trace_each(
    tmp_path: Path, database_url: str
) -> None:
    n, failing = 200, 20
    alias = f"load-{uuid.uuid4().hex[:8]}"
    async with FakeOpenAI() as fake:
        fake.latency = 0.01
        fake.fail(failing, 500)  # the first 20 to arrive fail: their traces count too
        config = load_config(
            write_config(
                tmp_path,
                (
                    f'[settings]\ndatabase_url = "{database_url}"\ntrace_flush_interval = 0.05\n'
                    "trace_batch_size = 16\n" + model_toml(alias, fake.url)
                ),
            )
        )
        async with (
            running_app(config) as base,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):

            async def one(i: int) -> tuple[int, str]:
                async with session.post(base + CHAT, json=body(alias, stream=i % 2 == 1)) as r:
                    await r.read()
                    return r.status, r.headers["x-powertrain-trace-id"]

            stop_reading = asyncio.Event()

            async def read_traces() -> int:
                # Readers flush the writer too (GET /api/traces does); they must not race it.
                reads = 0
                while not stop_reading.is_set():
                    async with session.get(
                        base + "/api/traces", params={"model": alias, "limit": 5}
                    ) as r:
                        assert r.status == 200
                    reads += 1
                return reads

            readers = [asyncio.create_task(read_traces()) for _ in range(2)]
            results = await asyncio.gather(*(one(i) for i in range(n)))
            stop_reading.set()
            assert all(await asyncio.gather(*readers))

    statuses = [status for status, _ in results]
    assert statuses.count(200) == n - failing and statuses.count(502) == failing
    ids = {trace_id for _, trace_id in results}
    assert len(ids) == n
    traces = stored(database_url, alias)  # after shutdown, so nothing is still in memory
    assert len(traces) == n and {t.id for t in traces} == ids
    assert sum(t.status == "ok" for t in traces) == n - failing
    assert sum(t.status == "error" and t.http_status == 502 for t in traces) == failing
    assert sum(t.stream for t in traces) == n // 2


class GatedStore(TraceStore):
    """A store whose first write hangs until the test lets it go (or 5 s pass)."""

    def __init__(self, database: Database):
        super().__init__(database)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.waited_out = False

    def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.waited_out = not self.release.wait(5)
        super().insert_rows(rows)


async def test_flushes_and_spills_during_a_write_lose_nothing(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'gated.db'}")
    store = GatedStore(database)
    spill = tmp_path / "spill.jsonl"
    writer = TraceWriter(
        store, spill_path=spill, batch_size=10, buffer_limit=12, flush_interval=3600
    )
    await writer.start()
    traces = [Trace(model="m", request={}) for _ in range(20)]
    for trace in traces[:12]:
        writer.submit(trace)
    first = asyncio.create_task(writer.flush())  # takes the first 10, then waits in the store
    await asyncio.to_thread(store.entered.wait, 10)
    second = asyncio.create_task(writer.flush())  # e.g. GET /api/traces, at the same time
    for trace in traces[12:]:
        writer.submit(trace)  # over buffer_limit: the 8 oldest (in flight) spill
    assert writer.spilled == 8
    assert not store.waited_out  # submit never waits for the hanging write
    store.release.set()
    await asyncio.gather(first, second)
    assert writer.pending == 0
    assert {t.id for t in store.list(TraceFilter(), limit=100).data} == {t.id for t in traces}
    await writer.aclose()

    # The spilled copies replay on the next start without duplicating anything.
    again = TraceWriter(TraceStore(database), spill_path=spill)
    await again.start()
    await again.aclose()
    assert not spill.exists() and store.count() == 20 and again.rejected == 0
    database.dispose()


class FlakyStore(TraceStore):
    """Unreachable for the first ``down`` writes; then one write commits but loses its ack."""

    def __init__(self, database: Database, down: int):
        super().__init__(database)
        self.down = down
        self.attempts = 0

    def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.attempts += 1
        if self.attempts <= self.down:
            raise OperationalError("INSERT INTO traces", {}, ConnectionError("store is down"))
        super().insert_rows(rows)
        if self.attempts == self.down + 1:
            raise OperationalError("COMMIT", {}, ConnectionError("connection lost after commit"))


async def test_traces_wait_out_a_store_outage_and_are_written_once(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'flaky.db'}")
    store = FlakyStore(database, down=3)
    writer = TraceWriter(
        store, spill_path=tmp_path / "spill.jsonl", batch_size=100, flush_interval=0.01
    )
    await writer.start()
    traces = [Trace(model="m", request={}) for _ in range(50)]
    for trace in traces:
        writer.submit(trace)
    await eventually(lambda: writer.pending == 0, "the writer catches up")
    await writer.aclose()
    assert writer.store_failures == 4  # three outages and one lost acknowledgement
    assert writer.rejected == 0 and writer.spilled == 0
    assert not (tmp_path / "traces-rejected.jsonl").exists()
    assert {t.id for t in store.list(TraceFilter(), limit=100).data} == {t.id for t in traces}
    assert store.count() == 50
    database.dispose()


@pytest.fixture
def outage_database() -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A fresh Postgres database and a switch that takes it down (False) or back up (True)."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = f"pt_outage_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")

    def available(up: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(up).lower()}'))
            if not up:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )

    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False), available
    finally:
        available(False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.mark.postgres
async def test_a_real_postgres_outage_buffers_traces_until_it_returns(
    tmp_path: Path, outage_database: tuple[str, Callable[[bool], None]]
) -> None:
    url, available = outage_database
    n = 30
    async with FakeOpenAI() as fake:
        config = load_config(
            write_config(
                tmp_path,
                (
                    f'[settings]\ndatabase_url = "{url}"\ntrace_flush_interval = 0.05\n'
                    + model_toml("pg", fake.url)
                ),
            )
        )
        async with serving(config) as (base, app), aiohttp.ClientSession() as session:
            writer = app.gateway.traces
            await asyncio.to_thread(available, False)
            async with session.get(base + "/readyz") as r:
                assert r.status == 503  # the store really is gone
            for i in range(n):  # calls are served while the store is down
                async with session.post(base + CHAT, json=body("pg", stream=i % 2 == 0)) as r:
                    assert r.status == 200
                    await r.read()
            await eventually(lambda: writer.store_failures >= 2, "writes fail during the outage")
            assert writer.pending == n and writer.written == 0

            await asyncio.to_thread(available, True)
            await eventually(lambda: writer.pending == 0, "the buffered traces are written")
            assert writer.written == n and writer.rejected == 0 and writer.spilled == 0
    traces = stored(url, "pg")
    assert len(traces) == n and len({t.id for t in traces}) == n


# ------------------------------------------------------------------ 18. graceful shutdown


def _refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("grace", ["streams_finish", "grace_runs_out"])
async def test_sigterm_lets_live_streams_finish_and_flushes_every_trace(
    tmp_path: Path, isolated: Path, server_process: list[ServerProcess], grace: str
) -> None:
    streams = 6
    reply = "one two three four five six seven eight nine ten"
    async with FakeOpenAI(reply=reply) as fake:
        # Each stream lasts ~2 s; no trace is written before shutdown unless shutdown does it.
        fake.chunk_delay = 0.2
        settings = "trace_flush_interval = 3600\ntrace_batch_size = 10000\n"
        if grace == "grace_runs_out":
            settings += "shutdown_grace = 1\n"
        write_config(tmp_path, f"[settings]\n{settings}" + model_toml("slow", fake.url))
        server = await asyncio.to_thread(start_server, tmp_path)
        server_process.append(server)

        async with aiohttp.ClientSession() as session:
            responses, firsts = [], []
            for _ in range(streams):
                resp = await session.post(server.url + CHAT, json=body("slow", stream=True))
                assert resp.status == 200
                event = orjson.loads((await resp.content.readuntil(b"\n\n"))[6:])
                firsts.append(event["choices"][0]["delta"]["content"])  # the stream is live
                responses.append(resp)
            sdk = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            sdk_stream = await sdk.chat.completions.create(**body("slow", stream=True))
            first = await anext(aiter(sdk_stream))
            assert first.choices

            signalled_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            # It stops accepting at once, while the streams are still going.
            await eventually(
                lambda: _refuses_connections(server.url), "new connections refused", within=5
            )

            outcomes = await asyncio.gather(
                *(stream_text(r, t) for r, t in zip(responses, firsts, strict=True)),
                return_exceptions=True,
            )
            sdk_text = ""
            with contextlib.suppress(openai.APIError):
                sdk_text = "".join(
                    [c.choices[0].delta.content or "" async for c in sdk_stream if c.choices]
                )
            await sdk.close()
            for resp in responses:
                resp.release()
        exit_code = await asyncio.to_thread(server.proc.wait, 30)
        elapsed = time.monotonic() - signalled_at

    assert exit_code == 0, server.log()
    traces = stored(f"sqlite:///{isolated / 'powertrain.db'}", "slow")
    assert len(traces) == streams + 1  # every call, flushed on the way out
    if grace == "streams_finish":
        assert outcomes == [(reply, True)] * streams
        assert (first.choices[0].delta.content or "") + sdk_text == reply
        assert all(t.status == "ok" and t.output == reply for t in traces)
    else:
        # Past shutdown_grace the streams are cut; their traces still say what happened.
        assert elapsed < 10
        assert all(isinstance(o, BaseException) or o[0] != reply or not o[1] for o in outcomes)
        assert all(t.status == "cancelled" for t in traces)
        assert all(t.output and reply.startswith(t.output) for t in traces)
