"""The UI's front door: ``/``, signing in and out, and the static files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from powertrain.errors import AuthenticationError, NotFound
from powertrain.server.auth import Access, Authenticator, policy
from powertrain.ui.render import STATIC_DIR, STATIC_FILES, UIRoute, page
from powertrain.ui.session import (
    SESSION_COOKIE,
    Viewer,
    auth_enabled,
    check_csrf,
    current_session,
    read_fields,
    set_cookie,
    signer_of,
)

router = APIRouter(route_class=UIRoute, include_in_schema=False)
HOME = "/ui/traces"
Public = policy(Access.PUBLIC)


def safe_next(target: object) -> str:
    """Where to go after signing in: a page of this UI, never another site."""
    if (
        isinstance(target, str)
        and target.startswith("/ui/")
        and not target.startswith("/ui/signin")
        and "\\" not in target
        and "//" not in target
        and len(target) <= 2000
    ):
        return target
    return HOME


@router.get("/", dependencies=[Public])
async def root() -> RedirectResponse:
    """The UI's home is the traces page."""
    return RedirectResponse(HOME, status_code=303)


@router.get("/ui/signin", dependencies=[Public])
async def signin_form(request: Request, next: str | None = None) -> Response:
    if not auth_enabled(request) or current_session(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return page(request, "signin.html", None, title="Sign in", next=safe_next(next), error=None)


@router.post("/ui/signin", dependencies=[Public])
async def signin(request: Request) -> Response:
    """Check a key with the API's authenticator; keep only its id in a signed cookie."""
    await check_csrf(request)
    fields = await read_fields(request)
    target = safe_next(fields.get("next"))
    if not auth_enabled(request):
        return RedirectResponse(target, status_code=303)
    auth: Authenticator = request.app.state.authenticator
    key = str(fields.get("key") or "").strip()
    client = request.client.host if request.client else None
    try:
        principal = await auth.authenticate(f"Bearer {key}".encode(), Access.KEY, client)
    except AuthenticationError:
        return page(
            request,
            "signin.html",
            None,
            status=401,
            title="Sign in",
            next=target,
            error="That key is not valid (or it was revoked).",
        )
    assert principal.key_id is not None
    signer = signer_of(request)
    assert signer is not None
    cookie, _session = signer.issue(principal.key_id)
    response = RedirectResponse(target, status_code=303)
    set_cookie(request, response, SESSION_COOKIE, cookie)
    return response


@router.post("/ui/signout")
async def signout(request: Request, _principal: Viewer) -> Response:
    response = RedirectResponse("/ui/signin" if auth_enabled(request) else HOME, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.get("/ui/static/{name}", dependencies=[Public])
async def static(name: Annotated[str, Path(max_length=64)]) -> FileResponse:
    """The UI's own stylesheet and script (an allow-list: the name never reaches the disk)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFound(f"no UI asset {name!r}")
    return FileResponse(
        STATIC_DIR / name,
        media_type=media_type,
        # Links carry the file's hash (?v=…), so a changed file is a new URL.
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )
