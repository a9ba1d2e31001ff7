"""OAuth2 access tokens for mail accounts that log in with SASL XOAUTH2 (Microsoft 365, Gmail).

A ``TokenProvider`` belongs to one account and is shared by all of its folder watchers (one
thread each), so it is locked: only one token request is in flight, and the others reuse its
answer. A token is cached and fetched anew a minute (or half its lifetime, if shorter) before
``expires_in`` runs out, so a login never presents a token that expires on the way.

Two flows, chosen by the config:

* **refresh token** — a mailbox user consented once, and the resulting refresh token is a
  secret in the config and/or in the encrypted token store (``mailingest.token_store``, filled
  by ``mailingest auth ACCOUNT``). A stored token wins while it is newer than the configured one.
  Providers may rotate it: a new ``refresh_token`` in the answer is written back to the store;
  without a store (or when writing fails) it is kept in memory only, and after a restart the
  configured token is used again, which Microsoft and Google accept until it is revoked or
  expires. A revoked or expired refresh token (``invalid_grant``) cannot heal by retrying:
  it is logged at error level once per occurrence (the watchers keep retrying with backoff and
  pick up a re-authorised token from the secret without a restart). A ``refresh_token_expires_in``
  under ``REFRESH_WARN_BEFORE`` is warned about at every refresh, so the outage is announced.
* **client credentials** — an app registration with its own IMAP permission (Microsoft only).

Every failure leaves as ``SourceError`` naming the account and what a person should do.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from mailingest.config_base import Secret
from mailingest.config_sources import ImapOAuth2
from mailingest.errors import ConfigError, SourceError
from mailingest.token_store import TokenStore, fingerprint

log = structlog.get_logger("mailingest.oauth")

REFRESH_WARN_BEFORE = 7 * 86400.0  # seconds: Google's "testing" apps get 7-day refresh tokens
DEFAULT_LIFETIME = 3599.0  # when the endpoint omits expires_in (both providers issue 1-hour tokens)


def oauth_error(response: httpx.Response) -> tuple[str, str]:
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


@dataclass(frozen=True)
class TokenState:
    """What monitoring needs to know about an account's tokens, without asking the endpoint.

    ``token_ok`` is None until the first answer, True after a token was issued, False once the
    endpoint refused the refresh token or the client (retrying cannot heal that; a person must
    act). ``refresh_token_expires_at`` (Unix time) is known only when the endpoint says
    ``refresh_token_expires_in``."""

    token_ok: bool | None = None
    refresh_token_expires_at: float | None = None


class TokenProvider:
    """Access tokens for one account; ``token()`` is safe to call from several threads."""

    def __init__(
        self, account: str, config: ImapOAuth2, *, timeout: float = 30.0, store: TokenStore | None = None
    ) -> None:
        self.account = account
        self.config = config
        self.store = store
        self.url = config.effective_token_url
        self._http = httpx.Client(timeout=timeout)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        # (configured refresh token it replaced, rotated refresh token), when it could not be
        # stored: used only while the secret still holds the token it replaced, so a
        # re-authorised secret wins.
        self._rotated: tuple[str | None, str] | None = None
        self._revoked_logged = False
        # replaced whole, never mutated: ``state`` reads it without the lock, so a scrape does
        # not wait behind a token request in flight
        self._state = TokenState()

    @property
    def state(self) -> TokenState:
        """The latest token outcome, for /healthz and /metrics (cheap, never blocks)."""
        return self._state

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

    def _refresh_token(self, configured: str | None) -> str:
        """The newest refresh token: rotated in memory, else stored, else configured. The store
        is read every time, so a `mailingest auth` run reaches a running daemon."""
        rotated = self._rotated
        if rotated and rotated[0] == configured:
            return rotated[1]
        if self.store is not None:
            try:
                stored = self.store.load()
            except ConfigError as exc:  # wrong key or damaged file: the watchers retry and log it
                raise SourceError(f"imap account {self.account}: {exc.detail}") from exc
            if stored is not None and stored.supersedes(configured):
                return stored.refresh_token
        if configured is None:
            where = self.store.path if self.store is not None else "the token store"
            raise SourceError(
                f"imap account {self.account}: no refresh token in {where} and none configured; "
                f"run `mailingest auth {self.account}`"
            )
        return configured

    def _form(self) -> tuple[dict[str, str], str | None, bool]:
        """The token request, the configured refresh token it is based on, and whether it is the
        refresh-token flow (else client credentials)."""
        cfg = self.config
        form = {"client_id": cfg.client_id}
        if cfg.client_secret is not None:
            form["client_secret"] = _read(cfg.client_secret)  # read every time: rotation needs no restart
        configured = _read(cfg.refresh_token) if cfg.refresh_token is not None else None
        refreshing = cfg.uses_refresh_token
        if refreshing:
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = self._refresh_token(configured)
        else:
            form["grant_type"] = "client_credentials"
        if cfg.effective_scope:
            form["scope"] = cfg.effective_scope
        return form, configured, refreshing

    def _fetch(self) -> None:
        form, configured, refreshing = self._form()
        what = f"imap account {self.account}: OAuth2 token request to {self.url}"
        try:
            response = self._http.post(self.url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise SourceError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            code, text = oauth_error(response)
            if code == "invalid_grant" and refreshing:
                detail = (
                    f"{what} refused the refresh token ({text}): it was revoked or has expired; "
                    "re-authorise the mailbox (`mailingest auth ACCOUNT`, or put a new refresh token into "
                    "the configured secret)"
                )
                self._state = TokenState(False, self._state.refresh_token_expires_at)
                if not self._revoked_logged:
                    log.error("oauth2 refresh token rejected; re-authorisation needed", account=self.account,
                              error=text)  # fmt: skip
                    self._revoked_logged = True
                raise SourceError(detail)
            if code in ("invalid_client", "unauthorized_client"):
                self._state = TokenState(False, self._state.refresh_token_expires_at)
                raise SourceError(f"{what} refused the client ({text}); check client_id and client_secret")
            raise SourceError(f"{what} refused: {text}")
        body = json_body(response, what)
        try:
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"{what} answered without a usable access token") from exc
        self._token = token
        self._refresh_at = time.monotonic() + lifetime - min(60.0, lifetime / 2)
        self._revoked_logged = False
        new_refresh = body.get("refresh_token")
        if refreshing and isinstance(new_refresh, str) and new_refresh != form["refresh_token"]:
            self._keep_rotated(configured, new_refresh)
        log.info("oauth2 token obtained", account=self.account, expires_in=lifetime)
        remaining = self._warn_if_refresh_expiring(body)
        expires_at = time.time() + remaining if remaining is not None else None
        self._state = TokenState(True, expires_at)

    def _keep_rotated(self, configured: str | None, new_refresh: str) -> None:
        """Write a rotated token back to the store; in memory when there is none or it fails,
        because the login that brought it has worked and must not fail afterwards."""
        based_on = fingerprint(configured) if configured is not None else None
        if self.store is not None:
            try:
                self.store.save(new_refresh, based_on=based_on)
            except (OSError, ConfigError) as exc:
                detail = exc.detail if isinstance(exc, ConfigError) else str(exc)
                log.error("oauth2 rotated refresh token not stored; kept in memory", account=self.account,
                          file=str(self.store.path), error=detail)  # fmt: skip
            else:
                self._rotated = None
                log.info("oauth2 refresh token rotated; stored encrypted", account=self.account,
                         file=str(self.store.path))  # fmt: skip
                return
        else:
            log.info("oauth2 refresh token rotated; kept in memory only", account=self.account)
        self._rotated = (configured, new_refresh)

    def _warn_if_refresh_expiring(self, body: dict[str, Any]) -> float | None:
        """Seconds the refresh token has left, when the answer says (warned about when few)."""
        try:
            remaining = float(body["refresh_token_expires_in"])
        except (KeyError, TypeError, ValueError):
            return None  # most answers do not say; nothing to warn about
        if remaining < REFRESH_WARN_BEFORE:
            log.warning(
                "oauth2 refresh token expires soon; re-authorise the mailbox before then",
                account=self.account,
                expires_in_hours=round(remaining / 3600, 1),
            )
        return remaining


def _read(secret: Secret) -> str:
    """A secret that vanished after start-up is a source problem (retried), not a crash."""
    try:
        return secret.get()
    except ConfigError as exc:
        raise SourceError(exc.detail) from exc


def json_body(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise SourceError(f"{what} answered with something other than JSON") from exc
    if not isinstance(body, dict):
        raise SourceError(f"{what} answered with something other than a JSON object")
    return body
