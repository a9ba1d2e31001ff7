"""OAuth2 client credentials (RFC 6749 section 4.4) for service accounts and integrations.

* ``mailingest api-client create NAME --scopes ...`` stores a client: ``client_id`` (``cli_...``)
  and a secret (``mcs_...``, shown once; only its SHA-256 is stored).
* ``POST /oauth/token`` with ``grant_type=client_credentials`` and the client authenticated by
  HTTP Basic or by ``client_id``/``client_secret`` form fields returns a short-lived JWT
  (HS256, ``[api] token_ttl``, default 15 minutes). An optional ``scope`` narrows the token to a
  subset of the client's scopes. Errors are RFC 6749 JSON (``invalid_client`` 401,
  ``invalid_request``/``unsupported_grant_type``/``invalid_scope`` 400).
* ``POST /oauth/introspect`` (RFC 7662, ``admin``) tells whether a token is active.
* The HS256 key is generated on first use and stored in the ``server_secrets`` table, so every
  process on the same database signs and verifies with the same key.
* Revocation and expiry of the client: no new tokens at once; already issued tokens are also
  refused at once, because verifying a token reads the client row (a primary-key lookup). At the
  latest they die at their own expiry (``token_ttl``) anyway.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailingest.api.actions import Context
from mailingest.api.auth import Authenticator, Principal, check_binding, check_scopes, hash_key
from mailingest.models import new_id
from mailingest.storage import repo
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_auth import ApiClient, ServerSecret

SECRET_PREFIX = "mcs_"
SIGNING_KEY_NAME = "jwt-hs256"
ISSUER = "mailingest"
AUDIENCE = "mailingest-api"
DEFAULT_TTL = 900.0
_key_cache: dict[str, bytes] = {}  # engine url → signing key (it never changes once stored)


class TokenError(Exception):
    """An access token that is malformed, expired, badly signed or whose client is gone."""


def create_client(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    vendor: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiClient, str]:
    """Store a new client; return it with its secret (the only time the secret exists)."""
    checked = check_scopes(scopes)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = ApiClient(
        id=new_id("cli"),
        name=name,
        secret_hash=hash_key(secret),
        scopes=checked,
        vendor=check_binding(checked, vendor),
        expires_at=expires_at,
    )
    session.add(row)
    return row, secret


def list_clients(session: Session) -> list[ApiClient]:
    return list(session.exec(select(ApiClient).order_by(col(ApiClient.id))).all())


def revoke_client(session: Session, client_id: str) -> ApiClient | None:
    row = session.get(ApiClient, client_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
    return row


def signing_key(engine: Engine) -> bytes:
    """The server's HS256 key: read, or generated and stored on first use (race-safe)."""
    cache_key = engine.url.render_as_string(hide_password=False)
    if cache_key in _key_cache:
        return _key_cache[cache_key]
    with Session(engine) as session:
        row = session.get(ServerSecret, SIGNING_KEY_NAME)
        if row is None:
            session.add(ServerSecret(name=SIGNING_KEY_NAME, value=secrets.token_urlsafe(48)))
            try:
                session.commit()
            except IntegrityError:  # another process stored one first: use theirs
                session.rollback()
            row = session.get(ServerSecret, SIGNING_KEY_NAME)
        assert row is not None
        key = row.value.encode()
    _key_cache[cache_key] = key
    return key


def _usable(row: ApiClient | None) -> str | None:
    """Why a client cannot act (None when it can)."""
    if row is None:
        return "unknown client"
    if row.revoked_at is not None:
        return f"client {row.id} was revoked"
    if row.expires_at is not None and row.expires_at <= utcnow():
        return f"client {row.id} expired"
    return None


def issue_token(engine: Engine, client: ApiClient, scopes: list[str], ttl: float) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": client.id,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + int(ttl),
        "jti": secrets.token_urlsafe(12),
    }
    if client.vendor:
        claims["vendor"] = client.vendor
    token = jwt.encode(claims, signing_key(engine), algorithm="HS256")
    return {"access_token": token, "token_type": "Bearer", "expires_in": int(ttl), "scope": claims["scope"]}


def decode(engine: Engine, token: str) -> dict[str, Any]:
    """Verified claims (signature, expiry, issuer, audience) and a client that still may act."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key(engine),
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iat"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("access token expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("invalid access token") from exc
    with Session(engine) as session:
        problem = _usable(session.get(ApiClient, str(claims["sub"])))
    if problem:
        raise TokenError(f"access token no longer valid: {problem}")
    return claims


def verify_access_token(engine: Engine, token: str) -> Principal:
    claims = decode(engine, token)
    return Principal(
        key_id=str(claims["sub"]),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        vendor=claims.get("vendor"),
        kind="client",
    )


def oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    """RFC 6749 section 5.2 error response."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **headers},
    )


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, secret = decoded.partition(":")
    return client_id, secret


def build_router(engine: Engine, authenticator: Authenticator, token_ttl: float = DEFAULT_TTL) -> APIRouter:
    router = APIRouter(tags=["oauth2"])

    @router.post("/oauth/token")
    def token(
        request: Request,
        grant_type: Annotated[str | None, Form()] = None,
        scope: Annotated[str | None, Form()] = None,
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        """OAuth2 client credentials grant: a short-lived JWT access token (RFC 6749 4.4).
        Every error is an RFC 6749 error object, never a 422."""
        if any(len(v or "") > 1000 for v in (grant_type, scope, client_id, client_secret)):
            return oauth_error(400, "invalid_request", "a parameter is longer than 1000 characters")
        basic = _basic_credentials(request)
        if basic is not None and client_id is not None:
            return oauth_error(400, "invalid_request", "authenticate the client one way only")
        cid, secret = basic if basic is not None else (client_id or "", client_secret or "")
        if not cid:
            return oauth_error(
                401,
                "invalid_client",
                "client authentication is required",
                **{"WWW-Authenticate": 'Basic realm="mailingest"'},
            )
        with Session(engine) as session:
            row = session.get(ApiClient, cid)
            good = row is not None and hmac.compare_digest(row.secret_hash, hash_key(secret))
            problem = _usable(row) if good else "unknown client or wrong secret"
            if problem:
                return oauth_error(
                    401, "invalid_client", problem, **{"WWW-Authenticate": 'Basic realm="mailingest"'}
                )
            assert row is not None
            if grant_type is None:
                return oauth_error(400, "invalid_request", "grant_type is required")
            if grant_type != "client_credentials":
                return oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
            granted = list(row.scopes)
            if scope:
                wanted = scope.split()
                extra = sorted(set(wanted) - set(granted))
                if extra:
                    return oauth_error(400, "invalid_scope", f"not granted to this client: {' '.join(extra)}")
                granted = [s for s in granted if s in wanted]
            row.last_token_at = utcnow()
            session.add(row)
            body = issue_token(engine, row, granted, token_ttl)
            repo.audit(
                session,
                actor=f"api:{row.id}",
                action="oauth.token",
                detail={"scope": body["scope"], "expires_in": body["expires_in"]},
            )
            session.commit()
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @router.post("/oauth/introspect", dependencies=[Depends(authenticator.require("admin"))])
    def introspect(token: Annotated[str, Form(max_length=4000)]) -> dict[str, Any]:
        """RFC 7662 token introspection (needs ``admin``): ``{"active": false}`` for any token
        that would be refused."""
        try:
            claims = decode(engine, token)
        except TokenError:
            return {"active": False}
        return {
            "active": True,
            "scope": claims.get("scope", ""),
            "client_id": claims["sub"],
            "sub": claims["sub"],
            "token_type": "Bearer",
            "exp": claims["exp"],
            "iat": claims["iat"],
            "iss": claims.get("iss"),
            "aud": claims.get("aud"),
            **({"vendor": claims["vendor"]} if claims.get("vendor") else {}),
        }

    return router


def router(ctx: Context) -> APIRouter:
    """The ``/oauth`` routes for ``create_app`` (``app.include_router(oauth2.router(ctx))``)."""
    return build_router(ctx.engine, ctx.authenticator, ctx.config.api.token_ttl)
