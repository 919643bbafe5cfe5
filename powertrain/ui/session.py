"""Who is looking at the UI: signed session cookies, cross-site request checks, route policy.

With authentication on (an admin key is set), a person signs in with a key (the
admin key or a virtual one). The browser then holds ``pt_session``: the key's id
and an expiry, signed with HMAC-SHA256 under a secret derived from the admin key,
``HttpOnly; SameSite=Strict``. The raw key is never in it, and changing the admin
key signs everyone out. A virtual key is re-read from the store on each request,
so a revoked key stops working at once. With authentication off, the UI answers
only loopback clients, exactly like the API (``Authenticator`` decides both).

Every state-changing request needs a token bound to the session (a hidden form
field or the ``x-csrf-token`` header that ``app.js`` sends), compared in constant
time, and an ``Origin`` (or ``Referer``) of this server. Without a session (a sign-in
form, or a local server without authentication) the token is the ``pt_csrf``
cookie's value (a double submit). A script that calls with a bearer key needs
neither: no browser attaches that on its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Depends, Request, Response

from powertrain.errors import AuthenticationError, InvalidRequest, PermissionDenied
from powertrain.server.auth import ADMIN, ADMIN_KEY_ID, Access, Authenticator, Principal

if TYPE_CHECKING:
    from powertrain.gateway import Gateway

SESSION_COOKIE = "pt_session"
CSRF_COOKIE = "pt_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SESSION_SECONDS = 12 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERSION = "v1"


class SignInRequired(AuthenticationError):
    """No valid session: a page sends the browser to the sign-in form."""


class CrossSiteRequest(PermissionDenied):
    code = "csrf_failed"


@dataclass(frozen=True)
class Session:
    key_id: str
    expires: int  # Unix seconds
    nonce: str  # per session: the CSRF token is derived from it


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and reads session cookies; the secret never leaves the process."""

    def __init__(self, admin_key: str):
        # Derived, not random: every worker (and a restarted server) reads the same
        # cookies without sharing state, and a new admin key ends every session.
        self._secret = hmac.new(
            admin_key.encode(), b"powertrain ui session " + _VERSION.encode(), hashlib.sha256
        ).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, key_id: str, *, now: float | None = None) -> tuple[str, Session]:
        moment = int(now if now is not None else time.time())
        session = Session(key_id, moment + SESSION_SECONDS, secrets.token_urlsafe(16))
        payload = _b64(
            json.dumps({"k": session.key_id, "x": session.expires, "n": session.nonce}).encode()
        )
        return f"{_VERSION}.{payload}.{self._mac(payload)}", session

    def read(self, value: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie holds, or None (absent, forged, expired or malformed)."""
        if not value or len(value) > 1024:
            return None
        version, _, rest = value.partition(".")
        payload, _, mac = rest.partition(".")
        if version != _VERSION or not payload or not mac:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["k"]), int(data["x"]), str(data["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        moment = now if now is not None else time.time()
        return session if session.expires > moment else None

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf:" + session.nonce)


def signer_of(request: Request) -> SessionSigner | None:
    """The app's signer (None when authentication is off), made on first use."""
    state = request.app.state
    signer: SessionSigner | None = getattr(state, "ui_signer", None)
    if signer is None:
        admin_key = state.gateway.config.settings.admin_key
        if not admin_key:
            return None
        signer = state.ui_signer = SessionSigner(admin_key)
    return signer


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """A UI cookie: script cannot read it, other sites never send it, ``Secure`` on https."""
    response.set_cookie(
        name,
        value,
        max_age=SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def auth_enabled(request: Request) -> bool:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.enabled


def current_session(request: Request) -> Session | None:
    signer = signer_of(request)
    return signer.read(request.cookies.get(SESSION_COOKIE)) if signer else None


async def _session_principal(request: Request) -> Principal:
    session = current_session(request)
    if session is None:
        raise SignInRequired("sign in with an API key to use the web UI")
    if session.key_id == ADMIN_KEY_ID:
        return ADMIN
    keys = request.app.state.gateway.keys
    record = await asyncio.to_thread(keys.store.get, session.key_id)
    if record is None or record.revoked:
        raise SignInRequired("the key of this session was revoked; sign in again")
    return Principal(key_id=record.id, admin=False, key=record)


# -- CSRF ---------------------------------------------------------------------------------
def csrf_token(request: Request) -> str:
    """The token a page embeds for its forms and scripts."""
    session = current_session(request)
    signer = signer_of(request)
    if session is not None and signer is not None:
        return signer.csrf_token(session)
    return anonymous_csrf(request)


def anonymous_csrf(request: Request) -> str:
    """The double-submit value: the ``pt_csrf`` cookie, or a new one the page will set."""
    value = request.cookies.get(CSRF_COOKIE)
    if value and 20 <= len(value) <= 64:
        return value
    fresh: str | None = getattr(request.state, "new_csrf_cookie", None)
    if fresh is None:
        fresh = request.state.new_csrf_cookie = secrets.token_urlsafe(24)
    return fresh


def same_origin(request: Request) -> bool:
    """The request came from a page of this server (Origin, else Referer).

    Compared by host and port: behind a TLS-terminating proxy the browser's scheme
    (https) differs from what this server sees (http).
    """
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        origin = request.headers.get("referer")
    if not origin or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


async def check_csrf(request: Request) -> None:
    """Refuse a state-changing request from another site (403 ``csrf_failed``)."""
    if not same_origin(request):
        raise CrossSiteRequest("cross-site request refused: send it from this server's own pages")
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        field = (await read_fields(request)).get(CSRF_FIELD)
        given = field if isinstance(field, str) else ""
    session = current_session(request)
    signer = signer_of(request)
    if session is not None and signer is not None:
        expected = signer.csrf_token(session)
    else:
        expected = request.cookies.get(CSRF_COOKIE) or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CrossSiteRequest("missing or wrong CSRF token: reload the page and try again")


# -- request bodies ---------------------------------------------------------------------------
async def read_fields(request: Request) -> dict[str, Any]:
    """A form (``application/x-www-form-urlencoded``) or JSON object body, as a dict.

    Forms are parsed here (no multipart dependency): every UI form is a plain one.
    A repeated form field keeps its last value. The body is read once and cached
    by Starlette, so the CSRF check and the route both read it.
    """
    body = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise InvalidRequest("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the body must be a JSON object")
        return data
    text = body.decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


# -- route policy ---------------------------------------------------------------------------
def ui_policy(access: Access) -> Any:
    """Like ``server.auth.policy``, for pages: a session cookie or a bearer key.

    Marks the route with ``access`` (the route-policy test reads it), so a page
    declares who may see it exactly as an API route does. Every state-changing
    request made with the cookie (or on a server without authentication) must pass
    the CSRF check here, before the route runs.
    """

    async def check(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        raw = request.headers.get("authorization")
        client = request.client.host if request.client else None
        bearer = raw is not None and auth.enabled
        if bearer or not auth.enabled:
            # The API's own check: a bearer key, or loopback-only without authentication.
            encoded = raw.encode("latin-1") if raw is not None else None
            principal = await auth.authenticate(encoded, access, client)
        else:
            principal = await _session_principal(request)
        if access is Access.ADMIN:
            auth.require_admin(principal)
        if request.method not in _SAFE_METHODS and not bearer:
            await check_csrf(request)
        return principal

    check.powertrain_access = access  # type: ignore[attr-defined]
    return Depends(check)


Viewer = Annotated[Principal, ui_policy(Access.KEY)]  # any key (its own data) or a session
AdminViewer = Annotated[Principal, ui_policy(Access.ADMIN)]


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def author_of(principal: Principal) -> str:
    """Who gave feedback through the UI, as the feedback's ``author``."""
    if principal.key is not None:
        return f"ui:{principal.key.name}"[:128]
    return "ui:admin" if principal.key_id == ADMIN_KEY_ID else "ui:local"
