"""OAuth2 access tokens for mail accounts that log in with SASL XOAUTH2 (Microsoft 365, Gmail).

A ``TokenProvider`` belongs to one account and is shared by all of its folder watchers (one
thread each), so it is locked: only one token request is in flight, and the others reuse its
answer. A token is cached and fetched anew a minute (or half its lifetime, if shorter) before
``expires_in`` runs out, so a login never presents a token that expires on the way.

Two flows, chosen by the config:

* **refresh token** — a mailbox user consented once (outside mailingest, for now) and the
  resulting refresh token is a secret in the config. Providers may rotate it: a new
  ``refresh_token`` in the answer replaces the old one **in memory only** — if the daemon
  restarts before the secret is updated, the configured token is used again, which Microsoft and
  Google accept until it is revoked or expires. Persisting rotated tokens (encrypted at rest) is
  a follow-up. A revoked or expired refresh token (``invalid_grant``) cannot heal by retrying:
  it is logged at error level once per occurrence (the watchers keep retrying with backoff and
  pick up a re-authorised token from the secret without a restart). A ``refresh_token_expires_in``
  under ``REFRESH_WARN_BEFORE`` is warned about at every refresh, so the outage is announced.
* **client credentials** — an app registration with its own IMAP permission (Microsoft only).

Every failure leaves as ``SourceError`` naming the account and what a person should do.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import structlog

from mailingest.config_base import Secret
from mailingest.config_sources import ImapOAuth2
from mailingest.errors import ConfigError, SourceError

log = structlog.get_logger("mailingest.oauth")

REFRESH_WARN_BEFORE = 7 * 86400.0  # seconds: Google's "testing" apps get 7-day refresh tokens
DEFAULT_LIFETIME = 3599.0  # when the endpoint omits expires_in (both providers issue 1-hour tokens)


def _oauth_error(response: httpx.Response) -> tuple[str, str]:
    """(error code, human text) from an RFC 6749 error answer, falling back to the status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        description = str(body.get("error_description") or "").strip()
        return code, f"HTTP {response.status_code} {code}" + (f": {description}" if description else "")
    return "", f"HTTP {response.status_code} {response.reason_phrase}"


class TokenProvider:
    """Access tokens for one account; ``token()`` is safe to call from several threads."""

    def __init__(self, account: str, config: ImapOAuth2, *, timeout: float = 30.0) -> None:
        self.account = account
        self.config = config
        self.url = config.effective_token_url
        self._http = httpx.Client(timeout=timeout)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        # (configured refresh token it replaced, rotated refresh token): the rotated one is used
        # only while the secret still holds the token it replaced, so a re-authorised secret wins.
        self._rotated: tuple[str, str] | None = None
        self._revoked_logged = False

    def close(self) -> None:
        self._http.close()

    def invalidate(self, token: str) -> None:
        """The server refused ``token``: the next ``token()`` fetches a new one. Naming the token
        keeps a thread that already got a newer one from throwing that away."""
        with self._lock:
            if self._token == token:
                self._token = None

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._token = None
                self._fetch()
            assert self._token is not None
            return self._token

    def _form(self) -> tuple[dict[str, str], str | None]:
        """The token request and the configured refresh token it is based on (None: client credentials)."""
        cfg = self.config
        form = {"client_id": cfg.client_id}
        if cfg.client_secret is not None:
            form["client_secret"] = _read(cfg.client_secret)  # read every time: rotation needs no restart
        configured = None
        if cfg.refresh_token is not None:
            configured = _read(cfg.refresh_token)
            rotated = self._rotated
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = rotated[1] if rotated and rotated[0] == configured else configured
        else:
            form["grant_type"] = "client_credentials"
        if cfg.effective_scope:
            form["scope"] = cfg.effective_scope
        return form, configured

    def _fetch(self) -> None:
        form, configured = self._form()
        what = f"imap account {self.account}: OAuth2 token request to {self.url}"
        try:
            response = self._http.post(self.url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise SourceError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            code, text = _oauth_error(response)
            if code == "invalid_grant" and configured is not None:
                detail = (
                    f"{what} refused the refresh token ({text}): it was revoked or has expired; "
                    "re-authorise the mailbox and put the new refresh token into the configured secret"
                )
                if not self._revoked_logged:
                    log.error("oauth2 refresh token rejected; re-authorisation needed", account=self.account,
                              error=text)  # fmt: skip
                    self._revoked_logged = True
                raise SourceError(detail)
            if code in ("invalid_client", "unauthorized_client"):
                raise SourceError(f"{what} refused the client ({text}); check client_id and client_secret")
            raise SourceError(f"{what} refused: {text}")
        body = _json(response, what)
        try:
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{what} answered without a usable access token") from exc
        self._token = token
        self._refresh_at = time.monotonic() + lifetime - min(60.0, lifetime / 2)
        self._revoked_logged = False
        new_refresh = body.get("refresh_token")
        if configured is not None and isinstance(new_refresh, str) and new_refresh != form["refresh_token"]:
            self._rotated = (configured, new_refresh)
            log.info("oauth2 refresh token rotated; kept in memory only", account=self.account)
        log.info("oauth2 token obtained", account=self.account, expires_in=lifetime)
        self._warn_if_refresh_expiring(body)

    def _warn_if_refresh_expiring(self, body: dict[str, Any]) -> None:
        try:
            remaining = float(body["refresh_token_expires_in"])
        except (KeyError, TypeError, ValueError):
            return  # most answers do not say; nothing to warn about
        if remaining < REFRESH_WARN_BEFORE:
            log.warning(
                "oauth2 refresh token expires soon; re-authorise the mailbox before then",
                account=self.account,
                expires_in_hours=round(remaining / 3600, 1),
            )


def _read(secret: Secret) -> str:
    """A secret that vanished after start-up is a source problem (retried), not a crash."""
    try:
        return secret.get()
    except ConfigError as exc:
        raise SourceError(exc.detail) from exc


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise SourceError(f"{what} answered with something other than JSON") from exc
    if not isinstance(body, dict):
        raise SourceError(f"{what} answered with something other than a JSON object")
    return body
