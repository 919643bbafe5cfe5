"""Who may call what: every route declares a policy, and hostile keys are refused."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from powertrain.server import create_app
from powertrain.server.app import PowertrainApp
from powertrain.server.auth import Access, Authenticator
from tests.conftest import config_from, running_app

ADMIN_KEY = "pt-admin-" + "k" * 24

HOSTILE_VALUES = [
    "' OR '1'='1",
    "admin' --",
    "x'; DROP TABLE traces; --",
    "1 UNION SELECT * FROM traces",
    '" OR ""="',
    "%00",
    "\\x00",
    "null",
    "undefined",
    "Bearer",
    "*",
    ADMIN_KEY[:-1],
    ADMIN_KEY + "x",
    ADMIN_KEY.upper(),
    " " + ADMIN_KEY + "x",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "../../etc/passwd",
    "ü" * 40,
    "🔑" * 30,
    "\u202e" + ADMIN_KEY[::-1],
    "k" * 600,
    "k" * 20_000,
] + [f"sk-{i:04d}" + "x" * (i % 97) for i in range(180)]


def _routes(app: PowertrainApp) -> list[tuple[str, str, Access | None]]:
    return app.route_table()


def test_every_route_declares_a_policy(tmp_path: Path) -> None:
    app = create_app(config_from(tmp_path))
    routes = _routes(app)
    assert len(routes) >= 8
    undeclared = [(m, p) for m, p, access in routes if access is None]
    assert undeclared == [], f"routes without an access policy: {undeclared}"
    by_path = {p: a for _m, p, a in routes}
    assert by_path["/v1/chat/completions"] is Access.KEY
    assert by_path["/api/traces"] is Access.KEY  # scoped to the caller's own key
    assert by_path["/api/keys"] is Access.ADMIN
    assert by_path["/api/keys/{key_id}"] is Access.ADMIN
    assert by_path["/healthz"] is Access.PUBLIC


def _sample_path(path: str) -> str:
    return (
        path.replace("{trace_id}", "tr_x")
        .replace("{model_id:path}", "smollm2")
        .replace("{name}", "swagger-ui.css")
        .replace("{key_id}", "key_x")
    )


async def test_hostile_keys_are_refused_on_every_route(tmp_path: Path) -> None:
    config = config_from(tmp_path, f'[settings]\nadmin_key = "{ADMIN_KEY}"\n')
    app = create_app(config)
    protected = [(m, _sample_path(p)) for m, p, a in _routes(app) if a is not Access.PUBLIC]
    async with running_app(config) as url, aiohttp.ClientSession() as http:
        for method, path in protected:
            for value in HOSTILE_VALUES:
                # Send the raw bytes a hostile client would, unicode included.
                header = ("Bearer " + value).encode("utf-8").decode("latin-1")
                async with http.request(
                    method,
                    url + path,
                    headers={"Authorization": header},
                    json={"model": "smollm2", "messages": []},
                ) as resp:
                    body = await resp.json(content_type=None)
                    assert resp.status in (401, 431), (method, path, value[:30])
                    if resp.status == 401:
                        assert body["error"]["type"] == "authentication_error"
            async with http.request(method, url + path) as resp:
                assert resp.status == 401, (method, path)
        # The real key passes; a public route needs none.
        async with http.get(
            url + "/api/traces",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as resp:
            assert resp.status == 200
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200


@pytest.mark.parametrize("value", [None, b"", b"Basic abc", b"Bearer ", b"bearer  ", b"Token x"])
def test_malformed_authorization_headers(value: bytes | None) -> None:
    auth = Authenticator(ADMIN_KEY)
    with pytest.raises(Exception) as info:
        auth.check(value, Access.KEY)
    assert "API key" in str(info.value)


def test_auth_off_without_admin_key() -> None:
    principal = Authenticator(None).check(None, Access.ADMIN)
    assert principal.admin and principal.key_id is None
