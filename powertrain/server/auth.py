"""Who may call what. Every route declares an ``Access`` level; a test enforces it.

With no admin key configured, authentication is off (local use). With
``POWERTRAIN_ADMIN_KEY`` set, every /v1 and /api route needs a bearer key;
admin routes need the admin key itself.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from powertrain.errors import AuthenticationError, PermissionDenied

MAX_KEY_BYTES = 512


class Access(enum.Enum):
    PUBLIC = "public"  # health checks and docs
    KEY = "key"  # any valid key (the OpenAI-compatible surface)
    ADMIN = "admin"  # the admin key only


@dataclass(frozen=True)
class Principal:
    key_id: str | None  # None when authentication is off
    admin: bool


ANONYMOUS = Principal(key_id=None, admin=True)


class Authenticator:
    def __init__(self, admin_key: str | None):
        self._admin = admin_key.encode() if admin_key else None

    @property
    def enabled(self) -> bool:
        return self._admin is not None

    def check(self, authorization: bytes | None, access: Access) -> Principal:
        """Constant-time check of an ``Authorization: Bearer …`` header value."""
        if access is Access.PUBLIC or self._admin is None:
            return ANONYMOUS
        token = _bearer(authorization)
        if token is None:
            raise AuthenticationError("missing API key: send it as 'Authorization: Bearer <key>'")
        if hmac.compare_digest(token, self._admin):
            return Principal(key_id="admin", admin=True)
        raise AuthenticationError("invalid API key")

    def require_admin(self, principal: Principal) -> None:
        if not principal.admin:
            raise PermissionDenied("this route needs the admin key")


def _bearer(value: bytes | None) -> bytes | None:
    if not value or len(value) > MAX_KEY_BYTES + 7:
        return None
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def policy(access: Access) -> Any:
    """A FastAPI dependency that enforces ``access`` and marks the route with it."""

    def check(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        raw = request.headers.get("authorization")
        principal = auth.check(raw.encode("latin-1") if raw is not None else None, access)
        if access is Access.ADMIN:
            auth.require_admin(principal)
        return principal

    check.powertrain_access = access  # type: ignore[attr-defined]
    return Depends(check)


def route_access(route: Any) -> Access | None:
    """The Access a FastAPI route declared, if any (used by the route-policy test)."""
    dependant = getattr(route, "dependant", None)
    for dep in getattr(dependant, "dependencies", []) if dependant else []:
        access = getattr(dep.call, "powertrain_access", None)
        if access is not None:
            return access  # type: ignore[no-any-return]
    return None
