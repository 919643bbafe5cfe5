"""Feedback over HTTP: given on a trace, listed, validated, and isolated between keys."""

from __future__ import annotations

from pathlib import Path

import pytest

import powertrain
from powertrain.errors import NotFound
from powertrain.schemas.trace import Trace
from powertrain.store import Database, TraceStore
from tests.conftest import config_from, openai_model_toml
from tests.fakes import FakeOpenAI
from tests.keys_helpers import Api, assert_error, chat, keyed_config, served


async def traced_call(api: Api, key: str, text: str = "hi") -> str:
    status, body, headers = await api.call(
        "POST", "/v1/chat/completions", chat("cheap", text), key=key
    )
    assert status == 200, body
    return headers["x-powertrain-trace-id"]


async def test_feedback_is_given_listed_and_shown_on_the_trace(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        _, secret = await api.new_key("a")
        trace_id = await traced_call(api, secret)
        status, given, _ = await api.call(
            "POST",
            "/api/feedback",
            {"trace_id": trace_id, "thumb": "up", "label": "billing", "author": "ana"},
            key=secret,
        )
        assert status == 201, given
        assert given["trace_id"] == trace_id and given["source"] == "human"
        assert (given["thumb"], given["label"], given["author"]) == ("up", "billing", "ana")
        status, second, _ = await api.call(
            "POST",
            "/api/feedback",
            {
                "trace_id": trace_id,
                "score": 2,
                "scale": 5,
                "correction": {"intent": "refund", "confidence": 1},
                "source": "program",
            },
            key=secret,
        )
        assert status == 201, second
        status, listed, _ = await api.call("GET", f"/api/feedback?trace_id={trace_id}", key=secret)
        assert status == 200
        assert [f["id"] for f in listed["data"]] == [given["id"], second["id"]]
        assert listed["data"][1]["correction"] == {"intent": "refund", "confidence": 1}
        status, same, _ = await api.call("GET", f"/api/traces/{trace_id}/feedback", key=secret)
        assert status == 200 and same == listed
        status, admin_view, _ = await api.call("GET", f"/api/feedback?trace_id={trace_id}")
        assert status == 200 and len(admin_view["data"]) == 2  # the admin key sees all


async def test_feedback_is_validated(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        trace_id = await traced_call(api, api_key := (await api.new_key())[1])

        async def refused(body: dict[str, object], status: int = 400) -> str:
            got, answer, _ = await api.call("POST", "/api/feedback", body, key=api_key)
            assert got == status, answer
            return str(answer["error"]["message"])

        assert "at least one of" in await refused({"trace_id": trace_id})
        assert "at least one of" in await refused({"trace_id": trace_id, "author": "x"})
        assert "thumb" in await refused({"trace_id": trace_id, "thumb": "sideways"})
        assert "between 0 and the scale" in await refused(
            {"trace_id": trace_id, "score": 6, "scale": 5}
        )
        assert "comment" in await refused({"trace_id": trace_id, "comment": "x" * 8001})
        assert "correction is over the limit" in await refused(
            {"trace_id": trace_id, "correction": "y" * 70_000}
        )
        assert "source" in await refused({"trace_id": trace_id, "thumb": "up", "source": "bot"})
        status, body, _ = await api.call(
            "POST", "/api/feedback", {"trace_id": "tr_000000000000ffff", "thumb": "up"}, key=api_key
        )
        assert status == 404
        assert_error(body, status_type="not_found_error", code="trace_not_found")
        status, body, _ = await api.call("POST", "/api/feedback", {"trace_id": trace_id}, key=None)
        assert status == 401


async def test_a_key_cannot_reach_another_keys_feedback(tmp_path: Path) -> None:
    """RELIABILITY 9: key B gets 404 for key A's trace id, exactly as for an unknown one."""
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        _, key_a = await api.new_key("a")
        _, key_b = await api.new_key("b")
        trace_a = await traced_call(api, key_a)
        status, _, _ = await api.call(
            "POST", "/api/feedback", {"trace_id": trace_a, "comment": "mine"}, key=key_a
        )
        assert status == 201
        for method, path, body in (
            ("POST", "/api/feedback", {"trace_id": trace_a, "thumb": "down"}),
            ("GET", f"/api/feedback?trace_id={trace_a}", None),
            ("GET", f"/api/traces/{trace_a}/feedback", None),
        ):
            status, answer, _ = await api.call(method, path, body, key=key_b)
            assert status == 404, (path, answer)
            assert_error(answer, status_type="not_found_error", code="trace_not_found")
            assert "mine" not in str(answer)
        status, listed, _ = await api.call("GET", f"/api/feedback?trace_id={trace_a}", key=key_a)
        assert [f["comment"] for f in listed["data"]] == ["mine"]  # B changed nothing


async def test_the_python_helper_gives_feedback(tmp_path: Path) -> None:
    async with FakeOpenAI(reply="four") as upstream:
        config = config_from(tmp_path, openai_model_toml("cheap", upstream.url))
        async with powertrain.AsyncClient(config) as pt:
            reply = await pt.chat("2+2?", model="cheap")
            given = await pt.feedback(reply.trace_id, score=1, scale=1, correction="4")
            assert (given.trace_id, given.source, given.correction) == (
                reply.trace_id,
                "program",
                "4",
            )
            with pytest.raises(powertrain.InvalidRequest, match="at least one of"):
                await pt.feedback(reply.trace_id)
            with pytest.raises(NotFound, match="no trace"):
                await pt.feedback("tr_missing", thumb="up")


def test_the_sync_helper_gives_feedback(tmp_path: Path) -> None:
    config = config_from(tmp_path)
    db = Database(config.settings.resolved_database_url)
    trace = Trace(model="smollm2", request={"messages": []}, output="x")
    TraceStore(db).insert_many([trace])
    db.dispose()
    with powertrain.Client(config) as pt:
        given = pt.feedback(trace.id, thumb="down", source="human", author="me")
        assert (given.thumb, given.source, given.author) == ("down", "human", "me")
