"""Who may call what. Every route declares an ``Access`` level; a test enforces it.

With no admin key configured, authentication is off (local use) and only
loopback clients are answered. With ``POWERTRAIN_ADMIN_KEY`` set, every /v1
and /api route needs a bearer key: the admin key itself, or a virtual key made
with it (``/api/keys``, ``powertrain keys create``). Admin routes need the
admin key. A presented key reaches the store only as a SHA-256 hash, in a
bound parameter, and only when it has the shape of a virtual key.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from powertrain.access import KeyService
from powertrain.errors import AuthenticationError, PermissionDenied
from powertrain.store.keys import ApiKeyRecord

MAX_KEY_BYTES = 512
ADMIN_KEY_ID = "admin"


class Access(enum.Enum):
    PUBLIC = "public"  # health checks and docs
    KEY = "key"  # any valid key (the OpenAI-compatible surface)
    ADMIN = "admin"  # the admin key only


@dataclass(frozen=True)
class Principal:
    key_id: str | None  # None when authentication is off; "admin" for the admin key
    admin: bool
    key: ApiKeyRecord | None = None  # a virtual key: its limits, budget and allowed models

    @property
    def scope(self) -> str | None:
        """The key whose own data this caller sees, or None for all of it (admin)."""
        return None if self.admin else self.key_id


ANONYMOUS = Principal(key_id=None, admin=True)
ADMIN = Principal(key_id=ADMIN_KEY_ID, admin=True)


def is_loopback_client(host: str | None) -> bool:
    """A client on this machine (None: no address, e.g. a Unix socket or in-process)."""
    if host is None:
        return True
    return host.startswith(("127.", "::ffff:127.")) or host in ("::1", "localhost")


class Authenticator:
    def __init__(self, admin_key: str | None, keys: KeyService | None = None):
        self._admin = admin_key.encode() if admin_key else None
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return self._admin is not None

    def _screen(
        self, authorization: bytes | None, access: Access, client: str | None
    ) -> Principal | bytes:
        """A decision needing no store, or the token to look up as a virtual key."""
        if access is Access.PUBLIC:
            return ANONYMOUS
        if self._admin is None:
            if not is_loopback_client(client):
                raise AuthenticationError(
                    "authentication is off on this server, so it answers only clients on its "
                    "own machine; set POWERTRAIN_ADMIN_KEY to serve others"
                )
            return ANONYMOUS
        token = _bearer(authorization)
        if token is None:
            raise AuthenticationError("missing API key: send it as 'Authorization: Bearer <key>'")
        if hmac.compare_digest(token, self._admin):
            return ADMIN
        if self.keys is None:
            raise AuthenticationError("invalid API key")
        return token

    @staticmethod
    def _virtual(key: ApiKeyRecord | None) -> Principal:
        if key is None:
            raise AuthenticationError("invalid API key")
        return Principal(key_id=key.id, admin=False, key=key)

    def check(
        self, authorization: bytes | None, access: Access, client: str | None = None
    ) -> Principal:
        """Check an ``Authorization: Bearer …`` header value (may read the store)."""
        screened = self._screen(authorization, access, client)
        if isinstance(screened, Principal):
            return screened
        assert self.keys is not None
        return self._virtual(self.keys.verify(screened))

    async def authenticate(
        self, authorization: bytes | None, access: Access, client: str | None = None
    ) -> Principal:
        """``check`` that reads the store (a key not seen lately) off the event loop."""
        screened = self._screen(authorization, access, client)
        if isinstance(screened, Principal):
            return screened
        assert self.keys is not None
        return self._virtual(await self.keys.averify(screened))

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

    async def check(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        raw = request.headers.get("authorization")
        client = request.client.host if request.client else None
        principal = await auth.authenticate(
            raw.encode("latin-1") if raw is not None else None, access, client
        )
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
