"""API keys with scopes (DESIGN.md 3.4): creating, listing, revoking and checking them.

A key is ``mi_`` plus 43 random URL-safe characters, shown once when created; the database keeps
only its SHA-256 (a high-entropy secret needs no slow hash) and its first 8 characters.
Requests send ``Authorization: Bearer mi_...``.

``[api] auth = "loopback-open"`` (the default) lets callers on 127.0.0.1/::1 read without a key
(``invoices:read`` and ``analytics:read`` only), so the zero-config tour works; it only applies
while the API itself listens on loopback: any other listen address means ``"required"``.
Behind a reverse proxy on the same host every remote caller would look local — set
``auth = "required"`` there.

Besides keys, ``Authorization: Bearer <JWT>`` accepts OAuth2 access tokens from ``POST
/oauth/token`` (``mailingest.api.oauth2``). A credential bound to a vendor (``vendor``: VAT id or
``ven_`` id) carries only ``vendor:read`` and may call only ``/v1/portal/...``
(``mailingest.api.portal``); ``admin`` implies every other scope.

``require(scope)`` dependencies carry ``required_scope`` so tools (the scope-matrix test) can read
each route's scope from its dependencies.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import HTTPException, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailingest.config import ApiConfig, parse_listen
from mailingest.models import new_id
from mailingest.storage.tables import ApiKey, utcnow

AuthMode = Literal["required", "loopback-open"]

SCOPES = (
    "invoices:read",
    "invoices:write",
    "invoices:approve",
    "rules:write",
    "webhooks:manage",
    "analytics:read",
    "vendor:read",
    "admin",
)
VENDOR_SCOPE = "vendor:read"
LOOPBACK_SCOPES = frozenset({"invoices:read", "analytics:read"})
KEY_PREFIX = "mi_"
# last_used_at is refreshed at most this often, so reads do not turn into a write per request
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (``kind`` "key"), an OAuth2 client's access token ("client"),
    or an anonymous loopback caller (``key_id`` None). ``vendor`` is set for vendor-portal
    credentials."""

    key_id: str | None
    scopes: frozenset[str]
    vendor: str | None = None
    kind: str = "key"

    @property
    def actor(self) -> str:
        return f"api:{self.key_id}" if self.key_id else "api:loopback"

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def effective_mode(api: ApiConfig) -> AuthMode:
    """``loopback-open`` only when the API listens on loopback; anything else requires keys."""
    if api.auth == "required":
        return "required"
    host, _port = parse_listen(api.listen)
    return "loopback-open" if _is_loopback(host) else "required"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def normalize_vendor(vendor: str) -> str:
    """VAT ids compare without spaces, dots and dashes, upper-case; ``ven_`` ids as given."""
    vendor = vendor.strip()
    if vendor.startswith("ven_"):
        return vendor
    return "".join(ch for ch in vendor if ch.isalnum()).upper()


def check_binding(scopes: list[str], vendor: str | None) -> str | None:
    """A vendor binding goes with exactly the scope ``vendor:read``, and that scope needs one."""
    if vendor is not None and vendor.strip():
        if scopes != [VENDOR_SCOPE]:
            raise ValueError(f"a vendor-bound credential has exactly the scope {VENDOR_SCOPE}")
        return normalize_vendor(vendor)
    if VENDOR_SCOPE in scopes:
        raise ValueError(f"the scope {VENDOR_SCOPE} needs a vendor (--vendor VAT_ID or ven_...)")
    return None


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Validated, de-duplicated scopes in canonical order; ValueError names an unknown one."""
    wanted = {s.strip() for s in scopes if s.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    if not wanted:
        raise ValueError("at least one scope is needed")
    return [s for s in SCOPES if s in wanted]


def create_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    vendor: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its secret — the only time the secret exists."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    checked = check_scopes(scopes)
    row = ApiKey(
        id=new_id("key"),
        name=name,
        prefix=secret[:8],
        key_hash=hash_key(secret),
        scopes=checked,
        expires_at=expires_at,
        vendor=check_binding(checked, vendor),
    )
    session.add(row)
    return row, secret


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.id))).all())


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Revoke a key (idempotent: an already revoked key keeps its first revocation time)."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
    return row


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="mailingest"'})


class Authenticator:
    """Resolves the caller of a request and checks scopes; FastAPI dependencies come from
    ``require(scope)``. Sets ``request.state.principal`` so the audit middleware knows the caller.

    A middleware that resolved the caller already (``mailingest.api.ratelimit``) leaves it in
    ``request.state.resolved``; ``require`` reuses it instead of a second database lookup."""

    def __init__(self, engine: Engine, mode: AuthMode) -> None:
        self.engine = engine
        self.mode = mode

    def _from_key(self, token: str) -> Principal:
        now = utcnow()
        with Session(self.engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(token))).first()
            if row is None:
                raise _unauthorized("unknown API key")
            if row.revoked_at is not None:
                raise _unauthorized(f"API key {row.id} was revoked")
            if row.expires_at is not None and row.expires_at <= now:
                raise _unauthorized(f"API key {row.id} expired")
            if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
                row.last_used_at = now
                session.add(row)
                session.commit()
            return Principal(key_id=row.id, scopes=frozenset(row.scopes), vendor=row.vendor, kind="key")

    def _from_token(self, token: str) -> Principal:
        from mailingest.api import oauth2  # oauth2 builds on this module

        try:
            return oauth2.verify_access_token(self.engine, token)
        except oauth2.TokenError as exc:
            raise HTTPException(
                401,
                str(exc),
                headers={
                    "WWW-Authenticate": f'Bearer realm="mailingest", error="invalid_token", '
                    f'error_description="{exc}"'
                },
            ) from exc

    def resolve(self, request: Request) -> Principal | None:
        """The caller from the ``Authorization`` header, or None when there is none; raises 401
        for a bad key or token."""
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("send an API key or access token as 'Authorization: Bearer ...'")
        if token.startswith(KEY_PREFIX):
            return self._from_key(token)
        if token.count(".") == 2:
            return self._from_token(token)
        raise _unauthorized("send an API key (mi_...) or an OAuth2 access token as a Bearer token")

    def principal(self, request: Request) -> Principal | None:
        """The caller, or None when no key was sent and anonymous access is not allowed."""
        resolved: Principal | None = getattr(request.state, "resolved", None)
        if resolved is not None:
            return resolved
        principal = self.resolve(request)
        if principal is not None:
            return principal
        client = request.client.host if request.client else ""
        if self.mode == "loopback-open" and _is_loopback(client):
            return Principal(key_id=None, scopes=LOOPBACK_SCOPES, kind="loopback")
        return None

    def require(self, scope: str) -> Callable[[Request], Principal]:
        def dependency(request: Request) -> Principal:
            principal = self.principal(request)
            if principal is None:
                raise _unauthorized(f"an API key with scope {scope} is required")
            request.state.principal = principal
            if principal.vendor is not None and scope != VENDOR_SCOPE:
                raise HTTPException(
                    403, f"vendor-portal credential {principal.key_id} may only use /v1/portal"
                )
            if not principal.allows(scope):
                if principal.key_id is None:
                    raise _unauthorized(f"an API key with scope {scope} is required")
                raise HTTPException(403, f"credential {principal.key_id} lacks the scope {scope}")
            return principal

        dependency.required_scope = scope  # type: ignore[attr-defined]
        return dependency


def required_scope(dependant: Any) -> str | None:
    """The scope a FastAPI route (its ``dependant``) requires, found among its dependencies."""
    for dep in dependant.dependencies:
        found = getattr(dep.call, "required_scope", None) or required_scope(dep)
        if found:
            return str(found)
    return None
