"""Datasets over HTTP: made from uploaded rows or from traces, read, exported, deleted, per key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes import FakeOpenAI
from tests.keys_helpers import ADMIN, Api, assert_error, keyed_config, served

TASK = """
[tasks.classify]
system = "Classify the ticket. <b>{{ '{{' }} not a tag {{ '}}' }}</b>"
user = "Ticket: {{ text }}"
variables = { text = "string" }
input = "text"
model = "cheap"
"""
HOSTILE = "<script>alert(1)</script> {{ 7*7 }} {% for x in y %}{{ x }}{% endfor %} ${7*7}"


async def export(api: Api, name: str, query: str, key: str = ADMIN) -> tuple[int, list[Any], str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with api.http.get(f"{api.url}/api/datasets/{name}/export?{query}", headers=headers) as r:
        raw = await r.text()
        if r.status != 200:
            return r.status, [json.loads(raw)], r.content_type
        return r.status, [json.loads(line) for line in raw.splitlines()], r.content_type


async def test_uploaded_rows_make_immutable_versions(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        rows = [
            {"input": {"variables": {"q": f"q{i}"}}, "output": f"a{i}", "labels": {"n": i}}
            for i in range(30)
        ]
        body = {"name": "faq", "rows": rows, "test_fraction": 0.3, "seed": 1}
        status, made, _ = await api.call("POST", "/api/datasets", body)
        assert status == 201, made
        assert (made["version"], made["created"], made["rows"]) == (1, True, 30)
        assert made["train"] + made["test"] == 30
        status, again, _ = await api.call("POST", "/api/datasets", body)
        assert status == 200 and (again["version"], again["created"]) == (1, False)
        status, more, _ = await api.call("POST", "/api/datasets", {**body, "rows": rows + rows[:1]})
        assert status == 201 and more["version"] == 2

        status, shown, _ = await api.call("GET", "/api/datasets/faq")
        assert [v["version"] for v in shown["versions"]] == [1, 2]
        status, page, _ = await api.call("GET", "/api/datasets/faq/rows?version=1&limit=20")
        assert status == 200 and len(page["data"]) == 20 and page["next_offset"] == 20
        status, rest, _ = await api.call("GET", "/api/datasets/faq/rows?version=1&offset=20")
        assert len(rest["data"]) == 10 and rest["next_offset"] is None
        assert [r["output"] for r in page["data"] + rest["data"]] == [f"a{i}" for i in range(30)]
        status, tests, _ = await api.call("GET", "/api/datasets/faq/rows?split=test&version=1")
        assert {r["split"] for r in tests["data"]} == {"test"}
        assert len(tests["data"]) == made["test"]
        # No route changes a version: only whole-dataset DELETE exists.
        for method in ("PUT", "PATCH"):
            status, _, _ = await api.call(method, "/api/datasets/faq", {"rows": []})
            assert status in (404, 405)
        status, listed, _ = await api.call("GET", "/api/datasets")
        assert [(d["name"], d["latest"]["version"]) for d in listed["data"]] == [("faq", 2)]

        status, body_err, _ = await api.call(
            "POST", "/api/datasets", {"name": "bad", "rows": [{"input": {}}, {"output": "x"}]}
        )
        assert status == 400 and "rows[1]" in body_err["error"]["message"]
        status, body_err, _ = await api.call(
            "POST", "/api/datasets", {"name": "../x", "rows": rows}
        )
        assert status == 400 and "dataset name" in body_err["error"]["message"]
        status, body_err, _ = await api.call("POST", "/api/datasets", {"name": "x"})
        assert status == 400 and "rows or from_traces" in body_err["error"]["message"]


async def test_trace_datasets_export_for_fine_tuning_and_evals(tmp_path: Path) -> None:
    async with (
        FakeOpenAI(reply="billing") as upstream,
        served(keyed_config(tmp_path, upstream.url, extra=TASK)) as api,
    ):
        _, key = await api.new_key("a")
        ids = []
        for text in ("refund please", "card lost", HOSTILE):
            status, ran, _ = await api.call(
                "POST", "/api/tasks/classify/run", {"variables": {"text": text}}, key=key
            )
            assert status == 200, ran
            ids.append(ran["trace_id"])
        status, chat, headers = await api.call(
            "POST",
            "/v1/chat/completions",
            {"model": "task:classify", "messages": [{"role": "user", "content": "chat way"}]},
            key=key,
        )
        assert status == 200, chat
        ids.append(headers["x-powertrain-trace-id"])
        for trace_id in ids[:3]:
            await api.call("POST", "/api/feedback", {"trace_id": trace_id, "thumb": "up"}, key=key)
        await api.call(
            "POST", "/api/feedback", {"trace_id": ids[1], "correction": "lost_card"}, key=key
        )
        await api.call("POST", "/api/feedback", {"trace_id": ids[3], "thumb": "down"}, key=key)

        query = {"task": "classify", "feedback": "up"}
        status, made, _ = await api.call(
            "POST",
            "/api/datasets",
            {"name": "good", "from_traces": query, "test_fraction": 0},
            key=key,
        )
        assert status == 201 and made["rows"] == 3, made
        assert made["origin"] == {"kind": "traces", "limit": 10000, **query}
        status, corrected, _ = await api.call(
            "POST",
            "/api/datasets",
            {"name": "fixed", "from_traces": {"task": "classify", "feedback": "corrected"}},
            key=key,
        )
        assert corrected["rows"] == 1
        status, page, _ = await api.call("GET", "/api/datasets/fixed/rows", key=key)
        assert page["data"][0]["output"] == "lost_card"  # the correction replaced the answer
        assert page["data"][0]["input"] == {"variables": {"text": "card lost"}}
        status, every, _ = await api.call(
            "POST", "/api/datasets", {"name": "all", "from_traces": {"task": "classify"}}, key=key
        )
        assert status == 201 and every["rows"] == 4, every
        status, page, _ = await api.call("GET", "/api/datasets/all/rows", key=key)
        inputs = [r["input"]["variables"]["text"] for r in page["data"]]
        assert sorted(inputs) == sorted(["refund please", "card lost", HOSTILE, "chat way"])

        status, lines, content_type = await export(api, "good", "format=openai&split=train", key)
        assert status == 200 and content_type == "application/x-ndjson"
        assert len(lines) == 3
        for line in lines:
            roles = [m["role"] for m in line["messages"]]
            assert roles == ["system", "user", "assistant"], line
            assert all(isinstance(m["content"], str) for m in line["messages"])
        by_user = {line["messages"][1]["content"]: line for line in lines}
        assert by_user["Ticket: card lost"]["messages"][2]["content"] == "lost_card"
        assert by_user["Ticket: refund please"]["messages"][2]["content"] == "billing"
        # Output is data (RELIABILITY 22): template syntax in a variable is not executed.
        assert f"Ticket: {HOSTILE}" in by_user
        system = lines[0]["messages"][0]["content"]
        assert system.startswith("Classify the ticket. <b>{{ not a tag }}</b>")

        status, cases, _ = await export(api, "good", "format=eval", key)
        assert sorted(c["vars"]["text"] for c in cases) == sorted(
            ["refund please", "card lost", HOSTILE]
        )
        assert {c["expected"] for c in cases} == {"billing", "lost_card"}
        assert all(c["labels"]["thumb"] == "up" for c in cases)
        status, none, _ = await export(api, "good", "format=eval&split=test", key)
        assert status == 200 and none == []


async def test_datasets_are_isolated_between_keys_and_deleted_for_good(tmp_path: Path) -> None:
    """RELIABILITY 9 and 20: B cannot see A's dataset; a delete leaves no row or export."""
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        _, key_a = await api.new_key("a")
        _, key_b = await api.new_key("b")
        rows = [{"input": HOSTILE, "output": HOSTILE, "labels": {"html": "<i>x</i>"}}]
        status, _, _ = await api.call(
            "POST", "/api/datasets", {"name": "mine", "rows": rows}, key=key_a
        )
        assert status == 201
        status, page, _ = await api.call("GET", "/api/datasets/mine/rows", key=key_a)
        row = page["data"][0]
        assert row["output"] == HOSTILE and row["labels"] == {"html": "<i>x</i>"}  # verbatim
        assert row["input"] == {"messages": [{"role": "user", "content": HOSTILE}]}
        for method, path in (
            ("GET", "/api/datasets/mine"),
            ("GET", "/api/datasets/mine/rows"),
            ("GET", "/api/datasets/mine/export"),
            ("DELETE", "/api/datasets/mine"),
        ):
            status, answer, _ = await api.call(method, path, key=key_b)
            assert status == 404, (path, answer)
            assert_error(answer, status_type="not_found_error", code="dataset_not_found")
        status, listed, _ = await api.call("GET", "/api/datasets", key=key_b)
        assert listed["data"] == []
        status, listed, _ = await api.call("GET", "/api/datasets")  # the admin's own namespace
        assert listed["data"] == []
        # B may use the same name: its own dataset.
        status, made, _ = await api.call(
            "POST", "/api/datasets", {"name": "mine", "rows": rows}, key=key_b
        )
        assert status == 201 and made["version"] == 1

        status, _, _ = await api.call("DELETE", "/api/datasets/mine", key=key_a)
        assert status == 204
        for path in ("/api/datasets/mine/rows", "/api/datasets/mine/export"):
            status, _, _ = await api.call("GET", path, key=key_a)
            assert status == 404
        status, page, _ = await api.call("GET", "/api/datasets/mine/rows", key=key_b)
        assert status == 200 and len(page["data"]) == 1  # B's is untouched
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{api.url}/api/datasets", headers={}) as r:
                assert r.status == 401
