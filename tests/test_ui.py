"""The web UI over real HTTP: sign-in and sessions, CSRF, tenant scoping, safe rendering."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import aiohttp

from powertrain.feedback import FeedbackService
from powertrain.schemas.trace import Trace
from powertrain.ui.render import CONTENT_SECURITY_POLICY
from powertrain.ui.session import SESSION_COOKIE, SessionSigner
from tests.conftest import config_from, openai_model_toml
from tests.fakes import FakeOpenAI
from tests.keys_helpers import ADMIN, Api, chat, keyed_config
from tests.ui_helpers import Browser, browsing, second_browser

XSS = '<script>window.__pwned=1</script> ![x](http://127.0.0.1:9/beacon) <img src=x onerror="alert(1)">'


@asynccontextmanager
async def ui(tmp_path: Path) -> AsyncIterator[tuple[Browser, Api, FakeOpenAI]]:
    async with FakeOpenAI() as upstream, browsing(keyed_config(tmp_path, upstream.url)) as web:
        async with aiohttp.ClientSession() as http:
            yield web, Api(http, web.url, web.app), upstream


async def traced(api: Api, key: str = ADMIN, text: str = "hi") -> str:
    status, body, headers = await api.call(
        "POST", "/v1/chat/completions", chat("cheap", text), key=key
    )
    assert status == 200, body
    await api.app.gateway.traces.flush()
    return headers["x-powertrain-trace-id"]


def feedback_count(web: Browser, trace_id: str) -> int:
    return len(FeedbackService(web.app.gateway.database).list_for(trace_id, scope=None))


async def test_sign_in_sets_a_signed_cookie_that_holds_no_key(tmp_path: Path) -> None:
    async with ui(tmp_path) as (web, _api, _up):
        status, _, headers = await web.get("/")
        assert (status, headers["Location"]) == (303, "/ui/traces")
        status, _, headers = await web.get("/ui/traces?status=ok")
        assert status == 303
        assert headers["Location"] == "/ui/signin?next=" + quote("/ui/traces?status=ok", safe="")
        status, page, headers = await web.get("/ui/signin")
        assert status == 200 and 'name="key"' in page
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"

        status, page, _ = await web.post("/ui/signin", {"key": "pt-" + "x" * 43})
        assert status == 401 and "not valid" in page
        assert web.cookie(SESSION_COOKIE) is None

        status, _, headers = await web.post("/ui/signin", {"key": ADMIN, "next": "//evil.example/"})
        assert status == 303 and headers["Location"] == "/ui/traces"  # never another site
        set_cookie = headers["Set-Cookie"]
        assert "HttpOnly" in set_cookie and "samesite=strict" in set_cookie.lower()
        value = web.cookie(SESSION_COOKIE)
        assert value and ADMIN not in value and ADMIN[10:30] not in value
        status, page, _ = await web.get("/ui/traces")
        assert status == 200 and "admin key" in page and "Sign out" in page

        # A cookie forged, altered or signed under another admin key is no session.
        for forged in (
            value[:-2] + ("AA" if not value.endswith("AA") else "BB"),
            SessionSigner("another-admin-key").issue("admin")[0],
            "v1.e30.x",
        ):
            web.http.cookie_jar.clear()
            web.http.cookie_jar.update_cookies({SESSION_COOKIE: forged})
            status, _, _ = await web.get("/ui/traces")
            assert status == 303, forged


async def test_a_revoked_key_signs_its_session_out(tmp_path: Path) -> None:
    async with ui(tmp_path) as (web, api, _up):
        key_id, secret = await api.new_key("tenant")
        await web.sign_in(secret)
        status, page, _ = await web.get("/ui/traces")
        assert status == 200 and "key tenant" in page
        status, _, _ = await api.call("DELETE", f"/api/keys/{key_id}")
        assert status == 204
        status, _, headers = await web.get("/ui/traces")
        assert status == 303 and headers["Location"].startswith("/ui/signin")
        status, page, _ = await web.post("/ui/signin", {"key": secret})
        assert status == 401


async def test_state_changes_need_the_token_and_this_origin(tmp_path: Path) -> None:
    async with ui(tmp_path) as (web, api, _up):
        await web.sign_in(ADMIN)
        trace_id = await traced(api)
        status, _, _ = await web.get(f"/ui/traces/{trace_id}")
        assert status == 200 and web.csrf
        path = f"/ui/traces/{trace_id}/feedback"
        refused = [
            await web.post(path, {"thumb": "up"}, token=""),  # no token
            await web.post(path, {"thumb": "up"}, token="0" * 43),  # a wrong one
            await web.post(path, {"thumb": "up"}, origin="http://evil.example"),  # another site
            await web.post(path, json={"thumb": "up"}, token="nope"),  # app.js with a bad token
            await web.post("/ui/datasets", {"name": "x", "feedback": "any"}, token=""),
            await web.post(
                "/ui/playground/run",
                json={"runs": [{"target": "cheap"}], "user": "x"},
                origin="http://evil.example",
            ),
        ]
        for status, body, _ in refused:
            assert status == 403, body
        assert feedback_count(web, trace_id) == 0
        status, _page, _ = await web.post("/ui/signout", {}, token="")
        assert status == 403
        assert (await web.get("/ui/traces"))[0] == 200  # still signed in

        status, _, headers = await web.post(path, {"thumb": "up", "label": "billing"})
        assert status == 303 and headers["Location"].endswith("#feedback")
        status, body, _ = await web.post(path, json={"thumb": "down", "correction": '{"a": 1}'})
        assert status == 201, body
        given = FeedbackService(web.app.gateway.database).list_for(trace_id, scope=None)
        assert [(f.thumb, f.label, f.correction) for f in given] == [
            ("up", "billing", None),
            ("down", None, {"a": 1}),
        ]
        assert given[0].author == "ui:admin" and given[0].source == "human"

        status, _, headers = await web.post("/ui/signout", {})
        assert status == 303
        assert (await web.get("/ui/traces"))[0] == 303


async def test_a_key_sees_only_its_own_data(tmp_path: Path) -> None:
    async with ui(tmp_path) as (web, api, _up):
        _a_id, key_a = await api.new_key("a")
        _b_id, key_b = await api.new_key("b")
        mine = await traced(api, key_a, "alpha question")
        theirs = await traced(api, key_b, "bravo question")
        await web.sign_in(key_a)
        status, page, _ = await web.get("/ui/traces")
        assert status == 200 and mine in page and theirs not in page
        # The key filter cannot widen a virtual key's scope.
        status, page, _ = await web.get(f"/ui/traces?key={_b_id}")
        assert theirs not in page
        assert (await web.get(f"/ui/traces/{mine}"))[0] == 200
        status, page, _ = await web.get(f"/ui/traces/{theirs}")
        assert status == 404 and "bravo" not in page
        status, _, _ = await web.post(f"/ui/traces/{theirs}/feedback", {"thumb": "up"})
        assert status == 404
        assert feedback_count(web, theirs) == 0
        assert (await web.get("/ui/evals"))[0] == 403  # runs have no owner: admin only

        status, _, headers = await web.post(
            "/ui/datasets", {"name": "mine", "feedback": "", "test_fraction": "0"}
        )
        assert status == 303, _
        status, page, _ = await web.get(headers["Location"])
        assert status == 200 and mine in page and theirs not in page

        async with second_browser(web) as other:
            await other.sign_in(key_b)
            status, _, _ = await other.get("/ui/datasets/mine")
            assert status == 404
            status, page, _ = await other.get("/ui/datasets")
            assert "mine" not in page
            status, page, _ = await other.get("/ui/costs?range=24h&by=key")
            assert status == 200 and ">a<" not in page


async def test_output_and_input_render_as_text(tmp_path: Path) -> None:
    async with ui(tmp_path) as (web, _api, _up):
        trace = Trace(
            model="cheap",
            request={"messages": [{"role": "user", "content": XSS}]},
            output=XSS,
            metadata={"prompt": [{"role": "system", "content": XSS}], "source": "api"},
        )
        web.app.gateway.trace_store.insert_many([trace])
        FeedbackService(web.app.gateway.database)
        await web.sign_in(ADMIN)
        for path in (f"/ui/traces/{trace.id}", "/ui/traces", "/ui/annotate"):
            status, page, headers = await web.get(path)
            assert status == 200, path
            assert "<script>window" not in page and "<img src=x" not in page, path
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page, path
            assert "<img" not in page.split("<main>")[1], path  # a markdown image stays text
            assert "![x](http://127.0.0.1:9/beacon)" in page, path
            assert "script-src 'self'" in headers["Content-Security-Policy"]


async def test_bearer_key_reads_pages_like_the_api(tmp_path: Path) -> None:
    async with ui(tmp_path) as (web, _api, _up):
        status, page, _ = await web.get("/ui/tasks", Authorization=f"Bearer {ADMIN}")
        assert status == 200 and "Tasks" in page
        async with web.http.get(
            web.url + "/ui/traces", headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "authentication_error"


async def test_without_authentication_the_ui_is_open_to_this_machine_only(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream:
        config = config_from(tmp_path, openai_model_toml("cheap", upstream.url))
        async with browsing(config) as web:
            status, page, _ = await web.get("/ui/traces")
            assert status == 200 and "no sign-in" in page
            assert (await web.get("/ui/signin"))[0] == 303
            trace = Trace(model="cheap", request={"messages": []}, output="x")
            web.app.gateway.trace_store.insert_many([trace])
            status, _, _ = await web.post(
                f"/ui/traces/{trace.id}/feedback", {"thumb": "up"}, token=""
            )
            assert status == 403  # CSRF holds without authentication too
            status, _, _ = await web.post(f"/ui/traces/{trace.id}/feedback", {"thumb": "up"})
            assert status == 303
            assert feedback_count(web, trace.id) == 1
