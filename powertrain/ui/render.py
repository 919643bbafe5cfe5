"""Rendering pages: the Jinja environment (autoescape on), the layout's context, safe headers.

Everything a template shows from a trace, a dataset or a person is text: Jinja
escapes it, no template marks data ``|safe``, and markdown is never rendered.
Every UI response carries a strict Content-Security-Policy (no inline script, no
third-party origin), so even a mistake in escaping could not run a script.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from powertrain.errors import PowertrainError
from powertrain.server.auth import Principal
from powertrain.ui.session import (
    CSRF_COOKIE,
    SignInRequired,
    anonymous_csrf,
    auth_enabled,
    csrf_token,
    set_cookie,
)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_FILES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class NavEntry:
    path: str
    label: str
    admin_only: bool = False


# The left navigation, in order. Pages added later append their entry here.
NAV: list[NavEntry] = [
    NavEntry("/ui/traces", "Traces"),
    NavEntry("/ui/costs", "Costs & latency"),
    NavEntry("/ui/playground", "Playground"),
    NavEntry("/ui/tasks", "Tasks"),
    NavEntry("/ui/evals", "Eval runs", admin_only=True),
    NavEntry("/ui/datasets", "Datasets"),
    NavEntry("/ui/annotate", "Annotation queue"),
    NavEntry("/ui/finetunes", "Fine-tunes", admin_only=True),
]


def _static_version(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


# -- formatting filters ---------------------------------------------------------------------
def usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    return f"${value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"


def duration_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def seconds(value: float | None) -> str:
    """A duration of seconds to hours: ``8.2 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def pretty(value: Any) -> str:
    """JSON shown as text, indented (never interpreted)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def clip(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else ("" if value is None else pretty(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        usd=usd,
        ms=duration_ms,
        seconds=seconds,
        when=when,
        pretty=pretty,
        clip=clip,
        number=number,
        percent=percent,
        urlquote=lambda v: quote(str(v), safe=""),
    )
    versions = {name: _static_version(name) for name in STATIC_FILES}
    env.globals["static"] = lambda name: f"/ui/static/{name}?v={versions[name]}"
    return env


TEMPLATES = _environment()


def query_string(**params: Any) -> str:
    """``?a=1&b=2`` of the params that are set (for links that keep a page's filters)."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def page(
    request: Request,
    template: str,
    principal: Principal | None,
    *,
    status: int = 200,
    title: str = "",
    **context: Any,
) -> HTMLResponse:
    """A whole page in the layout: navigation, who is signed in, the CSRF token."""
    signed_in = principal is not None and auth_enabled(request)
    admin = principal is None or principal.admin
    html = TEMPLATES.get_template(template).render(
        title=title,
        path=request.url.path,
        nav=[n for n in NAV if admin or not n.admin_only] if principal is not None else [],
        principal=principal,
        who=_who(principal) if signed_in else None,
        auth_enabled=auth_enabled(request),
        csrf=csrf_token(request),
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    _set_new_csrf_cookie(request, response)
    return response


def _who(principal: Principal | None) -> str:
    if principal is None:
        return ""
    if principal.key is not None:
        return f"key {principal.key.name} ({principal.key.prefix}…)"
    return "admin key"


def _set_new_csrf_cookie(request: Request, response: Response) -> None:
    fresh = getattr(request.state, "new_csrf_cookie", None)
    if fresh is not None:
        set_cookie(request, response, CSRF_COOKIE, fresh)


def wants_html(request: Request) -> bool:
    """A browser navigating (not ``app.js`` or a script asking for JSON)."""
    return "text/html" in request.headers.get("accept", "")


def error_page(request: Request, exc: PowertrainError) -> Response:
    if isinstance(exc, SignInRequired) and request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/ui/signin" + query_string(next=target), status_code=303)
    anonymous_csrf(request)  # the error page's sign-in link works without another round trip
    return page(
        request,
        "error.html",
        None,
        status=exc.status_code,
        title="Error",
        error=exc,
    )


def secure(response: Response, *, cache: bool = False) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not cache:
        # Pages hold private data: never kept by a shared cache or the back button.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


class UIRoute(APIRoute):
    """Pages answer errors as pages (a script asking for JSON gets the API's JSON error),
    and every response carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await inner(request)
            except PowertrainError as exc:
                if not wants_html(request):
                    raise  # the app's handler answers in the OpenAI error shape
                response = error_page(request, exc)
            cached = response.headers.get("cache-control", "").startswith("public")
            return secure(response, cache=cached)

        return handler
