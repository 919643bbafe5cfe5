"""`import powertrain`: the same request path in-process, traced the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

import powertrain
from tests.conftest import config_from


@pytest.mark.model
def test_sync_client_chat_stream_and_traces(tmp_path: Path) -> None:
    with powertrain.Client(config_from(tmp_path)) as pt:
        reply = pt.chat("What is 2+2? Answer briefly.", temperature=0, max_tokens=16)
        assert "4" in reply.text and reply.usage.completion_tokens > 0
        pieces = list(pt.stream("Name a color.", temperature=0, max_tokens=8))
        assert pieces and pt.last_trace_id
        traces = {t.id: t for t in pt.traces(limit=10)}
        assert traces[reply.trace_id].output == reply.text
        assert traces[reply.trace_id].metadata["source"] == "python"
        streamed = pt.trace(pt.last_trace_id)
        assert streamed is not None and streamed.output == "".join(pieces) and streamed.stream


async def test_async_client_reports_errors_as_exceptions(tmp_path: Path) -> None:
    async with powertrain.AsyncClient(config_from(tmp_path)) as pt:
        with pytest.raises(powertrain.ModelNotFound):
            await pt.chat("hi", model="missing")
        with pytest.raises(powertrain.ModelNotFound, match="task"):
            await pt.chat("hi", model="task:not-yet")
        failed = await pt.traces(limit=5)
        assert [t.status for t in failed] == ["error", "error"]
        assert failed[0].http_status == 404
